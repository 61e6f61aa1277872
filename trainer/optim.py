"""Optimiser, schedule, precision and the one training step, Ray-free.

Deliberate deviations from the released GeneCIS code (GENECIS.md §3.2–3.3), all documented here:

* **Gradient clipping after unscaling.** GeneCIS clips the *loss-scaled* fp16 gradients (so the true
  backbone gradient norm is capped near 1/scale) and skips the Combiner.  We call ``scaler.unscale_``
  first and clip the true gradients of every trainable parameter (backbone and Combiner) to
  ``grad_clip``.  Without a GradScaler (fp32, bf16) there is nothing to unscale.
* **Cosine per step** (with optional linear warm-up) to ``min_lr`` over ``max_steps``, instead of one
  cosine step per epoch: the same curve, sampled finely, and independent of how a run is cut into epochs.
* **AMP by request on CPU**: ``auto`` is bf16 autocast on GPU and fp32 on CPU; ``bf16`` autocasts on
  either (CPUs with bf16 instructions run the convolutions and matmuls ~1.4x faster); fp16 + GradScaler
  is GPU only.
* **Math attention for bf16 on CPU**: PyTorch's CPU flash-attention kernel is slow on the short sequences
  of a small text tower (its backward took 39 % of the tiny text tower's time); under bf16 autocast on CPU
  the training step runs scaled-dot-product attention as plain matmul + softmax instead (the same function,
  computed in another order: a tiny-rn CLIP step of 128 images with 128 swap negatives, one thread, 1.29x
  faster; in fp32 the two are as fast, so fp32 keeps PyTorch's kernel and its exact results;
  ``bench/attention_cpu.py``).  GPUs keep PyTorch's choice.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class OptimSettings:
    """The optimiser part of a stage config."""

    lr: float
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr: float = 1e-9
    grad_clip: float = 1.0
    max_steps: int = 1000


def build_optimizer(groups: list[dict[str, Any]], settings: OptimSettings) -> torch.optim.AdamW:
    """AdamW over parameter groups (each ``{"params": [...], "lr": optional}``)."""
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("nothing to train: no parameter requires a gradient")
    return torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay,
                             betas=(settings.beta1, settings.beta2), eps=settings.eps)


def lr_factor(step: int, settings: OptimSettings) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up, then cosine down to ``min_lr``."""
    if settings.warmup_steps and step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(settings.max_steps - settings.warmup_steps, 1)
    progress = min(max(step - settings.warmup_steps, 0) / span, 1.0)
    floor = min(settings.min_lr / settings.lr, 1.0) if settings.lr > 0 else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, settings: OptimSettings) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, settings))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision on a device; None = plain fp32 (``auto`` on CPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a GPU (its GradScaler is CUDA's); use bf16 or fp32 on CPU")
    return torch.float16 if precision == "fp16" else torch.bfloat16


def make_scaler(dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 autocast only (bf16 and fp32 need none)."""
    return torch.amp.GradScaler("cuda") if dtype == torch.float16 else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def attention_backend(device: torch.device, dtype: torch.dtype | None):
    """The scaled-dot-product-attention kernels a training step may use: math only under bf16 autocast on
    CPU (module docstring), PyTorch's own choice elsewhere (fp32 on CPU gains nothing and keeps its bits)."""
    if device.type != "cpu" or dtype != torch.bfloat16:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    return [p for p in params if p.requires_grad]


def train_step(task: nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler | None, *,
               device: torch.device, dtype: torch.dtype | None, grad_clip: float) -> dict[str, Any]:
    """One optimisation step; ``task(**batch)`` returns (loss, extra metrics).  Clips after unscaling."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, dtype), attention_backend(device, dtype):
        loss, extra = task(**batch)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # true gradients from here on: the clip below acts on them
    else:
        loss.backward()
    grad_norm = None
    if grad_clip and grad_clip > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    lr = optimizer.param_groups[0]["lr"]
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    return {"loss_local": loss.detach(), "lr": lr, "grad_norm": grad_norm, **extra}
