"""One typed config per stage, which is also its CLI and is pinned beside the stage's outputs.

A stage's config is a frozen dataclass whose fields are declared with :func:`option` (or
:func:`required`): a default, the ``--help`` text and what the field *is*:

* ``runtime=True`` — the field may change between a run and its resume without changing a byte of
  output (worker counts, progress interval, Ray address...).  Every other field is **output-defining**:
  :func:`pin_config` refuses to resume an output with a different value.  A new field is therefore
  output-defining unless its author says otherwise.
* ``uri=True`` — a local path or ``s3://`` URI: pinned in normalised form (a relative and an absolute
  path of the same file are the same config) and refused when relative inside a Ray job (the job runs
  in Ray's copy of the working directory, so a relative path would point somewhere else).
* ``min=`` / ``max=`` / ``choices=`` — checked by :func:`validate_fields` when the config is built, so a
  bad value is a one-line :class:`ConfigError` naming the flag, never a traceback half-way through a run.

:func:`build_parser` turns the dataclass into an ``argparse`` parser (``--num-triplets`` for
``num_triplets``, no prefix matching; ``--flag`` alone sets a boolean), :func:`parse_config` turns argv
back into the validated dataclass, and :func:`pin_config` writes ``config.json`` beside the outputs (the
output-defining fields, every URI normalised, and the identity of the input files) or refuses a rerun
that differs from it.  :func:`normalised_dict` is the whole config, as a manifest records it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from typing import Any, Iterable, Mapping, Sequence, TypeVar

from cluster import storage

T = TypeVar("T")
# Set by Ray's job supervisor in the environment of a job's entrypoint.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
INPUTS_KEY = "_inputs"  # config.json key holding the identity of the input files


class ConfigError(ValueError):
    """A bad argument or config value; the message names the flag."""


class ConfigMismatch(RuntimeError):
    """An output already holds a run made with a different output-defining config (or input)."""


def option(default: Any, help: str, runtime: bool = False, **extra: Any) -> Any:
    """A config field with its default and ``--help`` text.

    ``runtime=True`` marks a field that may change between a run and its resume (it is not compared by
    :func:`pin_config`); ``extra`` metadata: ``choices``, ``min``, ``max``, ``uri=True``, ``required``.
    """
    meta = {"help": help, "runtime": runtime, **extra}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def required(help: str, **extra: Any) -> Any:
    """A field without a default (a required ``--flag``)."""
    return option(dataclasses.MISSING, help, **extra)


def flag(name: str) -> str:
    """``num_triplets`` -> ``--num-triplets``."""
    return "--" + name.replace("_", "-")


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_optional) for ``X | None`` / ``Optional[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


class _Parser(argparse.ArgumentParser):
    """argparse without prefix matching whose errors are a :class:`ConfigError` (one line, no usage)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see --help)")


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, tp: Any) -> None:
    inner, _ = _base_type(tp)
    kwargs: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help", "")}
    default = _default(f)
    if default is dataclasses.MISSING or f.metadata.get("required", False):
        kwargs["required"] = True
    else:
        kwargs["default"] = default
        kwargs["help"] += f" (default: {default})"
    if f.metadata.get("runtime"):
        kwargs["help"] += " [runtime: may change on resume]"
    if typing.get_origin(inner) is tuple:
        kwargs["type"] = typing.get_args(inner)[0]
        kwargs["nargs"] = "+"
    elif inner is bool:
        kwargs.update(type=_bool, metavar="BOOL", nargs="?", const=True)  # `--flag` alone means true
    else:
        kwargs["type"] = inner
    if "choices" in f.metadata:
        kwargs["choices"] = f.metadata["choices"]
    parser.add_argument(flag(f.name), **kwargs)


