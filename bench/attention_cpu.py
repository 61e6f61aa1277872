"""CPU training step with PyTorch's default attention kernels vs the math kernel ``train_step`` picks for bf16.

    python bench/attention_cpu.py [--model tiny-rn] [--batch-size 128] [--steps 6] [--threads 1]

One CLIP step of ``--batch-size`` images with as many swap-negative captions (the demo's CLIP stage), in
fp32 and bf16 autocast (``train_step`` uses the math kernel under bf16 only), timed alternately with each
backend in one run (median step time and the ratio),
and the two backends' losses and gradients compared on the same batch (they compute the same function).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.model import load_backbone  # noqa: E402
from trainer.optim import attention_backend  # noqa: E402
from trainer.tasks import ClipTask  # noqa: E402


def step(task, batch, dtype, context) -> tuple[float, float, list[torch.Tensor]]:
    """Forward + backward of one batch: (seconds, loss, gradients)."""
    task.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None), context():
        loss, _ = task(**batch)
    loss.backward()
    seconds = time.perf_counter() - t0
    return seconds, float(loss.detach()), [p.grad.detach().clone() for p in task.parameters() if p.grad is not None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-rn")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bb = load_backbone(args.model, seed=0)
    task = ClipTask(bb.model)
    gen = torch.Generator().manual_seed(0)
    n, size, ctx = args.batch_size, bb.image_size, bb.context_length
    batch = {"images": torch.randn(n, 3, size, size, generator=gen),
             "tokens": torch.randint(1, 49000, (n, ctx), generator=gen),
             "neg_tokens": torch.randint(1, 49000, (n, ctx), generator=gen)}
    backends = {"default": contextlib.nullcontext, "math":
                lambda: attention_backend(torch.device("cpu"), torch.bfloat16)}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        times = {k: [] for k in backends}
        for i in range(args.steps + 1):  # the first round warms up
            for k, context in backends.items():
                seconds, _, _ = step(task, batch, dtype, context)
                if i:
                    times[k].append(seconds)
        _, loss_a, grads_a = step(task, batch, dtype, backends["default"])
        _, loss_b, grads_b = step(task, batch, dtype, backends["math"])
        # the whole gradient (a per-tensor ratio is noise for the attention pool's key bias, whose true
        # gradient is zero: softmax ignores a constant added to every key)
        flat_a, flat_b = torch.cat([g.flatten() for g in grads_a]), torch.cat([g.flatten() for g in grads_b])
        diff = float((flat_a - flat_b).norm() / flat_a.norm())
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{name}: default {med['default']:.3f} s/step, math {med['math']:.3f} s/step, "
              f"ratio {med['default'] / med['math']:.2f}x | loss {loss_a:.5f} vs {loss_b:.5f}, "
              f"gradient difference |a-b|/|a| {diff:.1e}")


if __name__ == "__main__":
    main()
