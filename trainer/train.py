"""Ray launcher of the trainer: ``python -m trainer clip|combiner ...`` (see trainer/__main__.py).

The driver

1. checks what it can before writing anything (the output is writable, the rows' Parquet, the tars and
   the ``--backbone`` checkpoint exist), then pins the config beside the run with the identity of those
   inputs (``cluster.config.pin_config``: a resume with another output-defining flag, or with inputs
   changed in place, is refused);
2. stops at once when the run's latest checkpoint is already at ``--max-steps`` (a finished run trains
   nothing);
3. builds the key → (tar, offset, size) image index once (one Ray task per tar; kept at
   ``{run}/data/image_index.parquet``) and resolves the training rows to image keys (a missing image is a
   counted skip; too many fail the run before any training);
4. with ``--finetune frozen`` (and the feature cache on) encodes each distinct image and condition once in
   a Ray Data stage into ``{run}/data/features/`` (reused by a resume; :mod:`trainer.features`);
5. streams the rows — planned from the latest checkpoint's data position each time a worker group
   starts (:class:`RunDataset`), decoded and preprocessed or looked up in the feature cache — through
   Ray Data ``map_batches`` into a ``TorchTrainer`` (``datasets=``), and
6. writes ``{run}/summary.json``.
"""
from __future__ import annotations

import functools
import os
import time
from collections import Counter
from typing import Any

from cluster import storage
from cluster.config import config_to_dict, pin_config
from trainer import checkpoint as ckpt
from trainer import data
from trainer.config import ClipConfig, CombinerConfig, TrainConfig
from trainer.negatives import parse_groups
from trainer.runstate import RunState

QUIET_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
             "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
MODES = {"clip": ClipConfig, "combiner": CombinerConfig}
FEATURES_DIR = ("data", "features")


class TrainingFailed(RuntimeError):
    """The run failed after its allowed restarts (the message names the worker's error)."""


def _say(text: str) -> None:
    print(text, flush=True)


def init_ray() -> None:
    """Join ``RAY_ADDRESS`` or start a private instance (cluster.rayutil), with quiet Train/Data logs."""
    from cluster.rayutil import init_ray as join

    os.environ.update(QUIET_ENV)  # the driver's own Train controller reads them too
    join(extra_env=QUIET_ENV)


# ------------------------------------------------------------------------------------------ inputs
def row_files(cfg: TrainConfig, mode: str) -> list[storage.Location]:
    """The Parquet files holding the training rows (captions or triplets)."""
    root = data.caption_root(cfg.captions) if mode == "clip" else cfg.triplets
    files = data.parquet_files(root)
    if not files:
        raise data.DataError(f"no Parquet files under {root}")
    return files


def backbone_checkpoint(cfg: TrainConfig, mode: str) -> str | None:
    """The concrete checkpoint a combiner run starts from (``--backbone``'s latest), or None."""
    if mode != "combiner" or not cfg.backbone:
        return None
    found = ckpt.latest_checkpoint(storage.require_input(cfg.backbone).uri)
    if found is None:
        raise ckpt.CheckpointError(f"--backbone {cfg.backbone} holds no complete checkpoint")
    return found


def check_inputs(cfg: TrainConfig, mode: str) -> tuple[dict[str, Any], str | None]:
    """Everything checkable before the run writes: returns the inputs' identity (pinned with the
    config) and the backbone checkpoint."""
    tars = data.find_tars(cfg.image_root())
    inputs = {"rows": storage.identity(row_files(cfg, mode)),
              "images": storage.identity([storage.resolve(t) for t in tars])}
    backbone = backbone_checkpoint(cfg, mode)
    if backbone is not None:
        inputs["backbone"] = {"checkpoint": backbone, "step": int(ckpt.read_info(backbone)["step"])}
    return inputs, backbone


