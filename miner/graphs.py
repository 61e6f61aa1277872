"""Parse stage core (Ray-free): one input shard -> ``graphs/part-NNNNN.parquet`` + its stats marker.

The stats file ``graphs/_stats/part-NNNNN.json`` is written *after* the Parquet file and is the commit
marker: a shard with a stats file is done; one without is redone from scratch on resume (the Parquet
write is a single atomic object/rename, so a half-written shard is never read).
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster import stage, storage
from miner.readers import CaptionRules, Record, ShardSpec, Skip, SkipCounter, read_shard

ENTITY = pa.struct([("name", pa.string()), ("attributes", pa.list_(pa.string()))])
RELATION = pa.struct([("subject", pa.int32()), ("predicate", pa.string()), ("object", pa.int32())])
GRAPH = pa.struct([("entities", pa.list_(ENTITY)), ("relations", pa.list_(RELATION))])
GRAPH_SCHEMA = pa.schema([
    ("caption_id", pa.int64()),  # shard_id << 32 | row: unique, dense per shard, order-preserving
    ("key", pa.string()), ("url", pa.string()), ("caption", pa.string()), ("graph", GRAPH)])


def shard_name(shard_id: int) -> str:
    return f"part-{shard_id:05d}"


def caption_id(shard_id: int, row: int) -> int:
    return (shard_id << 32) | row


def stats_location(graphs: storage.Location, shard_id: int) -> storage.Location:
    return graphs.child("_stats", shard_name(shard_id) + ".json")


def process_shard(spec: ShardSpec, parse_iter: Callable[[Iterable[str]], Iterator[dict]],
                  graphs: storage.Location, rules: CaptionRules, report_every: int = 2048,
                  on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Read, validate, parse and write one shard; returns (and writes, last) its stats.

    Captions stream through one ``parse_iter`` call (one ``nlp.pipe`` for the whole shard), so spaCy's
    batching is never restarted; records are kept only for the valid captions of this shard.
    """
    t0, started = time.monotonic(), time.time()
    skips = SkipCounter()
    where = f"{spec.uri} shard {spec.shard_id}"
    records: list[Record] = []
    counts = {"read": 0, "skipped_since_report": 0}

    def captions() -> Iterator[str]:
        for item in read_shard(spec, rules):
            counts["read"] += 1
            if isinstance(item, Skip):
                skips.add(item, where)
                counts["skipped_since_report"] += 1
                continue
            records.append(item)
            yield item.caption

    parsed: list[dict] = []
    for graph in parse_iter(captions()):
        parsed.append({"entities": graph["entities"], "relations": graph["relations"]})
        if on_progress and len(parsed) % report_every == 0:
            on_progress(report_every, counts["skipped_since_report"])
            counts["skipped_since_report"] = 0
    if on_progress:
        on_progress(len(parsed) % report_every, counts["skipped_since_report"])
    table = _graph_table(spec.shard_id, records, parsed)
    stats = {"shard_id": spec.shard_id, "uri": spec.uri, "range": [spec.start, spec.end], "read": counts["read"],
             "parsed": table.num_rows, "skipped": skips.counts, "skip_examples": skips.examples,
             "relations": _count_relations(table), "seconds": round(time.monotonic() - t0, 3),
             "started": started, "finished": time.time(), "worker": f"{socket.gethostname()}:{os.getpid()}"}
    return stage.write_committed([(graphs.child(shard_name(spec.shard_id) + ".parquet"), table)],
                                 stats_location(graphs, spec.shard_id), stats)


def _graph_table(shard_id: int, records: list[Record], graphs: list[dict]) -> pa.Table:
    if len(records) != len(graphs):
        raise RuntimeError(f"shard {shard_id}: parser returned {len(graphs)} graphs for {len(records)} captions")
    return pa.table({
        "caption_id": pa.array([caption_id(shard_id, r.row) for r in records], pa.int64()),
        "key": pa.array([r.key for r in records], pa.string()),
        "url": pa.array([r.url for r in records], pa.string()),
        "caption": pa.array([r.caption for r in records], pa.string()),
        "graph": pa.array(graphs, GRAPH)}, schema=GRAPH_SCHEMA)


def _count_relations(table: pa.Table) -> int:
    rel = pc.struct_field(table.column("graph"), "relations")
    return int(pc.sum(pc.list_value_length(rel)).as_py() or 0)


def explode_rows(table: pa.Table) -> dict[str, pa.Table]:
    """Mining rows of a graph table: ``relation`` (caption_id, subject, predicate, object names) and
    ``attribute`` (caption_id, subject = noun, object = attribute value) tables."""
    graph = table.column("graph").combine_chunks()
    ids = table.column("caption_id").combine_chunks()
    entities = pc.struct_field(graph, "entities")
    ent_flat = pc.list_flatten(entities)
    ent_offsets = _offsets(entities)
    rel = pc.struct_field(graph, "relations")
    rel_parent = pc.list_parent_indices(rel)
    rel_flat = pc.list_flatten(rel)
    base = pc.take(ent_offsets, rel_parent)
    names = pc.struct_field(ent_flat, "name")
    subj = pc.take(names, pc.add(base, pc.cast(pc.struct_field(rel_flat, "subject"), pa.int64())))
    obj = pc.take(names, pc.add(base, pc.cast(pc.struct_field(rel_flat, "object"), pa.int64())))
    relations = pa.table({"caption_id": pc.take(ids, rel_parent), "subject": subj,
                          "predicate": pc.struct_field(rel_flat, "predicate"), "object": obj})
    attrs = pc.struct_field(ent_flat, "attributes")
    attr_parent = pc.list_parent_indices(attrs)  # index into ent_flat
    ent_parent = pc.list_parent_indices(entities)  # ent_flat -> caption row
    attributes = pa.table({"caption_id": pc.take(ids, pc.take(ent_parent, attr_parent)),
                           "subject": pc.take(names, attr_parent), "object": pc.list_flatten(attrs)})
    return {"relation": relations, "attribute": attributes}


def _offsets(list_array: pa.Array) -> pa.Array:
    """Start offset (into the flattened values) of every list, as int64."""
    lengths = pc.fill_null(pc.list_value_length(list_array), 0)

    lens = lengths.to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.zeros(len(lens), dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    return pa.array(starts)


def read_graph_stats(graphs: storage.Location, shard_ids: Iterable[int]) -> dict[int, dict]:
    """Stats of the shards that are done (those whose marker exists)."""
    return stage.committed({sid: stats_location(graphs, sid) for sid in shard_ids})
