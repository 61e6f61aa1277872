"""One run from captions to GeneCIS scores: ``python -m cluster pipeline --config FILE``.

The pipeline config (YAML or JSON; ``base: FILE`` overlays it on another) names a storage prefix and a run
name; every stage writes under
``{storage}/{name}/`` and the stages are wired to each other's outputs::

    world/       python -m synthetic world      (procedural image-caption corpus)
    mined/       python -m miner run            (its captions -> triplets)
    runs/clip/   python -m trainer clip         (CLIP pretraining on the world's captions)
    runs/combiner/ python -m trainer combiner   (the Combiner on the mined triplets)
    benchmark/   python -m synthetic benchmark  (a GeneCIS-format benchmark, another seed)
    eval/        python -m evaluator genecis    (all heads; results.json, results.md, plots)

A stage whose section is absent or ``null`` does not run.  Real data replaces a procedural stage: with
``mine.input`` set (a caption corpus such as CC3M) there is no ``world`` stage, and with
``evaluate.annotations`` set (the official GeneCIS files, with ``coco_root``/``vg_root``) there is no
``benchmark`` stage, even when the config (or an overlay of the demo) has their sections.  A field a later
stage would take from a stage that does not run (``combiner.images`` without a world, say) must then be set
in its section.  Any wiring field a section sets itself wins over the derived one.

A stage whose output is complete (its manifest exists) is skipped without starting Ray, after checking that
the output was made with the same output-defining config (a changed value is refused, as the stage itself
would refuse it, instead of being silently skipped); so a rerun after a failure continues where it stopped,
and a rerun of a finished run writes nothing.  Each stage stays runnable alone with the command above.  The
stage modules are imported only when their stage runs.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from cluster import storage
from cluster.config import ConfigError, ConfigMismatch, output_defining, pinned_dict

log = logging.getLogger("genecis_ray.pipeline")

STAGES = ("world", "mine", "clip", "combiner", "benchmark", "evaluate")
# A procedural stage does not run when a later section names the real data it would stand in for.
REPLACED_BY = {"world": ("mine", "input"), "benchmark": ("evaluate", "annotations")}


@dataclass(frozen=True)
class Stage:
    name: str
    folder: str  # under {storage}/{name}/
    done_marker: str  # written last by the stage: its presence means "complete"
    config_class: Callable[[], type]
    wiring: Callable[["PipelineRun"], dict[str, Any]]  # derived fields (a section's own values win)
    run: Callable[[Any], dict]


@dataclass(frozen=True)
class PipelineRun:
    """A parsed pipeline config with its storage root resolved."""

    storage: str
    name: str
    seed: int
    sections: dict[str, dict | None]
    stages: tuple[str, ...] = ()  # the stages that run, in order (plan_stages)
    dropped: tuple[tuple[str, str], ...] = ()  # (stage, why) for sections present that do not run

    @property
    def root(self) -> str:
        return storage.join_uri(self.storage, self.name)

    def path(self, *parts: str) -> str:
        return storage.join_uri(self.root, *parts)

    def model(self) -> dict[str, Any]:
        """The backbone every stage shares: the clip section's, else the combiner's, else tiny."""
        for name in ("clip", "combiner", "evaluate"):
            sec = self.sections.get(name) or {}
            if "model" in sec:
                return {"model": sec["model"], **({"pretrained": sec["pretrained"]} if sec.get("pretrained") else {})}
        return {"model": "tiny"}


# ------------------------------------------------------------------------------------ stage table
def _world_cls():
    from synthetic.world import WorldConfig
    return WorldConfig


def _miner_cls():
    from miner.config import MinerConfig
    return MinerConfig


def _clip_cls():
    from trainer.config import ClipConfig
    return ClipConfig


def _combiner_cls():
    from trainer.config import CombinerConfig
    return CombinerConfig


def _benchmark_cls():
    from synthetic.benchmark import BenchmarkConfig
    return BenchmarkConfig


def _eval_cls():
    from evaluator.config import EvalConfig
    return EvalConfig


def _run_world(cfg):
    from synthetic.world import run_world
    return run_world(cfg)


def _run_miner(cfg):
    from miner.pipeline import run
    return run(cfg)


def _run_clip(cfg):
    from trainer.train import run
    return run(cfg, "clip")


def _run_combiner(cfg):
    from trainer.train import run
    return run(cfg, "combiner")


def _run_benchmark(cfg):
    from synthetic.benchmark import generate
    return generate(cfg)


def _run_eval(cfg):
    from evaluator.genecis import run
    return run(cfg)


def _has(run: PipelineRun, stage: str) -> bool:
    """Whether ``stage`` runs in this pipeline (its output can be wired into a later stage)."""
    return stage in run.stages


def _world_images(run: PipelineRun) -> int:
    return int((run.sections.get("world") or {}).get("images", 0))


def _from(run: PipelineRun, stage: str, **fields: str) -> dict[str, str]:
    """Wiring taken from ``stage``'s output, only when that stage runs (else the section must set it)."""
    return fields if _has(run, stage) else {}