def resume_point(run_uri: str) -> tuple[int, int]:
    """(step, data position) of the run's latest checkpoint; (0, 0) for a new run."""
    found = ckpt.latest_checkpoint(run_uri)
    if found is None:
        return 0, 0
    info = ckpt.read_info(found)
    return int(info["step"]), int(info.get("data_position", info["samples_seen"]))


# -------------------------------------------------------------------------------------- data plan
def image_index(images_uri: str, run: storage.Location) -> str:
    """The run's key → (tar, offset, size) index, built once (one Ray task per tar)."""
    import ray

    uri = run.child("data", "image_index.parquet").uri
    if storage.exists(storage.resolve(uri)):
        return uri
    tars = data.find_tars(images_uri)
    t0 = time.monotonic()
    task = ray.remote(num_cpus=0.25)(data.index_tar)
    tables = ray.get([task.remote(t) for t in tars])
    table = data.build_index(tars, tables)
    data.write_index(uri, tars, table)
    _say(f"[trainer] indexed {table.num_rows:,} images in {len(tars)} tar(s) in {time.monotonic() - t0:.1f}s")
    return uri


def training_rows(cfg: TrainConfig, mode: str, index_uri: str):
    """Resolved rows (image keys) and how many were dropped as missing images."""
    index = data.ImageIndex.load(index_uri)
    if mode == "clip":
        root = data.caption_root(cfg.captions)
        table = data.read_parquet_folder(root, ["key", "caption"] + (["url"] if _has_url(root) else []))
        rows, dropped = data.drop_missing(data.resolve_captions(table, index), ("key",))
    else:
        kind = ["kind"] if cfg.reference_negatives else []  # the miner writes it; hand-made rows may lack it
        table = data.read_parquet_folder(cfg.triplets, list(data.TRIPLET_COLUMNS) + kind)
        rows, dropped = data.drop_missing(data.resolve_triplets(table, index), ("ref", "target"))
    if rows.num_rows + dropped == 0:
        raise data.DataError("no training rows")
    return rows, dropped


def check_skips(cfg: TrainConfig, skips: Counter, total: int) -> None:
    """Fail before training when the rows already known to be unusable exceed --max-skip-fraction."""
    bad = sum(skips.values())
    if total == 0 or bad / total > cfg.max_skip_fraction:
        raise data.DataError(f"{bad} of {total} rows are unusable {dict(skips)} "
                             f"({bad / max(total, 1):.1%} > --max-skip-fraction {cfg.max_skip_fraction})")


def _has_url(root: str) -> bool:
    import pyarrow.parquet as pq

    first = data.parquet_files(root)[0]
    with first.fs.open_input_file(first.path) as src:
        return "url" in pq.read_schema(src).names


def backbone_loader(cfg: TrainConfig, checkpoint: str | None):
    """A picklable zero-argument loader of the run's starting backbone (for actors and workers)."""
    from trainer.model import load_backbone

    if checkpoint is not None:
        return functools.partial(_trained_backbone, checkpoint)
    return functools.partial(load_backbone, cfg.model, cfg.pretrained, cfg.seed)


def _trained_backbone(checkpoint: str):
    return ckpt.load_trained(checkpoint).backbone


# ------------------------------------------------------------------------------------ feature cache
def feature_cache(cfg: CombinerConfig, rows, index_uri: str, run: storage.Location,
                  backbone: str | None) -> tuple[str, dict]:
    """Encode each distinct image and condition of ``rows`` once (Ray Data actors holding the frozen
    backbone), unless the run's cache is complete already.  Returns its URI and its manifest."""
    from cluster.stage import finished, write_manifest
    from trainer import features
    from trainer.model import model_config

    out = run.child(*FEATURES_DIR)
    done = finished(out)
    if done is not None:
        _say(f"[trainer combiner] feature cache {out.uri}: reusing {done['images']:,} images and "
             f"{done['texts']:,} conditions")
        return out.uri, done
    storage.delete_tree(out)  # a cache without its manifest was cut short: encode again
    items = features.distinct_items(rows, cfg.distractor_negatives)
    t0 = time.monotonic()
    _encode(cfg, items, index_uri, out, backbone)
    failed = features.failed_items(out.uri)
    n_images = sum(1 for k in items["kind"].to_pylist() if k == "image")
    dim = int(ckpt.read_info(backbone)["embed_dim"] if backbone else model_config(cfg.model)["embed_dim"])
    manifest = {"images": n_images - len(failed), "texts": items.num_rows - n_images, "dim": dim,
                "failed": dict(Counter(failed.values())), "backbone": backbone or
                {"model": cfg.model, "pretrained": cfg.pretrained, "seed": cfg.seed},
                "transform": "eval", "encode_s": round(time.monotonic() - t0, 1)}
    write_manifest(out, manifest)
    _say(f"[trainer combiner] encoded {manifest['images']:,} images and {manifest['texts']:,} conditions once "
         f"({manifest['failed'] or 'none failed'}) in {manifest['encode_s']}s into {out.uri}")
    return out.uri, manifest


