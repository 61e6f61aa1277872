"""Ray-free, numpy-vectorised GeneCIS triplet mining core (GENECIS.md §1.2-1.5).

The caller indexes an integer-coded table (one row per relation or attribute) with
:func:`miner.pair_index.build_pair_index` and asks for triplets by id.  Every random
number of triplet ``i`` comes from :mod:`miner.counter_rng`, keyed by
``(seed, kind, i, draw, slot)``, so a triplet depends only on ``(seed, kind, i)`` and
results are bit-identical however an id range is split across calls or processes.
This module is the rule itself: which rows may form a triplet of each kind, the
concreteness filter, and which ids form the validation split.

Returned rows are INPUT row indices of the table given to :func:`build_pair_index`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from numpy.typing import NDArray

from miner.counter_rng import below, draw_base
from miner.pair_index import PairIndex, build_pair_index, starts
from miner.similarity import ImageFeatures

# build_pair_index is re-exported: callers build the index that sample() takes from here
__all__ = ["KIND_IDS", "MiningRule", "PairIndex", "Samples", "build_pair_index", "sample", "split_of",
           "val_count"]

CHANGE_KINDS = ("change_object", "change_attribute")
KIND_IDS: dict[str, int] = {
    "change_object": 1,
    "change_attribute": 2,
    "focus_object": 3,
    "focus_attribute": 4,
}

# ---------------------------------------------------------------------------
# Rule


@dataclass(frozen=True)
class MiningRule:
    """The GeneCIS mining rule in numbers (defaults = the released code).

    ``redraw_on_target_failure`` is our switch, off by default: GeneCIS keeps the
    last draw after ``max_target_attempts`` failed tries (we flag it ``fallback``);
    when on, such a draw is rejected and redrawn like a concreteness failure.
    ``similar_targets`` = K >= 1 is our other switch (0 = GeneCIS): a change kind's
    target is the most reference-like of its first K valid draws, and never another
    caption of the reference's own image (:mod:`miner.similarity`; K = 1 only refuses those).
    """

    min_images_per_subject: int = 5
    min_objects_per_subject: int = 2
    max_target_attempts: int = 100
    concreteness_threshold: float = 4.8  # strict: mean > threshold
    max_draws: int = 10_000
    val_fraction: float = 0.1
    redraw_on_target_failure: bool = False
    similar_targets: int = 0

    def __post_init__(self) -> None:
        if self.max_target_attempts < 1 or self.max_draws < 1:
            raise ValueError("max_target_attempts and max_draws must be >= 1")
        if self.similar_targets < 0 or self.similar_targets > self.max_target_attempts:
            raise ValueError(f"similar_targets must lie in [0, max_target_attempts = {self.max_target_attempts}], "
                             f"got {self.similar_targets}")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1], got {self.val_fraction}")


# Slots: one per random choice inside a draw.
SLOT_SUBJECT = 0
SLOT_REF = 1
SLOT_DIST = 2
SLOT_TARGET = 16  # + 2 * attempt (+1)
SLOT_DIST_TRY = 1 << 20  # + 2 * attempt (+1)


# ---------------------------------------------------------------------------
# Samples


@dataclass(frozen=True, eq=False)
class Samples:
    """Mined triplets for ``ids``; rows are input row indices (-1 where not ``ok``).

    ok:        accepted within ``max_draws`` (concreteness passed, if scored).
    fallback:  target (or distractor) constraint unmet after ``max_target_attempts``;
               the last draw was kept, as GeneCIS does.
    draws:     number of draws used (== max_draws for failed triplets).
    condition: change_*: target object code; focus_object: the shared object code;
               focus_attribute: attribute type code of the reference value.
    """

    ids: NDArray[np.int64]
    ref: NDArray[np.int64]
    target: NDArray[np.int64]
    distractor: NDArray[np.int64]
    ok: NDArray[np.bool_]
    fallback: NDArray[np.bool_]
    draws: NDArray[np.int64]
    condition: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class _Draws:
    """Outcome of evaluating one batch of (id, draw) pairs (sorted positions)."""

    ref: NDArray[np.int64]
    target: NDArray[np.int64]
    distractor: NDArray[np.int64]
    accepted: NDArray[np.bool_]
    fallback: NDArray[np.bool_]
    condition: NDArray[np.int64]

    @classmethod
    def empty(cls, n: int) -> _Draws:
        def minus_one() -> NDArray[np.int64]:
            return np.full(n, -1, dtype=np.int64)

        return cls(minus_one(), minus_one(), minus_one(), np.zeros(n, bool),
                   np.zeros(n, bool), minus_one())

    def put(self, where: NDArray[np.int64], **cols: NDArray) -> None:
        for name, values in cols.items():
            getattr(self, name)[where] = values


# ---------------------------------------------------------------------------
# Concreteness scoring with exact pruning


_PRUNE_EPS = 1e-9


@dataclass(frozen=True)
class _Scorer:
    """Mean-of-look-ups > threshold, with a conservative upper bound for pruning.

    Look-ups, in summation order: for each of ref, target, distractor its subject
    score (if ``subj`` given) then its object score (if ``obj`` given).
    """

    subj: NDArray[np.float64] | None
    obj: NDArray[np.float64] | None
    threshold: float

    @property
    def active(self) -> bool:
        return self.subj is not None or self.obj is not None

    @property
    def n_lookups(self) -> int:
        return 3 * ((self.subj is not None) + (self.obj is not None))

    def bound(self, n_subj: int, n_obj: int) -> float:
        """Largest possible sum of ``n_subj`` subject and ``n_obj`` object look-ups."""
        best = n_subj * float(self.subj.max()) if self.subj is not None else 0.0
        return best + (n_obj * float(self.obj.max()) if self.obj is not None else 0.0)

    def could_pass(
        self, known: NDArray[np.float64] | float, n_subj: int, n_obj: int, n: int
    ) -> NDArray[np.bool_]:
        """False only where even maximal unknown look-ups cannot pass (exact pruning)."""
        if not self.active:
            return np.ones(n, dtype=bool)
        need = self.n_lookups * self.threshold - _PRUNE_EPS
        return np.broadcast_to(known + self.bound(n_subj, n_obj) >= need, (n,))

    def s(self, codes: NDArray[np.integer]) -> NDArray[np.float64] | float:
        return self.subj[codes] if self.subj is not None else 0.0

    def o(self, codes: NDArray[np.integer]) -> NDArray[np.float64] | float:
        return self.obj[codes] if self.obj is not None else 0.0

    def passes(self, index: PairIndex, *positions: NDArray[np.integer]) -> NDArray[np.bool_]:
        """Exact test on (ref, target, distractor) sorted positions."""
        total = np.zeros(len(positions[0]), dtype=np.float64)
        for pos in positions:
            if self.subj is not None:
                total += self.subj[index.subj[pos]]
            if self.obj is not None:
                total += self.obj[index.obj[pos]]
        return total / self.n_lookups > self.threshold


# ---------------------------------------------------------------------------
# Per-call context


@dataclass(frozen=True)
class _FocusAttr:
    """Groups usable as a focus_attribute reference, and same-type runs."""

    group_type: NDArray[np.int64]
    eligible_cum: NDArray[np.int64]  # cumulative eligible rows over groups
    perm: NDArray[np.int64]  # groups ordered by (subject, type, obj)
    pos: NDArray[np.int64]  # group -> position in perm
    run_start: NDArray[np.int64]  # per perm position: start of its (subject, type) run
    run_len: NDArray[np.int64]


_GUIDE_BUCKETS = 1 << 18


@dataclass(frozen=True)
class _Categorical:
    """Exact integer sampler over ``weights`` (inverse CDF) with a guide table.

    ``r ~ U{0..total-1}`` maps to the first i with ``cum[i] > r``.  Bucket
    ``r // width`` usually lies inside one category (answered by a gather); only
    buckets straddling a boundary fall back to a binary search.
    """

    cum: NDArray[np.int64]
    width: int
    first: NDArray[np.int64]  # category of each bucket's first r
    last: NDArray[np.int64]  # category of each bucket's last r

    @classmethod
    def build(cls, weights: NDArray[np.integer]) -> _Categorical:
        cum = np.cumsum(weights, dtype=np.int64)
        total = int(cum[-1])
        width = max(1, -(-total // _GUIDE_BUCKETS))
        lo = np.arange(0, total, width, dtype=np.int64)
        hi = np.minimum(lo + width, total) - 1
        first = np.searchsorted(cum, lo, side="right")
        return cls(cum, width, first, np.searchsorted(cum, hi, side="right"))

    @property
    def total(self) -> int:
        return int(self.cum[-1])

    def pick(self, r: NDArray[np.int64]) -> NDArray[np.int64]:
        bucket = r // self.width
        out = self.first[bucket]
        mixed = np.flatnonzero(out != self.last[bucket])
        out[mixed] = np.searchsorted(self.cum, r[mixed], side="right")
        return out


@dataclass(frozen=True)
class _Ctx:
    index: PairIndex
    rule: MiningRule
    seed: int
    kind_id: int
    cand: NDArray[np.int64]  # candidate subject codes
    weights: _Categorical  # over candidates, by distinct-image count
    scorer: _Scorer
    focus: _FocusAttr | None = None
    similar: ImageFeatures | None = None  # with rule.similar_targets >= 1 (change kinds)


def _candidate_mask(index: PairIndex, rule: MiningRule) -> NDArray[np.bool_]:
    return (
        (index.subj_images >= max(rule.min_images_per_subject, 1))
        & (index.subj_objects >= rule.min_objects_per_subject)
    )


def _no_candidates(kind: str, index: PairIndex, rule: MiningRule, extra: str = "") -> ValueError:
    best_img = int(index.subj_images.max()) if len(index.subj_images) else 0
    best_obj = int(index.subj_objects.max()) if len(index.subj_objects) else 0
    return ValueError(
        f"{kind}: no candidate subject: need >= {rule.min_images_per_subject} distinct "
        f"images and >= {rule.min_objects_per_subject} distinct objects{extra} "
        f"(table has {index.n_rows} rows; best subject: {best_img} images, {best_obj} objects)"
    )


def _score_table(name: str, table: NDArray | None, n_codes: int) -> NDArray[np.float64] | None:
    if table is None:
        return None
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 1 or len(table) < n_codes:
        raise ValueError(f"{name} must be 1-D covering {n_codes} codes, got shape {table.shape}")
    if np.isnan(table).any():
        raise ValueError(f"{name} contains NaN; use -1 for missing entries")
    return table


def _focus_attr_prep(index: PairIndex, object_type: NDArray | None) -> _FocusAttr:
    if object_type is None:
        raise ValueError("focus_attribute needs object_type (value code -> type code, -1 = untyped)")
    object_type = np.asarray(object_type, dtype=np.int64)
    if object_type.ndim != 1 or len(object_type) < len(index.obj_start) - 1:
        raise ValueError(f"object_type must cover {len(index.obj_start) - 1} value codes")
    first = index.group_start[:-1]
    gtype = object_type[index.obj[first]]
    gsubj = index.subj[first].astype(np.int64)
    key = gsubj * (int(gtype.max(initial=-1)) + 2) + (gtype + 1)
    perm = np.argsort(key, kind="stable")
    skey = key[perm]
    new_run = np.ones(len(skey), dtype=bool)
    new_run[1:] = skey[1:] != skey[:-1]
    run_id = np.cumsum(new_run) - 1
    run_first = np.flatnonzero(new_run)
    run_len = np.diff(np.append(run_first, len(skey)))[run_id]
    pos = np.empty_like(perm)
    pos[perm] = np.arange(len(perm))
    same_type = run_len[pos]
    eligible = (gtype >= 0) & (index.group_images >= 2) & (same_type >= 2)
    sizes = np.diff(index.group_start).astype(np.int64) * eligible
    return _FocusAttr(gtype, starts(sizes), perm, pos, run_first[run_id], run_len)


def _prepare(
    kind: str,
    index: PairIndex,
    seed: int,
    rule: MiningRule,
    subject_score: NDArray | None,
    object_score: NDArray | None,
    object_type: NDArray | None,
    image_features: ImageFeatures | None = None,
) -> _Ctx:
    if kind not in KIND_IDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KIND_IDS)}")
    if index.n_rows == 0:
        raise ValueError(f"{kind}: empty table (0 rows), nothing to mine")
    scorer = _Scorer(
        _score_table("subject_score", subject_score, len(index.subj_start) - 1),
        _score_table("object_score", object_score, len(index.obj_start) - 1),
        rule.concreteness_threshold,
    )
    mask = _candidate_mask(index, rule)
    focus, extra = None, ""
    if kind == "focus_object":  # the distractor needs another object of the subject
        mask &= index.subj_objects >= 2
    if kind == "focus_attribute":
        focus = _focus_attr_prep(index, object_type)
        sg = index.subj_group_start
        mask &= focus.eligible_cum[sg[1:]] > focus.eligible_cum[sg[:-1]]
        extra = (", plus a typed value seen in >= 2 images and another value of the"
                 " same type")
    cand = np.flatnonzero(mask)
    if len(cand) == 0:
        raise _no_candidates(kind, index, rule, extra)
    weights = _Categorical.build(index.subj_images[cand])
    return _Ctx(index, rule, int(seed), KIND_IDS[kind], cand, weights, scorer, focus,
                _similar(kind, index, rule, image_features))


def _similar(kind: str, index: PairIndex, rule: MiningRule, features: ImageFeatures | None) -> ImageFeatures | None:
    """The image features a change kind ranks its targets by (``rule.similar_targets``), checked."""
    if not rule.similar_targets or kind not in CHANGE_KINDS:
        return None
    if features is None:
        raise ValueError(f"{kind}: similar_targets={rule.similar_targets} needs image_features")
    unknown = features.image_of(index.image) < 0
    if unknown.any():
        raise ValueError(f"{kind}: caption id {int(index.image[np.flatnonzero(unknown)[0]])} has no image in "
                         "image_features")
    return features


# ---------------------------------------------------------------------------
# Shared drawing steps


def _pick_subject(ctx: _Ctx, base: NDArray[np.uint64]) -> NDArray[np.int64]:
    """subject ~ Categorical(candidates, p proportional to distinct-image count)."""
    r = below(base, SLOT_SUBJECT, ctx.weights.total)
    return ctx.cand[ctx.weights.pick(r)]


def _pick_row_of_subject(ctx: _Ctx, base: NDArray[np.uint64], s: NDArray) -> NDArray[np.int64]:
    start = ctx.index.subj_start[s]
    return start + below(base, SLOT_REF, ctx.index.subj_start[s + 1] - start)


def _pick_row_of_object(
    index: PairIndex, base: NDArray[np.uint64], slot: int, o: NDArray
) -> NDArray[np.int64]:
    start = index.obj_start[o]
    k = start + below(base, slot, index.obj_start[o + 1] - start)
    return index.by_obj[k].astype(np.int64)


def _pick_row_of_group(
    index: PairIndex, base: NDArray[np.uint64], slot: int, g: NDArray
) -> NDArray[np.int64]:
    start = index.group_start[g].astype(np.int64)
    return start + below(base, slot, index.group_start[g + 1] - start)


def _group_of(index: PairIndex, pos: NDArray) -> NDArray[np.int64]:
    return np.searchsorted(index.group_start, pos, side="right") - 1


Proposer = Callable[[NDArray[np.int64], int], tuple[NDArray[np.int64], NDArray[np.bool_]]]
Ranker = Callable[[NDArray[np.int64], NDArray[np.int64]], NDArray[np.int64]]  # (items, rows) -> score


def _attempts(n: int, max_attempts: int, propose: Proposer, best_of: int = 1,
              rank: Ranker | None = None) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Rejection sampling, vectorised: ``propose(pending, attempt) -> (rows, ok)``.

    Returns the first accepted row per item, or its last proposal, and a found mask.  With ``best_of``
    = K > 1, an item keeps proposing until K of its proposals were accepted (or the attempts run out)
    and gets the accepted row with the highest ``rank(items, rows)`` (the earliest on a tie).
    """
    rows = np.full(n, -1, dtype=np.int64)
    best = np.full(n, -1, dtype=np.int64)
    accepted = np.zeros(n, dtype=np.int64)
    pending = np.arange(n)
    for attempt in range(max_attempts):
        if pending.size == 0:
            break
        proposal, ok = propose(pending, attempt)
        unset = (accepted[pending] == 0) & ~ok  # the last proposal stands until one is accepted
        rows[pending[unset]] = proposal[unset]
        took, cand = pending[ok], proposal[ok]
        better = np.ones(len(took), bool)
        if rank is not None:
            score = rank(took, cand)
            better = score > best[took]
            best[took[better]] = score[better]
        rows[took[better]] = cand[better]
        accepted[took] += 1
        pending = pending[accepted[pending] < best_of]
    return rows, accepted > 0


