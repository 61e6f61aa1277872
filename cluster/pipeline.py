"""One run from captions to GeneCIS scores: ``python -m cluster pipeline --config FILE``.

The pipeline config (YAML or JSON) names a storage prefix and a run name; every stage writes under
``{storage}/{name}/`` and the stages are wired to each other's outputs::

    world/       python -m synthetic world      (procedural image-caption corpus)
    mined/       python -m miner run            (its captions -> triplets)
    runs/clip/   python -m trainer clip         (CLIP pretraining on the world's captions)
    runs/combiner/ python -m trainer combiner   (the Combiner on the mined triplets)
    benchmark/   python -m synthetic benchmark  (a GeneCIS-format benchmark, another seed)
    eval/        python -m evaluator genecis    (all heads; results.json, results.md, plots)

A stage whose section is absent or ``null`` does not run (a cluster config leaves out the world and the
procedural benchmark and points ``mine.input`` / ``evaluate.annotations`` at real data).  Any wiring field a
section sets itself wins over the derived one.  A stage whose output is complete (its manifest exists) is
skipped without starting Ray, so a rerun after a failure continues where it stopped; each stage stays
runnable alone with the command above.  The stage modules are imported only when their stage runs.
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
from cluster.config import ConfigError

log = logging.getLogger("genecis_ray.pipeline")

STAGES = ("world", "mine", "clip", "combiner", "benchmark", "evaluate")


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


def _has(run: PipelineRun, section: str) -> bool:
    return run.sections.get(section) is not None


def _world_images(run: PipelineRun) -> int:
    return int((run.sections.get("world") or {}).get("images", 0))


STAGE_TABLE: dict[str, Stage] = {s.name: s for s in (
    Stage("world", "world", "_world.json", _world_cls,
          lambda r: {"output": r.path("world"), "seed": r.seed}, _run_world),
    Stage("mine", "mined", "_manifest.json", _miner_cls,
          lambda r: {"input": r.path("world", "captions.tsv"), "output": r.path("mined")}, _run_miner),
    Stage("clip", "runs/clip", "summary.json", _clip_cls,
          lambda r: {"storage_path": r.path("runs"), "name": "clip", "captions": r.path("world"),
                     **r.model()}, _run_clip),
    Stage("combiner", "runs/combiner", "summary.json", _combiner_cls,
          lambda r: {"storage_path": r.path("runs"), "name": "combiner",
                     "triplets": r.path("mined", "triplets", "train"), "images": r.path("world"),
                     **({"backbone": r.path("runs", "clip")} if _has(r, "clip") else r.model())},
          _run_combiner),
    Stage("benchmark", "benchmark", "_benchmark.json", _benchmark_cls,
          lambda r: {"output": r.path("benchmark"), "seed": r.seed + 1, "world_seed": r.seed,
                     **({"avoid_world_scenes": _world_images(r)} if _has(r, "world") else {})},
          _run_benchmark),
    Stage("evaluate", "eval", "results.json", _eval_cls,
          lambda r: {"output": r.path("eval"), "model": r.model()["model"],
                     **({"benchmark": r.path("benchmark")} if _has(r, "benchmark") else {}),
                     **({"checkpoint": r.path("runs", "combiner")} if _has(r, "combiner") else {})},
          _run_eval),
)}


# ------------------------------------------------------------------------------------- config
def load_config_file(uri: str) -> dict[str, Any]:
    """A YAML or JSON pipeline config (local or s3://)."""
    loc = storage.require_input(uri)
    text = storage.read_bytes(loc).decode()
    if uri.endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{uri}: a pipeline config is a mapping with storage, name and stage sections")
    return data


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
    return PipelineRun(storage=_absolute(store), name=run_name, seed=seed, sections=sections)


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
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"pipeline section {stage.name!r}: {err}") from err


def is_complete(run: PipelineRun, stage: Stage) -> bool:
    return storage.exists(storage.resolve(run.path(stage.folder, stage.done_marker)))


# ------------------------------------------------------------------------------------------- run
def run_pipeline(run: PipelineRun, only: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run every configured stage in order (skipping complete ones); returns a summary of the run."""
    stages = [STAGE_TABLE[s] for s in STAGES if run.sections.get(s) is not None and (not only or s in only)]
    configs = {s.name: stage_config(run, s) for s in stages}  # every section validated before any work
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
    if "evaluate" in configs:
        summary["results"] = storage.join_uri(run.path("eval"), "results.json")
    storage.write_json(storage.resolve(run.path("pipeline.json")), summary)
    return summary


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
