"""One typed config per stage, which is also its CLI.

A stage's config is a frozen dataclass whose fields carry ``metadata={"help": ...}`` (and optionally
``"choices"``).  :func:`build_parser` turns it into an ``argparse`` parser (``--num-triplets`` for
``num_triplets``), :func:`parse_config` turns argv back into the dataclass, and :func:`config_to_dict`
gives the JSON written beside the stage's outputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Iterable, Sequence, TypeVar

from cluster import storage

T = TypeVar("T")


def option(default: Any, help: str, **extra: Any) -> Any:
    """A config field with a default and its ``--help`` text (extra metadata: ``choices``)."""
    return dataclasses.field(default=default, metadata={"help": help, **extra})


def _flag(name: str) -> str:
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


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, tp: Any) -> None:
    inner, _ = _base_type(tp)
    kwargs: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help", "")}
    default = f.default
    if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    required = default is dataclasses.MISSING or f.metadata.get("required", False)
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
        kwargs["help"] += f" (default: {default})"
    if typing.get_origin(inner) is tuple:
        kwargs["type"] = typing.get_args(inner)[0]
        kwargs["nargs"] = "+"
    elif inner is bool:
        kwargs["type"] = _bool
        kwargs["metavar"] = "BOOL"
    else:
        kwargs["type"] = inner
    if "choices" in f.metadata:
        kwargs["choices"] = f.metadata["choices"]
    parser.add_argument(_flag(f.name), **kwargs)


def build_parser(cls: type, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag`` per dataclass field, typed and documented."""
    parser = argparse.ArgumentParser(prog=prog, description=description or (cls.__doc__ or "").strip())
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
    """Parse argv into the config dataclass (``--help`` prints every field)."""
    return config_from_namespace(cls, build_parser(cls, prog=prog).parse_args(argv))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON-able data (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


class ConfigMismatch(RuntimeError):
    """An output already holds a run made with a different output-defining config."""


def pin_config(out: storage.Location, current: dict[str, Any], defining: Iterable[str], what: str = "run") -> None:
    """Write ``config.json`` beside a stage's outputs, or refuse to mix runs: a rerun into the same
    output must agree on every output-defining field (other fields, e.g. worker counts, may change)."""
    loc = out.child("config.json")
    if storage.exists(loc):
        previous = storage.read_json(loc)
        diff = {k: (previous.get(k), current.get(k)) for k in defining if previous.get(k) != current.get(k)}
        if diff:
            raise ConfigMismatch(f"{out.uri} holds a {what} made with a different config {diff}; use a new output")
        if previous == current:
            return
    storage.write_json(loc, current)