def _encode(cfg: CombinerConfig, items, index_uri: str, out: storage.Location, backbone: str | None) -> None:
    """``kind, item`` rows → Parquet parts of ``kind, item, feature, reason`` under ``out`` (Ray Data)."""
    import ray
    import torch

    from trainer.features import EncodeItems
    from trainer.optim import autocast_dtype

    n = max(1, -(-items.num_rows // cfg.data_batch))
    blocks = [items.slice(i * cfg.data_batch, cfg.data_batch) for i in range(n)]
    device = "cuda" if cfg.use_gpu else "cpu"
    kwargs = {"load": backbone_loader(cfg, backbone), "index_uri": index_uri, "device": device,
              "dtype": autocast_dtype(cfg.precision, torch.device(device))}
    ds = ray.data.from_arrow(blocks).map_batches(
        EncodeItems, batch_format="pyarrow", batch_size=cfg.data_batch, fn_constructor_kwargs=kwargs,
        compute=ray.data.ActorPoolStrategy(size=cfg.data_concurrency), num_cpus=cfg.data_cpus,
        num_gpus=1 if cfg.use_gpu else 0)
    ds.write_parquet(out.path, filesystem=out.fs)


def drop_failed(rows, failed: dict[str, str], roles: tuple[str, ...]):
    """Rows none of whose ``roles`` images failed to encode, and the dropped count by reason."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not failed:
        return rows, Counter()
    keys = pa.array(sorted(failed))
    bad = None
    for role in roles:
        hit = pc.is_in(rows[role], value_set=keys)
        bad = hit if bad is None else pc.or_(bad, hit)
    reasons = Counter()
    for i in pc.indices_nonzero(bad).to_pylist():
        first = next(rows[r][i].as_py() for r in roles if rows[r][i].as_py() in failed)
        reasons[failed[first]] += 1
    return rows.filter(pc.invert(bad)), reasons


# ------------------------------------------------------------------------------------------ dataset
def _model_name(cfg: TrainConfig, backbone: str | None) -> str:
    from trainer.model import register_config

    if backbone is None:
        return cfg.model
    info = ckpt.read_info(backbone)
    register_config(info["model"], info["model_cfg"])
    return info["model"]


def hard_negatives(cfg: TrainConfig) -> bool:
    """Whether batches carry hard negatives: swapped captions (clip) or mined distractors (combiner)."""
    return bool(getattr(cfg, "distractor_negatives", False) or getattr(cfg, "swap_negatives", ()))


def decoder(cfg: TrainConfig, mode: str, index_uri: str, state, backbone: str | None,
            features: tuple[str, int] | None = None) -> tuple[type, dict[str, Any]]:
    """The Ray Data actor class that turns planned rows into model inputs, and its constructor kwargs:
    image decoding + preprocessing (+ tokenising), or a lookup in the feature cache."""
    from trainer.model import load_backbone

    if features is not None:
        from trainer.features import LookupFeatures

        return LookupFeatures, dict(features_uri=features[0], dim=features[1],
                                    with_distractor=cfg.distractor_negatives,
                                    reference_kinds=cfg.reference_negatives, counter=state)
    bb = load_backbone(_model_name(cfg, backbone), None, crop_scale=cfg.crop_scale)  # transforms, tokenizer
    kwargs = dict(index_uri=index_uri, transform=bb.preprocess_train, tokenizer=bb.tokenizer, seed=cfg.seed,
                  image_size=bb.image_size, context_length=bb.context_length, counter=state)
    if mode == "clip":
        groups = parse_groups(cfg.swap_negatives) if cfg.swap_negatives else None
        return data.DecodeCaptions, {**kwargs, "swap_groups": groups}
    return data.DecodeTriplets, {**kwargs, "with_distractor": cfg.distractor_negatives,
                                 "reference_kinds": cfg.reference_negatives}


class RunDataset:
    """A run's training data as Ray Train asks for it each time a worker group starts (``datasets=`` takes
    this callable): the rows planned from the run's latest checkpoint, mapped by an actor pool.

    Planning at each start (not once in the driver) means a worker group that replaces a failed one
    reads from the checkpoint it resumes from, so nothing consumed before it is decoded again.  Blocks
    and map batches hold one worker's share of a step (``batch_size / num_workers`` rows) and the
    dataset keeps its order, so Ray Data's split hands block ``s·N + r`` to rank ``r`` and each global
    step consumes the next ``batch_size`` plan positions (up to skipped rows)."""

    def __init__(self, cfg: TrainConfig, rows, run_uri: str, state, udf: type, udf_kwargs: dict[str, Any]):
        import ray

        self.cfg, self.run_uri, self.state = cfg, run_uri, state
        self.rows = ray.put(rows)
        self.udf, self.udf_kwargs = udf, udf_kwargs

    def plan(self, rows, step: int, position: int):
        import pyarrow as pa

        cfg = self.cfg
        remaining = (cfg.max_steps - step) * cfg.batch_size
        count = int(remaining * (1 + cfg.max_skip_fraction)) + cfg.batch_size
        plan = data.plan_rows(rows.num_rows, position, count, cfg.seed)
        return pa.concat_tables(list(data.iter_planned(rows, plan, position, 1 << 16)))

    def __call__(self):
        import ray

        from cluster.rayutil import quiet_ray_data

        quiet_ray_data()  # this runs in Ray Train's controller, whose Ray Data context is the default one
        step, position = resume_point(self.run_uri)
        ray.get(self.state.plan.remote(step, position))
        table = self.plan(ray.get(self.rows), step, position)
        per_rank = self.cfg.batch_size // self.cfg.num_workers
        blocks = [table.slice(i, per_rank) for i in range(0, table.num_rows, per_rank)]
        return ray.data.from_arrow(blocks).map_batches(
            self.udf, fn_constructor_kwargs=self.udf_kwargs, batch_size=per_rank, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.cfg.data_concurrency), num_cpus=self.cfg.data_cpus)


# ---------------------------------------------------------------------------------------------- run
def run(cfg: TrainConfig, mode: str) -> dict[str, Any]:
    """Train (or resume, or do nothing for a finished run); returns the summary."""
    run_loc = storage.require_writable(storage.join_uri(cfg.storage_path, cfg.name))
    inputs, backbone = check_inputs(cfg, mode)
    pin_config(run_loc, cfg, f"trainer {mode} run", inputs=inputs)
    step, position = resume_point(run_loc.uri)
    if step >= cfg.max_steps:
        _say(f"[trainer {mode}] {run_loc.uri} is finished (step {step} of {cfg.max_steps}); nothing to train")
        return {"step": step, "trained_steps": 0, "finished": True}
    t0 = time.monotonic()
    init_ray()
    import ray

    index_uri = image_index(cfg.image_root(), run_loc)
    rows, skips, total, features = prepare_rows(cfg, mode, index_uri, run_loc, backbone)
    from cluster.rayutil import on_driver_node

    state = ray.remote(num_cpus=0, **on_driver_node())(RunState).remote(position)  # outlives a lost worker node
    udf, udf_kwargs = decoder(cfg, mode, index_uri, state, backbone, features)
    ds = RunDataset(cfg, rows, run_loc.uri, state, udf, udf_kwargs)
    _say(f"[trainer {mode}] {run_loc.uri}: {rows.num_rows:,} rows ({dict(skips) or 'none'} skipped), from "
         f"step {step} at position {position}, {cfg.num_workers} worker(s), global batch {cfg.batch_size}"
         + (", cached features" if features else ""))
    loop_config = {"mode": mode, "cfg": config_to_dict(cfg), "counter": state,
                   "metrics_uri": run_loc.child("metrics.jsonl").uri, "skipped_before": sum(skips.values()),
                   "hard_negatives": hard_negatives(cfg),
                   "threads": max(1, int(cfg.cpus_per_worker)), "backbone": backbone,
                   "cached_features": features is not None}
    _fit(cfg, loop_config, ds)
    return _summary(cfg, mode, run_loc, state, step, total, skips, t0)


def prepare_rows(cfg: TrainConfig, mode: str, index_uri: str, run_loc: storage.Location, backbone: str | None):
    """The usable training rows, the rows dropped by reason, the rows' total and — for a frozen combiner
    with the feature cache — ``(cache URI, feature dim)``.  Fails before any training when too many rows
    are unusable."""
    rows, missing = training_rows(cfg, mode, index_uri)
    total = rows.num_rows + missing
    skips = Counter({"missing_image": missing} if missing else {})
    features = None
    if mode == "combiner" and cfg.cached_features():
        check_skips(cfg, skips, total)  # before encoding anything
        uri, manifest = feature_cache(cfg, rows, index_uri, run_loc, backbone)
        roles = ("ref", "target") + (("distractor",) if cfg.distractor_negatives else ())
        rows, failed = drop_failed(rows, _failed(uri, manifest), roles)
        skips.update(failed)
        features = (uri, int(manifest["dim"]))
    check_skips(cfg, skips, total)
    return rows, skips, total, features


def _failed(features_uri: str, manifest: dict) -> dict[str, str]:
    from trainer.features import failed_items

    return failed_items(features_uri) if manifest.get("failed") else {}


def _fit(cfg: TrainConfig, loop_config: dict[str, Any], ds) -> None:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainer.loop import train_loop

    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True  # blocks reach the ranks in plan order (see build_dataset)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            storage_path=cfg.storage_path, name=cfg.name,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            worker_runtime_env={"env_vars": {**storage.worker_env(), **QUIET_ENV}}),
        datasets={"train": ds}, dataset_config=ray.train.DataConfig(execution_options=ingest))
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise TrainingFailed(_root_cause(err)) from err


def _summary(cfg: TrainConfig, mode: str, run_loc: storage.Location, state, step: int, total: int,
             skips: Counter, t0: float) -> dict[str, Any]:
    import ray

    totals = ray.get(state.totals.remote())
    final_step, _ = resume_point(run_loc.uri)
    skipped = dict(skips + Counter(totals["skipped"]))
    summary = {"mode": mode, "run": run_loc.uri, "step": final_step, "trained_steps": final_step - step,
               "finished": final_step >= cfg.max_steps, "rows": total, "skipped": skipped,
               "skipped_total": sum(skipped.values()), "attempts": totals.get("attempts", []),
               "wall_s": round(time.monotonic() - t0, 1)}
    storage.write_json(run_loc.child("summary.json"), summary)
    _say(f"[trainer {mode}] done: step {final_step}/{cfg.max_steps}, skipped {summary['skipped_total']} "
         f"{skipped or ''}, worker-group attempts from steps {summary['attempts']}, {summary['wall_s']}s")
    return summary


def _root_cause(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    named = [ln for ln in lines if "SkipLimitError" in ln or "DataError" in ln]
    return (named or lines or [repr(err)])[-1]
