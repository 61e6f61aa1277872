"""The stages on a two-node Ray cluster on this machine (tests/multinode.py): a head that runs no work and a
worker node that runs all of it, storage on the radosgw S3 server, the test's local folders hidden from
the worker node.  Then the worker node is killed mid-parse and mid-training and brought back: the miner's
triplets equal an undisturbed run's (0 lost, 0 duplicated) and the training run ends at the same final
step, resumed from its last checkpoint on S3.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from cluster import storage
from tests.conftest import ROOT
from tests.multinode import TwoNodeCluster, wait_for

# Part of `make test` (`make test-multinode` runs this module alone; GENECIS_MULTINODE=0 skips it).  It was
# opt-in while the worker node was "not listed alive within 120 s" under `make test`: Ray's State API took
# the suite head's RAY_API_SERVER_ADDRESS from the environment over the address it was given (fixed in
# tests/multinode.py: TwoNodeCluster.state_api).  A full `make test` with it passed on a clean clone since.
pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("GENECIS_MULTINODE") == "0",
                                 reason="GENECIS_MULTINODE=0: two-node cluster tests skipped")]

WAIT_S = 600  # per driver command, generous for a loaded 2-core machine
MINE_LINES = 8000  # CC3M sample rows mined here: 9 shards of 150 kB, ~30 s of parsing on 2 actors
MINE_ARGS = ["--num-triplets", "1000", "--shard-bytes", "150000", "--triplets-per-shard", "400",
             "--progress-interval-s", "2"]


@pytest.fixture(scope="module")
def two_nodes(services, tmp_path_factory):
    """A 0-CPU head + a 2-CPU worker node; the session's temp folders hidden from the worker node."""
    slot = int(os.environ.get("GENECIS_MULTINODE_SLOT", "0"))
    base = tmp_path_factory.getbasetemp()
    cluster = TwoNodeCluster(tmp_path_factory.mktemp("multinode"), slot=slot, hide=(base,))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def bucket(s3_client):
    """The module's bucket, emptied and removed afterwards (the test server's store is 2 GB of memory)."""
    name = f"multinode-{os.getpid()}"
    s3_client.create_bucket(Bucket=name)
    yield name
    keys = _keys(s3_client, name, "")
    for i in range(0, len(keys), 1000):
        s3_client.delete_objects(Bucket=name, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]],
                                                      "Quiet": True})
    s3_client.delete_bucket(Bucket=name)


@pytest.fixture(scope="module")
def cc3m_on_s3(s3_client, bucket, cc3m_tsv) -> str:
    """The first MINE_LINES rows of the CC3M sample, on S3 (the worker node cannot see local test files)."""
    body = b"\n".join(cc3m_tsv.read_bytes().split(b"\n")[:MINE_LINES]) + b"\n"
    s3_client.put_object(Bucket=bucket, Key="in/cc3m.tsv", Body=body)
    return f"s3://{bucket}/in/cc3m.tsv"


