"""GeneCIS's metric: Recall@k of the target, which is always candidate 0 (GENECIS.md §4.3).

The target's rank is **pessimistic**: every other candidate whose similarity is greater than *or equal
to* the target's is ranked above it, so ties never favour the target.  A constant model therefore
scores R@k = 0 (at most chance), never 100, and a duplicated target among the distractors costs a rank.
Padded candidate slots (for ragged galleries) are marked invalid and never rank above the target.
"""
from __future__ import annotations

import numpy as np

KS: tuple[int, ...] = (1, 2, 3)


def target_ranks(sims: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of candidate 0 in each row of ``sims`` ``[templates, candidates]``, ties against it.

    ``valid`` (same shape, bool) marks real candidates; a NaN target similarity ranks last.
    """
    sims = np.asarray(sims, dtype=np.float64)
    if sims.ndim != 2 or sims.shape[1] < 1:
        raise ValueError(f"similarities must be [templates, candidates], got shape {sims.shape}")
    valid = np.ones(sims.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    target = sims[:, :1]
    others = sims[:, 1:]
    beats = (others >= target) | np.isnan(target) | np.isnan(others)
    return (beats & valid[:, 1:]).sum(axis=1).astype(np.int64)


def recall_at_k(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[int, float]:
    """Fraction of templates whose target rank is below k, for each k (0.0 when there are none)."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return {k: 0.0 for k in ks}
    return {k: float((ranks < k).mean()) for k in ks}


def chance_recall(gallery_sizes: np.ndarray, k: int = 1) -> float:
    """Expected R@k of a random ranking: mean of min(k, n)/n over the templates' gallery sizes."""
    sizes = np.asarray(gallery_sizes, dtype=np.float64)
    if sizes.size == 0:
        return 0.0
    return float((np.minimum(k, sizes) / sizes).mean())
