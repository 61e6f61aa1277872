"""The Ray launcher of the GeneCIS evaluator: plan -> encode (Ray Data actors) -> score -> outputs.

Everything heavy is Ray-free (``protocol``, ``plan``, ``encode``, ``cache``, ``scoring``, ``report``,
``plots``); this file only distributes the encoding.  Every distinct image/crop and condition text that
is not in the embedding cache becomes one row of a Ray Data ``map_batches`` stage whose actors load the
model once in ``__init__`` (GPU actors when the cluster has GPUs).  The driver then scores every template
of every head from the two embedding tables.  Outputs (under ``--output``): ``config.json`` (first),
``results.md``, ``r1_by_task.png``, ``recall_at_k.png`` and ``results.json`` LAST — an output without
``results.json`` is an unfinished run (``protocol.read_results`` refuses it), and a rerun on a finished
output does nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any

import numpy as np

from cluster import rayutil, stage, storage
from cluster.config import pin_config, pinned_dict
from cluster.progress import Progress
from evaluator import cache as C
from evaluator import protocol as P
from evaluator.config import EvalConfig
from evaluator.encode import (Encoder, ImageReader, ModelError, ModelSpec, backbone_fingerprint, check_model,
                              load_model, module_fingerprint, pick_device, stat_items)
from evaluator.genecis_data import Item
from evaluator.plan import build_plan
from evaluator.plots import plots
from evaluator.report import results_markdown
from evaluator.scoring import score_head, summarize

log = logging.getLogger("genecis_ray.evaluator")
RESULTS = "results.json"  # written last: its presence means the run is finished


def run(cfg: EvalConfig, in_process: bool = False) -> dict[str, Any]:
    """Run one evaluation (or return the results of a finished one at ``cfg.output``).

    Everything checkable (annotation files, every image's presence, the model and checkpoint) is checked
    before ``config.json`` is pinned.  ``in_process`` encodes in this process instead of on Ray (the same
    worker code, with the driver's model; for tests and benches)."""
    t0 = time.monotonic()
    layout = cfg.layout()
    files, unknown = P.discover_tasks(layout.annotations)
    if unknown:
        log.warning("ignoring %d file(s) under %s that are not GeneCIS task files: %s", len(unknown),
                    layout.annotations, ", ".join(unknown[:10]))
    tasks = P.load_tasks(files, cfg.max_templates)
    templates = {t: td.templates for t, td in tasks.items()}
    reader = ImageReader(layout.vg_root, layout.coco_root)
    plan = build_plan(templates)
    stats, missing = stat_items(plan.items, reader)
    bad: dict[Item, tuple[str, str]] = {it: ("missing_image", "") for it in missing}
    P.bad_items(bad, templates, reader.uri, cfg.skip_missing)  # without --skip-missing: fails here
    spec = ModelSpec(cfg.model, cfg.pretrained, cfg.checkpoint)
    check_model(spec, cfg.needs_combiner)
    out = storage.require_writable(cfg.output)
    pin_config(out, cfg, "GeneCIS evaluation", inputs={
        "annotations": storage.identity([storage.resolve(u) for u in files.values()]),
        "images": P.images_identity(stats)})
    done = stage.finished(out, RESULTS)
    if done is not None:
        log.info("output %s is complete (%s exists): nothing to do", cfg.output, RESULTS)
        return done
    log.info("%d task(s), %s templates: %s image slots over %s distinct images, %s text slots over %s texts",
             len(tasks), f"{plan.counts()['templates']:,}", f"{plan.image_slots:,}", f"{len(plan.items):,}",
             f"{plan.text_slots:,}", f"{len(plan.texts):,}")
    t_plan = time.monotonic()

    model = load_model(spec)
    fingerprint = backbone_fingerprint(model.backbone)
    t_load = time.monotonic()
    wanted = [it for it in plan.items if it not in bad]
    keys = {it: C.image_key(reader.uri(it), stats[it], it) for it in wanted}
    tkeys = {txt: C.text_key(txt) for txt in plan.texts}
    cached = C.read_cache(cfg.cache, fingerprint, [*keys.values(), *tkeys.values()]) if cfg.cache else {}
    item_emb = {it: cached[k] for it, k in keys.items() if k in cached}
    text_emb = {t: cached[k] for t, k in tkeys.items() if k in cached}
    n_cached = {"image": len(item_emb), "text": len(text_emb)}
    todo_items = [it for it in wanted if it not in item_emb]
    todo_texts = [t for t in plan.texts if t not in text_emb]
    encoded, failed = (encode_in_process if in_process else encode_stage)(
        cfg, model if in_process else spec, fingerprint, reader, todo_items, todo_texts, keys, tkeys)
    item_emb.update(encoded["image"])
    text_emb.update(encoded["text"])
    bad.update(failed)
    drop, skipped = P.bad_items(bad, templates, reader.uri, cfg.skip_missing)
    n_encoded = {"image": len(encoded["image"]), "text": len(encoded["text"])}
    t_encode = time.monotonic()

    plan = build_plan(templates, drop)
    images = _table([item_emb[it] for it in plan.items], model.backbone.embed_dim)
    texts = _table([text_emb[t] for t in plan.texts], model.backbone.embed_dim)
    ranks = {h: score_head(h, plan, images, texts, model.combiner, cfg.reference_weight)
             for h in cfg.head_list}
    heads = summarize(ranks, plan)
    t_score = time.monotonic()

    encodes = P.encode_counts(plan, len(cfg.head_list), n_encoded, n_cached)
    _log_encodes(encodes)
    results = P.build_results(
        heads=heads, tasks=tasks, plan=plan, skipped=skipped,
        model={"name": cfg.model, "pretrained": cfg.pretrained, "checkpoint": model.checkpoint,
               "backbone_fingerprint": fingerprint, "combiner_fingerprint": module_fingerprint(model.combiner),
               "embed_dim": model.backbone.embed_dim, "image_size": model.backbone.image_size,
               "context_length": model.backbone.context_length},
        data={"annotations": layout.annotations, "coco_root": layout.coco_root, "vg_root": layout.vg_root,
              "unknown_files": unknown,
              "fingerprint": _data_fingerprint({t: td.sha256 for t, td in tasks.items()}, cfg.max_templates)},
        encodes=encodes,
        timings={"plan_s": round(t_plan - t0, 2), "load_model_s": round(t_load - t_plan, 2),
                 "encode_s": round(t_encode - t_load, 2), "score_s": round(t_score - t_encode, 2),
                 "total_s": round(time.monotonic() - t0, 2)},
        config=pinned_dict(cfg))
    write_outputs(out, results)
    return results


def _table(rows: list[np.ndarray], dim: int) -> np.ndarray:
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), dtype=np.float32)


