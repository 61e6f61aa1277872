"""A GeneCIS-format benchmark built from the synthetic world, with every template proved from ground truth.

``python -m synthetic benchmark --output URI --templates N --seed S`` writes (under ``--output``)::

    annotations/{task}.json        the four GeneCIS files, official record schema (GENECIS.md §4.1)
    vg/VG_100K_all/{image_id}.jpg  attribute-task images (VG-like; crops are given by instance_bbox)
    coco/val2017/{id:012d}.jpg     object-task images (COCO-like, used whole)
    gt/{task}.jsonl                ground truth of every template: the scenes behind every image
    config.json                    this run's BenchmarkConfig
    _benchmark.json                manifest (counts, oracle R@k per task, timings), written LAST

Template ``i`` of a task is a pure function of ``(seed, task, i)``: its RNG is
``np.random.default_rng((seed, STREAM_BENCH[task], i, attempt))`` and its image ids are
``BENCH_ID_BASE * (1 + task index) + 16 * i + slot``, so the training world (``sample_scene``, stream
``scene.STREAM_SCENE``, ids from 0) never shares a stream or an id with it.  Every template is checked by
:func:`synthetic.oracles.check_template` (exactly one valid candidate, the target) before it is written.
See ``synthetic/oracles.py`` for the formal validity definitions.
"""
from __future__ import annotations

import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from cluster.config import ConfigMismatch, config_to_dict, option, parse_config, pin_config
from cluster.storage import (Location, StorageError, ensure_dir, exists, read_bytes, read_json, require_writable,
                             resolve, write_bytes_atomic, write_many)
from synthetic.look import LookConfig
from synthetic.oracles import (ALL_ATTRIBUTE_TYPES, ATTRIBUTE_TASKS, GALLERY_SIZE, OBJECT_TASKS, TASKS,
                               TemplateError, check_template, is_valid, oracle_ranks, recall_summary)
from synthetic import scene as sc
from synthetic.scene import STREAM_SCENE, Obj, Scene, WorldSpec, make_object, sample_scene, with_objects

__all__ = ["BenchmarkConfig", "TASKS", "GALLERY_SIZE", "TemplateError", "check_template", "is_valid",
           "build_template", "annotation_record", "image_ids", "verify_benchmark", "generate", "main"]

STREAM_BENCH: dict[str, int] = {"focus_attribute": 101, "change_attribute": 102, "focus_object": 103,
                                "change_object": 104}
BENCH_ID_BASE = 1_000_000_000  # benchmark image ids are >= this; training scene ids are below
ID_SLOTS = 16  # ids per template: reference, target, up to 14 distractors
MAX_ATTEMPTS = 64
VG_DIR, COCO_DIR = "vg/VG_100K_all", "coco/val2017"
P_KEEP_OTHER = 0.7  # focus attribute: a distractor keeps each non-focused reference attribute w.p. this
N_NEAR_COPY, N_WRONG_VALUE, N_OTHER_KIND = 3, 4, 7  # change attribute distractors (14)
N_SIMILAR, N_DISSIMILAR = 9, 5  # object-task slots 0-8 and 9-13
JSON_SEPARATORS = (",", ":")



