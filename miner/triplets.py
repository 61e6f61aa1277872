"""Mine stage core (Ray-free): integer-coded mining tables -> sampled triplets -> Parquet shards.

The launcher (``miner.pipeline``) builds the tables with Ray Data; everything here is plain numpy/Arrow
and is what the unit tests and ``bench/mine_scale.py`` call directly.

Tables: ``relation`` rows (caption, subject entity, predicate, object entity) feed the object kinds;
``attribute`` rows (caption, noun, attribute value) feed the attribute kinds.  Strings are coded by
sorted vocabularies, so codes (and hence triplets) do not depend on how the input was partitioned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster import stage, storage
from miner import mining
from miner.attributes import ATTRIBUTE_TYPES, keep_mask, type_codes
from miner.concreteness import score_strings
from miner.similarity import ImageFeatures

TABLE_OF_KIND = {"change_object": "relation", "focus_object": "relation",
                 "change_attribute": "attribute", "focus_attribute": "attribute"}
# vocabulary of each column of each table
VOCAB_OF = {("relation", "subject"): "entity", ("relation", "object"): "entity",
            ("relation", "predicate"): "predicate", ("attribute", "subject"): "entity",
            ("attribute", "object"): "value"}


@dataclass(frozen=True)
class Vocabs:
    """Sorted string vocabularies (entity names, predicates, attribute values)."""

    entity: pa.Array
    predicate: pa.Array
    value: pa.Array

    @classmethod
    def from_names(cls, names: dict[str, list[str]]) -> "Vocabs":
        return cls(**{k: pa.array(sorted(set(names.get(k, []))), pa.string())
                      for k in ("entity", "predicate", "value")})

    def get(self, name: str) -> pa.Array:
        return getattr(self, name)


def vocab_names(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """(vocab, name) rows of a batch of mining rows: what the distributed group-by counts."""
    parts = []
    for (table, column), vocab in VOCAB_OF.items():
        if table in tables and tables[table].num_rows:
            col = tables[table].column(column)
            parts.append(pa.table({"vocab": pa.array([vocab] * len(col), pa.string()), "name": col}))
    return pa.concat_tables(parts) if parts else pa.table({"vocab": pa.array([], pa.string()),
                                                          "name": pa.array([], pa.string())})


def encode(table_name: str, table: pa.Table, vocabs: Vocabs) -> pa.Table:
    """Replace string columns by int32 codes into the sorted vocabularies."""
    cols: dict[str, Any] = {"caption_id": table.column("caption_id")}
    for column in ("subject", "predicate", "object"):
        if (table_name, column) in VOCAB_OF:
            vocab = vocabs.get(VOCAB_OF[(table_name, column)])
            codes = pc.index_in(table.column(column), value_set=vocab)
            if codes.null_count:
                raise ValueError(f"{table_name}.{column}: {codes.null_count} names missing from the vocabulary")
            cols[column] = pc.cast(codes, pa.int32())
    return pa.table(cols)


@dataclass
class MiningTables:
    """Integer columns of the two tables, as numpy arrays (caption_id int64, codes int32)."""

    relation: dict[str, np.ndarray]
    attribute: dict[str, np.ndarray]

    @classmethod
    def from_arrow(cls, relation: pa.Table, attribute: pa.Table) -> "MiningTables":
        def cols(t: pa.Table) -> dict[str, np.ndarray]:
            return {c: t.column(c).to_numpy() for c in t.column_names}
        return cls(relation=cols(relation), attribute=cols(attribute))

    def table(self, kind: str) -> dict[str, np.ndarray]:
        return getattr(self, TABLE_OF_KIND[kind])

    def keep_values(self, keep: np.ndarray) -> "MiningTables":
        """Only the attribute rows whose value code is marked in ``keep`` (one flag per value code)."""
        rows = keep[self.attribute["object"]] if len(keep) else np.zeros(len(self.attribute["object"]), bool)
        return MiningTables(relation=self.relation, attribute={c: v[rows] for c, v in self.attribute.items()})


@dataclass(frozen=True)
class Scores:
    """Per-code side information for the rule: concreteness of entities, type of attribute values."""

    entity: np.ndarray | None
    value_type: np.ndarray
    type_names: tuple[str, ...]

    @classmethod
    def build(cls, vocabs: Vocabs, concreteness: dict[str, float] | None) -> "Scores":
        entity = None if concreteness is None else score_strings(vocabs.entity.to_pylist(), concreteness)
        return cls(entity=entity, value_type=type_codes(vocabs.value.to_pylist()), type_names=ATTRIBUTE_TYPES)


def value_mask(vocabs: Vocabs, types: tuple[str, ...]) -> np.ndarray:
    """One flag per attribute value code: is its type among ``types`` (``MinerConfig.attribute_types``)."""
    return keep_mask(type_codes(vocabs.value.to_pylist()), types)


def build_index(kind: str, tables: MiningTables) -> "mining.PairIndex":
    t = tables.table(kind)
    return mining.build_pair_index(t["subject"], t["object"], t["caption_id"])


def minable_index(kind: str, tables: MiningTables, seed: int, rule: "mining.MiningRule",
                  scores: Scores, features: ImageFeatures | None = None
                  ) -> tuple["mining.PairIndex | None", str | None]:
    """The kind's pair index, or ``(None, reason)`` when this corpus cannot give the kind one triplet
    (an empty table, or no subject the rule accepts): the rule's own checks, run on zero ids."""
    try:
        index = build_index(kind, tables)
        sample_range(kind, index, 0, 0, seed, rule, scores, features)
    except ValueError as err:  # mining raises ValueError for a table the rule cannot draw from
        return None, str(err)
    return index, None


