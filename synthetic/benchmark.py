"""A GeneCIS-format benchmark built from the synthetic world, with every template proved from ground truth.

``python -m synthetic benchmark --output URI --templates N --seed S`` writes (under ``--output``)::

    annotations/{task}.json        the four GeneCIS files, official record schema (GENECIS.md §4.1)
    vg/VG_100K_all/{image_id}.jpg  attribute-task images (VG-like; crops are given by instance_bbox)
    coco/val2017/{id:012d}.jpg     object-task images (COCO-like, used whole)
    gt/{task}.jsonl                ground truth of every template: the scenes behind every image
    config.json                    this run's BenchmarkConfig
    _benchmark.json                manifest (counts, oracle R@k per task, timings), written LAST

What a template is (its draw from the seed, its ids, its proof, its official record) lives in
``synthetic/templates.py``; this module runs the drawing in worker processes, renders and writes the
images and files, re-verifies them from the files and writes the manifest.  See ``synthetic/oracles.py``
for the formal validity definitions.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from cluster import stage
from cluster.cli import run_cli
from cluster.config import option, parse_config, pin_config, required, validate_fields
from cluster.progress import Progress, map_with_progress
from cluster.storage import (Location, ensure_dir, exists, read_bytes, read_json, require_writable, resolve,
                             write_bytes_atomic, write_many)
from evaluator.tasks import ANNOTATIONS_DIR, ATTRIBUTE_TASKS, COCO_DIR, GALLERY_SIZE, TASKS, VG_DIR
from synthetic.look import LookConfig
from synthetic.oracles import ALL_ATTRIBUTE_TYPES, TemplateError, check_template, oracle_ranks, recall_summary
from synthetic.scene import STREAM_SCENE, Scene
from synthetic.templates import (BENCH_ID_BASE, ID_SLOTS, STREAM_BENCH, TemplateSpec, annotation_record,
                                 build_template, image_ids, template_items, world_scene_keys)

__all__ = ["BenchmarkConfig", "verify_benchmark", "generate", "main"]

log = logging.getLogger("genecis_ray.synthetic.benchmark")
JSON_SEPARATORS = (",", ":")
MANIFEST = "_benchmark.json"


@dataclass(frozen=True)
class BenchmarkConfig(LookConfig):
    """Build a GeneCIS-format benchmark (4 tasks) from the synthetic world, every template proved.

    The look fields (LookConfig) must be the training world's values (python -m synthetic world)."""

    output: str = required("output root, local or s3://bucket/prefix (no byte depends on where it is)",
                           uri=True, runtime=True)
    templates: int = option(2000, "templates per task (GeneCIS: 2,000 / 2,112 / 1,960 / 1,960)", min=1,
                            max=BENCH_ID_BASE // ID_SLOTS - 1)
    seed: int = option(0, "template i of task t draws from default_rng((seed, stream(t), i, attempt))", min=0)
    tasks: tuple[str, ...] = option(TASKS, "tasks to build", choices=TASKS)
    attribute_types: tuple[str, ...] = option(
        ("color", "pattern"), "attribute types used as conditions; 'size' is off by default because the "
        "§4.2 crop scales with the box, so small and large crops look alike", choices=ALL_ATTRIBUTE_TYPES)
    attribute_context: int = option(2, "max other objects in an attribute-task image (0 = the object alone)",
                                    min=0)
    avoid_world_scenes: int = option(10_000, "redraw a template if any of its scenes equals (objects, cells, "
                                         "background) one of the training world's first N scenes (0: off; "
                                         "default: the world's default size)", min=0)
    world_seed: int = option(0, "seed of the training world for --avoid-world-scenes", min=0)
    workers: int = option(2, "processes rendering and writing (<= 1: in this process)", runtime=True, min=0)
    chunk: int = option(50, "templates per worker job", runtime=True, min=1)
    progress_interval_s: float = option(5.0, "seconds between progress lines", runtime=True, min=0.1)
    verify: bool = option(True, "re-run the proof and the oracles from the written files before the manifest",
                          runtime=True)

    def __post_init__(self) -> None:
        validate_fields(self)
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("need jpeg_quality in 1..100")
        self.template_spec()  # validates the world and the attribute choices

    def template_spec(self) -> TemplateSpec:
        """What the templates are drawn from (raises ValueError if the world leaves no room for them)."""
        return TemplateSpec(self.spec(), self.seed, self.attribute_types, self.attribute_context)


def image_relpath(task: str, image_id: int) -> str:
    if task in ATTRIBUTE_TASKS:
        return f"{VG_DIR}/{image_id}.jpg"
    return f"{COCO_DIR}/{image_id:012d}.jpg"


def dumps(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=JSON_SEPARATORS)


# ----------------------------------------------------------------------------------------- workers
@dataclass
class ChunkResult:
    task: str
    start: int
    records: list[dict]
    gt_lines: list[str]
    ranks: list[dict[str, int]]
    images: int = 0
    bytes: int = 0
    retries: int = 0


_WORKER_AVOID: dict[str, frozenset] = {}


def _init_worker(avoid: frozenset) -> None:
    _WORKER_AVOID["keys"] = avoid


def _write_images(root: Location, template: dict, texture: bool, quality: int) -> tuple[int, int]:
    from synthetic.render import encode_jpeg, render_scene  # lazy: rendering only where images are made

    writes = [(root.child(image_relpath(template["task"], item["image_id"])),
               encode_jpeg(render_scene(Scene.from_json(item["scene"]), texture), quality))
              for item in template_items(template)]
    write_many(writes)
    return len(writes), sum(len(data) for _, data in writes)


def build_chunk(cfg: BenchmarkConfig, task: str, start: int, stop: int, avoid: frozenset | None = None
                ) -> ChunkResult:
    """Templates ``[start, stop)`` of ``task``: draw, prove, render and write images; return records."""
    avoid = _WORKER_AVOID.get("keys", frozenset()) if avoid is None else avoid
    root, spec = resolve(cfg.output), cfg.template_spec()
    out = ChunkResult(task, start, [], [], [])
    for index in range(start, stop):
        template = build_template(task, spec, index, avoid)
        n, size = _write_images(root, template, cfg.texture, cfg.jpeg_quality)
        out.images, out.bytes, out.retries = out.images + n, out.bytes + size, out.retries + template["attempt"]
        out.records.append(annotation_record(template))
        out.gt_lines.append(dumps(template))
        out.ranks.append(oracle_ranks(template, cfg.seed))
    return out


def _jobs(cfg: BenchmarkConfig) -> list[tuple[str, int, int]]:
    return [(task, s, min(s + cfg.chunk, cfg.templates)) for task in cfg.tasks
            for s in range(0, cfg.templates, cfg.chunk)]


def _run_jobs(cfg: BenchmarkConfig, avoid: frozenset) -> list[ChunkResult]:
    """Every chunk, in job order, in this process or over a process pool (a progress line per interval)."""
    jobs = _jobs(cfg)
    prog = Progress("benchmark", cfg.templates * len(cfg.tasks), "templates", cfg.progress_interval_s,
                    emit=log.info)
    if cfg.workers <= 1:
        return map_with_progress(build_chunk, [(cfg, *job, avoid) for job in jobs], prog, _templates)
    ctx = multiprocessing.get_context("spawn")  # no fork: the parent may hold pyarrow/S3 threads
    with ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_init_worker, initargs=(avoid,)) as pool:
        return map_with_progress(build_chunk, [(cfg, *job) for job in jobs], prog, _templates, pool)