def _data_fingerprint(files: dict[str, str], max_templates: int) -> str:
    """One digest of the scored data: each task file's sha256 and the template cut."""
    return hashlib.sha256(json.dumps([files, max_templates], sort_keys=True).encode()).hexdigest()


def _log_encodes(enc: dict) -> None:
    for kind in ("images", "texts"):
        e = enc[kind]
        ratio = e["slots_all_heads"] / max(e["encoded"], 1)
        log.info("%s: %s encoded + %s from cache for %s slots (%s per head): %.1fx fewer encodes than slots",
                 kind, f"{e['encoded']:,}", f"{e['from_cache']:,}", f"{e['slots_all_heads']:,}",
                 f"{e['slots']:,}", ratio)


def write_outputs(out: storage.Location, results: dict) -> None:
    """results.md and the PNGs, then results.json LAST (the commit marker of a finished run)."""
    files = [(out.child("results.md"), results_markdown(results).encode())]
    files += [(out.child(name), data) for name, data in plots(results).items()]
    for loc, data in files:
        storage.write_bytes_atomic(loc, data)
    log.info("wrote %s", stage.write_manifest(out, results, RESULTS).uri)


# --------------------------------------------------------------------------------------- encode stage
class EncodeWorker:
    """A Ray Data actor: loads the model once, then encodes batches of image/text rows.

    Rows: ``kind`` (image|text), ``row`` (index into the driver's list), ``spec`` (JSON: [image_id, bbox]
    or the text), ``key`` (cache key).  A missing/unreadable image is returned as ``ok=False`` with the
    reason; every encoded batch is written to the cache (when one is set) as one part.
    """

    def __init__(self, spec: dict, fingerprint: str, vg_root: str, coco_root: str, cache: str | None,
                 gpus: float, cpus: float, model=None):
        import torch

        device = pick_device(gpus)
        if model is None:  # a Ray actor: its own model and thread budget
            torch.set_num_threads(max(1, int(cpus)))
            model = load_model(ModelSpec(**spec), device=device)
        found = backbone_fingerprint(model.backbone)
        if found != fingerprint:
            raise ModelError(f"an encode worker loaded a different model than the driver ({found[:12]} vs "
                             f"{fingerprint[:12]}): is the model's initialisation deterministic?")
        self.encoder = Encoder(model.backbone, device)
        self.reader = ImageReader(vg_root, coco_root)
        self.cache, self.fingerprint = cache, fingerprint

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        kinds = [str(k) for k in batch["kind"]]
        specs = [json.loads(s) for s in batch["spec"]]
        n = len(kinds)
        emb = np.zeros((n, self.encoder.backbone.embed_dim), dtype=np.float32)
        ok = np.ones(n, dtype=bool)
        reason = [""] * n
        images, image_rows = [], []
        for i, (kind, spec) in enumerate(zip(kinds, specs)):
            if kind != "image":
                continue
            item = Item(spec[0], tuple(spec[1]) if spec[1] is not None else None)
            try:
                images.append(self.reader.image(item))
                image_rows.append(i)
            except (OSError, storage.StorageError) as err:  # missing object, truncated or non-image file
                ok[i], reason[i] = False, f"{type(err).__name__}: {err}"
        text_rows = [i for i, k in enumerate(kinds) if k == "text"]
        if image_rows:
            emb[image_rows] = self.encoder.images(images)
        if text_rows:
            emb[text_rows] = self.encoder.texts([specs[i] for i in text_rows])
        if self.cache:
            good = [i for i in range(n) if ok[i]]
            C.write_part(self.cache, self.fingerprint, [str(batch["key"][i]) for i in good], emb[good])
        return {"kind": np.asarray(kinds), "row": np.asarray(batch["row"]), "ok": ok,
                "reason": np.asarray(reason), "embedding": emb}