def image_features(tables: MiningTables, caption_ids: np.ndarray, caption_image: np.ndarray,
                   vocabs: Vocabs) -> ImageFeatures:
    """Each picture's features for ``MinerConfig.similar_targets`` (:mod:`miner.similarity`): the entity
    names of its captions' relation and attribute rows, and their (noun, value) pairs.  ``caption_image``
    gives each caption id's picture (captions sharing a url share one)."""
    n_ent, n_val = len(vocabs.entity), len(vocabs.value)
    rel, att = tables.relation, tables.attribute
    pairs = n_ent + att["subject"].astype(np.int64) * n_val + att["object"]
    rows = [(rel["caption_id"], rel["subject"]), (rel["caption_id"], rel["object"]),
            (att["caption_id"], att["subject"]), (att["caption_id"], pairs)]
    return ImageFeatures.build(caption_ids, caption_image, rows, n_ent + n_ent * n_val)


def sample_range(kind: str, index: "mining.PairIndex", lo: int, hi: int, seed: int, rule: "mining.MiningRule",
                 scores: Scores, features: ImageFeatures | None = None) -> dict[str, np.ndarray]:
    """Sample triplets ``lo..hi-1`` of one kind; row indices refer to the kind's table.  ``features``:
    see :func:`image_features` (needed by the change kinds with ``rule.similar_targets``)."""
    ids = np.arange(lo, hi, dtype=np.int64)
    attribute_kind = TABLE_OF_KIND[kind] == "attribute"
    s = mining.sample(kind, index, ids, seed, rule,
                      subject_score=scores.entity,
                      object_score=None if attribute_kind else scores.entity,
                      object_type=scores.value_type if kind == "focus_attribute" else None,
                      image_features=features)
    return {"index": ids, "ref": s.ref, "target": s.target, "distractor": s.distractor,
            "ok": s.ok, "fallback": s.fallback, "draws": s.draws, "condition": s.condition}


def caption_ids_of(samples: dict[str, np.ndarray], table: dict[str, np.ndarray]) -> np.ndarray:
    ok = samples["ok"]
    rows = np.concatenate([samples[r][ok] for r in ("ref", "target", "distractor")])
    return np.unique(table["caption_id"][rows])


def conditions(kind: str, samples: dict[str, np.ndarray], table: dict[str, np.ndarray], vocabs: Vocabs,
               scores: Scores, change_object_condition: str = "predicate_object") -> pa.Array:
    """The condition text of each triplet (GENECIS.md §1.3: "predicate object" for change_object, or the
    object alone with ``change_object_condition="object"``)."""
    tgt = samples["target"]
    if kind == "change_object":
        obj = pc.take(vocabs.entity, pa.array(table["object"][tgt]))
        if change_object_condition == "object":
            return obj
        pred = pc.take(vocabs.predicate, pa.array(table["predicate"][tgt]))
        return pc.binary_join_element_wise(pred, obj, " ")
    if kind == "focus_object":
        return pc.take(vocabs.entity, pa.array(table["object"][tgt]))
    if kind == "change_attribute":
        return pc.take(vocabs.value, pa.array(table["object"][tgt]))
    return pc.take(pa.array(scores.type_names, pa.string()), pa.array(samples["condition"]))


