"""Synthetic world throughput: images/s of ``python -m synthetic world`` with 1 and 2 worker processes.

Each run writes a fresh world into a temp dir (images/, shards/, index/, _stats/, captions.tsv) and the
rate is images / the generation stage's wall time (pool start-up included; the TSV assembly and config
checks are not).  Both runs use the same seed, so they also show that the output does not depend on
the number of workers (the shard checksums are compared).

    .venv/bin/python bench/synthetic_throughput.py [--images 20000] [--image-size 64] [--shard-size 1000]

Goal (issue: synthetic world): >= 1,000 images/s with 2 workers on a 2-core machine.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_run(out: str, images: int, image_size: int, shard_size: int, workers: int, seed: int) -> tuple[float, list[str]]:
    """Generate a world into ``out`` (removed afterwards); (images/s, shard checksums)."""
    from cluster import storage
    from synthetic.world import WorldConfig, run_world

    try:
        cfg = WorldConfig(output=out, images=images, seed=seed, image_size=image_size, shard_size=shard_size,
                          workers=workers)
        manifest = run_world(cfg)
        stats = storage.list_files(storage.resolve(out).child("_stats"), ".json")
        sums = [storage.read_json(s)["sha256"]["tar"] for s in stats]
        return manifest["timings"]["images_per_s"], sums
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rates, sums = {}, {}
    base = tempfile.mkdtemp(prefix="bench-world-")
    for workers in (1, 2):  # the same path both times: image URLs (absolute paths) are part of the data
        rates[workers], sums[workers] = one_run(f"{base}/world", args.images, args.image_size, args.shard_size,
                                                workers, args.seed)
        print(f"workers={workers}: {rates[workers]:,.0f} images/s ({args.images:,} images, {args.image_size} px)")
    print(f"speed-up 2 vs 1 worker: {rates[2] / rates[1]:.2f}x; identical shards: {sums[1] == sums[2]}")
    print(f"goal >= 1,000 images/s with 2 workers: {'met' if rates[2] >= 1000 else 'NOT met'}")
    shutil.rmtree(base, ignore_errors=True)
    return 0 if sums[1] == sums[2] else 1


if __name__ == "__main__":
    sys.exit(main())
