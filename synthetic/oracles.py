"""Ground-truth reasoning about benchmark templates: validity predicates, the proof checker, oracles.

Everything here reads only a template's ground truth (the ``gt/{task}.jsonl`` sidecar lines), so the
proof that each template has exactly one valid candidate, and the single-modality oracles, can be
re-run from files alone.

A template's ground truth is a dict::

    {"task": str, "index": int, "condition": str, "attribute_type": str | None,
     "reference": ITEM, "target": ITEM, "gallery": [ITEM, ...]}          # gallery = distractors only
    ITEM = {"image_id": int, "role": str, "instance": int | None, "scene": Scene.to_json()}

For attribute tasks ``instance`` indexes the object of ``scene`` the crop is about.

Formal definitions (R = reference, g = a candidate; for crops r, o are the instance objects;
sig(S) = {(shape, colour) of every object of scene S}, shapes(S) = {shape of every object of S}):

* focus_attribute, condition = attribute type T:
  valid(g)  <=>  o.shape == r.shape  AND  o.T == r.T
* change_attribute, condition = attribute value v of type T (precondition r.T != v):
  valid(g)  <=>  o.shape == r.shape  AND  o.T == v
* focus_object, condition = shape C (precondition C in shapes(R)):
  valid(g)  <=>  C in shapes(g)  AND  |sig(g) & sig(R)| >= FOCUS_MIN_SHARED   (= 2: C and one more)
* change_object, condition = shape C (precondition C not in shapes(R)):
  valid(g)  <=>  C in shapes(g)  AND  sig(R) <= sig(g)       (keeps every reference object and adds C)
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from evaluator.tasks import ATTRIBUTE_TASKS, GALLERY_SIZE, TASKS
from synthetic.scene import Obj, Scene

ALL_ATTRIBUTE_TYPES: tuple[str, ...] = ("color", "size", "pattern")
FOCUS_MIN_SHARED = 2
STREAM_ORACLE = 201  # RNG stream of the oracles' tie-breaking
ORACLES: tuple[str, ...] = ("full", "image_only", "text_only", "image_plus_text")


class TemplateError(ValueError):
    """A template whose ground truth does not prove exactly one valid candidate (the target)."""


# ----------------------------------------------------------------------------------------- GT access
def item_scene(item: dict) -> Scene:
    return Scene.from_json(item["scene"])


def item_instance(item: dict) -> Obj:
    """The object an attribute-task crop is about."""
    if item.get("instance") is None:
        raise TemplateError(f"item {item.get('image_id')} has no instance object")
    return item_scene(item).objects[int(item["instance"])]


def signature(scene: Scene) -> frozenset[tuple[str, str]]:
    return frozenset((o.shape, o.colour) for o in scene.objects)


def candidates(template: dict) -> list[dict]:
    """``[target] + gallery``: the target is always candidate 0."""
    return [template["target"], *template["gallery"]]


def attribute_type_of(template: dict) -> str:
    t = template.get("attribute_type")
    if t not in ALL_ATTRIBUTE_TYPES:
        raise TemplateError(f"template {template.get('index')}: bad attribute_type {t!r}")
    return t


# ----------------------------------------------------------------------------------------- validity
def valid_focus_attribute(ref: Obj, cand: Obj, attribute_type: str) -> bool:
    return cand.shape == ref.shape and cand.value(attribute_type) == ref.value(attribute_type)


def valid_change_attribute(ref: Obj, cand: Obj, attribute_type: str, value: str) -> bool:
    return cand.shape == ref.shape and cand.value(attribute_type) == value


def valid_focus_object(ref: Scene, cand: Scene, shape: str) -> bool:
    return shape in cand.shapes() and len(signature(cand) & signature(ref)) >= FOCUS_MIN_SHARED


def valid_change_object(ref: Scene, cand: Scene, shape: str) -> bool:
    return shape in cand.shapes() and signature(ref) <= signature(cand)


View = Obj | Scene  # what validity looks at: the instance object (crops) or the whole scene


def item_view(task: str, item: dict) -> View:
    return item_instance(item) if task in ATTRIBUTE_TASKS else item_scene(item)


def valid_view(template: dict, ref: View, cand: View) -> bool:
    """The task's validity predicate on parsed views (see the module docstring)."""
    task, cond = template["task"], template["condition"]
    if task == "focus_attribute":
        return valid_focus_attribute(ref, cand, cond)
    if task == "change_attribute":
        return valid_change_attribute(ref, cand, attribute_type_of(template), cond)
    if task == "focus_object":
        return valid_focus_object(ref, cand, cond)
    if task == "change_object":
        return valid_change_object(ref, cand, cond)
    raise TemplateError(f"unknown task {task!r}")


def is_valid(template: dict, item: dict) -> bool:
    """Whether ``item`` is a correct answer to ``template`` by the task's formal definition."""
    task = template["task"]
    return valid_view(template, item_view(task, template["reference"]), item_view(task, item))


def parsed_candidates(template: dict) -> tuple[View, list[View]]:
    """(reference view, candidate views) with each item parsed once; candidate 0 is the target."""
    task = template["task"]
    return item_view(task, template["reference"]), [item_view(task, c) for c in candidates(template)]


