"""Held-out retrieval metrics and their ground-truth ceiling (evaluator/retrieval.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from evaluator.retrieval import (RetrievalConfig, WorldError, ceiling, consistency_matrix, read_records, recall_at,
                                 retrieval_metrics, run)


def test_recall_counts_ties_against_the_model():
    sim = np.array([[0.9, 0.1, 0.0], [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]])
    r = recall_at(sim, ks=(1, 2))
    assert r["r1"] == pytest.approx(1 / 3)  # row 0 right; row 1 second; row 2 tied with two others
    assert r["r2"] == pytest.approx(2 / 3)
    assert recall_at(np.zeros((4, 4)))["r1"] == 0.0


def test_metrics_of_matching_features_are_perfect_both_ways():
    feats = np.eye(5) * 3.0 + 0.01
    m = retrieval_metrics(feats, feats * 2)
    assert m["i2t"] == {"r1": 1.0, "r5": 1.0} and m["t2i"]["r1"] == 1.0


def test_ceiling_of_a_known_consistency_matrix():
    m = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 1]], dtype=bool)  # caption 1 is true of every image
    c = ceiling(m)
    assert c["i2t_r1"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert c["t2i_r1"] == pytest.approx((1 + 1 / 3 + 1) / 3)
    # preferring the caption true of fewest images: image 0 and 2 pick their own, image 1 its only one
    assert c["i2t_r1_specific"] == pytest.approx(1.0)
    with pytest.raises(WorldError):
        ceiling(np.zeros((2, 2), dtype=bool))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from synthetic.world import WorldConfig, run_world

    root = tmp_path_factory.mktemp("w")
    run_world(WorldConfig(output=str(root / "plain"), images=40, seed=9, shard_size=20, workers=1))
    run_world(WorldConfig(output=str(root / "dense"), images=40, seed=9, shard_size=20, workers=1, caption_detail=1.0))
    return root


def test_records_come_in_key_order_with_scene_and_captions(world):
    records, backgrounds = read_records(str(world / "plain"), 30)
    assert [r.key for r in records] == sorted(r.key for r in records) and len(records) == 30
    assert records[0].jpeg[:2] == b"\xff\xd8" and records[0].meta["captions"][0]["text"]
    assert set(backgrounds) == {"grey", "beige", "teal", "slate"}
    with pytest.raises(WorldError, match="fewer than"):
        read_records(str(world / "plain"), 41)


def test_dense_captions_raise_the_ceiling(world, tmp_path):
    out = tmp_path / "r.json"
    plain = run(RetrievalConfig(captions=str(world / "plain"), images=40, output=str(out)))
    dense = run(RetrievalConfig(captions=str(world / "dense"), images=40))
    assert json.loads(out.read_text())["ceiling"] == plain["ceiling"]
    assert "i2t" not in plain  # no model given: the ceiling only
    assert dense["ceiling"]["i2t_r1"] > plain["ceiling"]["i2t_r1"]
    m = consistency_matrix(*read_records(str(world / "dense"), 40))
    assert m.diagonal().all() and m.sum() < 40 * 3


def test_cli_names_a_missing_world(tmp_path, capsys):
    from evaluator.__main__ import main

    assert main(["retrieval", "--captions", str(tmp_path / "nope")]) == 2


def test_swap_accuracy_counts_pairs_won_per_group_and_ties_as_lost():
    from evaluator.retrieval import swap_accuracy
    from trainer.negatives import WordSwapper, parse_groups

    groups = parse_groups(["circle,square,star", "red,blue"])
    captions = ["a red circle", "a blue star"]
    swaps = [WordSwapper(groups).all_swaps(c) for c in captions]
    assert [len(s) for s in swaps] == [3, 3]  # 1 colour swap + 2 shape swaps each

    def encode(texts):  # a text tower that sees colour words only; shapes are invisible to it
        return np.array([[1.0, 0.0] if "red" in t else [0.0, 1.0] for t in texts])

    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    acc = swap_accuracy(images, encode(captions), swaps, encode, groups)
    assert acc == {"circle...": {"accuracy": 0.0, "pairs": 4}, "red...": {"accuracy": 1.0, "pairs": 2}}


def test_a_bad_swap_group_names_its_flag():
    from cluster.config import ConfigError
    from evaluator.retrieval import RetrievalConfig

    with pytest.raises(ConfigError, match="--swap-words"):
        RetrievalConfig(captions="/tmp/w", checkpoint="/tmp/run", swap_words=("circle",))