@dataclass(frozen=True)
class BenchmarkConfig(LookConfig):
    """Build a GeneCIS-format benchmark (4 tasks) from the synthetic world, every template proved.

    The look fields (LookConfig) must be the training world's values (python -m synthetic world)."""

    output: str = field(metadata={"help": "output root, local or s3://bucket/prefix"})
    templates: int = option(2000, "templates per task (GeneCIS: 2,000 / 2,112 / 1,960 / 1,960)")
    seed: int = option(0, "template i of task t draws from default_rng((seed, stream(t), i, attempt))")
    tasks: tuple[str, ...] = option(TASKS, "tasks to build", choices=TASKS)
    attribute_types: tuple[str, ...] = option(
        ("color", "pattern"), "attribute types used as conditions; 'size' is off by default because the "
        "§4.2 crop scales with the box, so small and large crops look alike", choices=ALL_ATTRIBUTE_TYPES)
    attribute_context: int = option(2, "max other objects in an attribute-task image (0 = the object alone)")
    avoid_world_scenes: int = option(10_000, "redraw a template if any of its scenes equals (objects, cells, "
                                         "background) one of the training world's first N scenes (0: off; "
                                         "default: the world's default size)")
    world_seed: int = option(0, "seed of the training world for --avoid-world-scenes")
    workers: int = option(2, "processes rendering and writing (<= 1: in this process)")
    chunk: int = option(50, "templates per worker job")
    verify: bool = option(True, "re-run the proof and the oracles from the written files before the manifest")

    def __post_init__(self) -> None:
        if self.templates < 1 or self.templates * ID_SLOTS >= BENCH_ID_BASE:
            raise ValueError(f"templates must be in [1, {BENCH_ID_BASE // ID_SLOTS})")
        if not self.tasks or set(self.tasks) - set(TASKS):
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}")
        if not self.attribute_types or set(self.attribute_types) - set(ALL_ATTRIBUTE_TYPES):
            raise ValueError(f"attribute_types must be a non-empty subset of {ALL_ATTRIBUTE_TYPES}")
        if self.chunk < 1 or not 1 <= self.jpeg_quality <= 100:
            raise ValueError("need chunk >= 1 and jpeg_quality in 1..100")
        self._check_world()

    def _check_world(self) -> None:
        """The world must leave room for every construction (see the builders below)."""
        spec = self.spec()  # validates grid / object counts
        if spec.max_objects < 3 or spec.min_objects > spec.max_objects - 1:
            raise ValueError("the object tasks need max_objects >= 3 and min_objects <= max_objects - 1")
        if len(spec.shapes) < 2 * spec.max_objects - 1 or len(spec.colours) < 2:
            raise ValueError(f"need at least {2 * spec.max_objects - 1} shapes and 2 colours")
        if not 0 <= self.attribute_context <= min(len(spec.shapes) - 1, spec.grid ** 2 - 1):
            raise ValueError("attribute_context must fit the other shapes and the free cells")

    @staticmethod
    def runtime_fields() -> tuple[str, ...]:
        """Fields that change how, not what, is written (kept out of config.json)."""
        return ("workers", "chunk", "verify")

    def output_config(self) -> dict:
        return {k: v for k, v in config_to_dict(self).items() if k not in self.runtime_fields()}

    def output_defining_fields(self) -> tuple[str, ...]:
        return tuple(k for k in self.output_config() if k != "output")


# ----------------------------------------------------------------------------------------- ids
def image_ids(task: str, index: int) -> list[int]:
    """Image ids of template ``index``: slot 0 reference, 1 target, 2.. distractors."""
    base = BENCH_ID_BASE * (1 + TASKS.index(task)) + ID_SLOTS * index
    return [base + slot for slot in range(ID_SLOTS)]


def image_relpath(task: str, image_id: int) -> str:
    if task in ATTRIBUTE_TASKS:
        return f"{VG_DIR}/{image_id}.jpg"
    return f"{COCO_DIR}/{image_id:012d}.jpg"


# ----------------------------------------------------------------------------------------- sampling helpers
def _pick(rng: np.random.Generator, seq: Sequence) -> object:
    return seq[int(rng.integers(len(seq)))]


def _values(spec: WorldSpec, attribute_type: str) -> tuple[str, ...]:
    return {"color": spec.colours, "size": spec.sizes, "pattern": spec.patterns}[attribute_type]


def _other_value(rng: np.random.Generator, spec: WorldSpec, attribute_type: str, exclude: set[str]) -> str:
    return str(_pick(rng, [v for v in _values(spec, attribute_type) if v not in exclude]))