def _driver(cluster: TwoNodeCluster, log: Path, *args: str) -> subprocess.Popen:
    """A stage's CLI as a driver on the head, in its own session (its Ray helpers die with it)."""
    out = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=cluster.env(), stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = WAIT_S) -> int:
    """Wait for a driver; a driver still running after ``timeout`` is a hang: killed, and the test fails."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_driver(proc)
        pytest.fail(f"driver hung for {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def _kill_driver(proc: subprocess.Popen) -> None:
    from tests.multinode import kill_session

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    kill_session(proc.pid)


def _ok(cluster: TwoNodeCluster, log: Path, *args: str, timeout: float = WAIT_S) -> str:
    proc = _driver(cluster, log, *args)
    rc = _finish(proc, log, timeout)
    assert rc == 0, log.read_text()[-4000:]
    return log.read_text()


def _wait_for(what: str, predicate, proc: subprocess.Popen, log: Path, timeout: float = WAIT_S):
    return wait_for(what, predicate, proc, log, timeout)


def _lost_capacity_line(log: str) -> bool:
    """The driver's one line for a lost node (Ray's own log lines from the dead raylet may follow it)."""
    return sum(line.startswith("error: lost Ray capacity mid-run") for line in log.splitlines()) == 1


def _keys(s3_client, bucket: str, prefix: str) -> list[str]:
    keys, token = [], None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = s3_client.list_objects_v2(**kw)
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


def _triplets(uri: str):
    loc = storage.resolve(uri)
    files = [f.path for f in storage.list_files(loc.child("triplets"), ".parquet")]
    return pads.dataset(files, filesystem=loc.fs, format="parquet").to_table().sort_by("triplet_id")


# ------------------------------------------------------------------------------------------ the miner
@pytest.fixture(scope="module")
def mined(two_nodes, cc3m_on_s3, bucket, tmp_path_factory):
    """An undisturbed miner run on the two-node cluster (the reference of the node-kill test)."""
    out = f"s3://{bucket}/mined-reference"
    log = tmp_path_factory.mktemp("mine") / "reference.log"
    t0 = time.monotonic()
    text = _ok(two_nodes, log, "miner", "run", "--input", cc3m_on_s3, "--output", out, *MINE_ARGS)
    return out, text, time.monotonic() - t0


def test_miner_runs_its_work_on_the_worker_node(two_nodes, mined):
    out, text, _ = mined
    manifest = storage.read_json(storage.resolve(f"{out}/_manifest.json"))
    assert manifest["counts"]["read"] == MINE_LINES and manifest["counts"]["shards"] == 9
    placed = two_nodes.actor_nodes("ParseShardWorker")
    assert placed and set(placed.values()) == {"worker"}, placed  # the parse actors (Ray Data's map workers)
    assert "| done" in text


def test_worker_node_killed_mid_parse_loses_and_duplicates_nothing(two_nodes, mined, cc3m_on_s3, bucket, s3_client,
                                                                   tmp_path):
    reference_uri, _, _ = mined
    out = f"s3://{bucket}/mined-killed"
    args = ("miner", "run", "--input", cc3m_on_s3, "--output", out, *MINE_ARGS)
    proc = _driver(two_nodes, tmp_path / "killed.log", *args)
    markers = lambda: [k for k in _keys(s3_client, bucket, "mined-killed/graphs/_stats/") if k.endswith(".json")]
    _wait_for("two committed graph shards", lambda: len(markers()) >= 2, proc, tmp_path / "killed.log")
    killed = two_nodes.kill_worker()
    committed = len(markers())
    assert killed >= 3 and 2 <= committed < 9, (killed, committed)  # raylet, agents, workers; mid-parse
    two_nodes.start_worker()  # capacity returns
    rc = _finish(proc, tmp_path / "killed.log")
    first = (tmp_path / "killed.log").read_text()
    if rc != 0:  # the run failed on the lost node: its last line says so (exit 3), the same command resumes
        assert rc == 3 and _lost_capacity_line(first), first[-4000:]
        assert "Exception in thread" not in first  # the progress thread outlives its lost counter
        assert not storage.exists(storage.resolve(f"{out}/_manifest.json"))
        _ok(two_nodes, tmp_path / "rerun.log", *args)
    manifest = storage.read_json(storage.resolve(f"{out}/_manifest.json"))
    assert manifest["counts"]["read"] == MINE_LINES
    reference, resumed = _triplets(reference_uri), _triplets(out)
    ids = resumed.column("triplet_id").to_pylist()
    assert len(ids) == len(set(ids)) == reference.num_rows  # 0 duplicated, 0 lost
    assert resumed.equals(reference)
    graphs = storage.list_files(storage.resolve(f"{out}/graphs"), ".parquet")
    assert len(graphs) == 9


# ------------------------------------------------------------------------------------- the pipeline
def test_quick_pipeline_on_s3_runs_its_work_on_the_worker_node(two_nodes, bucket, tmp_path):
    """`make demo QUICK=1`'s chain with storage on S3: world -> mine -> clip -> combiner -> benchmark ->
    evaluate; every Ray actor that does work (parsers, training workers, encoders) ran on the worker node,
    and the node never saw the driver's local test folders."""
    storage_uri = f"s3://{bucket}/demo"
    text = _ok(two_nodes, tmp_path / "pipeline.log", "cluster", "pipeline", "--config",
               str(ROOT / "cluster" / "configs" / "demo.yaml"), "--quick", "--storage", storage_uri,
               timeout=3 * WAIT_S)  # six stages: ~6.5 min here on a quiet 2-core machine, >10 min on a busy one
    results_uri = text.strip().splitlines()[-1]
    assert results_uri.startswith(storage_uri) and results_uri.endswith("results.json"), text[-2000:]
    results = storage.read_json(storage.resolve(results_uri))
    assert results  # the evaluator's results, written last
    for name in ("ParseShardWorker", "RayTrainWorker", "EncodeWorker"):
        placed = two_nodes.actor_nodes(name)
        assert placed and set(placed.values()) == {"worker"}, (name, placed)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in text


