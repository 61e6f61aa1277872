"""The trainer end to end on the local Ray head, through its CLI: a small world (a few JPEGs corrupted in
its tars) mined by the miner, CLIP pretraining, then Combiner training on the CLIP backbone.

One world and one CLIP run are shared by every test (module fixtures); runs are short (tiny model,
global batch 16, a few dozen steps) and nothing here depends on timing.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from cluster import storage
from tests.conftest import ROOT
from tests.multinode import session_pids, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

COMMON = ["--model", "tiny", "--batch-size", "16", "--progress-s", "2", "--max-skip-fraction", "0.2"]
CORRUPT_EVERY = 25  # of the first tar's 200 JPEGs: 8 undecodable images, ~2% of caption rows
WAIT_S = 900  # per CLI call; generous for a loaded 2-core machine


def _corrupt_some_jpegs(tar_path: Path, every: int) -> int:
    """Overwrite every n-th JPEG member's bytes in place (same size): undecodable, still indexed."""
    with tarfile.open(tar_path) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".jpg")]
    with open(tar_path, "r+b") as raw:
        for m in members[::every]:
            raw.seek(m.offset_data)
            raw.write(b"\x00" * m.size)
    return len(members[::every])


@pytest.fixture(scope="module")
def world(tmp_path_factory, services):
    root = tmp_path_factory.mktemp("trainer")
    subprocess.run([sys.executable, "-m", "synthetic", "world", "--output", str(root / "world"), "--images", "400",
                    "--seed", "0", "--shard-size", "200"], check=True, cwd=ROOT, capture_output=True)
    subprocess.run([sys.executable, "-m", "miner", "run", "--input", str(root / "world" / "captions.tsv"),
                    "--output", str(root / "mined"), "--num-triplets", "400"], check=True, cwd=ROOT,
                   capture_output=True)
    assert _corrupt_some_jpegs(root / "world" / "shards" / "00000.tar", CORRUPT_EVERY) == 8
    return root


def _trainer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=WAIT_S)


def _ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-4000:])
    return res


def _metrics(run_uri: str) -> list[dict]:
    text = storage.read_bytes(storage.resolve(storage.join_uri(run_uri, "metrics.jsonl"))).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _summary(run_uri: str) -> dict:
    return storage.read_json(storage.resolve(storage.join_uri(run_uri, "summary.json")))


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _combiner(world: Path, storage_path: str, name: str, *extra: str) -> list[str]:
    return ["combiner", "--storage-path", storage_path, "--name", name,
            "--triplets", str(world / "mined" / "triplets" / "train"), "--images", str(world / "world"),
            "--backbone", str(world / "runs" / "clip"), "--projection-dim", "64", "--lr", "3e-4", *COMMON, *extra]


@pytest.fixture(scope="module")
def clip_run(world):
    """A finished CLIP run on the world (the backbone of every Combiner run here)."""
    args = ["clip", "--storage-path", str(world / "runs"), "--name", "clip", "--captions", str(world / "world"),
            "--max-steps", "24", "--lr", "5e-4", "--checkpoint-every", "12", *COMMON]
    first = _ok(_trainer(*args))
    return args, first


def test_clip_loss_falls_corrupt_images_are_skips_and_a_finished_run_trains_nothing(world, clip_run):
    args, _ = clip_run
    run = str(world / "runs" / "clip")
    m = _metrics(run)
    assert [r["step"] for r in m] == list(range(1, 25))
    assert _mean(r["loss"] for r in m[-6:]) < _mean(r["loss"] for r in m[:6])
    summary = _summary(run)
    assert summary["finished"] and summary["step"] == 24
    assert 0 < summary["skipped"]["corrupt_image"] <= summary["skipped_total"]
    assert 0 < m[-1]["skipped"] <= summary["skipped_total"]  # the summary also counts rows decoded ahead
    again = _ok(_trainer(*args))
    assert "nothing to train" in again.stdout
    assert len(_metrics(run)) == 24 and _summary(run) == summary