def _random_attrs(rng: np.random.Generator, spec: WorldSpec, shape: str | None = None) -> dict[str, str]:
    attrs = {"shape": shape or str(_pick(rng, spec.shapes))}
    for t in ALL_ATTRIBUTE_TYPES:
        attrs[t] = str(_pick(rng, _values(spec, t)))
    return attrs


def _cells(rng: np.random.Generator, spec: WorldSpec, n: int, exclude: set[tuple[int, int]] = frozenset()
           ) -> list[tuple[int, int]]:
    pool = [(r, c) for r in range(spec.grid) for c in range(spec.grid) if (r, c) not in exclude]
    return [pool[int(k)] for k in rng.choice(len(pool), size=n, replace=False)]


def _fresh_shapes(rng: np.random.Generator, spec: WorldSpec, exclude: set[str], n: int) -> list[str]:
    pool = [s for s in spec.shapes if s not in exclude]
    return [pool[int(k)] for k in rng.choice(len(pool), size=n, replace=False)]


def _obj(rng: np.random.Generator, spec: WorldSpec, attrs: dict[str, str], cell: tuple[int, int]) -> Obj:
    return make_object(attrs["shape"], attrs["color"], attrs["size"], attrs["pattern"], cell, spec, rng)


def _attrs_of(o: Obj) -> dict[str, str]:
    return {"shape": o.shape, "color": o.colour, "size": o.size, "pattern": o.pattern}


def _redraw(rng: np.random.Generator, spec: WorldSpec, o: Obj, **changes: str) -> Obj:
    """The same object re-placed in its cell with fresh jitter, optionally with changed attributes."""
    return _obj(rng, spec, {**_attrs_of(o), **changes}, o.cell)


def _scene_item(image_id: int, role: str, spec: WorldSpec, background: str, objs: list[Obj]) -> dict:
    scene = with_objects(image_id, spec, background, objs)
    return {"image_id": image_id, "role": role, "instance": None, "scene": scene.to_json()}


# ----------------------------------------------------------------------------------------- attribute tasks
def _crop_item(rng: np.random.Generator, spec: WorldSpec, image_id: int, role: str, attrs: dict[str, str],
               max_context: int) -> dict:
    """An image whose instance object has ``attrs``, plus 0..max_context objects of other shapes."""
    n_ctx = int(rng.integers(0, max_context + 1))
    cells = _cells(rng, spec, 1 + n_ctx)
    objs = [_obj(rng, spec, attrs, cells[0])]
    for shape, cell in zip(_fresh_shapes(rng, spec, {attrs["shape"]}, n_ctx), cells[1:]):
        objs.append(_obj(rng, spec, _random_attrs(rng, spec, shape), cell))
    item = _scene_item(image_id, role, spec, str(_pick(rng, spec.backgrounds)), objs)
    item["instance"] = next(k for k, o in enumerate(item["scene"]["objects"]) if tuple(o["cell"]) == cells[0])
    return item


def _focus_attribute_attrs(rng: np.random.Generator, spec: WorldSpec, t: str
                           ) -> tuple[dict[str, str], dict[str, str], list[tuple[str, dict[str, str]]]]:
    """Reference, target (same T, every other attribute different) and 9 distractors (other T value,
    keeping each other attribute of the reference w.p. P_KEEP_OTHER and at least one)."""
    ref = _random_attrs(rng, spec)
    others = [u for u in ALL_ATTRIBUTE_TYPES if u != t]
    target = {**ref, **{u: _other_value(rng, spec, u, {ref[u]}) for u in others}}
    wrong = [v for v in _values(spec, t) if v != ref[t]]
    order = rng.permutation(len(wrong))
    distractors = []
    for k in range(GALLERY_SIZE["focus_attribute"] - 1):
        keep = rng.random(len(others)) < P_KEEP_OTHER
        if not keep.any():
            keep[int(rng.integers(len(others)))] = True
        d = {**ref, t: wrong[int(order[k % len(wrong)])]}
        d.update({u: _other_value(rng, spec, u, {ref[u]}) for u, kp in zip(others, keep) if not kp})
        distractors.append(("other_value", d))
    return ref, target, distractors


