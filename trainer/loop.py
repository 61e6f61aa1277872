"""The per-worker training loop (runs inside Ray Train; everything it calls is Ray-free)."""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from cluster import storage
from trainer import checkpoint as ckpt
from trainer.config import ClipConfig, CombinerConfig, TrainConfig
from trainer.loss import mean_over_ranks, world
from trainer.model import Combiner, load_backbone, model_config, seeded, set_finetune
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
    model_name: str
    dtype: torch.dtype | None


def build(cfg: TrainConfig, mode: str, device: torch.device, backbone_ckpt: str | None = None,
          cached_features: bool = False) -> Setup:
    """Model, task and optimiser of a run at step 0 (weights from the ``--backbone`` checkpoint the
    driver resolved, or --pretrained, or the seed).  With ``cached_features`` the task takes raw features
    (the frozen backbone is kept only to be saved in checkpoints)."""
    if mode == "combiner" and backbone_ckpt:
        trained = ckpt.load_trained(backbone_ckpt)
        backbone, model_cfg, name = trained.backbone, trained.info["model_cfg"], trained.info["model"]
        backbone.model.train()
    else:
        backbone, model_cfg = load_backbone(cfg.model, cfg.pretrained, seed=cfg.seed), model_config(cfg.model)
        name = cfg.model
    model = backbone.model
    if mode == "clip":
        set_finetune(model, "whole")
        task, combiner = ClipTask(model), None
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        set_finetune(model, cfg.finetune)
        for attr in ("logit_scale", "logit_bias"):  # unused by the Combiner loss
            if getattr(model, attr, None) is not None:
                getattr(model, attr).requires_grad_(False)
        if cfg.finetune == "frozen":
            model.eval()  # a frozen backbone encodes as at evaluation (BatchNorm statistics, no dropout)
        with seeded(cfg.seed + 1):  # the Combiner's init, equal on all ranks
            combiner = Combiner(backbone.embed_dim, cfg.projection_dim, cfg.hidden_dim, cfg.dropout)
        task = CombinerTask(None if cached_features else model, combiner, temperature=cfg.temperature,
                            learn_temperature=cfg.learn_temperature, symmetric=cfg.symmetric)
        head = list(combiner.parameters()) + ([task.log_scale] if cfg.learn_temperature else [])
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]},
                  {"params": head, **({"lr": cfg.combiner_lr} if cfg.combiner_lr else {})}]
    task.to(device)
    optimizer = build_optimizer(groups, cfg.optim())
    dtype = autocast_dtype(cfg.precision, device)
    return Setup(task=task, backbone=model, combiner=combiner, optimizer=optimizer,
                 scheduler=build_scheduler(optimizer, cfg.optim()), scaler=make_scaler(dtype),
                 model_cfg=model_cfg, model_name=name, dtype=dtype)


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
    ckpt.save_checkpoint(directory, mode=mode, model_name=setup.model_name, model_cfg=setup.model_cfg,
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
        keys = {k: k for k in ("images", "tokens", "neg_tokens", "neg_valid") if k in raw}
    else:
        keys = {k: k for k in ("ref", "text", "target", "distractor", "distractor_valid", "reference_valid")
                if k in raw}
    return {dst: raw[src].to(device, non_blocking=True) for dst, src in keys.items()}


def dtypes(mode: str, hard_negatives: bool, cached_features: bool = False,
           reference_negatives: bool = False) -> dict[str, torch.dtype]:
    """Every column of a batch and its dtype (``iter_torch_batches`` needs them all).  ``hard_negatives``:
    the swapped captions (clip) or the mined distractors (combiner) are in the batch;
    ``reference_negatives``: the combiner batch says which references are negatives."""
    if mode == "clip":
        out = {"images": torch.float32, "tokens": torch.int64, "position": torch.int64}
        if hard_negatives:
            out.update(neg_tokens=torch.int64, neg_valid=torch.bool)
        return out
    text = torch.float32 if cached_features else torch.int64  # raw features, or tokens
    out = {"ref": torch.float32, "target": torch.float32, "text": text, "position": torch.int64}
    if hard_negatives:
        out.update(distractor=torch.float32, distractor_valid=torch.bool)
    if reference_negatives:
        out.update(reference_valid=torch.bool)
    return out


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one rank's step (dropout masks): a function of (seed, step, rank) only, so a
    resumed run draws the masks the uninterrupted run would have drawn."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] % (2 ** 63))


@dataclass
class SkipWatch:
    """Rank 0's running check of the rows skipped while decoding (the driver checked the rows it dropped
    before planning against the whole table); ``metrics['skipped']`` counts both."""

    limit: float
    skipped_before: int = 0
    ok: bool = True
    message: str = ""

    def update(self, totals: dict[str, Any], metrics: dict[str, Any]) -> None:
        skipped = sum(totals["skipped"].values())
        metrics["skipped"] = self.skipped_before + skipped
        metrics["skipped_by_reason"] = totals["skipped"]
        attempted = totals["attempted"]
        if attempted >= MIN_ROWS_FOR_SKIP_CHECK and skipped / attempted > self.limit:
            self.ok = False
            self.message = (f"{skipped} of {attempted} rows skipped while decoding ({skipped / attempted:.1%} > "
                            f"--max-skip-fraction {self.limit}): {totals['skipped']}")


def _agree(flags: list[float], size: int) -> list[float]:
    """The minimum of each flag over ranks (every rank takes the same branch)."""
    t = torch.tensor(flags)
    if size > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return t.tolist()


def _max_over_ranks(value: int, size: int) -> int:
    t = torch.tensor([value], dtype=torch.int64)
    if size > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def _checkpoint(setup: Setup, cfg: TrainConfig, mode: str, rank: int, step: int, samples: int, position: int,
                metrics: dict[str, Any], metrics_log: MetricsLog | None) -> None:
    """Every N steps and at the last: ``ray.train.report`` on every rank (the same number of times) with
    rank 0's checkpoint.

    Only checkpoint steps are reported to Ray Train: Train V2 queues one result per worker and its
    controller takes one per poll (every 2 s), so a report per step would cap a run at 0.5 steps/s
    (measured: 2.3 s per step around a 0.1 s step).  Every step's metrics go to ``metrics.jsonl``."""
    import ray.train

    if not (step % cfg.checkpoint_every == 0 or step == cfg.max_steps):
        return
    report = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if rank != 0:
        ray.train.report(report, checkpoint=None, checkpoint_dir_name=f"step_{step:06d}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        save(setup, tmp, cfg, mode, step, samples, position)
        metrics_log.flush()
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"step_{step:06d}")


def _check_plan(planned: tuple[int, int] | None, step: int, position: int) -> None:
    """The dataset of this worker group must start where the checkpoint it resumes from stopped."""
    if planned is not None and tuple(planned) != (step, position):
        raise RuntimeError(f"the data plan starts at step {planned[0]}, position {planned[1]}, but the worker "
                           f"group resumes from step {step}, position {position}")


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point: resume, train to ``max_steps``, log every step, checkpoint (and report) every N."""
    import ray
    import ray.train

    _quiet()
    mode = config["mode"]
    cfg = (ClipConfig if mode == "clip" else CombinerConfig)(**config["cfg"])
    cached = bool(config.get("cached_features", False))
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    rank, size = world()
    device = torch.device("cuda", ray.train.torch.get_device().index or 0) if cfg.use_gpu else torch.device("cpu")
    setup = build(cfg, mode, device, config.get("backbone"), cached)
    step, samples, position = 0, 0, 0
    found = ray.train.get_checkpoint()
    if found is not None:
        with found.as_directory() as directory:
            state = restore(setup, directory)
        step, samples, position = int(state["step"]), int(state["samples_seen"]), int(state["data_position"])
    if step >= cfg.max_steps:
        return  # a finished run: nothing to train (every rank returns without reporting)
    resumed_from = step
    task = setup.task
    if size > 1:
        task = nn.parallel.DistributedDataParallel(task, device_ids=[device.index] if device.type == "cuda" else None)
    metrics_log = MetricsLog.open(config["metrics_uri"], step) if rank == 0 else None
    counter = config["counter"]
    if rank == 0:
        _check_plan(ray.get(counter.last_plan.remote()), step, position)
        ray.get(counter.start_attempt.remote(step))
    shard = ray.train.get_dataset_shard("train")
    batches: Iterator = iter(shard.iter_torch_batches(
        batch_size=cfg.batch_size // size, drop_last=True, prefetch_batches=2,
        dtypes=dtypes(mode, config.get("hard_negatives", False), cached,
                      bool(getattr(cfg, "reference_negatives", ())))))
    clock = StepClock()
    last_progress = clock.start
    watch = SkipWatch(cfg.max_skip_fraction, int(config.get("skipped_before", 0)))
    while step < cfg.max_steps:
        clock.ask()
        raw = next(batches, None)
        clock.got_batch()
        have_batch, skips_ok = _agree([0.0 if raw is None else 1.0, 1.0 if watch.ok else 0.0], size)
        if not skips_ok:
            raise SkipLimitError(watch.message or "another rank exceeded --max-skip-fraction")
        if not have_batch:
            raise SkipLimitError(f"ran out of training rows at step {step} of {cfg.max_steps}: more rows were "
                                 "skipped than the plan allows (see the skip counts in metrics.jsonl)")
        torch.manual_seed(step_seed(cfg.seed, step, rank))  # dropout masks of this step and rank
        out = train_step(task, _batch_for(mode, raw, device), setup.optimizer, setup.scheduler, setup.scaler,
                         device=device, dtype=setup.dtype, grad_clip=cfg.grad_clip)
        position = max(position, _max_over_ranks(int(raw["position"].max()), size) + 1)
        step += 1
        samples += cfg.batch_size
        loss = mean_over_ranks(out["loss_local"])
        metrics = {"step": step, "loss": loss, "lr": out["lr"], "temperature": out.get("temperature"),
                   "samples_seen": samples, "grad_norm": out["grad_norm"], "data_position": position,
                   "resumed_from": resumed_from, **clock.stepped(cfg.batch_size)}
        show = rank == 0 and (clock.now - last_progress >= cfg.progress_s or step == cfg.max_steps)
        if show:
            watch.update(ray.get(counter.totals.remote()), metrics)
        if rank == 0:
            metrics_log.append(metrics)
        _checkpoint(setup, cfg, mode, rank, step, samples, position, metrics, metrics_log)
        if show:
            last_progress = clock.now
            _progress_line(mode, cfg, step, loss, out["lr"], clock, metrics.get("skipped", 0))
            metrics_log.flush()
    if rank == 0:
        metrics_log.flush()


@dataclass
class StepClock:
    """Wall time of each step, end to end (batch wait + step + this rank's share of checkpoint and
    progress work before the next batch is asked for), and the time spent waiting for data.

    The first step of an attempt waits for the data pipeline to start: it is logged (``data_wait_s``) but
    left out of the running data-wait fraction and the rate, which describe the steady state."""

    start: float = field(default_factory=time.monotonic)
    last: float = 0.0
    now: float = 0.0
    asked: float = 0.0
    waited: float = 0.0
    wait_total: float = 0.0
    run_total: float = 0.0
    steps: int = 0

    def __post_init__(self) -> None:
        self.last = self.now = self.start

    def ask(self) -> None:
        self.asked = time.monotonic()

    def got_batch(self) -> None:
        self.waited = time.monotonic() - self.asked

    def stepped(self, batch: int) -> dict[str, float]:
        self.now = time.monotonic()
        step_s = self.now - self.last
        if self.steps:  # steady state only
            self.wait_total += self.waited
            self.run_total += step_s
        self.steps += 1
        self.last = self.now
        return {"step_s": step_s, "samples_per_s": batch / max(step_s, 1e-9), "data_wait_s": self.waited,
                "data_wait_fraction": self.wait_fraction()}

    def wait_fraction(self) -> float:
        return self.wait_total / self.run_total if self.run_total else 0.0

    def rate(self, batch: int) -> float:
        return (self.steps - 1) * batch / self.run_total if self.run_total else 0.0


def _progress_line(mode: str, cfg: TrainConfig, step: int, loss: float, lr: float, clock: StepClock,
                   skipped: int) -> None:
    rate = clock.rate(cfg.batch_size)
    eta = f"{(cfg.max_steps - step) * cfg.batch_size / rate:,.0f}s" if rate else "?"
    print(f"[trainer {mode}] step {step}/{cfg.max_steps} | loss {loss:.4f} | lr {lr:.2e} | {rate:,.1f} samples/s | "
          f"data wait {100 * clock.wait_fraction():.0f}% | skipped {skipped} | ETA {eta}", flush=True)
