"""The trainer end to end on the local Ray head: a small world, mined, CLIP then Combiner, tiny model."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile

import pytest

from cluster import storage
from tests.conftest import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]

COMMON = ["--model", "tiny", "--num-workers", "1", "--batch-size", "32", "--progress-s", "2",
          "--checkpoint-every", "5"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, services):
    root = tmp_path_factory.mktemp("trainer")
    subprocess.run([sys.executable, "-m", "synthetic", "world", "--output", str(root / "world"), "--images", "400",
                    "--seed", "0", "--shard-size", "200"], check=True, cwd=ROOT, capture_output=True)
    subprocess.run([sys.executable, "-m", "miner", "run", "--input", str(root / "world" / "captions.tsv"),
                    "--output", str(root / "mined"), "--num-triplets", "400"], check=True, cwd=ROOT,
                   capture_output=True)
    return root


def _metrics(run_uri: str) -> list[dict]:
    text = storage.read_bytes(storage.resolve(storage.join_uri(run_uri, "metrics.jsonl"))).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _trainer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def _mean(values):
    return sum(values) / len(values)


def test_clip_then_combiner_loss_falls_and_rerun_trains_nothing(world):
    runs = world / "runs"
    clip = _trainer("clip", "--storage-path", str(runs), "--name", "clip", "--captions", str(world / "world"),
                    "--max-steps", "20", "--lr", "3e-4", *COMMON)
    assert clip.returncode == 0, clip.stderr[-3000:]
    m = _metrics(str(runs / "clip"))
    assert [r["step"] for r in m] == list(range(1, 21))
    assert _mean([r["loss"] for r in m[-5:]]) < _mean([r["loss"] for r in m[:5]])
    again = _trainer("clip", "--storage-path", str(runs), "--name", "clip", "--captions", str(world / "world"),
                     "--max-steps", "20", "--lr", "3e-4", *COMMON)
    assert again.returncode == 0 and "nothing to train" in again.stdout
    assert len(_metrics(str(runs / "clip"))) == 20

    comb = _trainer("combiner", "--storage-path", str(runs), "--name", "comb",
                    "--triplets", str(world / "mined" / "triplets" / "train"), "--images", str(world / "world"),
                    "--backbone", str(runs / "clip"), "--max-steps", "20", "--lr", "1e-4",
                    "--projection-dim", "128", "--distractor-negatives", "true", *COMMON)
    assert comb.returncode == 0, comb.stderr[-3000:]
    m = _metrics(str(runs / "comb"))
    assert len(m) == 20
    assert _mean([r["loss"] for r in m[-5:]]) < _mean([r["loss"] for r in m[:5]])
    from trainer.checkpoint import load_trained

    trained = load_trained(str(runs / "comb"))
    assert trained.info["step"] == 20 and trained.combiner is not None


def _corrupt_some_jpegs(tar_path, every: int) -> int:
    """Overwrite every n-th JPEG member's bytes in place (same size): undecodable, still indexed."""
    with tarfile.open(tar_path) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".jpg")]
    hit = 0
    with open(tar_path, "r+b") as raw:
        for m in members[::every]:
            raw.seek(m.offset_data)
            raw.write(b"\x00" * m.size)
            hit += 1
    return hit


def test_corrupt_images_are_counted_skips_with_s3_storage(world, s3_bucket, tmp_path):
    copy = tmp_path / "world"
    shutil.copytree(world / "world", copy, ignore=shutil.ignore_patterns("images"))
    assert _corrupt_some_jpegs(copy / "shards" / "00000.tar", 10) == 20
    res = _trainer("clip", "--storage-path", f"{s3_bucket}/runs", "--name", "skips", "--captions", str(copy),
                   "--max-steps", "6", "--lr", "3e-4", "--max-skip-fraction", "0.3", *COMMON)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = storage.read_json(storage.resolve(f"{s3_bucket}/runs/skips/summary.json"))
    assert summary["finished"] and summary["skipped"].get("corrupt_image", 0) > 0
    assert len(_metrics(f"{s3_bucket}/runs/skips")) == 6
    strict = _trainer("clip", "--storage-path", f"{s3_bucket}/runs", "--name", "strict", "--captions", str(copy),
                      "--max-steps", "30", "--lr", "3e-4", "--max-skip-fraction", "0.0", "--max-failures", "0",
                      *COMMON)
    assert strict.returncode != 0
    assert "skipped" in (strict.stdout + strict.stderr)
