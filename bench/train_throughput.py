"""Trainer throughput: a plain PyTorch loop vs our Ray Train loop (1 and 2 workers), same model and global
batch; start-up reported apart.  With a GPU: our Ray-free step for ViT-B-16 at 224 px, batch 128, bf16,
next to a bare open_clip forward/backward loop (samples/s and peak memory).

    python bench/train_throughput.py --world /tmp/world --steps 30 --batch-size 32      # CPU part
    python bench/train_throughput.py --gpu-only                                         # GPU part
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.model import load_backbone  # noqa: E402
from trainer.optim import OptimSettings, build_optimizer, build_scheduler, train_step  # noqa: E402
from trainer.tasks import ClipTask  # noqa: E402


def _batch(bb, n: int, device, gen) -> dict[str, torch.Tensor]:
    images = torch.randn(n, 3, bb.image_size, bb.image_size, generator=gen).to(device)
    tokens = torch.randint(1, 49000, (n, bb.context_length), generator=gen).to(device)
    return {"images": images, "tokens": tokens}


def plain_loop(model: str, batch: int, steps: int, warmup: int, device: str = "cpu",
               dtype: torch.dtype | None = None) -> dict:
    """Our Ray-free step (ClipTask + train_step) on in-memory batches: samples/s after warm-up."""
    dev = torch.device(device)
    bb = load_backbone(model, seed=0)
    task = ClipTask(bb.model).to(dev)
    settings = OptimSettings(lr=1e-5, max_steps=steps + warmup, grad_clip=1.0)
    opt = build_optimizer([{"params": list(task.parameters())}], settings)
    sched = build_scheduler(opt, settings)
    gen = torch.Generator().manual_seed(0)
    data = _batch(bb, batch, dev, gen)
    times = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        _sync(dev)
        t0 = time.perf_counter()
        train_step(task, data, opt, sched, None, device=dev, dtype=dtype, grad_clip=1.0)
        _sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return _rate(batch, times, dev)


def bare_open_clip(model: str, batch: int, steps: int, warmup: int, device: str, dtype) -> dict:
    """open_clip's own forward + ClipLoss + backward + AdamW, nothing of ours."""
    import open_clip

    dev = torch.device(device)
    torch.manual_seed(0)
    net = open_clip.create_model(model, output_dict=True).to(dev)
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(0)
    size = net.visual.image_size[0] if isinstance(net.visual.image_size, tuple) else net.visual.image_size
    images = torch.randn(batch, 3, size, size, generator=gen).to(dev)
    tokens = torch.randint(1, 49000, (batch, net.context_length), generator=gen).to(dev)
    times = []
    torch.cuda.reset_peak_memory_stats() if dev.type == "cuda" else None
    for i in range(warmup + steps):
        _sync(dev)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            out = net(images, tokens)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        _sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return _rate(batch, times, dev)


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _rate(batch: int, times: list[float], dev) -> dict:
    out = {"samples_per_s": batch / statistics.median(times), "step_s_median": statistics.median(times)}
    if dev.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return out


def ray_loop(world: str, workers: int, batch: int, steps: int, warmup: int, out: str) -> dict:
    """Our Ray Train loop through the CLI: steady-state samples/s from metrics.jsonl, start-up apart."""
    name = f"bench-{workers}w"
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "trainer", "clip", "--storage-path", out, "--name", name,
                          "--captions", world, "--num-workers", str(workers), "--batch-size", str(batch),
                          "--max-steps", str(steps + warmup), "--checkpoint-every", str(steps + warmup),
                          "--progress-s", "30"], cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    lines = [json.loads(ln) for ln in Path(out, name, "metrics.jsonl").read_text().splitlines() if ln.strip()]
    steady = lines[warmup:]
    step_s = [batch / r["samples_per_s"] for r in steady]
    loop_s = sum(batch / r["samples_per_s"] for r in lines)
    return {"samples_per_s": batch / statistics.median(step_s), "step_s_median": statistics.median(step_s),
            "data_wait_fraction": statistics.mean(r["data_wait_s"] for r in steady) / statistics.mean(step_s),
            "wall_s": wall, "startup_and_teardown_s": wall - loop_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", help="a synthetic world root (python -m synthetic world ...) for the Ray part")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--gpu-only", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report: dict = {}
    if not args.gpu_only:
        torch.set_num_threads(1)  # what a Ray Train worker gets (OMP_NUM_THREADS=1)
        plain = plain_loop(args.model, args.batch_size, args.steps, args.warmup)
        report["cpu"] = {"plain": plain}
        if args.world:
            with tempfile.TemporaryDirectory() as out:
                for workers in (1, 2):
                    r = ray_loop(args.world, workers, args.batch_size, args.steps, args.warmup, out)
                    r["ratio_vs_plain"] = r["samples_per_s"] / plain["samples_per_s"]
                    report["cpu"][f"ray_{workers}w"] = r
    if torch.cuda.is_available():
        dtype = torch.bfloat16
        ours = plain_loop("ViT-B-16", 128, 20, 5, device="cuda", dtype=dtype)
        torch.cuda.empty_cache()
        bare = bare_open_clip("ViT-B-16", 128, 20, 5, device="cuda", dtype=dtype)
        report["gpu"] = {"device": torch.cuda.get_device_name(), "ours": ours, "bare_open_clip": bare,
                         "ratio": ours["samples_per_s"] / bare["samples_per_s"]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
