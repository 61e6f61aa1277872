"""Trainer throughput: a plain PyTorch loop vs our Ray Train loop (1 and 2 workers), same model and global
batch; start-up reported apart.  With ``--triplets``, also the frozen-backbone Combiner with and without
the feature cache (same data, same steps).  With a GPU: our Ray-free step for ViT-B-16 at 224 px, batch
128, bf16, next to a bare open_clip forward/backward loop (samples/s and peak memory).

    python bench/train_throughput.py --world /tmp/world --steps 30 --batch-size 32      # CPU part
    python bench/train_throughput.py --world /tmp/world --triplets /tmp/mined/triplets/train --ray-only
    python bench/train_throughput.py --gpu-only                                         # GPU part

Steady-state rates come from each step's end-to-end wall time in metrics.jsonl (batch wait + step +
bookkeeping), after ``--warmup`` steps; start-up and tear-down are the rest of the command's wall time.
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
    """Our Ray Train CLIP loop through the CLI: steady-state samples/s from metrics.jsonl, start-up apart."""
    return _cli_run(["clip", "--captions", world, "--num-workers", str(workers)], f"bench-{workers}w",
                    batch, steps, warmup, out)


def frozen_combiner(world: str, triplets: str, cached: bool, batch: int, steps: int, warmup: int, out: str) -> dict:
    """The frozen-backbone Combiner through the CLI, on cached features or decoding and encoding per step."""
    name = f"bench-frozen-{'cached' if cached else 'uncached'}"
    return _cli_run(["combiner", "--triplets", triplets, "--images", world, "--finetune", "frozen",
                     "--feature-cache", str(cached).lower(), "--projection-dim", "512"], name, batch, steps, warmup,
                    out)


def _cli_run(args: list[str], name: str, batch: int, steps: int, warmup: int, out: str) -> dict:
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "trainer", *args, "--storage-path", out, "--name", name,
                          "--batch-size", str(batch), "--max-steps", str(steps + warmup),
                          "--checkpoint-every", str(steps + warmup), "--progress-s", "30"],
                         cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    lines = [json.loads(ln) for ln in Path(out, name, "metrics.jsonl").read_text().splitlines() if ln.strip()]
    steady = lines[warmup:]
    step_s = [r["step_s"] for r in steady]
    return {"samples_per_s": batch / statistics.median(step_s), "step_s_median": statistics.median(step_s),
            "steps_per_s": 1 / statistics.median(step_s),
            "data_wait_fraction": sum(r["data_wait_s"] for r in steady) / sum(step_s),
            "wall_s": wall, "startup_and_teardown_s": wall - sum(r["step_s"] for r in lines)}


def cpu_part(args) -> dict:
    torch.set_num_threads(1)  # what a Ray Train worker gets (OMP_NUM_THREADS=1)
    out_report: dict = {}
    with tempfile.TemporaryDirectory() as out:
        if args.world and args.triplets:
            cached = frozen_combiner(args.world, args.triplets, True, args.batch_size, args.steps, args.warmup, out)
            uncached = frozen_combiner(args.world, args.triplets, False, args.batch_size, args.steps, args.warmup,
                                       out)
            out_report["frozen_combiner"] = {"cached": cached, "uncached": uncached,
                                             "speedup": cached["samples_per_s"] / uncached["samples_per_s"]}
        if args.ray_only and args.triplets:
            return out_report
        plain = plain_loop(args.model, args.batch_size, args.steps, args.warmup)
        out_report["plain"] = plain
        if args.world:
            for workers in (1, 2):
                r = ray_loop(args.world, workers, args.batch_size, args.steps, args.warmup, out)
                r["ratio_vs_plain"] = r["samples_per_s"] / plain["samples_per_s"]
                out_report[f"ray_{workers}w"] = r
    return out_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", help="a synthetic world root (python -m synthetic world ...) for the Ray part")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--triplets", help="the miner's triplets of --world: also time the frozen Combiner")
    ap.add_argument("--gpu-only", action="store_true")
    ap.add_argument("--ray-only", action="store_true", help="skip the plain loop and the CLIP Ray runs "
                    "(with --triplets: only the frozen Combiner comparison)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report: dict = {}
    if not args.gpu_only:
        report["cpu"] = cpu_part(args)
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
