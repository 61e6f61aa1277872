"""What a benchmark template is: drawing one from its seed, and its official GeneCIS record.

A template is a reference, a target and a gallery of distractors, each a scene of the synthetic world
(``synthetic/scene.py``), plus the condition text; its ground-truth dict is documented in
``synthetic/oracles.py``.  Template ``i`` of a task is a pure function of ``(TemplateSpec, task, i)``: its
RNG is ``np.random.default_rng((seed, STREAM_BENCH[task], i, attempt))`` and its image ids are
``BENCH_ID_BASE * (1 + task index) + 16 * i + slot``, so the training world (``sample_scene``, stream
``scene.STREAM_SCENE``, ids from 0) never shares a stream or an id with it.  :func:`build_template`
proves every template with :func:`synthetic.oracles.check_template` (exactly one valid candidate, the
target) before returning it.  How templates become files is ``synthetic/benchmark.py``'s business, as
``scene.py`` (what a scene is) is to ``world.py`` (how a world is written).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from evaluator.tasks import ATTRIBUTE_TASKS, GALLERY_SIZE, OBJECT_TASKS, TASKS
from synthetic.captions import COLOUR_SYNONYMS, PATTERN_WORDS, SIZE_WORDS
from synthetic.oracles import ALL_ATTRIBUTE_TYPES, TemplateError, check_template
from synthetic.scene import Obj, Scene, WorldSpec, make_object, sample_scene, with_objects

STREAM_BENCH: dict[str, int] = {"focus_attribute": 101, "change_attribute": 102, "focus_object": 103,
                                "change_object": 104}
BENCH_ID_BASE = 1_000_000_000  # benchmark image ids are >= this; training scene ids are below
ID_SLOTS = 16  # ids per template: reference, target, up to 14 distractors
MAX_ATTEMPTS = 64
# canonical attribute value -> the captions' main word for it, where they differ ("plain" -> "solid")
CONDITION_WORDS = {value: words[0][0] for table in (SIZE_WORDS, PATTERN_WORDS, COLOUR_SYNONYMS)
                   for value, words in table.items() if words[0][0] != value}
P_KEEP_OTHER = 0.7  # focus attribute: a distractor keeps each non-focused reference attribute w.p. this
N_NEAR_COPY, N_WRONG_VALUE, N_OTHER_KIND = 3, 4, 7  # change attribute distractors (14)
N_SIMILAR, N_DISSIMILAR = 9, 5  # object-task slots 0-8 and 9-13


@dataclass(frozen=True)
class TemplateSpec:
    """Everything a template's draw depends on besides (task, index): the world's look and the choices."""

    world: WorldSpec
    seed: int = 0
    attribute_types: tuple[str, ...] = ("color", "pattern")  # condition types of the attribute tasks
    attribute_context: int = 2  # max other objects in an attribute-task image

    def __post_init__(self) -> None:
        """The world must leave room for every construction (see the builders below)."""
        spec = self.world
        if not self.attribute_types or set(self.attribute_types) - set(ALL_ATTRIBUTE_TYPES):
            raise ValueError(f"attribute_types must be a non-empty subset of {ALL_ATTRIBUTE_TYPES}")
        if spec.max_objects < 3 or spec.min_objects > spec.max_objects - 1:
            raise ValueError("the object tasks need max_objects >= 3 and min_objects <= max_objects - 1")
        if len(spec.shapes) < 2 * spec.max_objects - 1 or len(spec.colours) < 2:
            raise ValueError(f"need at least {2 * spec.max_objects - 1} shapes and 2 colours")
        if not 0 <= self.attribute_context <= min(len(spec.shapes) - 1, spec.grid ** 2 - 1):
            raise ValueError("attribute_context must fit the other shapes and the free cells")


# ----------------------------------------------------------------------------------------- ids
def image_ids(task: str, index: int) -> list[int]:
    """Image ids of template ``index``: slot 0 reference, 1 target, 2.. distractors."""
    base = BENCH_ID_BASE * (1 + TASKS.index(task)) + ID_SLOTS * index
    return [base + slot for slot in range(ID_SLOTS)]


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


def _attribute_template(task: str, rng: np.random.Generator, ts: TemplateSpec, index: int) -> dict:
    spec, ids = ts.world, image_ids(task, index)
    t = ts.attribute_types[index % len(ts.attribute_types)]  # types balanced, as GeneCIS
    if task == "focus_attribute":
        ref, target, distractors = _focus_attribute_attrs(rng, spec, t)
        condition = t
    else:
        ref, target, condition, distractors = _change_attribute_attrs(rng, spec, t)

    def crop(slot: int, role: str, attrs: dict[str, str]) -> dict:
        return _crop_item(rng, spec, ids[slot], role, attrs, ts.attribute_context)

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


def _focus_object(rng: np.random.Generator, ts: TemplateSpec, index: int) -> dict:
    spec, ids = ts.world, image_ids("focus_object", index)
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


def _change_object(rng: np.random.Generator, ts: TemplateSpec, index: int) -> dict:
    spec, ids = ts.world, image_ids("change_object", index)
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


def world_scene_keys(world: WorldSpec, world_seed: int, n: int) -> frozenset:
    """Keys of the first ``n`` scenes of the training world ``(world_seed, world)`` (empty when n = 0)."""
    return frozenset(scene_key(sample_scene(world_seed, i, world)) for i in range(n))


def template_items(template: dict) -> list[dict]:
    return [template["reference"], template["target"], *template["gallery"]]


def _draw_template(task: str, ts: TemplateSpec, index: int, attempt: int) -> dict:
    rng = np.random.default_rng((ts.seed, STREAM_BENCH[task], index, attempt))
    if task in ATTRIBUTE_TASKS:
        return _attribute_template(task, rng, ts, index)
    return (_focus_object if task == "focus_object" else _change_object)(rng, ts, index)


def build_template(task: str, ts: TemplateSpec, index: int, avoid: frozenset = frozenset()) -> dict:
    """Template ``index`` of ``task``, proved by :func:`check_template` (raises TemplateError if not)."""
    for attempt in range(MAX_ATTEMPTS):
        template = _draw_template(task, ts, index, attempt)
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


def condition_text(condition: str) -> str:
    """The words a benchmark condition is written in: the ones the world's captions teach for that value
    (captions call a plain pattern "solid", never "plain"); templates keep the canonical value, which the
    oracles check."""
    return CONDITION_WORDS.get(condition, condition)


def annotation_record(template: dict) -> dict:
    """The official GeneCIS record of a template: the gallery lists the distractors only; the condition
    in the captions' words (:func:`condition_text`)."""
    task = template["task"]
    return {"reference": _item_record(task, template["reference"]),
            "target": _item_record(task, template["target"]), "condition": condition_text(template["condition"]),
            "gallery": [_item_record(task, it) for it in template["gallery"]]}

