"""Scoring every template from the embedding tables (GENECIS.md §4.3), Ray-free.

Per template: ``q = combine(head, ref_raw, txt_raw, combiner, reference_weight)`` (the trainer's one seam,
L2-normalised), the candidates' features are normalised, ``sims = cand @ q`` and the target (candidate 0) is ranked
pessimistically (:mod:`evaluator.metrics`).  Templates are scored in chunks so memory stays bounded.
"""
from __future__ import annotations

import numpy as np

from evaluator.metrics import KS, chance_recall, recall_at_k, target_ranks
from evaluator.plan import EncodePlan, TaskIndex


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def task_similarities(head: str, index: TaskIndex, images: np.ndarray, texts: np.ndarray,
                      combiner=None, chunk: int = 1024, reference_weight: float = 0.0) -> np.ndarray:
    """``[T, C]`` cosine similarities of each template's candidates with its query (-inf on padding)."""
    import torch

    from trainer.model import combine

    unit = _normalise(images.astype(np.float32))
    out = np.empty(index.candidates.shape, dtype=np.float32)
    for lo in range(0, len(index), chunk):
        hi = min(lo + chunk, len(index))
        with torch.inference_mode():
            q = combine(head, torch.from_numpy(images[index.reference[lo:hi]]).float(),
                        torch.from_numpy(texts[index.text[lo:hi]]).float(), combiner,
                        reference_weight).numpy()
        cand = unit[np.maximum(index.candidates[lo:hi], 0)]  # [t, C, D]
        out[lo:hi] = np.einsum("tcd,td->tc", cand, q)
    out[~index.valid] = -np.inf
    return out


def score_head(head: str, plan: EncodePlan, images: np.ndarray, texts: np.ndarray,
               combiner=None, reference_weight: float = 0.0) -> dict[str, np.ndarray]:
    """Target ranks of every template of every task for one head."""
    return {task: target_ranks(task_similarities(head, idx, images, texts, combiner,
                                                 reference_weight=reference_weight), idx.valid)
            for task, idx in plan.tasks.items()}


def summarize(ranks: dict[str, dict[str, np.ndarray]], plan: EncodePlan) -> dict[str, dict]:
    """``heads.<head>.<task>.{r1,r2,r3,templates,chance_r1}`` and ``heads.<head>.average_r1`` in percent."""
    heads: dict[str, dict] = {}
    for head, per_task in ranks.items():
        entry: dict = {}
        for task, r in per_task.items():
            rec = recall_at_k(r, KS)
            entry[task] = {**{f"r{k}": round(100 * v, 4) for k, v in rec.items()}, "templates": int(r.size),
                           "chance_r1": round(100 * chance_recall(plan.tasks[task].gallery_sizes, 1), 4)}
        scored = [entry[t]["r1"] for t in per_task if entry[t]["templates"]]
        entry["average_r1"] = round(float(np.mean(scored)), 4) if scored else 0.0
        heads[head] = entry
    return heads
