"""The whole miner (`python -m miner run`, parse included) on procedural-world captions at two sizes.

For each size N (default 100k and 1M captions) the script writes N captions of a procedural world
(the smallest size drawn by `python -m synthetic world`, two captions per scene, larger sizes repeating
it with distinct image URLs), runs `python -m miner
run` on them as a child process, and reports its captions/s over the whole command and the driver's peak
RSS (VmHWM of the driver process, polled from /proc; Ray's worker processes are not the driver).  One
run also measures the parse stage alone with 2 workers on a slice of the same captions
(bench/parse_throughput.py's steady rate), so the end-to-end rate is compared with it in the same
conditions.  Ratios, measured in one run, are what to read (the machine is shared and noisy).

    .venv/bin/python bench/mine_end_to_end.py [--sizes 100000 1000000] [--triplets 18000]

Goals (issue #11): driver peak RSS flat, <= 1.2x from 100k to 1M; end-to-end captions/s within 10 % of
the parse stage's 2-worker rate.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}


def world_captions(out: Path, captions: int, seed: int) -> Path:
    """A procedural world of ``captions`` rows (two per scene); returns its captions.tsv."""
    cmd = [sys.executable, "-m", "synthetic", "world", "--output", str(out), "--images", str(captions // 2),
           "--captions-per-image", "2", "--seed", str(seed), "--write-images", "false",
           "--shard-size", "10000", "--workers", str(os.cpu_count() or 1)]
    subprocess.run(cmd, check=True, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out / "captions.tsv"


def scaled(base: Path, out: Path, captions: int) -> Path:
    """``captions`` rows: the base world's rows repeated, each copy with its own image URLs (``#copy``),
    so the miner sees distinct images with the world's caption distribution (rendering 500k scenes only
    to get their captions would time the renderer, not the miner)."""
    lines = base.read_bytes().splitlines(keepends=False)
    with out.open("wb") as f:
        for i in range(captions):
            caption, url = lines[i % len(lines)].split(b"\t")
            f.write(caption + b"\t" + url + b"#" + str(i // len(lines)).encode() + b"\n")
    return out


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, MiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return 0.0


def run_miner(tsv: Path, out: Path, triplets: int, shard_bytes: int) -> tuple[float, float]:
    """Seconds of `python -m miner run` on ``tsv`` and its driver's peak RSS (MiB)."""
    cmd = [sys.executable, "-m", "miner", "run", "--input", str(tsv), "--output", str(out),
           "--num-triplets", str(triplets), "--shard-bytes", str(shard_bytes)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0.0]

    def watch() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], peak_rss_mib(proc.pid))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - t0
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"miner failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    return seconds, peak[0]


def parse_rate(tsv: Path, captions: int, shards: int) -> float:
    """The parse stage alone, 2 workers, steady rate (bench/parse_throughput.py) on the first rows."""
    sys.path.insert(0, str(ROOT / "bench"))
    import ray
    from parse_throughput import ray_stage

    head = Path(tempfile.mkdtemp(prefix="bench-e2e-parse-")) / "captions.tsv"
    with tsv.open("rb") as src, head.open("wb") as dst:
        for i, line in enumerate(src):
            if i >= captions:
                break
            dst.write(line)
    os.environ.update({k: ENV[k] for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")})
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}})
    try:
        return ray_stage(head, shards, 2, 256)
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--triplets", type=int, default=18_000, help="per kind")
    ap.add_argument("--shard-bytes", type=int, default=2_000_000, help="miner input shard size")
    ap.add_argument("--parse-captions", type=int, default=40_000, help="rows for the parse-stage reference")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    base = world_captions(work / "world", min(args.sizes), args.seed)
    rows = []
    for n in sorted(args.sizes):
        tsv = scaled(base, work / f"captions-{n}.tsv", n)
        seconds, rss = run_miner(tsv, work / f"mined-{n}", args.triplets, args.shard_bytes)
        rows.append((n, seconds, n / seconds, rss))
        print(f"{n:>9,} captions: {seconds:7.1f} s  {n / seconds:7.0f} captions/s  driver peak RSS {rss:7.0f} MiB",
              flush=True)
    ref = parse_rate(base, args.parse_captions, 8)
    print(f"parse stage alone, 2 workers (steady rate, {args.parse_captions:,} captions): {ref:7.0f} captions/s")
    small, large = rows[0], rows[-1]
    print(f"ratio driver RSS {large[0]:,} / {small[0]:,} = {large[3] / small[3]:.2f}   (goal <= 1.20)")
    print(f"ratio end-to-end / parse stage at {large[0]:,} = {large[2] / ref:.2f}   (goal >= 0.90)")


if __name__ == "__main__":
    main()