def _change_attribute_attrs(rng: np.random.Generator, spec: WorldSpec, t: str
                            ) -> tuple[dict[str, str], dict[str, str], str, list[tuple[str, dict[str, str]]]]:
    """Reference, target (the reference with T := v), v, and 14 distractors: near-copies of the
    reference and same-kind wrong values (image trap), v on other kinds (text trap)."""
    ref = _random_attrs(rng, spec)
    value = _other_value(rng, spec, t, {ref[t]})
    target = {**ref, t: value}
    others = [u for u in ALL_ATTRIBUTE_TYPES if u != t]

    def shuffle_others(d: dict[str, str]) -> dict[str, str]:
        return {**d, **{u: str(_pick(rng, _values(spec, u))) for u in others if rng.random() < 0.5}}

    distractors = [("near_copy", dict(ref)) for _ in range(N_NEAR_COPY)]
    distractors += [("wrong_value", shuffle_others({**ref, t: _other_value(rng, spec, t, {value})}))
                    for _ in range(N_WRONG_VALUE)]
    for shape in rng.choice([s for s in spec.shapes if s != ref["shape"]], size=N_OTHER_KIND):
        distractors.append(("other_kind", shuffle_others({**ref, "shape": str(shape), t: value})))
    return ref, target, value, [distractors[int(k)] for k in rng.permutation(len(distractors))]


def _attribute_template(task: str, rng: np.random.Generator, cfg: BenchmarkConfig, index: int) -> dict:
    spec, ids = cfg.spec(), image_ids(task, index)
    t = cfg.attribute_types[index % len(cfg.attribute_types)]  # types balanced, as GeneCIS
    if task == "focus_attribute":
        ref, target, distractors = _focus_attribute_attrs(rng, spec, t)
        condition = t
    else:
        ref, target, condition, distractors = _change_attribute_attrs(rng, spec, t)

    def crop(slot: int, role: str, attrs: dict[str, str]) -> dict:
        return _crop_item(rng, spec, ids[slot], role, attrs, cfg.attribute_context)

    return {"task": task, "index": index, "condition": condition, "attribute_type": t,
            "reference": crop(0, "reference", ref), "target": crop(1, "target", target),
            "gallery": [crop(2 + k, role, a) for k, (role, a) in enumerate(distractors)]}


# ----------------------------------------------------------------------------------------- object tasks
def _random_objects(rng: np.random.Generator, spec: WorldSpec, shapes: list[str],
                    cells: list[tuple[int, int]]) -> list[Obj]:
    return [_obj(rng, spec, _random_attrs(rng, spec, s), c) for s, c in zip(shapes, cells)]


def _reference_objects(rng: np.random.Generator, spec: WorldSpec, lo: int, hi: int) -> tuple[str, list[Obj]]:
    n = int(rng.integers(lo, hi + 1))
    objs = _random_objects(rng, spec, _fresh_shapes(rng, spec, set(), n), _cells(rng, spec, n))
    return str(_pick(rng, spec.backgrounds)), objs


def _dissimilar_with(rng: np.random.Generator, spec: WorldSpec, shape: str, exclude: set[str],
                     extra: Obj | None = None) -> tuple[str, list[Obj]]:
    """A random scene containing ``shape``; its other shapes avoid ``exclude`` (plus ``extra`` if given)."""
    n = int(rng.integers(max(spec.min_objects, 1 if extra is None else 2), spec.max_objects + 1))
    fixed = [shape] + ([extra.shape] if extra is not None else [])
    shapes = fixed + _fresh_shapes(rng, spec, exclude | set(fixed), n - len(fixed))
    objs = _random_objects(rng, spec, shapes, _cells(rng, spec, n))
    if extra is not None:
        objs[1] = _obj(rng, spec, {**_random_attrs(rng, spec, extra.shape), "color": extra.colour}, objs[1].cell)
    return str(_pick(rng, spec.backgrounds)), objs