def build_parser(cls: type, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag`` per dataclass field, typed and documented."""
    parser = _Parser(prog=prog, description=description or (cls.__doc__ or "").strip())
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        _add_field(parser, f, hints[f.name])
    return parser


def config_from_namespace(cls: type[T], ns: argparse.Namespace) -> T:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(ns, f.name)
        if typing.get_origin(_base_type(hints[f.name])[0]) is tuple and value is not None:
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


def parse_config(cls: type[T], argv: Sequence[str] | None, prog: str | None = None) -> T:
    """Parse argv into the validated config (``--help`` prints every field and exits 0).

    Any bad argument or value raises :class:`ConfigError` with a one-line message naming the flag."""
    parser = build_parser(cls, prog=prog)
    ns = parser.parse_args(argv)
    try:
        cfg = config_from_namespace(cls, ns)
        validate_fields(cfg)
    except ConfigError:
        raise
    except ValueError as err:  # a config's own __post_init__ check
        raise ConfigError(f"{parser.prog}: {err}") from err
    return cfg


# ------------------------------------------------------------------------------------------ validation
def in_ray_job() -> bool:
    """True inside the entrypoint of a ``ray job submit`` (which runs in Ray's copy of the working dir)."""
    return RAY_JOB_ENV in os.environ


def is_relative_local(uri: str) -> bool:
    return bool(uri) and "://" not in uri and not os.path.isabs(uri)


def _check_bounds(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{flag(name)} must be >= {meta['min']}, got {value}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{flag(name)} must be <= {meta['max']}, got {value}")


def _check_choices(name: str, value: Any, choices: Sequence[Any]) -> None:
    values = value if isinstance(value, tuple) else (value,)
    if isinstance(value, tuple) and not value:
        raise ConfigError(f"{flag(name)} needs at least one of {tuple(choices)}")
    bad = [v for v in values if v not in choices]
    if bad:
        raise ConfigError(f"{flag(name)}: {bad} not in {tuple(choices)}")


def _check_uri(name: str, value: str) -> None:
    if in_ray_job() and is_relative_local(value):
        raise ConfigError(
            f"{flag(name)} {value!r} is a relative path, but this runs as a Ray job in Ray's copy of the "
            f"working directory ({os.getcwd()}), where it would point elsewhere: give an absolute path "
            "or an s3:// URI")


def validate_fields(cfg: Any) -> None:
    """Check every field against its declared ``min``/``max``/``choices``/``uri`` (ConfigError if not)."""
    for f in dataclasses.fields(cfg):
        value, meta = getattr(cfg, f.name), f.metadata
        if value is None:
            continue
        if "min" in meta or "max" in meta:
            _check_bounds(f.name, value, meta)
        if "choices" in meta:
            _check_choices(f.name, value, meta["choices"])
        if meta.get("uri") and isinstance(value, str):
            _check_uri(f.name, value)


# ------------------------------------------------------------------------------------------ pinning
def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON-able data (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def output_defining(cfg: Any) -> tuple[str, ...]:
    """Names of the fields that define the output: every field not declared ``runtime=True``."""
    return tuple(f.name for f in dataclasses.fields(cfg) if not f.metadata.get("runtime", False))


def normalise_uri(uri: str) -> str:
    """One spelling per location: absolute local paths, ``s3://bucket/prefix`` without a trailing slash."""
    return storage.resolve(uri).uri


def normalised_dict(cfg: Any) -> dict[str, Any]:
    """Every field, URIs normalised: what a manifest records about the run."""
    out = config_to_dict(cfg)
    for f in dataclasses.fields(cfg):
        if f.metadata.get("uri") and isinstance(out[f.name], str) and out[f.name]:
            out[f.name] = normalise_uri(out[f.name])
    return out


def pinned_dict(cfg: Any) -> dict[str, Any]:
    """What ``config.json`` holds: the output-defining fields and, as provenance, every URI (normalised).
    Runtime fields are not pinned (the manifest records them)."""
    keep = set(output_defining(cfg)) | {f.name for f in dataclasses.fields(cfg) if f.metadata.get("uri")}
    return {k: v for k, v in normalised_dict(cfg).items() if k in keep}


def _describe(diff: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{flag(k)} {json.dumps(a)} -> {json.dumps(b)}" for k, (a, b) in diff.items())


def pin_config(out: storage.Location, cfg: Any, *args: Any, what: str = "run",
               inputs: Mapping[str, Any] | None = None) -> None:
    """``pin_config(out, cfg, what, inputs=None)``: write ``config.json`` beside a stage's outputs, or
    refuse to mix runs.

    A rerun into the same output must agree on every output-defining field (see :func:`option`) and,
    when ``inputs`` is given (``{"input": storage.identity(...)}``), on the identity of the input files:
    an input changed in place is refused like a changed flag.  Runtime fields may change; the file then
    records the latest values.  Call it only after everything checkable has been checked.

    Transitional: the older form ``pin_config(out, config_dict, defining_fields, what)`` is still
    accepted until every stage passes its config object.
    """
    if isinstance(cfg, Mapping):
        current, defining = dict(cfg), tuple(args[0])
        what = args[1] if len(args) > 1 else what
    else:
        current, defining = pinned_dict(cfg), output_defining(cfg)
        what = args[0] if args else what
    if inputs is not None:
        current[INPUTS_KEY] = dict(inputs)
    loc = out.child("config.json")
    if storage.exists(loc):
        previous = storage.read_json(loc)
        _refuse_differences(out, what, previous, current, defining)
        if previous == current:
            return
    storage.write_json(loc, current)


def _refuse_differences(out: storage.Location, what: str, previous: dict, current: dict,
                        defining: Iterable[str]) -> None:
    diff = {k: (previous.get(k), current.get(k)) for k in defining if previous.get(k) != current.get(k)}
    if diff:
        raise ConfigMismatch(f"{out.uri} holds a {what} made with a different config ({_describe(diff)}); "
                             "use a new output")
    if INPUTS_KEY in current and previous.get(INPUTS_KEY) != current[INPUTS_KEY]:
        changed = [k for k in current[INPUTS_KEY]
                   if previous.get(INPUTS_KEY, {}).get(k) != current[INPUTS_KEY][k]]
        raise ConfigMismatch(
            f"{out.uri} holds a {what} of {', '.join(flag(k) for k in changed)} as it was before; the input "
            f"has changed since (files, sizes or modification times differ): use a new output")
