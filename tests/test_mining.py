"""Unit tests of the GeneCIS mining rule (miner.mining) on small hand-made tables."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest

from miner.attributes import attribute_type, type_codes
from miner.concreteness import load_concreteness, score_strings
from miner import mining
from miner.counter_rng import uniform, uniform_int
from miner.mining import KIND_IDS, MiningRule, Samples, sample, split_of, val_count
from miner.pair_index import build_pair_index


@dataclass(frozen=True)
class Table:
    subject: np.ndarray
    obj: np.ndarray
    image: np.ndarray


def make_table(spec: list[tuple[int, int, int]], shuffle_seed: int | None = 0) -> Table:
    """Rows (subject, object, image), shuffled so input order != sorted order."""
    rows = np.array(spec, dtype=np.int64)
    if shuffle_seed is not None:
        rows = rows[np.random.default_rng(shuffle_seed).permutation(len(rows))]
    return Table(rows[:, 0].astype(np.int32), rows[:, 1].astype(np.int32), rows[:, 2])


def relation_table() -> Table:
    """Subjects: 0 and 3 are candidates; 1 (one object) and 2 (four images) are not."""
    spec: list[tuple[int, int, int]] = []
    for img in range(6):  # subject 0: 6 images, objects 0,1,2
        spec += [(0, img % 3, 100 + img), (0, (img + 1) % 3, 100 + img)]
    spec += [(1, 4, 200 + img) for img in range(8)]  # one object only
    spec += [(2, img % 2, 300 + img) for img in range(4)]  # 4 images only
    for img in range(10):  # subject 3: 10 images, objects 1,4,5
        spec.append((3, (1, 4, 5)[img % 3], 400 + img))
    spec += [(5, 0, 500), (5, 4, 501)]  # objects shared with other subjects
    return make_table(spec)


def index_of(table: Table):
    return build_pair_index(table.subject, table.obj, table.image)


def ids(n: int, start: int = 0) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.int64)


# ---------------------------------------------------------------------------
# RNG


def test_uniform_range_and_purity():
    u = uniform(7, 1, ids(10_000), 3, 5)
    assert u.dtype == np.float64 and (u >= 0).all() and (u < 1).all()
    assert abs(u.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(u[1234:1300], uniform(7, 1, ids(66, 1234), 3, 5))
    assert not np.array_equal(u, uniform(7, 1, ids(10_000), 3, 6))  # slot
    assert not np.array_equal(u, uniform(7, 1, ids(10_000), 4, 5))  # draw
    assert not np.array_equal(u, uniform(8, 1, ids(10_000), 3, 5))  # seed
    assert not np.array_equal(u, uniform(7, 2, ids(10_000), 3, 5))  # kind
    per_item = uniform(7, 1, ids(4), np.array([3, 3, 4, 4]), 5)
    assert per_item[0] == u[0] and per_item[2] == uniform(7, 1, ids(1, 2), 4, 5)[0]


def test_uniform_int_bounds_and_balance():
    n = np.array([1, 2, 3, 1000] * 2500)
    k = uniform_int(1, 1, ids(len(n)), 0, 0, n)
    assert (k >= 0).all() and (k < n).all()
    assert (k[n == 1] == 0).all()
    counts = np.bincount(k[n == 3], minlength=3)
    assert counts.min() > 2500 / 3 * 0.85


# ---------------------------------------------------------------------------
# Index


def test_index_counts_and_order():
    t = relation_table()
    idx = index_of(t)
    key = list(zip(t.subject[idx.order], t.obj[idx.order], t.image[idx.order], idx.order))
    assert key == sorted(key)
    for s in range(6):
        rows = t.subject == s
        assert idx.subj_images[s] == len(set(t.image[rows]))
        assert idx.subj_objects[s] == len(set(t.obj[rows]))
        assert idx.subj_start[s + 1] - idx.subj_start[s] == rows.sum()
    for o in range(6):
        members = idx.order[idx.by_obj[idx.obj_start[o]:idx.obj_start[o + 1]]]
        assert sorted(members) == sorted(np.flatnonzero(t.obj == o))


def test_lexsort_fallback_matches_packed_key():
    t = relation_table()
    huge = Table(t.subject, t.obj, t.image * (1 << 50))  # forces the lexsort path
    a, b = index_of(t), index_of(huge)
    np.testing.assert_array_equal(a.order, b.order)
    np.testing.assert_array_equal(a.subj_images, b.subj_images)
    np.testing.assert_array_equal(a.group_images, b.group_images)
    r1 = sample("change_object", a, ids(300), 1)
    r2 = sample("change_object", b, ids(300), 1)
    np.testing.assert_array_equal(r1.target, r2.target)


# ---------------------------------------------------------------------------
# change_object


def test_candidates_need_five_images_and_two_objects():
    t = relation_table()
    got = sample("change_object", index_of(t), ids(3000), 0)
    assert got.ok.all()
    assert set(t.subject[got.ref]) == {0, 3}


def test_change_object_invariants():
    t = relation_table()
    got = sample("change_object", index_of(t), ids(3000), 11)
    ref, tgt, dist = got.ref, got.target, got.distractor
    assert not got.fallback.any()
    np.testing.assert_array_equal(t.subject[tgt], t.subject[ref])
    assert (t.obj[tgt] != t.obj[ref]).all()
    assert (t.image[tgt] != t.image[ref]).all()
    np.testing.assert_array_equal(t.obj[dist], t.obj[tgt])
    np.testing.assert_array_equal(got.condition, t.obj[tgt])
    assert len(set(t.subject[dist])) > 1  # distractor: any subject with that object
    assert (got.draws == 1).all()


def test_subject_probability_proportional_to_image_count():
    images = {0: 5, 1: 10, 2: 20}
    spec = [(s, i % 2, 1000 * s + i) for s, n in images.items() for i in range(n)]
    t = make_table(spec)
    n = 30_000
    got = sample("change_object", index_of(t), ids(n), 5)
    counts = np.bincount(t.subject[got.ref], minlength=3)
    expected = n * np.array([5, 10, 20]) / 35
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 13.8, (counts, expected)  # df=2, p=0.001


def test_target_object_uniform_over_distinct_objects_not_rows():
    # subject 0: object 0 has 30 rows, objects 1 and 2 have 3 rows each.
    spec = [(0, 0, i) for i in range(30)] + [(0, 1, 100 + i) for i in range(3)]
    spec += [(0, 2, 200 + i) for i in range(3)]
    t = make_table(spec)
    got = sample("change_object", index_of(t), ids(20_000), 2)
    from_big = t.obj[got.ref] == 0
    share = np.bincount(t.obj[got.target][from_big], minlength=3)[1:] / from_big.sum()
    np.testing.assert_allclose(share, [0.5, 0.5], atol=0.03)


def test_fallback_kept_and_flagged_or_redrawn():
    # Object 1 only in image 0: ref (0, obj 0, image 0) has no valid target.
    spec = [(0, 0, i) for i in range(6)] + [(0, 1, 0)]
    t = make_table(spec)
    idx = index_of(t)
    got = sample("change_object", idx, ids(2000), 3)
    bad = got.fallback
    assert bad.any() and got.ok.all()
    doomed = (t.obj[got.ref] == 0) & (t.image[got.ref] == 0)
    np.testing.assert_array_equal(bad, doomed)  # 100 attempts: no chance failures
    assert ((t.obj[got.target] == t.obj[got.ref]) | (t.image[got.target] == t.image[got.ref]))[bad].all()
    strict = sample("change_object", idx, ids(2000), 3,
                    MiningRule(redraw_on_target_failure=True))
    assert strict.ok.all() and not strict.fallback.any()
    assert (t.image[strict.target] != t.image[strict.ref]).all()
    assert (t.obj[strict.target] != t.obj[strict.ref]).all()


# ---------------------------------------------------------------------------
# Concreteness


def six_score_mean(t: Table, got: Samples, subj: np.ndarray, obj: np.ndarray) -> np.ndarray:
    parts = [subj[t.subject[r]] + obj[t.obj[r]] for r in (got.ref, got.target, got.distractor)]
    return sum(parts) / 6


def test_concreteness_rejects_and_accepts_strictly():
    t = relation_table()
    subj = np.array([5.0, 5.0, 5.0, -1.0, 5.0, 5.0])  # subject 3 can never pass
    obj = np.array([5.0, 4.9, 5.0, 5.0, 4.9, 3.0])  # object 5 fails: (25+3)/6 < 4.8
    got = sample("change_object", index_of(t), ids(2000), 4,
                 subject_score=subj, object_score=obj)
    assert got.ok.all()
    assert (six_score_mean(t, got, subj, obj) > 4.8).all()
    assert set(t.subject[got.ref]) == {0}
    assert not (t.obj[got.ref] == 5).any() and not (t.obj[got.target] == 5).any()
    assert (got.draws > 1).any()  # some draws were rejected and redrawn
    unscored = sample("change_object", index_of(t), ids(2000), 4)
    assert (t.subject[unscored.ref] == 3).any()


def test_concreteness_threshold_is_strict_and_bounded():
    t = relation_table()
    flat = np.full(6, 4.5)  # mean exactly 4.5, never > 4.5
    rule = MiningRule(concreteness_threshold=4.5, max_draws=30)
    got = sample("change_object", index_of(t), ids(50), 0, rule, flat, flat)
    assert not got.ok.any() and (got.draws == 30).all() and (got.ref == -1).all()


def test_impossible_concreteness_fails_fast(monkeypatch):
    """When no draw can pass, sample() answers without evaluating a single draw (counted, not timed)."""
    rounds = []
    real = mining._accept_rounds

    def counted(*args):
        rounds.append(args[1].size)  # ids of the chunk
        return real(*args)

    monkeypatch.setattr(mining, "_accept_rounds", counted)
    t = relation_table()
    got = sample("change_object", index_of(t), ids(1000), 0,
                 subject_score=np.full(6, -1.0), object_score=np.full(6, -1.0))
    assert rounds == []
    assert not got.ok.any() and (got.draws == MiningRule().max_draws).all()
    sample("change_object", index_of(t), ids(10), 0)  # the counter does see a possible run
    assert rounds


def test_change_attribute_scores_nouns_only():
    t = relation_table()  # subject = noun, obj = attribute value
    noun = np.array([4.9, 5.0, 5.0, 1.0, 5.0, 5.0])
    got = sample("change_attribute", index_of(t), ids(1500), 9, subject_score=noun)
    assert got.ok.all()
    mean = (noun[t.subject[got.ref]] + noun[t.subject[got.target]]
            + noun[t.subject[got.distractor]]) / 3
    assert (mean > 4.8).all()
    assert set(t.subject[got.ref]) == {0}
    np.testing.assert_array_equal(t.subject[got.target], t.subject[got.ref])
    assert (t.obj[got.target] != t.obj[got.ref]).all()
    np.testing.assert_array_equal(t.obj[got.distractor], t.obj[got.target])


# ---------------------------------------------------------------------------
# Determinism


ATTR_TYPES = np.array([0, 0, 1, 1, 0, -1])  # value code -> type code


@pytest.mark.parametrize("kind", sorted(KIND_IDS))
def test_split_invariance(kind):
    t = relation_table()
    idx = index_of(t)
    scores = np.array([5.0, 4.0, 5.0, 4.95, 5.0, 5.0])
    kw = dict(subject_score=scores, object_type=ATTR_TYPES)
    whole = sample(kind, idx, ids(4000, 500), 21, **kw)
    parts = [sample(kind, idx, ids(b - a, a), 21, **kw)
             for a, b in [(500, 501), (501, 501), (501, 1777), (1777, 4500)]]
    for name in ("ref", "target", "distractor", "ok", "fallback", "draws", "condition"):
        joined = np.concatenate([getattr(p, name) for p in parts])
        np.testing.assert_array_equal(getattr(whole, name), joined, err_msg=name)
    perm = np.random.default_rng(0).permutation(4000)
    shuffled = sample(kind, idx, whole.ids[perm], 21, **kw)
    np.testing.assert_array_equal(shuffled.target, whole.target[perm])
    other = sample(kind, idx, ids(4000, 500), 22, **kw)
    assert not np.array_equal(other.ref, whole.ref)


def test_kinds_use_independent_streams():
    idx = index_of(relation_table())
    a = sample("change_object", idx, ids(500), 1)
    b = sample("change_attribute", idx, ids(500), 1)
    assert not np.array_equal(a.ref, b.ref)


# ---------------------------------------------------------------------------
# focus kinds


def test_focus_object_invariants():
    t = relation_table()
    got = sample("focus_object", index_of(t), ids(3000), 8,
                 MiningRule(redraw_on_target_failure=True))
    ref, tgt, dist = got.ref, got.target, got.distractor
    assert got.ok.all() and not got.fallback.any()
    np.testing.assert_array_equal(t.obj[tgt], t.obj[ref])
    np.testing.assert_array_equal(got.condition, t.obj[ref])
    assert (t.subject[tgt] != t.subject[ref]).all()
    assert (t.image[tgt] != t.image[ref]).all()
    np.testing.assert_array_equal(t.subject[dist], t.subject[ref])
    assert (t.obj[dist] != t.obj[ref]).all()
    assert (t.image[dist] != t.image[ref]).all()


def test_focus_attribute_invariants():
    t = relation_table()
    got = sample("focus_attribute", index_of(t), ids(3000), 6, object_type=ATTR_TYPES)
    ref, tgt, dist = got.ref, got.target, got.distractor
    assert got.ok.all() and not got.fallback.any()
    assert (ATTR_TYPES[t.obj[ref]] >= 0).all()
    np.testing.assert_array_equal(got.condition, ATTR_TYPES[t.obj[ref]])
    np.testing.assert_array_equal(t.subject[tgt], t.subject[ref])
    np.testing.assert_array_equal(t.obj[tgt], t.obj[ref])
    assert (t.image[tgt] != t.image[ref]).all()
    np.testing.assert_array_equal(t.subject[dist], t.subject[ref])
    assert (t.obj[dist] != t.obj[ref]).all()
    np.testing.assert_array_equal(ATTR_TYPES[t.obj[dist]], ATTR_TYPES[t.obj[ref]])
    # subject 3 has values 1 (type 0), 4 (type 0), 5 (untyped): value 5 never a ref
    assert not (t.obj[ref] == 5).any()
    assert {0, 3} == set(t.subject[ref])


# ---------------------------------------------------------------------------
# Degenerate input


def test_degenerate_inputs_raise():
    few = make_table([(0, i % 2, i) for i in range(4)])  # 4 images only
    with pytest.raises(ValueError, match="no candidate subject"):
        sample("change_object", index_of(few), ids(5), 0)
    one_obj = make_table([(0, 0, i) for i in range(9)])
    with pytest.raises(ValueError, match="2 distinct objects"):
        sample("focus_object", index_of(one_obj), ids(5), 0)
    empty = build_pair_index(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="empty table"):
        sample("change_attribute", empty, ids(5), 0)
    idx = index_of(relation_table())
    with pytest.raises(ValueError, match="object_type"):
        sample("focus_attribute", idx, ids(5), 0)
    with pytest.raises(ValueError, match="typed value"):
        sample("focus_attribute", idx, ids(5), 0, object_type=np.full(6, -1))
    with pytest.raises(ValueError, match="unknown kind"):
        sample("change_everything", idx, ids(5), 0)
    with pytest.raises(ValueError, match="subject_score"):
        sample("change_object", idx, ids(5), 0, subject_score=np.ones(2))
    with pytest.raises(ValueError, match="codes"):
        build_pair_index(np.array([-1], np.int32), np.array([0], np.int32), np.array([0]))


# ---------------------------------------------------------------------------
# Split, concreteness table, attribute lexicon


def test_split_first_tenth_is_validation():
    val = split_of(ids(1_600_000), 1_600_000, 0.1)
    assert val.sum() == 160_000 and val[:160_000].all()
    assert split_of(np.array([9, 10, 11]), 100, 0.1).tolist() == [True, False, False]


def test_val_count_floors_the_exact_product():
    # GeneCIS holds out int(n * val_split): floor, never round (15 * 0.1 = 1.5 -> 1; 25 * 0.1 -> 2)
    assert [val_count(n, 0.1) for n in (9, 10, 15, 19, 25, 120)] == [0, 1, 1, 1, 2, 12]
    assert val_count(10, 0.3) == 3 and val_count(100, 0.07) == 7  # float products 2.99.. and 7.00..01
    assert val_count(0, 0.1) == 0 and val_count(7, 0.0) == 0


def test_concreteness_table():
    table = load_concreteness()
    assert table["horse"] == 5.0 and table["horses"] == 5.0
    assert table["meadow"] == 4.86 and table["man"] == 4.79
    assert table["men"] == 4.75  # its own rating, not overridden by plural("man")
    got = score_strings(["Horse", "swimming pool", "horse meadow", "Meadows"], table)
    np.testing.assert_array_equal(got, [5.0, table["swimming pool"], -1.0, 4.86])
    assert sum(v > 4.8 for k, v in table.items() if " " not in k) > 2000


def test_attribute_types():
    assert attribute_type("Dark Green") == "color"
    assert attribute_type("navy blue") == "color"
    assert attribute_type("wooden") == "material"
    assert attribute_type("striped") == "pattern"
    assert attribute_type("solid") == attribute_type("plain") == "pattern"  # the world says "solid"
    assert attribute_type("large") == "size"
    assert attribute_type("3") == "count"
    assert attribute_type("happy") is None
    assert attribute_type("green shirt") is None
    assert type_codes(["red", "metal", "happy"], ("color", "material")).tolist() == [0, 1, -1]


def test_guide_table_matches_inverse_cdf():
    from miner.mining import _Categorical

    weights = np.random.default_rng(1).integers(1, 50, size=30_000)
    cat = _Categorical.build(weights)
    r = np.arange(cat.total, dtype=np.int64)
    np.testing.assert_array_equal(cat.pick(r), np.searchsorted(cat.cum, r, side="right"))
    single = _Categorical.build(np.array([7]))
    assert (single.pick(np.arange(7)) == 0).all()


def test_change_object_condition_is_predicate_object_or_the_object_alone():
    from cluster.config import ConfigError
    from miner.config import MinerConfig
    from miner.triplets import Scores, Vocabs, conditions

    vocabs = Vocabs.from_names({"entity": ["canvas", "dog", "horse"], "predicate": ["of", "on"], "value": ["red"]})
    table = {"predicate": np.array([1, 0]), "object": np.array([0, 2])}  # "on canvas", "of horse"
    samples = {"target": np.array([0, 1])}
    scores = Scores.build(vocabs, None)
    assert conditions("change_object", samples, table, vocabs, scores).to_pylist() == ["on canvas", "of horse"]
    assert conditions("change_object", samples, table, vocabs, scores, "object").to_pylist() == ["canvas", "horse"]
    assert conditions("focus_object", samples, table, vocabs, scores, "object").to_pylist() == ["canvas", "horse"]
    assert MinerConfig(input="x", output="y").change_object_condition == "predicate_object"  # GeneCIS's rule
    with pytest.raises(ConfigError, match="change-object-condition"):
        MinerConfig(input="x", output="y", change_object_condition="subject")


# ---------------------------------------------------------------------------
# similar_targets: the most reference-like of K valid target draws (miner.similarity)


def _shared_by_sets(feats: dict[int, set[int]], a: np.ndarray, b: np.ndarray) -> list[int]:
    return [len(feats[int(x)] & feats[int(y)]) for x, y in zip(a, b)]


def test_image_features_count_shared_features_per_picture():
    from miner.similarity import ImageFeatures

    rng = np.random.default_rng(3)
    caption_ids = rng.permutation(np.arange(1000, 1060))  # 60 captions, two per picture, any order
    picture = {int(c): i // 2 for i, c in enumerate(caption_ids)}
    caps = rng.choice(caption_ids, 400)
    codes = rng.integers(0, 25, 400)
    feats: dict[int, set[int]] = {p: set() for p in range(30)}
    for c, f in zip(caps, codes):
        feats[picture[int(c)]].add(int(f))
    half = 200  # the rows come in two tables; a picture's features are the union of its captions' rows
    got = ImageFeatures.build(caption_ids, [picture[int(c)] for c in caption_ids],
                              [(caps[:half], codes[:half]), (caps[half:], codes[half:])], n_features=25)
    assert got.image_of(np.array([caption_ids[5], 7, caption_ids[0]])).tolist() == [2, -1, 0]
    a, b = rng.integers(0, 30, 500), rng.integers(0, 30, 500)
    assert got.shared(a, b).tolist() == _shared_by_sets(feats, a, b)
    assert got.shared(a, a).tolist() == [len(feats[int(x)]) for x in a]
    with pytest.raises(ValueError, match="no image"):
        ImageFeatures.build(caption_ids[:3], [0, 0, 1], [(np.array([5]), np.array([1]))], n_features=4)
    with pytest.raises(ValueError, match="feature codes"):
        ImageFeatures.build(caption_ids[:3], [0, 0, 1], [(caption_ids[:1], np.array([4]))], n_features=4)


def _similar_world():
    """Subject 0 with 4 objects over 16 captions of 8 pictures (two captions each); each picture has a few of
    12 features.  Returns the relation table, the features, and the caption -> picture map."""
    from miner.similarity import ImageFeatures

    rng = np.random.default_rng(11)
    spec, caption_picture = [], {}
    for cap in range(16):
        caption_picture[cap] = cap // 2
        spec += [(0, int(o), cap) for o in rng.choice(4, 2, replace=False)]
    table = make_table(spec)
    pic_feats = {p: set(rng.choice(12, int(rng.integers(1, 8)), replace=False).tolist()) for p in range(8)}
    caps = np.array([c for c in range(16) for _ in pic_feats[c // 2]])
    codes = np.array([f for c in range(16) for f in sorted(pic_feats[c // 2])])
    features = ImageFeatures.build(np.arange(16), [caption_picture[c] for c in range(16)], [(caps, codes)], 12)
    return table, features, caption_picture, pic_feats


def test_similar_targets_take_the_most_reference_like_valid_draw_and_never_its_own_picture():
    table, features, picture, feats = _similar_world()
    index = index_of(table)
    n = 300
    base = MiningRule(min_images_per_subject=1, max_target_attempts=600, max_draws=1)
    plain = sample("change_object", index, ids(n), 5, base)
    # up to 600 valid draws of ~20 candidates: every candidate is seen (a miss has probability < e^-15)
    rule = replace(base, similar_targets=600)
    got = sample("change_object", index, ids(n), 5, rule, image_features=features)
    assert got.ok.all() and not got.fallback.any()
    ref_pic = np.array([picture[int(c)] for c in table.image[got.ref]])
    tgt_pic = np.array([picture[int(c)] for c in table.image[got.target]])
    assert (ref_pic != tgt_pic).all()  # never another caption of the reference's own picture
    assert (table.obj[got.target] != table.obj[got.ref]).all() and (table.subject[got.target] == 0).all()
    for i in range(n):  # the best of all valid candidates: another object, another picture
        valid = [r for r in range(len(table.image)) if table.subject[r] == 0 and table.obj[r] != table.obj[got.ref[i]]
                 and picture[int(table.image[r])] != ref_pic[i]]
        best = max(len(feats[ref_pic[i]] & feats[picture[int(table.image[r])]]) for r in valid)
        assert len(feats[ref_pic[i]] & feats[tgt_pic[i]]) == best
    assert (got.ref == plain.ref).all()  # the reference is drawn as GeneCIS draws it; only the target moves
    plain_pic = np.array([picture[int(c)] for c in table.image[plain.target]])
    mean = lambda t: np.mean(_shared_by_sets(feats, ref_pic, t))  # noqa: E731
    assert mean(tgt_pic) > mean(plain_pic) + 1.0
    # K = 1: GeneCIS's first valid draw, less those of the reference's own picture
    one = sample("change_object", index, ids(n), 5, replace(base, similar_targets=1), image_features=features)
    same_pic = np.array([picture[int(c)] for c in table.image[plain.target]]) == ref_pic
    assert (one.target[~same_pic] == plain.target[~same_pic]).all() and same_pic.any()
    assert (np.array([picture[int(c)] for c in table.image[one.target]]) != ref_pic).all()
    # focus kinds keep GeneCIS's target; a change kind without features is refused
    focus = sample("focus_object", index, ids(50), 5, rule, image_features=features)
    assert (focus.target == sample("focus_object", index, ids(50), 5, base).target).all()
    with pytest.raises(ValueError, match="needs image_features"):
        sample("change_object", index, ids(5), 5, rule)
    with pytest.raises(ValueError, match="similar_targets must lie"):
        MiningRule(similar_targets=101)  # more than max_target_attempts
    from cluster.config import ConfigError
    from miner.config import MinerConfig

    assert MinerConfig(input="x", output="y").similar_targets == 0  # GeneCIS's rule by default
    with pytest.raises(ConfigError, match="--similar-targets 101 exceeds --max-target-attempts 100"):
        MinerConfig(input="x", output="y", similar_targets=101)


def test_image_features_of_the_mining_tables_group_captions_by_url(tmp_path):
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from miner.pipeline import _image_features
    from miner.triplets import MiningTables, Vocabs

    vocabs = Vocabs.from_names({"entity": ["background", "circle", "star"], "predicate": ["on"],
                                "value": ["blue", "red"]})
    # captions 10, 11 show picture a.jpg; 20 shows b.jpg; 30 shows c.jpg (codes: circle 1, star 2, red 1)
    tables = MiningTables(
        relation={"caption_id": np.array([10, 20]), "subject": np.array([1, 2]), "predicate": np.array([0, 0]),
                  "object": np.array([0, 0])},
        attribute={"caption_id": np.array([11, 20, 30]), "subject": np.array([2, 2, 1]), "object": np.array([1, 1, 1])})
    path = str(tmp_path / "part-00000.parquet")
    pq.write_table(pa.table({"caption_id": [30, 20, 11, 10], "url": ["c.jpg", "b.jpg", "a.jpg", "a.jpg"]}), path)
    feats = _image_features([path], pafs.LocalFileSystem(), tables, vocabs)
    a, b, c = feats.image_of(np.array([10, 20, 30]))
    assert feats.image_of(np.array([11]))[0] == a and len({a, b, c}) == 3
    # a: circle, background, star, (star, red); b: star, background, (star, red); c: circle, (circle, red)
    assert feats.shared(np.array([a, a, b, a]), np.array([b, c, c, a])).tolist() == [3, 1, 0, 4]