def _rows(items: list[Item], texts: list[str], keys: dict, tkeys: dict) -> list[dict]:
    rows = [{"kind": "text", "row": i, "spec": json.dumps(t), "key": tkeys[t]} for i, t in enumerate(texts)]
    rows += [{"kind": "image", "row": i, "spec": json.dumps([it.image_id, list(it.bbox) if it.bbox else None]),
              "key": keys[it]} for i, it in enumerate(items)]
    return rows


def encode_stage(cfg: EvalConfig, spec: ModelSpec, fingerprint: str, reader: ImageReader, items: list[Item],
                 texts: list[str], keys: dict, tkeys: dict
                 ) -> tuple[dict[str, dict], dict[Item, tuple[str, str]]]:
    """Encode ``items`` and ``texts`` on Ray; returns ({image: {item: emb}, text: {text: emb}}, bad items)."""
    rows = _rows(items, texts, keys, tkeys)
    if not rows:
        log.info("every image and text is in the embedding cache: nothing to encode")
        return {"image": {}, "text": {}}, {}
    import ray

    init_ray(cfg)
    gpus, cpus, workers = _resources(cfg, len(rows))
    log.info("encoding %s images and %s texts with %d actor(s) (%s GPU, %s CPU each)", f"{len(items):,}",
             f"{len(texts):,}", workers, gpus, cpus if not gpus else 0)
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // cfg.batch_size, 4 * workers)))
    ds = ds.map_batches(
        EncodeWorker, batch_size=cfg.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=0 if gpus else cpus, num_gpus=gpus,
        fn_constructor_kwargs={"spec": {"name": spec.name, "pretrained": spec.pretrained,
                                        "checkpoint": spec.checkpoint},
                               "fingerprint": fingerprint, "vg_root": reader.vg_root,
                               "coco_root": reader.coco_root, "cache": cfg.cache, "gpus": gpus, "cpus": cpus})
    return _collect(cfg, ds.iter_batches(batch_size=None, batch_format="numpy"), items, texts, len(rows))