def _target_ok(ctx: _Ctx, found: NDArray[np.bool_]) -> NDArray[np.bool_]:
    return found | (not ctx.rule.redraw_on_target_failure)


# ---------------------------------------------------------------------------
# Kinds: each evaluates a batch of (id, draw) pairs with exact early pruning.


def _subject_and_reference(ctx: _Ctx, ids: NDArray[np.int64], draws: NDArray[np.int64]):
    """The opening both subject-anchored kinds share: draw the subject (its score counted twice: it
    recurs in one more row), prune draws that can no longer pass, then draw the reference row.
    Returns (live positions, per-draw RNG base, subject, known score, reference row)."""
    sc = ctx.scorer
    live = np.arange(len(ids))
    base = draw_base(ctx.seed, ctx.kind_id, ids, draws)
    s = _pick_subject(ctx, base)
    known = 2 * sc.s(s)
    keep = np.flatnonzero(sc.could_pass(known, 1, 3, len(live)))
    live, base, s, known = live[keep], base[keep], s[keep], _take(known, keep)
    return live, base, s, known, _pick_row_of_subject(ctx, base, s)


def _draw_change(ctx: _Ctx, ids: NDArray[np.int64], draws: NDArray[np.int64]) -> _Draws:
    """change_object / change_attribute: same subject, other object, other image."""
    idx, sc, out = ctx.index, ctx.scorer, _Draws.empty(len(ids))
    live, base, s, known, ref = _subject_and_reference(ctx, ids, draws)  # ref and target share the subject
    known = known + sc.o(idx.obj[ref])
    keep = np.flatnonzero(sc.could_pass(known, 1, 2, len(live)))
    live, base, s, ref, known = live[keep], base[keep], s[keep], ref[keep], _take(known, keep)
    g0 = idx.subj_group_start[s]
    n_groups = idx.subj_objects[s]
    ref_obj, ref_img = idx.obj[ref], idx.image[ref]
    sim = ctx.similar
    ref_picture = sim.image_of(ref_img) if sim is not None else None

    def propose(p: NDArray[np.int64], a: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        b = base[p]
        g = g0[p] + below(b, SLOT_TARGET + 2 * a, n_groups[p])
        row = _pick_row_of_group(idx, b, SLOT_TARGET + 2 * a + 1, g)
        ok = (idx.obj[row] != ref_obj[p]) & (idx.image[row] != ref_img[p])
        if sim is not None:  # not another caption of the reference's own picture
            ok &= sim.image_of(idx.image[row]) != ref_picture[p]
        return row, ok

    def likeness(p: NDArray[np.int64], rows: NDArray[np.int64]) -> NDArray[np.int64]:
        return sim.shared(ref_picture[p], sim.image_of(idx.image[rows]))

    tgt, found = _attempts(len(live), ctx.rule.max_target_attempts, propose,
                           best_of=max(ctx.rule.similar_targets, 1), rank=likeness if sim is not None else None)
    tgt_obj = idx.obj[tgt]
    # the distractor shares the target's object: only its subject is unknown
    keep = _target_ok(ctx, found) & sc.could_pass(known + 2 * sc.o(tgt_obj), 1, 0, len(live))
    live, base, ref, tgt, found, tgt_obj = (
        live[keep], base[keep], ref[keep], tgt[keep], found[keep], tgt_obj[keep])
    dist = _pick_row_of_object(idx, base, SLOT_DIST, tgt_obj)
    accepted = sc.passes(idx, ref, tgt, dist) if sc.active else np.ones(len(live), bool)
    out.put(live, ref=ref, target=tgt, distractor=dist, accepted=accepted,
            fallback=~found, condition=tgt_obj)
    return out


def _take(known: NDArray[np.float64] | float, keep: NDArray[np.integer]) -> NDArray[np.float64] | float:
    return known[keep] if isinstance(known, np.ndarray) else known


def _draw_focus_object(ctx: _Ctx, ids: NDArray[np.int64], draws: NDArray[np.int64]) -> _Draws:
    """focus_object: target shares the object (other subject, other image);
    distractor shares the subject with another object (other image)."""
    idx, sc, out = ctx.index, ctx.scorer, _Draws.empty(len(ids))
    live, base, s, known, ref = _subject_and_reference(ctx, ids, draws)  # ref and distractor share the subject
    o = idx.obj[ref].astype(np.int64)
    known = known + 2 * sc.o(o)  # ref and target share the object
    keep = sc.could_pass(known, 1, 1, len(live))
    live, base, s, ref, o, known = live[keep], base[keep], s[keep], ref[keep], o[keep], _take(known, keep)
    ref_img = idx.image[ref]

    def propose_target(p: NDArray[np.int64], a: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        row = _pick_row_of_object(idx, base[p], SLOT_TARGET + 2 * a, o[p])
        return row, (idx.subj[row] != s[p]) & (idx.image[row] != ref_img[p])

    tgt, found_t = _attempts(len(live), ctx.rule.max_target_attempts, propose_target)
    keep = _target_ok(ctx, found_t) & sc.could_pass(known + sc.s(idx.subj[tgt]), 0, 1, len(live))
    live, base, s, ref, o, tgt, found_t = (
        live[keep], base[keep], s[keep], ref[keep], o[keep], tgt[keep], found_t[keep])
    ref_img, tgt_img = idx.image[ref], idx.image[tgt]
    g0, n_groups = idx.subj_group_start[s], idx.subj_objects[s].astype(np.int64)
    own = _group_of(idx, ref) - g0

    def propose_dist(p: NDArray[np.int64], a: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        b = base[p]
        j = below(b, SLOT_DIST_TRY + 2 * a, n_groups[p] - 1)
        j += j >= own[p]  # skip the reference's own object
        row = _pick_row_of_group(idx, b, SLOT_DIST_TRY + 2 * a + 1, g0[p] + j)
        return row, (idx.image[row] != ref_img[p]) & (idx.image[row] != tgt_img[p])

    dist, found_d = _attempts(len(live), ctx.rule.max_target_attempts, propose_dist)
    found = found_t & found_d
    ok = _target_ok(ctx, found) & (sc.passes(idx, ref, tgt, dist) if sc.active else True)
    out.put(live, ref=ref, target=tgt, distractor=dist, accepted=ok, fallback=~found,
            condition=o)
    return out


def _draw_focus_attribute(ctx: _Ctx, ids: NDArray[np.int64], draws: NDArray[np.int64]) -> _Draws:
    """focus_attribute: target = same noun and value, other image; distractor =
    same noun, another value of the same type; condition = the type."""
    idx, sc, fa, out = ctx.index, ctx.scorer, ctx.focus, _Draws.empty(len(ids))
    assert fa is not None
    live = np.arange(len(ids))
    base = draw_base(ctx.seed, ctx.kind_id, ids, draws)
    s = _pick_subject(ctx, base)
    known = 3 * sc.s(s)  # one noun for all three rows
    keep = np.flatnonzero(sc.could_pass(known, 0, 3, len(live)))
    live, base, s, known = live[keep], base[keep], s[keep], _take(known, keep)
    c0 = fa.eligible_cum[idx.subj_group_start[s]]
    flat = c0 + below(base, SLOT_REF, fa.eligible_cum[idx.subj_group_start[s + 1]] - c0)
    g = np.searchsorted(fa.eligible_cum, flat, side="right") - 1
    ref = idx.group_start[g].astype(np.int64) + (flat - fa.eligible_cum[g])
    keep = sc.could_pass(known + 2 * sc.o(idx.obj[ref]), 0, 1, len(live))
    live, base, g, ref = live[keep], base[keep], g[keep], ref[keep]
    ref_img = idx.image[ref]

    def propose_target(p: NDArray[np.int64], a: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        row = _pick_row_of_group(idx, base[p], SLOT_TARGET + 2 * a, g[p])
        return row, idx.image[row] != ref_img[p]

    tgt, found_t = _attempts(len(live), ctx.rule.max_target_attempts, propose_target)
    tgt_img = idx.image[tgt]
    here = fa.pos[g]
    run0, run_n = fa.run_start[here], fa.run_len[here]

    def propose_dist(p: NDArray[np.int64], a: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        b = base[p]
        j = run0[p] + below(b, SLOT_DIST_TRY + 2 * a, run_n[p] - 1)
        j += j >= here[p]  # skip the reference's own value
        row = _pick_row_of_group(idx, b, SLOT_DIST_TRY + 2 * a + 1, fa.perm[j])
        return row, (idx.image[row] != ref_img[p]) & (idx.image[row] != tgt_img[p])

    dist, found_d = _attempts(len(live), ctx.rule.max_target_attempts, propose_dist)
    found = found_t & found_d
    ok = _target_ok(ctx, found) & (sc.passes(idx, ref, tgt, dist) if sc.active else True)
    out.put(live, ref=ref, target=tgt, distractor=dist, accepted=ok, fallback=~found,
            condition=fa.group_type[g])
    return out


_DRAWERS: dict[str, Callable[[_Ctx, NDArray[np.int64], NDArray[np.int64]], _Draws]] = {
    "change_object": _draw_change,
    "change_attribute": _draw_change,
    "focus_object": _draw_focus_object,
    "focus_attribute": _draw_focus_attribute,
}


# ---------------------------------------------------------------------------
# Driver

_BATCH = 1 << 18  # (id, draw) pairs evaluated per round once few ids remain
_MAX_DRAWS_PER_ROUND = 4096
_CHUNK = 1 << 20  # ids per independent chunk (bounds memory)


def _accept_rounds(ctx: _Ctx, ids: NDArray[np.int64], drawer: Callable, out: dict) -> None:
    """Draw rounds for one chunk; draws of an id are tried in order, first pass wins."""
    active = np.arange(len(ids))
    d = 0
    while active.size and d < ctx.rule.max_draws:
        k = min(max(1, _BATCH // active.size), _MAX_DRAWS_PER_ROUND, ctx.rule.max_draws - d)
        rep = np.repeat(ids[active], k)
        draw = np.tile(np.arange(d, d + k, dtype=np.int64), active.size)
        got = drawer(ctx, rep, draw)
        acc = got.accepted.reshape(active.size, k)
        hit = acc.any(axis=1)
        first = acc.argmax(axis=1)[hit]
        pick = np.flatnonzero(hit) * k + first
        where = active[hit]
        for name in ("ref", "target", "distractor", "fallback", "condition"):
            out[name][where] = getattr(got, name)[pick]
        out["ok"][where] = True
        out["draws"][where] = d + first + 1
        active = active[~hit]
        d += k
    out["draws"][active] = ctx.rule.max_draws


def _could_ever_pass(ctx: _Ctx) -> bool:
    sc = ctx.scorer
    n_s = 3 if sc.subj is not None else 0
    n_o = 3 if sc.obj is not None else 0
    return bool(sc.could_pass(0.0, n_s, n_o, 1)[0])


def sample(
    kind: str,
    index: PairIndex,
    ids: NDArray[np.int64],
    seed: int,
    rule: MiningRule = MiningRule(),
    subject_score: NDArray[np.float64] | None = None,
    object_score: NDArray[np.float64] | None = None,
    object_type: NDArray[np.integer] | None = None,
    image_features: ImageFeatures | None = None,
) -> Samples:
    """Mine triplets ``ids`` of ``kind``; each depends only on (seed, kind, id).

    Concreteness (GeneCIS §1.4) is applied when a score array is given: the mean
    of the subject (and/or object) scores of ref, target and distractor must be
    > ``rule.concreteness_threshold``; otherwise the whole triplet is redrawn with
    the next draw counter, at most ``rule.max_draws`` times (then ``ok`` is False).
    Score arrays are indexed by code and hold -1 for missing entries.
    ``image_features`` (the index's caption ids -> pictures and their features) is
    needed by the change kinds when ``rule.similar_targets`` is set.
    """
    ctx = _prepare(kind, index, seed, rule, subject_score, object_score, object_type, image_features)
    ids = np.asarray(ids, dtype=np.int64).ravel()
    n = len(ids)
    out = {name: np.full(n, -1, dtype=np.int64)
           for name in ("ref", "target", "distractor", "condition", "draws")}
    out["ok"] = np.zeros(n, dtype=bool)
    out["fallback"] = np.zeros(n, dtype=bool)
    if not _could_ever_pass(ctx):
        out["draws"][:] = rule.max_draws
    else:
        for lo in range(0, n, _CHUNK):
            chunk = {name: col[lo:lo + _CHUNK] for name, col in out.items()}
            _accept_rounds(ctx, ids[lo:lo + _CHUNK], _DRAWERS[kind], chunk)
    return Samples(
        ids=ids,
        ref=index.rows(out["ref"]),
        target=index.rows(out["target"]),
        distractor=index.rows(out["distractor"]),
        ok=out["ok"],
        fallback=out["fallback"] & out["ok"],
        draws=out["draws"],
        condition=out["condition"],
    )


def val_count(n_total: int, val_fraction: float) -> int:
    """How many of a kind's ``n_total`` triplets form the validation split: the first
    ``floor(n_total * val_fraction)`` ids, as GeneCIS's ``split_to_train_val`` holds out
    ``int(len * val_split)``.  The product is exact (the fraction as written, e.g. 0.1 = 1/10),
    so 0.3 * 10 is 3, not the 2 that float rounding (2.9999...) would give."""
    return math.floor(n_total * Fraction(repr(float(val_fraction))))


def split_of(ids: NDArray[np.int64], n_total: int, val_fraction: float = 0.1) -> NDArray[np.bool_]:
    """True for validation ids: those below :func:`val_count`."""
    return np.asarray(ids, dtype=np.int64) < val_count(n_total, val_fraction)