def _check_precondition(template: dict) -> None:
    task, cond, ref = template["task"], template["condition"], template["reference"]
    if task == "focus_attribute" and cond != attribute_type_of(template):
        raise TemplateError(f"focus_attribute condition {cond!r} is not the attribute type")
    if task == "change_attribute" and item_instance(ref).value(attribute_type_of(template)) == cond:
        raise TemplateError(f"change_attribute: the reference already has {cond!r}")
    if task == "focus_object" and cond not in item_scene(ref).shapes():
        raise TemplateError(f"focus_object: {cond!r} is not in the reference")
    if task == "change_object" and cond in item_scene(ref).shapes():
        raise TemplateError(f"change_object: {cond!r} is already in the reference")


def _check_items(template: dict) -> None:
    items = [template["reference"], *candidates(template)]
    ids = [it["image_id"] for it in items]
    if len(set(ids)) != len(ids):
        raise TemplateError(f"template {template.get('index')}: repeated image ids")
    for it in items:
        scene = item_scene(it)
        if scene.scene_id != it["image_id"]:
            raise TemplateError(f"item {it['image_id']}: scene id {scene.scene_id} differs")
        if template["task"] in ATTRIBUTE_TASKS:
            item_instance(it)


def check_template(task: str, template: dict) -> None:
    """Prove from ground truth that the target is valid and every distractor invalid; raise otherwise."""
    if template.get("task") != task:
        raise TemplateError(f"template is for {template.get('task')!r}, not {task!r}")
    if len(candidates(template)) != GALLERY_SIZE[task]:
        raise TemplateError(f"{task} template {template.get('index')}: gallery of "
                            f"{len(candidates(template))}, expected {GALLERY_SIZE[task]} incl. target")
    _check_precondition(template)
    _check_items(template)
    ref, views = parsed_candidates(template)
    if not valid_view(template, ref, views[0]):
        raise TemplateError(f"{task} template {template.get('index')}: the target is not valid")
    for slot, (item, view) in enumerate(zip(template["gallery"], views[1:])):
        if valid_view(template, ref, view):
            raise TemplateError(f"{task} template {template.get('index')}: distractor {slot} "
                                f"({item['image_id']}, {item.get('role')}) is also valid")


# ----------------------------------------------------------------------------------------- oracles
def _attribute_tuple(o: Obj) -> tuple[str, str, str, str]:
    return (o.shape, o.colour, o.size, o.pattern)


def image_score(template: dict, ref: View, cand: View) -> float:
    """GT visual similarity to the reference: shared instance attributes (crops) / shared objects (scenes).

    Scenes add 0.5 for the same background, less than one shared object.
    """
    if template["task"] in ATTRIBUTE_TASKS:
        return float(sum(x == y for x, y in zip(_attribute_tuple(ref), _attribute_tuple(cand))))
    return len(signature(ref) & signature(cand)) + 0.5 * (ref.background == cand.background)


def text_score(template: dict, ref: View, cand: View) -> float:
    """GT match of the candidate to the condition text alone (``ref`` is ignored)."""
    task, cond = template["task"], template["condition"]
    if task == "focus_attribute":
        return 1.0  # every object has some value of every attribute type
    if task == "change_attribute":
        return float(cand.value(attribute_type_of(template)) == cond)
    return float(cond in cand.shapes())


def full_score(template: dict, ref: View, cand: View) -> float:
    return float(valid_view(template, ref, cand))


def image_plus_text_score(template: dict, ref: View, cand: View) -> float:
    """Additive late fusion of the two single-modality scores (the GeneCIS Image+Text baseline's analogue)."""
    return image_score(template, ref, cand) + text_score(template, ref, cand)


SCORERS: dict[str, Callable[[dict, View, View], float]] = {
    "full": full_score, "image_only": image_score, "text_only": text_score,
    "image_plus_text": image_plus_text_score}


def target_rank(scores: np.ndarray, rng: np.random.Generator) -> int:
    """Rank of candidate 0 when sorting by score descending, ties broken by a random permutation."""
    order = np.lexsort((rng.permutation(len(scores)), -scores))
    return int(np.flatnonzero(order == 0)[0])


def oracle_ranks(template: dict, seed: int) -> dict[str, int]:
    """The target's rank under each oracle; tie-breaking seeded by (seed, task, template index, oracle)."""
    ref, views = parsed_candidates(template)
    task_id = TASKS.index(template["task"])
    ranks = {}
    for k, name in enumerate(ORACLES):
        scores = np.array([SCORERS[name](template, ref, v) for v in views], dtype=np.float64)
        rng = np.random.default_rng((seed, STREAM_ORACLE, task_id, int(template["index"]), k))
        ranks[name] = target_rank(scores, rng)
    return ranks


def recall_summary(ranks: list[dict[str, int]], ks: tuple[int, ...] = (1, 2, 3)) -> dict[str, dict[str, float]]:
    """Percent R@k per oracle from per-template target ranks."""
    out: dict[str, dict[str, float]] = {}
    for name in ORACLES:
        r = np.array([x[name] for x in ranks], dtype=np.int64)
        out[name] = {f"R@{k}": round(100.0 * float(np.mean(r < k)), 2) if len(r) else 0.0 for k in ks}
    return out
