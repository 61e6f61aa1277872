"""The per-worker training loop (runs inside Ray Train; everything it calls is Ray-free)."""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from cluster import storage
from trainer import checkpoint as ckpt
from trainer.config import ClipConfig, CombinerConfig, TrainConfig
from trainer.loss import mean_over_ranks, world
from trainer.model import Combiner, load_backbone, model_config, set_finetune
from trainer.optim import (autocast_dtype, build_optimizer, build_scheduler, make_scaler, train_step)
from trainer.tasks import ClipTask, CombinerTask

MIN_ROWS_FOR_SKIP_CHECK = 50


class SkipLimitError(RuntimeError):
    """More rows were skipped than --max-skip-fraction allows."""


@dataclass
class Setup:
    """Everything a run trains: the task module, its parts, optimiser, schedule, scaler."""

    task: nn.Module
    backbone: nn.Module
    combiner: Combiner | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    model_cfg: dict
    dtype: torch.dtype | None


def build(cfg: TrainConfig, mode: str, device: torch.device) -> Setup:
    """Model, task and optimiser of a run at step 0 (weights from --backbone / --pretrained / seed)."""
    if mode == "combiner" and cfg.backbone:
        trained = ckpt.load_trained(cfg.backbone)
        backbone, model_cfg = trained.backbone, trained.info["model_cfg"]
        backbone.model.train()
    else:
        backbone, model_cfg = load_backbone(cfg.model, cfg.pretrained, seed=cfg.seed), model_config(cfg.model)
    model = backbone.model
    if mode == "clip":
        set_finetune(model, "whole")
        task, combiner = ClipTask(model), None
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        set_finetune(model, cfg.finetune)
        for name in ("logit_scale", "logit_bias"):  # unused by the Combiner loss
            if getattr(model, name, None) is not None:
                getattr(model, name).requires_grad_(False)
        torch.manual_seed(cfg.seed + 1)  # this worker process's RNG: the Combiner's init, equal on all ranks
        combiner = Combiner(backbone.embed_dim, cfg.projection_dim, cfg.hidden_dim, cfg.dropout)
        task = CombinerTask(model, combiner, temperature=cfg.temperature, learn_temperature=cfg.learn_temperature,
                            symmetric=cfg.symmetric)
        head = list(combiner.parameters()) + ([task.log_scale] if cfg.learn_temperature else [])
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]},
                  {"params": head, **({"lr": cfg.combiner_lr} if cfg.combiner_lr else {})}]
    task.to(device)
    optimizer = build_optimizer(groups, cfg.optim())
    dtype = autocast_dtype(cfg.precision, device)
    return Setup(task=task, backbone=model, combiner=combiner, optimizer=optimizer,
                 scheduler=build_scheduler(optimizer, cfg.optim()), scaler=make_scaler(dtype),
                 model_cfg=model_cfg, dtype=dtype)


def restore(setup: Setup, directory: str) -> dict[str, Any]:
    """Load a checkpoint folder into a built run; returns its train state (step, samples, position)."""
    ckpt.load_state_into(directory, setup.backbone, setup.combiner)
    state = ckpt.read_train_state(directory)
    setup.optimizer.load_state_dict(state["optimizer"])
    setup.scheduler.load_state_dict(state["scheduler"])
    if setup.scaler is not None and state.get("scaler"):
        setup.scaler.load_state_dict(state["scaler"])
    if "log_scale" in state and isinstance(setup.task, CombinerTask):
        setup.task.log_scale.data.copy_(state["log_scale"])
    return state


def save(setup: Setup, directory: str, cfg: TrainConfig, mode: str, step: int, samples: int,
         position: int) -> None:
    state = {"optimizer": setup.optimizer.state_dict(), "scheduler": setup.scheduler.state_dict(),
             "scaler": setup.scaler.state_dict() if setup.scaler is not None else None,
             "data_position": position}
    if isinstance(setup.task, CombinerTask):
        state["log_scale"] = setup.task.log_scale.detach().clone()
    ckpt.save_checkpoint(directory, mode=mode, model_name=cfg.model, model_cfg=setup.model_cfg,
                         backbone=setup.backbone, combiner=setup.combiner, train_state=state, step=step,
                         samples_seen=samples, extra={"data_position": position})