def encode_in_process(cfg: EvalConfig, model, fingerprint: str, reader: ImageReader,
                      items: list[Item], texts: list[str], keys: dict, tkeys: dict
                      ) -> tuple[dict[str, dict], dict[Item, tuple[str, str]]]:
    """:func:`encode_stage` without Ray: the same worker with the driver's model, batch after batch."""
    rows = _rows(items, texts, keys, tkeys)
    if not rows:
        return {"image": {}, "text": {}}, {}
    worker = EncodeWorker({}, fingerprint, reader.vg_root, reader.coco_root, cfg.cache, 0.0,
                          cfg.cpus_per_worker, model=model)
    batches = (worker({k: np.asarray([r[k] for r in rows[lo:lo + cfg.batch_size]]) for k in rows[0]})
               for lo in range(0, len(rows), cfg.batch_size))
    return _collect(cfg, batches, items, texts, len(rows))


def _collect(cfg: EvalConfig, batches, items: list[Item], texts: list[str], total: int
             ) -> tuple[dict[str, dict], dict[Item, tuple[str, str]]]:
    """Gather the workers' output batches into embeddings and bad items, with a progress line."""
    encoded: dict[str, dict] = {"image": {}, "text": {}}
    failed: dict[Item, tuple[str, str]] = {}
    progress = Progress("encode", total, unit="encodes", interval_s=cfg.progress_interval_s, emit=log.info)
    for batch in batches:
        for kind, row, ok, reason, emb in zip(batch["kind"], batch["row"], batch["ok"], batch["reason"],
                                              batch["embedding"]):
            if kind == "text":
                encoded["text"][texts[int(row)]] = emb
            elif ok:
                encoded["image"][items[int(row)]] = emb
            else:
                failed[items[int(row)]] = ("unreadable_image", str(reason))
        progress.update(done=len(batch["row"]), skipped=int((~batch["ok"]).sum()))
    progress.finish()
    return encoded, failed


def _resources(cfg: EvalConfig, n_rows: int) -> tuple[float, float, int]:
    """(GPUs per actor, CPUs per actor, actors): one actor per GPU, else as many as the CPUs allow."""
    import ray

    res = ray.cluster_resources()
    gpus = cfg.gpus_per_worker if cfg.gpus_per_worker >= 0 else (1.0 if res.get("GPU", 0) >= 1 else 0.0)
    if gpus > 0:
        workers = cfg.workers or max(1, int(res.get("GPU", 0) // gpus))
    else:
        workers = cfg.workers or max(1, int(res.get("CPU", 1) / cfg.cpus_per_worker) - 1)
    return gpus, cfg.cpus_per_worker, max(1, min(workers, -(-n_rows // cfg.batch_size)))


def init_ray(cfg: EvalConfig) -> None:
    """Join ``--ray-address`` / ``RAY_ADDRESS`` (or start a local instance); workers get the S3 env."""
    rayutil.init_ray(cfg.ray_address, extra_env={
        "TOKENIZERS_PARALLELISM": "false",
        **{k: os.environ[k] for k in ("HF_HUB_OFFLINE", "HF_HOME") if k in os.environ}})
