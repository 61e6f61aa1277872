"""The encoding plan: every distinct image (or distinct crop) and every distinct condition text once.

A GeneCIS run references the same images many times: the two official object files hold 62,720 image
slots (reference + target + 14 distractors per template) over 3,033 distinct images.  The plan lists the
distinct items and texts (the rows of the embedding tables) and, per task, integer arrays that point each
template's reference, candidates (``[target] + gallery``, so the target is column 0) and condition into
those tables.  Scoring then never touches an image again.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from evaluator.genecis_data import Item, Template


@dataclass(frozen=True)
class TaskIndex:
    """One task's templates as table indices; ``candidates`` is padded with -1 for ragged galleries."""

    task: str
    template_index: np.ndarray  # [T] index of the template in its annotation file
    reference: np.ndarray  # [T] row of the reference image
    candidates: np.ndarray  # [T, C] rows of [target] + gallery, -1 = padding
    text: np.ndarray  # [T] row of the condition text

    @property
    def valid(self) -> np.ndarray:
        return self.candidates >= 0

    @property
    def gallery_sizes(self) -> np.ndarray:
        return self.valid.sum(axis=1)

    def __len__(self) -> int:
        return int(self.template_index.shape[0])


@dataclass
class EncodePlan:
    """Distinct items and texts (table rows) plus every task's index arrays and slot counts."""

    items: list[Item] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    tasks: dict[str, TaskIndex] = field(default_factory=dict)
    image_slots: int = 0  # references + candidates over all scored templates
    text_slots: int = 0  # one condition per scored template

    def counts(self) -> dict[str, int]:
        return {"image_slots": self.image_slots, "distinct_images": len(self.items),
                "text_slots": self.text_slots, "distinct_texts": len(self.texts),
                "templates": sum(len(t) for t in self.tasks.values())}


class _Rows:
    """Assigns table rows to keys in first-seen order."""

    def __init__(self) -> None:
        self.rows: dict = {}

    def __call__(self, key) -> int:
        return self.rows.setdefault(key, len(self.rows))

    def keys(self) -> list:
        return list(self.rows)


def build_plan(templates: dict[str, list[Template]], drop: dict[str, set[int]] | None = None) -> EncodePlan:
    """The plan for ``{task: templates}``; templates whose file index is in ``drop[task]`` are left out."""
    drop = drop or {}
    items, texts = _Rows(), _Rows()
    plan = EncodePlan()
    for task, tpls in templates.items():
        kept = [t for t in tpls if t.index not in drop.get(task, ())]
        width = max((len(t.candidates) for t in kept), default=1)
        cand = np.full((len(kept), width), -1, dtype=np.int64)
        ref = np.empty(len(kept), dtype=np.int64)
        txt = np.empty(len(kept), dtype=np.int64)
        for row, t in enumerate(kept):
            ref[row] = items(t.reference)
            cand[row, :len(t.candidates)] = [items(c) for c in t.candidates]
            txt[row] = texts(t.condition)
        plan.tasks[task] = TaskIndex(task, np.array([t.index for t in kept], dtype=np.int64), ref, cand, txt)
        plan.image_slots += sum(1 + len(t.candidates) for t in kept)
        plan.text_slots += len(kept)
    plan.items, plan.texts = items.keys(), texts.keys()
    return plan


def item_uses(templates: dict[str, list[Template]]) -> dict[Item, list[tuple[str, int]]]:
    """Every (task, template index) that references each item, for errors and counted skips."""
    uses: dict[Item, list[tuple[str, int]]] = {}
    for task, tpls in templates.items():
        for t in tpls:
            for it in dict.fromkeys((t.reference, *t.candidates)):
                uses.setdefault(it, []).append((task, t.index))
    return uses