@dataclass
class MetricsLog:
    """``metrics.jsonl`` of a run, kept in memory on rank 0 and rewritten whole (S3 cannot append)."""

    uri: str
    lines: list[str] = field(default_factory=list)
    dirty: bool = False

    @classmethod
    def open(cls, uri: str, upto_step: int) -> "MetricsLog":
        loc = storage.resolve(uri)
        lines = []
        if storage.exists(loc):  # drop lines past the checkpoint we resume from: they are redone
            lines = [ln for ln in storage.read_bytes(loc).decode().splitlines()
                     if ln.strip() and json.loads(ln)["step"] <= upto_step]
        return cls(uri, lines)

    def append(self, record: dict[str, Any]) -> None:
        self.lines.append(json.dumps(record, sort_keys=True))
        self.dirty = True

    def flush(self) -> None:
        if self.dirty:
            storage.write_bytes_atomic(storage.resolve(self.uri), ("\n".join(self.lines) + "\n").encode())
            self.dirty = False


def _quiet() -> None:
    for name in ("ray.train", "ray.data", "ray.train.v2._internal.execution.context"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("ray.train") or name.endswith("context.py"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _batch_for(mode: str, raw: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if mode == "clip":
        keys = {"images": "images", "tokens": "tokens"}
    else:
        keys = {k: k for k in ("ref", "text", "target", "distractor", "distractor_valid") if k in raw}
    return {dst: raw[src].to(device, non_blocking=True) for dst, src in keys.items()}


def dtypes(mode: str, distractor: bool) -> dict[str, torch.dtype]:
    if mode == "clip":
        return {"images": torch.float32, "tokens": torch.int64, "position": torch.int64}
    out = {"ref": torch.float32, "target": torch.float32, "text": torch.int64, "position": torch.int64}
    if distractor:
        out.update(distractor=torch.float32, distractor_valid=torch.bool)
    return out


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point: resume, train to ``max_steps``, report every step, checkpoint every N."""
    import ray
    import ray.train

    _quiet()
    mode = config["mode"]
    cfg = (ClipConfig if mode == "clip" else CombinerConfig)(**config["cfg"])
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    rank, size = world()
    device = torch.device("cuda", ray.train.torch.get_device().index or 0) if cfg.use_gpu else torch.device("cpu")
    setup = build(cfg, mode, device)
    step, samples, position = 0, 0, int(config["start_position"])
    found = ray.train.get_checkpoint()
    if found is not None:
        with found.as_directory() as directory:
            state = restore(setup, directory)
        step, samples, position = int(state["step"]), int(state["samples_seen"]), int(state["data_position"])
    if step >= cfg.max_steps:
        return  # a finished run: nothing to train (every rank returns without reporting)
    task = setup.task
    if size > 1:
        task = nn.parallel.DistributedDataParallel(task, device_ids=[device.index] if device.type == "cuda" else None)
    metrics_log = MetricsLog.open(config["metrics_uri"], step) if rank == 0 else None
    counter = config["counter"]
    if rank == 0:  # decoders drop rows consumed before this checkpoint (a restarted attempt re-reads the plan)
        ray.get(counter.set_min_position.remote(position))
    if size > 1:
        torch.distributed.barrier()
    shard = ray.train.get_dataset_shard("train")
    batches: Iterator = iter(shard.iter_torch_batches(batch_size=cfg.batch_size // size, drop_last=True,
                                                      dtypes=dtypes(mode, config.get("distractor", False)),
                                                      prefetch_batches=2))
    last_progress = start = time.monotonic()
    wait_total = run_total = 0.0
    steps_done = 0
    skipped_fixed, planned_fixed = int(config.get("skipped_before", 0)), int(config.get("rows_before", 0))
    skips_ok, skip_message = True, ""
    while step < cfg.max_steps:
        t0 = time.monotonic()
        raw = next(batches, None)
        t1 = time.monotonic()
        flags = torch.tensor([0.0 if raw is None else 1.0, 1.0 if skips_ok else 0.0])
        if size > 1:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
        if flags[1].item() == 0:
            raise SkipLimitError(skip_message)
        if flags[0].item() == 0:
            raise SkipLimitError(f"ran out of training rows at step {step} of {cfg.max_steps}: more rows were "
                                 "skipped than the plan allows (see the skip counts in metrics.jsonl)")
        out = train_step(task, _batch_for(mode, raw, device), setup.optimizer, setup.scheduler, setup.scaler,
                         device=device, dtype=setup.dtype, grad_clip=cfg.grad_clip)
        pos_t = raw["position"].max().reshape(1).clone()
        if size > 1:
            torch.distributed.all_reduce(pos_t, op=torch.distributed.ReduceOp.MAX)
        position = max(position, int(pos_t.item()) + 1)
        step += 1
        samples += cfg.batch_size
        t2 = time.monotonic()
        wait_total += t1 - t0
        run_total += t2 - t0
        steps_done += 1
        loss = mean_over_ranks(out["loss_local"])
        metrics = {"step": step, "loss": loss, "lr": out["lr"], "temperature": out.get("temperature"),
                   "samples_seen": samples, "samples_per_s": cfg.batch_size / max(t2 - t0, 1e-9),
                   "data_wait_s": t1 - t0, "data_wait_fraction": wait_total / max(run_total, 1e-9),
                   "grad_norm": out["grad_norm"]}
        if rank == 0 and counter is not None and (t2 - last_progress >= cfg.progress_s or step == cfg.max_steps):
            totals = ray.get(counter.totals.remote())
            metrics["skipped"] = skipped_fixed + sum(totals["skipped"].values())
            metrics["skipped_by_reason"] = totals["skipped"]
            attempted = planned_fixed + totals["attempted"]
            fraction = metrics["skipped"] / max(attempted, 1)
            if attempted >= MIN_ROWS_FOR_SKIP_CHECK and fraction > cfg.max_skip_fraction:
                skips_ok = False
                skip_message = (f"{metrics['skipped']} of {attempted} rows skipped ({fraction:.1%} > "
                                f"--max-skip-fraction {cfg.max_skip_fraction}): {totals['skipped']}")
        if rank == 0:
            metrics_log.append(metrics)
        is_ckpt = step % cfg.checkpoint_every == 0 or step == cfg.max_steps
        report = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if is_ckpt:
            if rank == 0:
                with tempfile.TemporaryDirectory() as tmp:
                    save(setup, tmp, cfg, mode, step, samples, position)
                    metrics_log.flush()
                    ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                     checkpoint_dir_name=f"step_{step:06d}")
            else:
                ray.train.report(report, checkpoint=None, checkpoint_dir_name=f"step_{step:06d}")
        else:
            ray.train.report(report)
        if rank == 0 and (t2 - last_progress >= cfg.progress_s or step == cfg.max_steps):
            last_progress = t2
            elapsed = t2 - start
            rate = steps_done * cfg.batch_size / max(elapsed, 1e-9)
            eta = (cfg.max_steps - step) * cfg.batch_size / max(rate, 1e-9)
            print(f"[trainer {mode}] step {step}/{cfg.max_steps} | loss {loss:.4f} | lr {out['lr']:.2e} | "
                  f"{rate:,.1f} samples/s | data wait {100 * wait_total / max(run_total, 1e-9):.0f}% | "
                  f"skipped {metrics.get('skipped', 0)} | ETA {eta:,.0f}s", flush=True)
            metrics_log.flush()
    if rank == 0:
        metrics_log.flush()
