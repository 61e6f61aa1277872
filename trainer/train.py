"""Ray launcher of the trainer: ``python -m trainer clip|combiner ...``.

The driver (1) pins the config beside the run, (2) stops at once when the run's latest checkpoint is
already at ``--max-steps``, (3) builds the key → (tar, offset, size) image index once (one Ray task per
tar; kept at ``{run}/data/image_index.parquet``), (4) resolves the training rows to image keys (missing
images are counted skips; too many fail before any training) and plans the row order from the latest
checkpoint's data position, (5) streams decode + preprocess through Ray Data ``map_batches`` into a
``TorchTrainer`` (``datasets=``), and (6) writes ``{run}/summary.json``.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import Any

from cluster import storage
from cluster.config import ConfigMismatch, config_to_dict, parse_config, pin_config
from trainer import checkpoint as ckpt
from trainer import data
from trainer.config import RUNTIME_FIELDS, ClipConfig, CombinerConfig, TrainConfig

QUIET_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
             "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
MODES = {"clip": ClipConfig, "combiner": CombinerConfig}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_ray(extra_env: dict[str, str] | None = None) -> None:
    """Connect to ``RAY_ADDRESS`` (or start a private local instance with a pinned dashboard port),
    giving workers the S3 variables and quiet Train/Data logs."""
    import ray

    try:
        from cluster import rayutil  # shared plumbing, when present
    except ImportError:
        rayutil = None
    env = {**QUIET_ENV, **(extra_env or {})}
    os.environ.update(QUIET_ENV)
    if rayutil is not None and hasattr(rayutil, "init_ray"):
        rayutil.init_ray(extra_env=env)
    elif not ray.is_initialized():
        runtime_env = {"env_vars": {**storage.worker_env(), **env}}
        if os.environ.get("RAY_ADDRESS"):
            # Train's placement-group cleaner must find this instance, not another one on the machine
            runtime_env["env_vars"]["RAY_ADDRESS"] = os.environ["RAY_ADDRESS"]
            ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=runtime_env, logging_level=logging.WARNING)
        else:
            port = _free_port()
            os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
            ray.init(runtime_env=runtime_env, logging_level=logging.WARNING, include_dashboard=False,
                     dashboard_host="127.0.0.1", dashboard_port=port)
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def _say(text: str) -> None:
    print(text, flush=True)


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


def resume_point(run_uri: str) -> tuple[int, int]:
    """(step, data position) of the run's latest checkpoint; (0, 0) for a new run."""
    found = ckpt.latest_checkpoint(run_uri)
    if found is None:
        return 0, 0
    info = ckpt.read_info(found)
    return int(info["step"]), int(info.get("data_position", info["samples_seen"]))


def training_rows(cfg: TrainConfig, mode: str, index_uri: str) -> tuple[Any, int]:
    """Resolved rows (image keys) and how many were dropped as missing images."""
    index = data.ImageIndex.load(index_uri)
    if mode == "clip":
        root = data.caption_root(cfg.captions)
        table = data.read_parquet_folder(root, ["key", "caption"] + (["url"] if _has_url(root) else []))
        rows, dropped = data.drop_missing(data.resolve_captions(table, index), ("key",))
    else:
        table = data.read_parquet_folder(cfg.triplets, list(data.TRIPLET_COLUMNS))
        rows, dropped = data.drop_missing(data.resolve_triplets(table, index), ("ref", "target"))
    total = rows.num_rows + dropped
    if total == 0:
        raise data.DataError("no training rows")
    if dropped / total > cfg.max_skip_fraction:
        raise data.DataError(f"{dropped} of {total} rows name images missing from the tars "
                             f"({dropped / total:.1%} > --max-skip-fraction {cfg.max_skip_fraction})")
    return rows, dropped


def _has_url(root: str) -> bool:
    import pyarrow.parquet as pq

    first = storage.list_files(storage.resolve(root), ".parquet")[0]
    with first.fs.open_input_file(first.path) as src:
        return "url" in pq.read_schema(src).names