def _focus_object_similar(rng: np.random.Generator, spec: WorldSpec, c_obj: Obj, others: list[Obj],
                          ref_shapes: set[str]) -> tuple[str, list[Obj]]:
    """A near-copy of the reference WITHOUT the condition: drop it, swap its shape, or drop it and swap another."""
    kind = str(rng.choice(["drop", "swap", "drop_swap"], p=[0.4, 0.4, 0.2]))
    objs = [_redraw(rng, spec, o) for o in others]
    new = _fresh_shapes(rng, spec, ref_shapes, 1)[0]
    if kind == "swap":
        objs.append(_redraw(rng, spec, c_obj, shape=new))
    elif kind == "drop_swap":
        k = int(rng.integers(len(objs)))
        objs[k] = _obj(rng, spec, _random_attrs(rng, spec, new), objs[k].cell)
    return kind, objs


def _focus_object(rng: np.random.Generator, cfg: BenchmarkConfig, index: int) -> dict:
    spec, ids = cfg.spec(), image_ids("focus_object", index)
    bg, ref = _reference_objects(rng, spec, max(3, spec.min_objects), spec.max_objects)
    ref_shapes = {o.shape for o in ref}
    c_obj = ref[int(rng.integers(len(ref)))]
    others = [o for o in ref if o is not c_obj]
    keep = set(int(k) for k in rng.choice(len(others), size=int(rng.integers(1, len(others))), replace=False))
    fresh = iter(_fresh_shapes(rng, spec, ref_shapes, len(others) - len(keep)))
    target = [_redraw(rng, spec, c_obj)] + [
        _redraw(rng, spec, o) if k in keep else _obj(rng, spec, _random_attrs(rng, spec, next(fresh)), o.cell)
        for k, o in enumerate(others)]
    gallery = []
    for slot in range(N_SIMILAR):
        role, objs = _focus_object_similar(rng, spec, c_obj, others, ref_shapes)
        gallery.append(_scene_item(ids[2 + slot], f"similar_without:{role}", spec, bg, objs))
    for slot in range(N_SIMILAR, N_SIMILAR + N_DISSIMILAR):
        d_bg, objs = _dissimilar_with(rng, spec, c_obj.shape, ref_shapes)
        gallery.append(_scene_item(ids[2 + slot], "dissimilar_with", spec, d_bg, objs))
    return {"task": "focus_object", "index": index, "condition": c_obj.shape, "attribute_type": None,
            "reference": _scene_item(ids[0], "reference", spec, bg, ref),
            "target": _scene_item(ids[1], "target", spec, bg, target), "gallery": gallery}


def _change_object_similar(rng: np.random.Generator, spec: WorldSpec, ref: list[Obj], exclude: set[str]
                           ) -> tuple[str, list[Obj]]:
    """A near-copy of the reference WITHOUT the condition: add another kind, copy, recolour or swap one."""
    kind = str(rng.choice(["add_other", "copy", "recolour", "swap"], p=[0.35, 0.15, 0.25, 0.25]))
    objs = [_redraw(rng, spec, o) for o in ref]
    new = _fresh_shapes(rng, spec, exclude, 1)[0]
    k = int(rng.integers(len(objs)))
    if kind == "add_other":
        cell = _cells(rng, spec, 1, {o.cell for o in ref})[0]
        objs.append(_obj(rng, spec, _random_attrs(rng, spec, new), cell))
    elif kind == "recolour":
        objs[k] = _redraw(rng, spec, objs[k], color=_other_value(rng, spec, "color", {objs[k].colour}))
    elif kind == "swap":
        objs[k] = _redraw(rng, spec, objs[k], shape=new)
    return kind, objs