def _templates(chunk: ChunkResult) -> tuple[int, int]:
    return len(chunk.records), 0


# ----------------------------------------------------------------------------------------- outputs
def _write_task_files(root: Location, task: str, chunks: list[ChunkResult]) -> None:
    records = [r for c in chunks for r in c.records]
    write_bytes_atomic(root.child(ANNOTATIONS_DIR, f"{task}.json"), (dumps(records) + "\n").encode())
    lines = [line for c in chunks for line in c.gt_lines]
    write_bytes_atomic(root.child("gt", f"{task}.jsonl"), ("\n".join(lines) + "\n").encode())


def _task_summary(task: str, chunks: list[ChunkResult]) -> dict:
    conditions = {r["condition"] for c in chunks for r in c.records}
    return {"templates": sum(len(c.records) for c in chunks), "gallery_size": GALLERY_SIZE[task],
            "images": sum(c.images for c in chunks), "bytes": sum(c.bytes for c in chunks),
            "distinct_conditions": len(conditions), "redraws": sum(c.retries for c in chunks),
            "oracle": recall_summary([r for c in chunks for r in c.ranks])}


def _check_record(task: str, record: dict, template: dict) -> None:
    if record != annotation_record(template):
        raise TemplateError(f"{task} template {template['index']}: annotation differs from its ground truth")