def test_frozen_combiner_encodes_once_loss_falls_and_two_workers_match_one(world, clip_run, s3_bucket):
    runs = str(world / "runs")
    frozen = ["--finetune", "frozen", "--dropout", "0", "--max-steps", "40", "--checkpoint-every", "20"]
    # Too many rows name a corrupt image for a strict threshold: refused after encoding, before training.
    strict = _trainer(*_combiner(world, runs, "frozen-1w", *frozen), "--max-skip-fraction", "0.01")
    assert strict.returncode == 2 and "corrupt_image" in strict.stderr and "max-skip-fraction" in strict.stderr
    one = _ok(_trainer(*_combiner(world, runs, "frozen-1w", *frozen)))
    assert "reusing" in one.stdout  # the feature cache of the refused attempt, not encoded again
    cache = storage.read_json(storage.resolve(f"{runs}/frozen-1w/data/features/_manifest.json"))
    assert 0 < cache["failed"]["corrupt_image"] <= 8 and cache["transform"] == "eval"
    m1 = _metrics(f"{runs}/frozen-1w")
    assert len(m1) == 40 and _mean(r["loss"] for r in m1[-8:]) < _mean(r["loss"] for r in m1[:8])
    assert _summary(f"{runs}/frozen-1w")["skipped"]["corrupt_image"] > 0

    # The same run on two workers (storage on S3): step 1 has the same rows, loss and gradient norm.
    two = _ok(_trainer(*_combiner(world, f"{s3_bucket}/runs", "frozen-2w", *frozen), "--num-workers", "2"))
    assert "encoded" in two.stdout
    m2 = _metrics(f"{s3_bucket}/runs/frozen-2w")
    assert len(m2) == 40
    assert m1[0]["data_position"] == m2[0]["data_position"] == 16  # both consumed plan rows 0..15
    assert m2[0]["loss"] == pytest.approx(m1[0]["loss"], rel=1e-5)
    assert m2[0]["grad_norm"] == pytest.approx(m1[0]["grad_norm"], rel=1e-4)
    assert storage.exists(storage.resolve(f"{s3_bucket}/runs/frozen-2w/step_000040/combiner.pt"))


def _registered(run: Path) -> list[int]:
    """Steps of the checkpoints Ray Train has registered for a run (its snapshot)."""
    snap = run / "checkpoint_manager_snapshot.json"
    if not snap.exists():
        return []
    try:
        results = json.loads(snap.read_text()).get("checkpoint_results", [])
    except json.JSONDecodeError:  # being rewritten
        return []
    return sorted(int(r["checkpoint_dir_name"].split("_")[1]) for r in results if r.get("checkpoint_dir_name"))


def _wait_for(what: str, predicate, proc: subprocess.Popen, log: Path, timeout: float = WAIT_S):
    return wait_for(what, predicate, proc, log, timeout)


def _train_worker_pids() -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(address=os.environ["RAY_API_SERVER_ADDRESS"],
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [a.pid for a in actors]


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the driver's process group, then whatever is left of its session, by PID."""
    sid = proc.pid
    os.killpg(sid, signal.SIGKILL)
    proc.wait(timeout=60)
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_killed_worker_then_killed_driver_resume_to_the_same_final_step(world, clip_run, tmp_path):
    runs = tmp_path / "runs"
    args = _combiner(world, str(runs), "kills", "--finetune", "whole", "--distractor-negatives", "true",
                     "--max-steps", "40", "--checkpoint-every", "4", "--max-failures", "3")
    run = runs / "kills"
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # 1. a training worker dies a few seconds after a checkpoint was registered
        _wait_for("a first checkpoint", lambda: _registered(run), proc, log)
        time.sleep(3)
        pids = _train_worker_pids()
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        # 2. the new worker group resumed from a checkpoint and registered a later one: kill the driver
        resumed = _wait_for("a resumed attempt", lambda: [r["resumed_from"] for r in _metrics(str(run))
                                                          if r["resumed_from"] > 0] if (run / "metrics.jsonl").exists()
                            else None, proc, log)
        first_resume = resumed[0]
        _wait_for("a checkpoint of the resumed attempt", lambda: max(_registered(run)) > first_resume, proc, log)
        time.sleep(3)
        assert not (run / "summary.json").exists(), "the run finished before the driver could be killed"
    finally:
        if proc.poll() is None:
            _kill_session(proc)
    killed_at = max(_registered(run))
    assert 0 < first_resume < killed_at < 40

    # 3. the same command again finishes the run from the last registered checkpoint
    again = _ok(_trainer(*args))
    summary = _summary(str(run))
    assert summary["step"] == 40 and summary["finished"]
    assert summary["attempts"][0] == killed_at and summary["trained_steps"] == 40 - killed_at
    m = _metrics(str(run))
    assert [r["step"] for r in m] == list(range(1, 41))
    starts = sorted({r["resumed_from"] for r in m})
    assert starts[0] == 0 and first_resume in starts and killed_at in starts
    assert "nothing to train" in _ok(_trainer(*args)).stdout, again.stdout
