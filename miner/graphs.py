"""Parse stage core (Ray-free): one input shard -> ``graphs/part-NNNNN.parquet`` + its stats marker.

The stats file ``graphs/_stats/part-NNNNN.json`` is written *after* the Parquet file and is the commit
marker: a shard with a stats file is done; one without is redone from scratch on resume (the Parquet
write is a single atomic object/rename, so a half-written shard is never read).
"""
from __future__ import annotations

import io
import time
from typing import Any, Callable, Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cluster import storage
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


def process_shard(spec: ShardSpec, parse_many: Callable[[Sequence[str]], list[dict]],
                  graphs: storage.Location, rules: CaptionRules, batch_size: int = 2048,
                  on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Read, validate, parse and write one shard; returns (and writes, last) its stats."""
    t0, started = time.monotonic(), time.time()
    skips = SkipCounter()
    where = f"{spec.uri} shard {spec.shard_id}"
    tables, read, pending = [], 0, []
    for item in read_shard(spec, rules):
        read += 1
        if isinstance(item, Skip):
            skips.add(item, where)
            if on_progress:
                on_progress(0, 1)
            continue
        pending.append(item)
        if len(pending) >= batch_size:
            tables.append(_parse_batch(spec.shard_id, pending, parse_many))
            on_progress and on_progress(len(pending), 0)
            pending = []
    if pending:
        tables.append(_parse_batch(spec.shard_id, pending, parse_many))
        on_progress and on_progress(len(pending), 0)
    table = pa.concat_tables(tables) if tables else GRAPH_SCHEMA.empty_table()
    _write_parquet(graphs.child(shard_name(spec.shard_id) + ".parquet"), table)
    stats = {"shard_id": spec.shard_id, "uri": spec.uri, "range": [spec.start, spec.end], "read": read,
             "parsed": table.num_rows, "skipped": skips.counts, "skip_examples": skips.examples,
             "relations": _count_relations(table), "seconds": round(time.monotonic() - t0, 3),
             "started": started, "finished": time.time()}
    storage.write_json(stats_location(graphs, spec.shard_id), stats)
    return stats


def _parse_batch(shard_id: int, records: list[Record], parse_many) -> pa.Table:
    parsed = parse_many([r.caption for r in records])
    graphs = [{"entities": g["entities"], "relations": g["relations"]} for g in parsed]
    return pa.table({
        "caption_id": pa.array([caption_id(shard_id, r.row) for r in records], pa.int64()),
        "key": [r.key for r in records], "url": [r.url for r in records],
        "caption": [r.caption for r in records], "graph": pa.array(graphs, GRAPH)}, schema=GRAPH_SCHEMA)


def _write_parquet(loc: storage.Location, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes_atomic(loc, buf.getvalue())


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
    import numpy as np

    lens = lengths.to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.zeros(len(lens), dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    return pa.array(starts)


def read_graph_stats(graphs: storage.Location, shard_ids: Iterable[int]) -> dict[int, dict]:
    """Stats of the shards that are done (those whose marker exists)."""
    done = {}
    for sid in shard_ids:
        loc = stats_location(graphs, sid)
        if storage.exists(loc):
            done[sid] = storage.read_json(loc)
    return done