def verify_benchmark(uri: str, seed: int | None = None) -> dict[str, dict]:
    """Re-run the proof from the files: annotations match GT, every template has exactly one valid
    candidate; returns per task the template count and the oracles' R@k recomputed from GT."""
    root = resolve(uri)
    seed = read_json(root.child("config.json"))["seed"] if seed is None else seed
    out = {}
    for task in TASKS:
        ann = root.child(ANNOTATIONS_DIR, f"{task}.json")
        if not exists(ann):
            continue
        records = json.loads(read_bytes(ann))
        lines = read_bytes(root.child("gt", f"{task}.jsonl")).decode().splitlines()
        if len(records) != len(lines):
            raise TemplateError(f"{task}: {len(records)} annotation records but {len(lines)} GT lines")
        ranks = []
        for record, line in zip(records, lines):
            template = json.loads(line)
            _check_record(task, record, template)
            check_template(task, template)
            ranks.append(oracle_ranks(template, seed))
        out[task] = {"templates": len(records), "oracle": recall_summary(ranks)}
    return out


def _prepare_output(cfg: BenchmarkConfig) -> tuple[Location, dict | None]:
    """(root, manifest of a finished benchmark or None): refuses a root holding a different benchmark."""
    root = require_writable(cfg.output)
    pin_config(root, cfg, "benchmark")
    finished = stage.finished(root, MANIFEST)
    if finished is None:
        for sub in (VG_DIR, COCO_DIR, ANNOTATIONS_DIR, "gt"):
            ensure_dir(root.child(*sub.split("/")))
    return root, finished


def generate(cfg: BenchmarkConfig) -> dict:
    """Build the benchmark under ``cfg.output``; returns the manifest (written last)."""
    t0 = time.perf_counter()
    root, finished = _prepare_output(cfg)
    if finished is not None:
        return finished
    avoid = world_scene_keys(cfg.spec(), cfg.world_seed, cfg.avoid_world_scenes)
    t1 = time.perf_counter()
    chunks = _run_jobs(cfg, avoid)
    by_task = {task: [c for c in chunks if c.task == task] for task in cfg.tasks}
    for task, task_chunks in by_task.items():
        _write_task_files(root, task, task_chunks)
    t2 = time.perf_counter()
    tasks = {task: _task_summary(task, c) for task, c in by_task.items()}
    verified = verify_benchmark(cfg.output, cfg.seed) if cfg.verify else {}
    for task, v in verified.items():
        if v["oracle"] != tasks[task]["oracle"]:
            raise TemplateError(f"{task}: oracles recomputed from files differ from generation")
    t3 = time.perf_counter()
    images = sum(t["images"] for t in tasks.values())
    manifest = {
        "format": "genecis-synthetic-benchmark/1", "seed": cfg.seed, "templates_per_task": cfg.templates,
        "layout": {"annotations": f"{ANNOTATIONS_DIR}/{{task}}.json", "vg_root": VG_DIR, "coco_root": COCO_DIR,
                   "ground_truth": "gt/{task}.jsonl"},
        "id_range": [BENCH_ID_BASE, image_ids(TASKS[-1], cfg.templates - 1)[-1]],
        "rng_streams": {**STREAM_BENCH, "training_world": STREAM_SCENE},
        "tasks": tasks, "images": images, "bytes": sum(t["bytes"] for t in tasks.values()),
        "verified_from_files": bool(cfg.verify),
        "timings": {"world_keys_s": round(t1 - t0, 3), "generate_s": round(t2 - t1, 3),
                    "verify_s": round(t3 - t2, 3), "images_per_s": round(images / max(t2 - t1, 1e-9), 1),
                    "workers": cfg.workers}}
    stage.write_manifest(root, manifest, MANIFEST)
    return manifest


def _print_summary(manifest: dict) -> None:
    print(f"{manifest['images']:,} images, {manifest['timings']['images_per_s']:,.0f} images/s "
          f"(generation {manifest['timings']['generate_s']:.1f}s)")
    print(f"{'task':18s} {'templates':>9s} {'full':>6s} {'image':>6s} {'text':>6s} {'img+txt':>7s}  (oracle R@1 %)")
    for task, t in manifest["tasks"].items():
        o = t["oracle"]
        print(f"{task:18s} {t['templates']:9d} {o['full']['R@1']:6.1f} {o['image_only']['R@1']:6.1f} "
              f"{o['text_only']['R@1']:6.1f} {o['image_plus_text']['R@1']:7.1f}")


def _main(argv: list[str]) -> int:
    cfg = parse_config(BenchmarkConfig, argv, prog="python -m synthetic benchmark")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _print_summary(generate(cfg))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m synthetic benchmark``: a known error (including a TemplateError) is one line, exit 2."""
    return run_cli(_main, argv, known=(TemplateError,))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