def build_dataset(cfg: TrainConfig, mode: str, rows, index_uri: str, position: int, step: int, state):
    """The planned rows from ``position``, decoded and preprocessed by an actor pool (Ray Data)."""
    import pyarrow as pa
    import ray

    from trainer.model import load_backbone, register_config

    remaining = (cfg.max_steps - step) * cfg.batch_size
    count = int(remaining * (1 + cfg.max_skip_fraction)) + cfg.batch_size
    plan = data.plan_rows(rows.num_rows, position, count, cfg.seed)
    table = pa.concat_tables(list(data.iter_planned(rows, plan, position, 1 << 16)))
    ds = ray.data.from_arrow(table)
    if mode == "combiner" and cfg.backbone:
        info = ckpt.read_info(ckpt.latest_checkpoint(cfg.backbone))
        register_config(info["model"], info["model_cfg"])
        name = info["model"]
    else:
        name = cfg.model
    bb = load_backbone(name, None)  # transforms and tokenizer only
    kwargs = dict(index_uri=index_uri, transform=bb.preprocess_train, tokenizer=bb.tokenizer, seed=cfg.seed,
                  image_size=bb.image_size, context_length=bb.context_length, counter=state)
    if mode == "clip":
        udf = data.DecodeCaptions
    else:
        udf, kwargs["with_distractor"] = data.DecodeTriplets, cfg.distractor_negatives
    return ds.map_batches(udf, fn_constructor_kwargs=kwargs, batch_size=cfg.data_batch,
                          compute=ray.data.ActorPoolStrategy(size=cfg.data_concurrency), num_cpus=cfg.data_cpus,
                          batch_format="numpy")


def run(cfg: TrainConfig, mode: str) -> dict[str, Any]:
    """Train (or resume, or do nothing for a finished run); returns the summary."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainer.loop import train_loop

    cfg.validate()
    run_loc = storage.require_writable(storage.join_uri(cfg.storage_path, cfg.name))
    current = {"mode": mode, **config_to_dict(cfg)}
    pin_config(run_loc, current, [k for k in current if k not in RUNTIME_FIELDS], what=f"trainer {mode} run")
    step, position = resume_point(run_loc.uri)
    if step >= cfg.max_steps:
        _say(f"[trainer {mode}] {run_loc.uri} is finished (step {step} of {cfg.max_steps}); nothing to train")
        return {"step": step, "trained_steps": 0, "finished": True}
    t0 = time.monotonic()
    init_ray()
    images = cfg.images or cfg.captions if mode == "clip" else cfg.images
    index_uri = image_index(images, run_loc)
    rows, missing = training_rows(cfg, mode, index_uri)
    state = ray.remote(num_cpus=0)(data.RunState).remote()
    ds = build_dataset(cfg, mode, rows, index_uri, position, step, state)
    _say(f"[trainer {mode}] {run_loc.uri}: {rows.num_rows:,} rows ({missing} missing images skipped), "
         f"from step {step} at position {position}, {cfg.num_workers} worker(s), global batch {cfg.batch_size}")
    loop_config = {"mode": mode, "cfg": config_to_dict(cfg), "start_position": position, "counter": state,
                   "metrics_uri": run_loc.child("metrics.jsonl").uri, "skipped_before": missing,
                   "rows_before": missing, "distractor": getattr(cfg, "distractor_negatives", False),
                   "threads": max(1, int(cfg.cpus_per_worker))}
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
        datasets={"train": ds})
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise TrainingFailed(_root_cause(err)) from err
    totals = ray.get(state.totals.remote())
    final_step, _ = resume_point(run_loc.uri)
    skipped = {**totals["skipped"], **({"missing_image": totals["skipped"].get("missing_image", 0) + missing}
                                       if missing else {})}
    summary = {"mode": mode, "run": run_loc.uri, "step": final_step, "trained_steps": final_step - step,
               "finished": final_step >= cfg.max_steps, "rows": rows.num_rows + missing,
               "skipped": skipped, "skipped_total": sum(skipped.values()),
               "wall_s": round(time.monotonic() - t0, 1)}
    storage.write_json(run_loc.child("summary.json"), summary)
    _say(f"[trainer {mode}] done: step {final_step}/{cfg.max_steps}, skipped {summary['skipped_total']} "
         f"{skipped or ''}, {summary['wall_s']}s")
    return summary


class TrainingFailed(RuntimeError):
    """The run failed after its allowed restarts (the message names the worker's error)."""


def _root_cause(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    named = [ln for ln in lines if "SkipLimitError" in ln or "DataError" in ln]
    return (named or lines or [repr(err)])[-1]


USAGE = "usage: python -m trainer {clip|combiner} [--help] ..."


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in MODES:
        print(USAGE, file=sys.stderr)
        return 2
    mode, rest = argv[0], argv[1:]
    cfg = parse_config(MODES[mode], rest, prog=f"python -m trainer {mode}")
    try:
        run(cfg, mode)
    except (storage.StorageError, ConfigMismatch, data.DataError, ckpt.CheckpointError, ValueError) as err:
        print(f"trainer {mode}: error: {err}", file=sys.stderr)
        return 2
    except TrainingFailed as err:
        print(f"trainer {mode}: training failed: {err}", file=sys.stderr)
        return 1
    return 0