def _change_object(rng: np.random.Generator, cfg: BenchmarkConfig, index: int) -> dict:
    spec, ids = cfg.spec(), image_ids("change_object", index)
    bg, ref = _reference_objects(rng, spec, max(2, spec.min_objects), spec.max_objects - 1)
    ref_shapes = {o.shape for o in ref}
    cond = _fresh_shapes(rng, spec, ref_shapes, 1)[0]
    cell = _cells(rng, spec, 1, {o.cell for o in ref})[0]
    target = [_redraw(rng, spec, o) for o in ref] + [_obj(rng, spec, _random_attrs(rng, spec, cond), cell)]
    gallery = []
    for slot in range(N_SIMILAR):
        role, objs = _change_object_similar(rng, spec, ref, ref_shapes | {cond})
        gallery.append(_scene_item(ids[2 + slot], f"similar_without:{role}", spec, bg, objs))
    for slot in range(N_SIMILAR, N_SIMILAR + N_DISSIMILAR):
        extra = ref[int(rng.integers(len(ref)))] if rng.random() < 0.5 else None  # shares <= 1 < len(ref)
        d_bg, objs = _dissimilar_with(rng, spec, cond, ref_shapes, extra)
        gallery.append(_scene_item(ids[2 + slot], "dissimilar_with", spec, d_bg, objs))
    return {"task": "change_object", "index": index, "condition": cond, "attribute_type": None,
            "reference": _scene_item(ids[0], "reference", spec, bg, ref),
            "target": _scene_item(ids[1], "target", spec, bg, target), "gallery": gallery}


# ----------------------------------------------------------------------------------------- templates
def scene_key(scene: dict | Scene) -> tuple:
    """What makes two scenes the same picture up to jitter: background and (attributes, cell) of objects."""
    s = scene if isinstance(scene, Scene) else Scene.from_json(scene)
    return (s.background, tuple(sorted((o.shape, o.colour, o.size, o.pattern, o.cell) for o in s.objects)))


def world_scene_keys(cfg: BenchmarkConfig) -> frozenset:
    """Keys of the training world's first ``avoid_world_scenes`` scenes (empty when off)."""
    spec = cfg.spec()
    return frozenset(scene_key(sample_scene(cfg.world_seed, i, spec)) for i in range(cfg.avoid_world_scenes))


def template_items(template: dict) -> list[dict]:
    return [template["reference"], template["target"], *template["gallery"]]


def _draw_template(task: str, cfg: BenchmarkConfig, index: int, attempt: int) -> dict:
    rng = np.random.default_rng((cfg.seed, STREAM_BENCH[task], index, attempt))
    if task in ATTRIBUTE_TASKS:
        return _attribute_template(task, rng, cfg, index)
    return (_focus_object if task == "focus_object" else _change_object)(rng, cfg, index)


def build_template(task: str, cfg: BenchmarkConfig, index: int, avoid: frozenset = frozenset()) -> dict:
    """Template ``index`` of ``task``, proved by :func:`check_template` (raises TemplateError if not)."""
    for attempt in range(MAX_ATTEMPTS):
        template = _draw_template(task, cfg, index, attempt)
        if avoid and any(scene_key(it["scene"]) in avoid for it in template_items(template)):
            continue
        template["attempt"] = attempt
        check_template(task, template)
        return template
    raise TemplateError(f"{task} template {index}: every attempt reused a training-world scene")


def _item_record(task: str, item: dict) -> dict:
    if task in OBJECT_TASKS:
        return {"val_image_id": int(item["image_id"])}
    box = item["scene"]["objects"][item["instance"]]["box"]
    return {"image_id": str(item["image_id"]), "instance_bbox": [int(v) for v in box]}