STAGE_TABLE: dict[str, Stage] = {s.name: s for s in (
    Stage("world", "world", "_world.json", _world_cls,
          lambda r: {"output": r.path("world"), "seed": r.seed}, _run_world),
    Stage("mine", "mined", "_manifest.json", _miner_cls,
          lambda r: {"output": r.path("mined"), **_from(r, "world", input=r.path("world", "captions.tsv"))},
          _run_miner),
    Stage("clip", "runs/clip", "summary.json", _clip_cls,
          lambda r: {"storage_path": r.path("runs"), "name": "clip", **_from(r, "world", captions=r.path("world")),
                     **r.model()}, _run_clip),
    Stage("combiner", "runs/combiner", "summary.json", _combiner_cls,
          lambda r: {"storage_path": r.path("runs"), "name": "combiner",
                     **_from(r, "mine", triplets=r.path("mined", "triplets", "train")),
                     **_from(r, "world", images=r.path("world")),
                     **({"backbone": r.path("runs", "clip")} if _has(r, "clip") else r.model())},
          _run_combiner),
    Stage("benchmark", "benchmark", "_benchmark.json", _benchmark_cls,
          lambda r: {"output": r.path("benchmark"), "seed": r.seed + 1, "world_seed": r.seed,
                     **({"avoid_world_scenes": _world_images(r)} if _has(r, "world") else {})},
          _run_benchmark),
    Stage("evaluate", "eval", "results.json", _eval_cls,
          lambda r: {"output": r.path("eval"), "model": r.model()["model"],
                     **_from(r, "benchmark", benchmark=r.path("benchmark")),
                     **_from(r, "combiner", checkpoint=r.path("runs", "combiner"))},
          _run_eval),
)}


