"""Ray-free cores of the pipeline: shard -> graph Parquet + marker, explode, encode, chunk plan."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster import storage
from miner import triplets as T
from miner.graphs import GRAPH_SCHEMA, explode_rows, process_shard
from miner.mining import split_of
from miner.readers import CaptionRules, plan_shards


def _fake_parse(captions):
    """A stand-in parse function for the writer test: one entity per word, a relation between the first two."""
    for c in captions:
        words = c.split()
        ents = [{"name": w, "attributes": ["red"] if i == 0 else []} for i, w in enumerate(words)]
        rels = [{"subject": 0, "predicate": "near", "object": 1}] if len(words) > 1 else []
        yield {"caption": c, "entities": ents, "relations": rels}


def test_process_shard_writes_parquet_then_marker(tmp_path, monkeypatch):
    src = tmp_path / "in.tsv"
    src.write_text("dog ball\thttp://a\n\thttp://b\ncat\thttp://c\n")
    spec = plan_shards(str(src), "cc3m-tsv", 1 << 20)[0]
    graphs = storage.resolve(str(tmp_path / "graphs"))
    written = []  # every object write, in order, as it reaches storage
    real_write = storage.write_bytes_atomic

    def recording_write(loc, data):
        written.append(os.path.relpath(loc.path, graphs.path))
        return real_write(loc, data)

    monkeypatch.setattr(storage, "write_bytes_atomic", recording_write)
    stats = process_shard(spec, _fake_parse, graphs, CaptionRules(), report_every=1)
    assert written == ["part-00000.parquet", "_stats/part-00000.json"]  # the marker commits, so it is last
    assert stats["read"] == 3 and stats["parsed"] == 2 and stats["skipped"] == {"empty_caption": 1}
    marker = tmp_path / "graphs" / "_stats" / "part-00000.json"
    table = pq.read_table(tmp_path / "graphs" / "part-00000.parquet")
    assert json.loads(marker.read_text())["relations"] == 1
    assert table.schema == GRAPH_SCHEMA and table.column("key").to_pylist() == ["000000000000", "000000000002"]


def _graph_table() -> pa.Table:
    graphs = [
        {"entities": [{"name": "man", "attributes": ["young"]}, {"name": "horse", "attributes": []},
                      {"name": "field", "attributes": ["green", "large"]}],
         "relations": [{"subject": 0, "predicate": "ride", "object": 1},
                       {"subject": 1, "predicate": "in", "object": 2}]},
        {"entities": [], "relations": []},
        {"entities": [{"name": "cat", "attributes": ["black"]}], "relations": []},
    ]
    return pa.table({"caption_id": pa.array([7, 8, 9], pa.int64()), "key": ["a", "b", "c"],
                     "url": ["u", "v", "w"], "caption": ["x", "y", "z"],
                     "graph": pa.array(graphs, GRAPH_SCHEMA.field("graph").type)}, schema=GRAPH_SCHEMA)


def test_explode_rows_names_entities_by_caption():
    parts = explode_rows(_graph_table())
    assert parts["relation"].to_pylist() == [
        {"caption_id": 7, "subject": "man", "predicate": "ride", "object": "horse"},
        {"caption_id": 7, "subject": "horse", "predicate": "in", "object": "field"}]
    assert parts["attribute"].to_pylist() == [
        {"caption_id": 7, "subject": "man", "object": "young"},
        {"caption_id": 7, "subject": "field", "object": "green"},
        {"caption_id": 7, "subject": "field", "object": "large"},
        {"caption_id": 9, "subject": "cat", "object": "black"}]


def test_encode_uses_sorted_vocabularies():
    parts = explode_rows(_graph_table())
    vocabs = T.Vocabs.from_names({v: list(set(t.column("name").to_pylist()))
                                  for v, t in _by_vocab(T.vocab_names(parts)).items()})
    assert vocabs.entity.to_pylist() == ["cat", "field", "horse", "man"]
    rel = T.encode("relation", parts["relation"], vocabs)
    assert rel.column("subject").to_pylist() == [3, 2] and rel.column("object").to_pylist() == [2, 1]
    assert vocabs.predicate.to_pylist() == ["in", "ride"] and rel.column("predicate").to_pylist() == [1, 0]


def _by_vocab(names: pa.Table) -> dict[str, pa.Table]:
    return {v: names.filter(pa.compute.equal(names.column("vocab"), v)) for v in set(names.column("vocab").to_pylist())}


def test_chunk_plan_keeps_val_first_and_never_straddles():
    chunks = T.plan_chunks(("change_object", "focus_object"), 1000, 0.1, 300)
    co = [c for c in chunks if c.kind == "change_object"]
    assert [(c.split, c.lo, c.hi) for c in co] == [("val", 0, 100), ("train", 100, 400), ("train", 400, 700),
                                                   ("train", 700, 1000)]
    assert len({c.name for c in chunks}) == len(chunks)
    assert np.sum([c.hi - c.lo for c in chunks]) == 2000


@pytest.mark.parametrize("n", [15, 25, 35, 119, 125, 1000])
def test_chunk_plan_and_split_of_use_one_rule(n):
    """The validation shards hold exactly the ids split_of calls validation (floor, not round)."""
    chunks = T.plan_chunks(("change_object",), n, 0.1, 7)
    val_ids = np.concatenate([np.zeros(0, int)] + [np.arange(c.lo, c.hi) for c in chunks if c.split == "val"])
    expected = np.flatnonzero(split_of(np.arange(n), n, 0.1))
    np.testing.assert_array_equal(val_ids, expected)
    assert len(val_ids) == n // 10


def test_attribute_types_leave_counts_and_unknown_words_out_of_the_attribute_kinds():
    """Cause 4 of issue 9: counts ("2", "two") and nouns the parser took for attributes must not become
    change_attribute conditions; the default drops counts, a typed list drops unknown words as well."""
    from miner.config import DEFAULT_ATTRIBUTE_TYPES

    vocabs = T.Vocabs.from_names({"entity": ["circle"], "predicate": [],
                                  "value": ["2", "cross", "dark green", "large", "striped", "two", "wet"]})
    tables = T.MiningTables(
        relation={c: np.zeros(0, np.int32) for c in ("caption_id", "subject", "predicate", "object")},
        attribute={"caption_id": np.arange(7, dtype=np.int64), "subject": np.zeros(7, np.int32),
                   "object": np.arange(7, dtype=np.int32)})

    def kept(types):
        att = tables.keep_values(T.value_mask(vocabs, types)).attribute
        assert att["caption_id"].tolist() == att["object"].tolist()  # whole rows kept together
        return [vocabs.value[int(v)].as_py() for v in att["object"]]

    assert "count" not in DEFAULT_ATTRIBUTE_TYPES
    assert kept(DEFAULT_ATTRIBUTE_TYPES) == ["cross", "dark green", "large", "striped", "wet"]
    assert kept(("color", "size", "pattern")) == ["dark green", "large", "striped"]
    assert kept(("count",)) == ["2", "two"]
    assert kept(("untyped",)) == ["cross", "wet"]


def test_attribute_types_option_is_validated():
    from cluster.config import ConfigError
    from cluster.config import parse_config
    from miner.config import MinerConfig

    cfg = parse_config(MinerConfig, ["--input", "/in", "--output", "/out", "--attribute-types", "color", "pattern"])
    assert cfg.attribute_types == ("color", "pattern")
    with pytest.raises(ConfigError, match="attribute.types"):
        MinerConfig(input="/in", output="/out", attribute_types=("colour",))


def test_concreteness_overrides_replace_table_scores_and_reject_bad_entries():
    from cluster.config import ConfigError
    from miner.concreteness import load_concreteness, parse_overrides, score_strings
    from miner.config import MinerConfig

    table = load_concreteness() | parse_overrides(["Circle=4.9", "crescent = 4.9"])
    assert score_strings(["circle", "crescent", "background"], table).tolist() == [4.9, 4.9, 3.26]
    for bad in ("circle", "circle=high", "=4", "circle=5.5", "circle=0"):
        with pytest.raises(ConfigError, match="concreteness.overrides"):
            MinerConfig(input="/in", output="/out", concreteness_overrides=(bad,))