def triplet_table(kind: str, split: str, samples: dict[str, np.ndarray], table: dict[str, np.ndarray],
                  vocabs: Vocabs, scores: Scores, captions: pa.Table,
                  change_object_condition: str = "predicate_object") -> pa.Table:
    """Resolve sampled rows into the output schema; failed samples are dropped (and counted by the caller)."""
    ok = samples["ok"]
    samples = {k: v[ok] for k, v in samples.items()}
    ent = vocabs.entity
    obj_vocab = ent if TABLE_OF_KIND[kind] == "relation" else vocabs.value
    cols: dict[str, Any] = {
        "triplet_id": pa.array([f"{kind}-{i:09d}" for i in samples["index"]], pa.string()),
        "kind": pa.array([kind] * len(samples["index"]), pa.string()),
        "split": pa.array([split] * len(samples["index"]), pa.string()),
        "index": pa.array(samples["index"], pa.int64()),
    }
    cap_ids = captions.column("caption_id").to_numpy()
    for role in ("ref", "target", "distractor"):
        rows = samples[role]
        pos = np.searchsorted(cap_ids, table["caption_id"][rows])
        name = "ref" if role == "ref" else role
        cols[f"{name}_key"] = pc.take(captions.column("key"), pa.array(pos))
        cols[f"{name}_url"] = pc.take(captions.column("url"), pa.array(pos))
        cols[f"{name}_caption_id"] = pa.array(table["caption_id"][rows], pa.int64())
    cols["condition"] = conditions(kind, samples, table, vocabs, scores, change_object_condition)
    cols["subject"] = pc.take(ent, pa.array(table["subject"][samples["ref"]]))
    cols["ref_object"] = pc.take(obj_vocab, pa.array(table["object"][samples["ref"]]))
    cols["target_subject"] = pc.take(ent, pa.array(table["subject"][samples["target"]]))
    cols["target_object"] = pc.take(obj_vocab, pa.array(table["object"][samples["target"]]))
    cols["distractor_subject"] = pc.take(ent, pa.array(table["subject"][samples["distractor"]]))
    cols["distractor_object"] = pc.take(obj_vocab, pa.array(table["object"][samples["distractor"]]))
    cols["draws"] = pa.array(samples["draws"], pa.int32())
    cols["target_fallback"] = pa.array(samples["fallback"], pa.bool_())
    return pa.table(cols)


@dataclass(frozen=True)
class Chunk:
    """One output shard: triplets [lo, hi) of ``kind`` in ``split``."""

    kind: str
    split: str
    lo: int
    hi: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.lo:09d}"

    def parquet(self, out: storage.Location) -> storage.Location:
        return out.child("triplets", self.split, f"part-{self.name}.parquet")

    def marker(self, out: storage.Location) -> storage.Location:
        return out.child("triplets", "_stats", f"{self.name}.json")


def plan_chunks(kinds: tuple[str, ...], n: int, val_fraction: float, per_shard: int) -> list[Chunk]:
    """Deterministic output shards; no shard straddles the val/train boundary (:func:`mining.val_count`)."""
    n_val = mining.val_count(n, val_fraction)
    chunks = []
    for kind in kinds:
        for split, lo, hi in (("val", 0, n_val), ("train", n_val, n)):
            chunks += [Chunk(kind, split, a, min(a + per_shard, hi)) for a in range(lo, hi, per_shard)]
    return chunks


def write_chunk(out: storage.Location, chunk: Chunk, table: pa.Table, stats: dict) -> dict:
    """Write the shard's Parquet, then its stats marker (the commit point for resume)."""
    stats = {**stats, "kind": chunk.kind, "split": chunk.split, "range": [chunk.lo, chunk.hi],
             "written": table.num_rows}
    return stage.write_committed([(chunk.parquet(out), table)], chunk.marker(out), stats)