# ------------------------------------------------------------------------------------- config
def load_config_file(uri: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A YAML or JSON pipeline config (local or s3://).

    ``base: OTHER.yaml`` (relative to this file, or absolute / s3://) starts from another config and
    overlays this one on it, section by section (a key set to null removes the base's section)."""
    loc = storage.require_input(uri)
    if loc.uri in _seen:
        raise ConfigError(f"{uri}: 'base' configs form a cycle ({' -> '.join(_seen + (loc.uri,))})")
    text = storage.read_bytes(loc).decode()
    if uri.endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{uri}: a pipeline config is a mapping with storage, name and stage sections")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{uri}: 'base' must name another pipeline config file")
    parent = loc.uri.rsplit("/", 1)[0]
    base_uri = base if ("://" in base or base.startswith("/")) else storage.join_uri(parent, base)
    return _overlay(load_config_file(base_uri, _seen + (loc.uri,)), data)


def _overlay(base: dict, extra: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _overlay(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def plan(data: dict[str, Any], storage_uri: str | None = None, name: str | None = None,
         seed: int | None = None, quick: bool = False) -> PipelineRun:
    """Resolve a pipeline config: the ``quick`` overlay, command-line overrides, unknown keys refused."""
    data = _overlay(data, data.get("quick") or {}) if quick else dict(data)
    unknown = set(data) - {"storage", "name", "seed", "quick", *STAGES}
    if unknown:
        raise ConfigError(f"unknown pipeline keys {sorted(unknown)}; expected storage, name, seed, quick, "
                          f"and stage sections {STAGES}")
    seed = int(data.get("seed", 0) if seed is None else seed)
    store = storage_uri or data.get("storage")
    if not store:
        raise ConfigError("the pipeline needs a storage prefix (config key 'storage' or --storage)")
    run_name = name or str(data.get("name", "run")).format(seed=seed, quick="-quick" if quick else "")
    sections = {s: data.get(s) for s in STAGES}
    for s, sec in sections.items():
        if sec is not None and not isinstance(sec, dict):
            raise ConfigError(f"pipeline section {s!r} must be a mapping of its stage's options (or null)")
    stages, dropped = plan_stages(sections)
    return PipelineRun(storage=_absolute(store), name=run_name, seed=seed, sections=sections,
                       stages=stages, dropped=dropped)


def plan_stages(sections: Mapping[str, dict | None]) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The stages that run, in order, and why a present section does not (real data replaces it)."""
    stages, dropped = [], []
    for name in STAGES:
        if sections.get(name) is None:
            continue
        by = REPLACED_BY.get(name)
        if by and (sections.get(by[0]) or {}).get(by[1]):
            dropped.append((name, f"{by[0]}.{by[1]} is given"))
            continue
        stages.append(name)
    return tuple(stages), tuple(dropped)


def _absolute(uri: str) -> str:
    return uri if "://" in uri else storage.resolve(uri).uri


def stage_config(run: PipelineRun, stage: Stage):
    """The stage's typed config: derived wiring, then the section's own values (which win)."""
    cls = stage.config_class()
    section = run.sections[stage.name] or {}
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(section) - fields
    if unknown:
        raise ConfigError(f"pipeline section {stage.name!r}: unknown options {sorted(unknown)} for {cls.__name__}")
    values = {k: v for k, v in stage.wiring(run).items() if k in fields}
    values.update(section)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                    or f.metadata.get("required"))]
    if missing:
        raise ConfigError(f"pipeline section {stage.name!r} needs {', '.join(missing)}: no stage of this "
                          f"pipeline provides {'it' if len(missing) == 1 else 'them'}, so set "
                          f"{'it' if len(missing) == 1 else 'them'} in the section")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"pipeline section {stage.name!r}: {err}") from err


def is_complete(run: PipelineRun, stage: Stage) -> bool:
    return storage.exists(storage.resolve(run.path(stage.folder, stage.done_marker)))


def check_pinned(run: PipelineRun, stage: Stage, cfg: Any) -> None:
    """Refuse a stage output (complete or not) pinned with other output-defining values than ``cfg``.

    The stage itself refuses such a rerun when it runs; checking here, for every stage before any runs,
    also covers complete stages, which are skipped without running.  Input identities are left to the
    stage (a complete stage's inputs are the earlier stages' outputs, which a rerun does not change)."""
    loc = storage.resolve(run.path(stage.folder, "config.json"))
    if not storage.exists(loc):
        return
    previous, current = storage.read_json(loc), pinned_dict(cfg)
    diff = [k for k in output_defining(cfg) if previous.get(k) != current.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in diff)
        raise ConfigMismatch(f"{run.path(stage.folder)} holds a {stage.name} stage made with a different config "
                             f"({shown}); use another --name or --storage for the new config")


# ------------------------------------------------------------------------------------------- run
def run_pipeline(run: PipelineRun, only: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run every planned stage in order (skipping complete ones); returns a summary of the run.

    ``{run}/pipeline.json`` records where each stage went and how long it took; a rerun that runs no
    stage leaves it (and every other object) untouched."""
    stages = [STAGE_TABLE[s] for s in run.stages if not only or s in only]
    for name, why in run.dropped:
        log.info("[pipeline] %s: not run (%s)", name, why)
    configs = {s.name: stage_config(run, s) for s in stages}  # every section validated before any work
    for stage in stages:
        check_pinned(run, stage, configs[stage.name])
    summary: dict[str, Any] = {"root": run.root, "stages": {}}
    t_all = time.monotonic()
    for n, stage in enumerate(stages, 1):
        where = run.path(stage.folder)
        if is_complete(run, stage):
            log.info("[pipeline] stage %d/%d %s: complete in %s, skipped", n, len(stages), stage.name, where)
            summary["stages"][stage.name] = {"output": where, "skipped": True}
            continue
        log.info("[pipeline] stage %d/%d %s -> %s", n, len(stages), stage.name, where)
        t0 = time.monotonic()
        stage.run(configs[stage.name])
        if not is_complete(run, stage):
            raise RuntimeError(f"stage {stage.name} returned but {stage.done_marker} is missing under {where}")
        took = round(time.monotonic() - t0, 1)
        log.info("[pipeline] stage %d/%d %s done in %.1f s", n, len(stages), stage.name, took)
        summary["stages"][stage.name] = {"output": where, "seconds": took}
    summary["seconds"] = round(time.monotonic() - t_all, 1)
    if "evaluate" in summary["stages"]:  # only when this invocation ran (or skipped) the evaluate stage
        summary["results"] = storage.join_uri(run.path("eval"), "results.json")
    _record(run, summary)
    return summary


def _record(run: PipelineRun, summary: dict[str, Any]) -> None:
    """Write ``pipeline.json``: this invocation's stages merged over the previous record (a skipped stage
    keeps the entry of the run that made it); nothing is written when no stage ran and a record exists."""
    loc = storage.resolve(run.path("pipeline.json"))
    ran = any(not info.get("skipped") for info in summary["stages"].values())
    previous = storage.read_json(loc) if storage.exists(loc) else None
    if previous is not None and not ran:
        return
    stages = dict((previous or {}).get("stages", {}))
    for name, info in summary["stages"].items():
        if not (info.get("skipped") and name in stages):
            stages[name] = info
    storage.write_json(loc, {**(previous or {}), **summary, "stages": stages})


def results_table(results: dict) -> str:
    """The R@1 table of a results.json (heads x tasks + average), for the terminal."""
    heads = results.get("heads", {})
    tasks = sorted({t for h in heads.values() for t in h if isinstance(h[t], dict)})
    lines = ["| head | " + " | ".join(tasks) + " | average R@1 |",
             "|---|" + "---|" * (len(tasks) + 1)]
    for head, res in heads.items():
        cells = [f"{res[t]['r1']:.1f}" if t in res else "-" for t in tasks]
        lines.append(f"| {head} | " + " | ".join(cells) + f" | {res.get('average_r1', float('nan')):.1f} |")
    return "\n".join(lines)


def _shutdown_ray() -> None:
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cluster pipeline", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="pipeline config, YAML or JSON (local or s3://)")
    p.add_argument("--storage", help="storage prefix (overrides the config's 'storage')")
    p.add_argument("--name", help="run name (overrides the config's 'name')")
    p.add_argument("--seed", type=int, help="world seed S (benchmark seed S+1); overrides the config's 'seed'")
    p.add_argument("--quick", action="store_true", help="apply the config's 'quick' overlay (a smoke run)")
    p.add_argument("--stages", default="", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    only = tuple(s for s in args.stages.split(",") if s)
    if set(only) - set(STAGES):
        raise ConfigError(f"--stages {args.stages!r}: unknown stages {sorted(set(only) - set(STAGES))}")
    run = plan(load_config_file(args.config), args.storage, args.name, args.seed, args.quick)
    summary = run_pipeline(run, only)
    _shutdown_ray()  # Ray's own exit chatter must come before our summary, whose last line is the results path
    print(f"\nrun folder: {summary['root']}")
    for stage, info in summary["stages"].items():
        print(f"  {stage:<10} {info['output']}" + ("  (already complete)" if info.get("skipped") else
                                                   f"  ({info['seconds']:.0f} s)"))
    if "results" in summary:
        results = storage.read_json(storage.resolve(summary["results"]))
        print("\n" + results_table(results) + "\n")
        print(summary["results"])
    return 0
