"""The whole miner on Ray: the real CC3M sample to radosgw, determinism, resume, bad input, job submit."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from cluster import storage
from miner.concreteness import load_concreteness
from miner.config import KINDS, MinerConfig
from cluster.config import ConfigMismatch
from miner.pipeline import run

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
N = 1500  # triplets per kind


def _cfg(input_path, output: str, **kw) -> MinerConfig:
    base = dict(num_triplets=N, shard_bytes=300_000, triplets_per_shard=400, progress_interval_s=1.0)
    return MinerConfig(input=str(input_path), output=output, **{**base, **kw})


def _triplets(uri: str):
    loc = storage.resolve(uri)
    files = [f.path for f in storage.list_files(loc.child("triplets"), ".parquet")]
    return pads.dataset(files, filesystem=loc.fs, format="parquet").to_table().sort_by("triplet_id")


@pytest.fixture(scope="module")
def s3_run(ray_session, s3_client, cc3m_tsv):
    bucket = f"mine-{os.getpid()}"
    s3_client.create_bucket(Bucket=bucket)
    cfg = _cfg(cc3m_tsv, f"s3://{bucket}/cc3m")
    t0 = time.monotonic()
    manifest = run(cfg)
    return cfg, manifest, time.monotonic() - t0


def test_cc3m_sample_to_s3_manifest(s3_run):
    cfg, manifest, _ = s3_run
    counts = manifest["counts"]
    assert counts["read"] == 15_833 and counts["parsed"] + counts["skipped_total"] == counts["read"]
    assert counts["parsed"] > 15_700 and counts["relations"] > 15_000
    for kind in KINDS:
        assert counts["triplets"][kind]["val"] + counts["triplets"][kind]["train"] + \
            counts["failed_samples"][kind] == N
        assert counts["triplets"][kind]["val"] == pytest.approx(0.1 * N, abs=5)
    assert manifest["config"]["seed"] == 0 and manifest["versions"]["spacy"].startswith("3.8")
    graphs = storage.resolve(cfg.output).child("graphs")
    t = pq.read_table(graphs.child("part-00000.parquet").path, filesystem=graphs.fs)
    assert t.column_names == ["caption_id", "key", "url", "caption", "graph"]


def test_triplets_follow_the_genecis_rule(s3_run):
    cfg, _, _ = s3_run
    t = _triplets(cfg.output)
    required = {"triplet_id", "kind", "ref_key", "ref_url", "target_key", "target_url", "distractor_key",
                "distractor_url", "condition", "subject"}
    assert required <= set(t.column_names)
    conc = load_concreteness()
    rows = [r for r in t.to_pylist() if r["kind"] == "change_object"]
    assert len(rows) > 0.95 * N
    assert sum(r["target_fallback"] for r in rows) < 0.02 * len(rows)
    for r in rows:
        assert r["target_subject"] == r["subject"]
        assert r["distractor_object"] == r["target_object"]
        assert r["condition"].endswith(" " + r["target_object"])
        if not r["target_fallback"]:  # GeneCIS keeps the 100th draw when none was valid; we flag it
            assert r["target_object"] != r["ref_object"]
            assert r["ref_caption_id"] != r["target_caption_id"]
        names = [r["subject"], r["ref_object"], r["target_subject"], r["target_object"],
                 r["distractor_subject"], r["distractor_object"]]
        assert sum(conc.get(n.lower(), -1.0) for n in names) / 6 > 4.8
    val = [r for r in rows if r["split"] == "val"]
    assert max(int(r["triplet_id"].split("-")[1]) for r in val) < 0.1 * N
    others = [r for r in t.to_pylist() if r["kind"] != "change_object"]
    assert sum(r["target_fallback"] for r in others) < 0.05 * len(others)
    for r in others:
        if r["target_fallback"]:  # GeneCIS keeps the last draw when no valid target was found
            continue
        if r["kind"] == "change_attribute":
            assert r["target_subject"] == r["subject"] and r["condition"] == r["target_object"] != r["ref_object"]
        elif r["kind"] == "focus_object":
            assert r["condition"] == r["ref_object"] == r["target_object"] and r["target_subject"] != r["subject"]
        elif r["kind"] == "focus_attribute":
            assert r["target_object"] == r["ref_object"] != r["distractor_object"]


def test_rerun_on_finished_output_does_no_work(s3_run, s3_client):
    cfg, manifest, _ = s3_run
    bucket, prefix = cfg.output[len("s3://"):].split("/", 1)
    before = {o["Key"]: o["ETag"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert run(cfg) == manifest
    after = {o["Key"]: o["ETag"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert after == before
    with pytest.raises(ConfigMismatch):
        run(replace(cfg, seed=1))


def test_same_triplets_on_one_worker_and_other_chunking(s3_run, tmp_path):
    cfg, _, _ = s3_run
    other = replace(cfg, output=str(tmp_path / "w1"), parse_workers=1, triplets_per_shard=170)
    run(other)
    assert _triplets(other.output).equals(_triplets(cfg.output))
    third = replace(cfg, output=str(tmp_path / "seed1"), seed=1, kinds=("change_object",))
    run(third)
    a = _triplets(third.output).column("ref_key").to_pylist()
    b = [r["ref_key"] for r in _triplets(cfg.output).to_pylist() if r["kind"] == "change_object"]
    assert a != b[: len(a)]


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_resume_after_kill_loses_and_duplicates_nothing(s3_run, tmp_path):
    cfg, _, _ = s3_run
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "miner", "run", "--input", cfg.input, "--output", str(out),
            "--num-triplets", str(N), "--shard-bytes", str(cfg.shard_bytes), "--triplets-per-shard", "400",
            "--parse-workers", "1"]
    proc = subprocess.Popen(args, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    stats = out / "graphs" / "_stats"
    try:
        _wait_for(lambda: stats.exists() and len(list(stats.glob("*.json"))) >= 2, 180, "two committed shards")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    committed = len(list(stats.glob("*.json")))
    assert 2 <= committed < 9 and not (out / "_manifest.json").exists()
    manifest = run(replace(cfg, output=str(out), parse_workers=1))
    assert manifest["counts"]["read"] == 15_833
    reference = _triplets(cfg.output)
    resumed = _triplets(str(out))
    ids = resumed.column("triplet_id").to_pylist()
    assert len(ids) == len(set(ids)) and resumed.equals(reference)

    # a kill during the mine stage: two shards gone, one half-written (Parquet without its marker)
    shutil.copytree(out, tmp_path / "mid-mine")
    mid = tmp_path / "mid-mine"
    (mid / "_manifest.json").unlink()
    markers = sorted((mid / "triplets" / "_stats").glob("*.json"))
    for m in markers[:3]:
        m.unlink()
    victim = next((mid / "triplets").rglob(f"part-{markers[0].stem}.parquet"))
    victim.write_bytes(b"truncated")
    for m in markers[1:3]:
        next((mid / "triplets").rglob(f"part-{m.stem}.parquet")).unlink()
    run(replace(cfg, output=str(mid)))
    assert _triplets(str(mid)).equals(reference)


def test_bad_input_is_counted_by_reason(ray_session, cc3m_tsv, tmp_path):
    good = cc3m_tsv.read_bytes().split(b"\n")[:600]
    bad = [b"", b"   \thttp://x/ws.jpg", b"caf\xe9\xff\thttp://x/u.jpg", b"one field only",
           b"a\tb\tc", ("long " * 25_000).encode() + b"\thttp://x/l.jpg",
           "一只狗坐在红色沙发上\thttp://x/zh.jpg".encode()]
    src = tmp_path / "bad.tsv"
    src.write_bytes(b"\n".join(good[:300] + bad + good[300:]) + b"\n")
    manifest = run(_cfg(src, str(tmp_path / "out"), num_triplets=50, shard_bytes=1 << 20))
    skipped = manifest["counts"]["skipped"]
    assert skipped == {"caption_too_long": 1, "empty_caption": 2, "non_english": 1, "not_utf8": 1,
                       "wrong_field_count": 2}
    assert manifest["counts"]["parsed"] == 600
    assert all(manifest["skip_examples"][k] for k in skipped)


def test_missing_input_or_bucket_fails_before_any_work(services, tmp_path):
    with pytest.raises(storage.StorageError, match="input not found"):
        run(_cfg(tmp_path / "missing.tsv", str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
    src = tmp_path / "in.tsv"
    src.write_text("a dog\thttp://x\n")
    with pytest.raises(storage.StorageError, match="not writable"):
        run(_cfg(src, "s3://no-such-bucket-here/out"))


def test_ray_job_submit(services, cc3m_tsv, tmp_path):
    src = tmp_path / "in.tsv"
    src.write_bytes(b"\n".join(cc3m_tsv.read_bytes().split(b"\n")[:1500]) + b"\n")
    out = tmp_path / "job-out"
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [str(ray_bin), "job", "submit", "--working-dir", str(ROOT), "--",
           "python", "-m", "miner", "run", "--input", str(src), "--output", str(out), "--num-triplets", "100",
           "--shard-bytes", "50000", "--progress-interval-s", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=ROOT,
                         env={**os.environ, "PATH": f"{ray_bin.parent}:{os.environ['PATH']}"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "succeeded" in res.stdout + res.stderr
    parse_lines = [ln for ln in res.stdout.splitlines() if "[parse]" in ln]  # the final one however fast
    assert parse_lines and "[parse] 1,500/1,500 captions" in parse_lines[-1] and "| done" in parse_lines[-1]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["read"] == 1500