def annotation_record(template: dict) -> dict:
    """The official GeneCIS record of a template: the gallery lists the distractors only."""
    task = template["task"]
    return {"reference": _item_record(task, template["reference"]),
            "target": _item_record(task, template["target"]), "condition": template["condition"],
            "gallery": [_item_record(task, it) for it in template["gallery"]]}


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
    root = resolve(cfg.output)
    out = ChunkResult(task, start, [], [], [])
    for index in range(start, stop):
        template = build_template(task, cfg, index, avoid)
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
    jobs = _jobs(cfg)
    if cfg.workers <= 1:
        return [build_chunk(cfg, task, s, e, avoid) for task, s, e in jobs]
    ctx = multiprocessing.get_context("spawn")  # no fork: the parent may hold pyarrow/S3 threads
    with ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_init_worker, initargs=(avoid,)) as pool:
        futures = [pool.submit(build_chunk, cfg, task, s, e) for task, s, e in jobs]
        return [f.result() for f in futures]


# ----------------------------------------------------------------------------------------- outputs
def _write_task_files(root: Location, task: str, chunks: list[ChunkResult]) -> None:
    records = [r for c in chunks for r in c.records]
    write_bytes_atomic(root.child("annotations", f"{task}.json"), (dumps(records) + "\n").encode())
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
        ann = root.child("annotations", f"{task}.json")
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


def _prepare_output(cfg: BenchmarkConfig) -> tuple[Location, bool]:
    """(root, done): refuses a root holding a different benchmark; done when this one is complete."""
    root = require_writable(cfg.output)
    pin_config(root, cfg.output_config(), cfg.output_defining_fields(), "benchmark")
    if exists(root.child("_benchmark.json")):
        return root, True
    for sub in (VG_DIR, COCO_DIR, "annotations", "gt"):
        ensure_dir(root.child(*sub.split("/")))
    return root, False


def generate(cfg: BenchmarkConfig) -> dict:
    """Build the benchmark under ``cfg.output``; returns the manifest (written last)."""
    t0 = time.perf_counter()
    root, done = _prepare_output(cfg)
    if done:
        return read_json(root.child("_benchmark.json"))
    avoid = world_scene_keys(cfg)
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
        "layout": {"annotations": "annotations/{task}.json", "vg_root": VG_DIR, "coco_root": COCO_DIR,
                   "ground_truth": "gt/{task}.jsonl"},
        "id_range": [BENCH_ID_BASE, image_ids(TASKS[-1], cfg.templates - 1)[-1]],
        "rng_streams": {**STREAM_BENCH, "training_world": STREAM_SCENE},
        "tasks": tasks, "images": images, "bytes": sum(t["bytes"] for t in tasks.values()),
        "verified_from_files": bool(cfg.verify),
        "timings": {"world_keys_s": round(t1 - t0, 3), "generate_s": round(t2 - t1, 3),
                    "verify_s": round(t3 - t2, 3), "images_per_s": round(images / max(t2 - t1, 1e-9), 1),
                    "workers": cfg.workers}}
    write_bytes_atomic(root.child("_benchmark.json"), (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


def _print_summary(manifest: dict) -> None:
    print(f"{manifest['images']:,} images, {manifest['timings']['images_per_s']:,.0f} images/s "
          f"(generation {manifest['timings']['generate_s']:.1f}s)")
    print(f"{'task':18s} {'templates':>9s} {'full':>6s} {'image':>6s} {'text':>6s} {'img+txt':>7s}  (oracle R@1 %)")
    for task, t in manifest["tasks"].items():
        o = t["oracle"]
        print(f"{task:18s} {t['templates']:9d} {o['full']['R@1']:6.1f} {o['image_only']['R@1']:6.1f} "
              f"{o['text_only']['R@1']:6.1f} {o['image_plus_text']['R@1']:7.1f}")


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(BenchmarkConfig, argv, prog="python -m synthetic benchmark")
    try:
        manifest = generate(cfg)
    except (StorageError, ConfigMismatch, TemplateError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _print_summary(manifest)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