# ---------------------------------------------------------------------------------------- the trainer
TRAIN_STEPS = 40
CLIP_ARGS = ["--model", "tiny", "--batch-size", "16", "--progress-s", "2", "--max-skip-fraction", "0.2",
             "--max-steps", str(TRAIN_STEPS), "--checkpoint-every", "10", "--max-failures", "3", "--lr", "5e-4"]
# (a tiny-model checkpoint with its optimizer state is ~90 MB on S3: few of them)


@pytest.fixture(scope="module")
def world_on_s3(bucket, tmp_path_factory, services) -> str:
    """A 400-image world on S3 (written by the driver's process pool; no Ray)."""
    out = f"s3://{bucket}/world"
    res = subprocess.run([sys.executable, "-m", "synthetic", "world", "--output", out, "--images", "400",
                          "--shard-size", "200", "--seed", "0", "--workers", "1"], cwd=ROOT, capture_output=True,
                         text=True, timeout=WAIT_S)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def _run_json(run: str, name: str):
    loc = storage.resolve(f"{run}/{name}")
    return storage.read_json(loc) if storage.exists(loc) else None


def _registered(run: str) -> list[int]:
    """Steps of the checkpoints Ray Train registered (its snapshot on S3)."""
    try:
        snap = _run_json(run, "checkpoint_manager_snapshot.json")
    except (json.JSONDecodeError, OSError):  # being rewritten
        return []
    results = (snap or {}).get("checkpoint_results", [])
    return sorted(int(r["checkpoint_dir_name"].split("_")[1]) for r in results if r.get("checkpoint_dir_name"))


def _metrics(run: str) -> list[dict]:
    loc = storage.resolve(f"{run}/metrics.jsonl")
    if not storage.exists(loc):
        return []
    return [json.loads(line) for line in storage.read_bytes(loc).decode().splitlines() if line.strip()]


def test_worker_node_killed_mid_train_resumes_from_the_s3_checkpoint(two_nodes, world_on_s3, bucket, tmp_path):
    run = f"s3://{bucket}/runs/clip"
    args = ("trainer", "clip", "--storage-path", f"s3://{bucket}/runs", "--name", "clip", "--captions", world_on_s3,
            *CLIP_ARGS)
    log = tmp_path / "train.log"
    before = set(two_nodes.actor_nodes("RayTrainWorker"))  # other tests' runs on this cluster
    proc = _driver(two_nodes, log, *args)
    try:
        first = _wait_for("a first registered checkpoint", lambda: _registered(run), proc, log)
        time.sleep(3)  # the controller registers reports every ~2 s (ENVIRONMENT.md §4b)
        first_group = {k: v for k, v in two_nodes.actor_nodes("RayTrainWorker").items() if k not in before}
        assert list(first_group.values()) == ["worker"], first_group
        killed_after = max(_registered(run))
        assert killed_after < TRAIN_STEPS, "the run finished before the node could be killed"
        two_nodes.kill_worker()
        two_nodes.start_worker()  # capacity returns
        rc = _finish(proc, log)
    finally:
        _kill_driver(proc)
    text = log.read_text()
    if rc != 0:  # the failure budget ran out while the node was away: one line, and the same command resumes
        assert rc == 3 and _lost_capacity_line(text), text[-3000:]
        assert _run_json(run, "summary.json") is None
        _ok(two_nodes, tmp_path / "again.log", *args)
    summary = _run_json(run, "summary.json")
    assert summary["finished"] and summary["step"] == TRAIN_STEPS, summary
    m = _metrics(run)
    assert [r["step"] for r in m] == list(range(1, TRAIN_STEPS + 1))
    resumed = sorted({r["resumed_from"] for r in m} - {0})
    assert resumed and killed_after <= resumed[0] <= killed_after + 10, (resumed, first, killed_after)  # the last one
    placed = {k: v for k, v in two_nodes.actor_nodes("RayTrainWorker").items() if k not in before}
    assert len(placed) >= 2 and set(placed.values()) == {"worker"}, placed  # the first group and the resumed one
    print(f"train: killed after step {killed_after}, resumed from {resumed}, first driver exit {rc}")
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in text
