"""The S3 server restarted mid-write: the suite's radosgw is stopped by PID while `python -m synthetic world`
writes to it, and started again.  Requests are retried with backoff (cluster.storage: AWS_MAX_ATTEMPTS,
default 8), so the stage completes, or it fails with one `error:` line and the same command completes it;
either way no shard is taken for finished unless every object its marker vouches for is complete.

The test restarts the radosgw that serves ``AWS_ENDPOINT_URL_S3`` (under `make test`, the suite's own, from
cluster/local/s3_server.sh: same ceph.conf, and its ``pids`` file updated so the suite still stops it).
Other tests' requests in flight during the few seconds of outage are retried the same way.
"""
from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from cluster import storage
from tests.conftest import ROOT

pytestmark = [pytest.mark.s3, pytest.mark.slow]

IMAGES, SHARD = 2000, 250  # 8 shards of 250 JPEG objects + a tar + an index each
RGW = "radosgw -n client.rgw.a"


def _endpoint_port() -> int:
    return urlparse(os.environ["AWS_ENDPOINT_URL_S3"]).port


def _conf_of(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (FileNotFoundError, PermissionError):
        return None
    for item in env:
        if item.startswith(b"CEPH_CONF="):
            return item[len(b"CEPH_CONF="):].decode()
    return None


def find_radosgw(port: int) -> tuple[int, Path]:
    """PID and ceph.conf of the radosgw serving 127.0.0.1:port (started by cluster/local/s3_server.sh)."""
    res = subprocess.run(["pgrep", "-f", RGW], capture_output=True, text=True)
    for pid in map(int, res.stdout.split()):
        conf = _conf_of(pid)
        if conf and f"endpoint=127.0.0.1:{port}" in Path(conf).read_text():
            return pid, Path(conf)
    pytest.skip(f"no radosgw of cluster/local/s3_server.sh serves port {port} on this machine")


def _answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
        return True
    except urllib.error.HTTPError:
        return True  # an S3 error document is an answer
    except OSError:
        return False


def restart_radosgw(pid: int, conf: Path, port: int, down_s: float = 3.0) -> tuple[int, float]:
    """Stop radosgw by PID (SIGTERM, SIGKILL after 20 s), wait ``down_s``, start it again with the same
    ceph.conf and wait until it answers; the s3_server.sh ``pids`` file gets the new PID.  Returns the new
    PID and the seconds the server did not answer."""
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    assert not _answers(port)
    time.sleep(down_s)
    env = {**os.environ, "CEPH_CONF": str(conf)}
    subprocess.run(RGW.split() + ["--keyring", "/dev/null"], env=env, check=True)  # daemonises
    deadline = time.monotonic() + 120
    while not _answers(port):
        assert time.monotonic() < deadline, "radosgw did not answer within 120 s of its restart"
        time.sleep(0.2)
    outage = time.monotonic() - t0
    new = next(p for p in map(int, subprocess.run(["pgrep", "-f", RGW], capture_output=True, text=True).stdout.split())
               if _conf_of(p) == str(conf))
    pids = conf.parent / "pids"
    if pids.exists():
        pids.write_text(" ".join(str(new) if p == str(pid) else p for p in pids.read_text().split()) + " ")
    return new, outage


def _world_cmd(out: str) -> list[str]:
    return [sys.executable, "-m", "synthetic", "world", "--output", out, "--images", str(IMAGES),
            "--shard-size", str(SHARD), "--workers", "1", "--seed", "3", "--progress-interval-s", "1"]


def _check_committed_shards(out: str) -> int:
    """Every shard with a marker: its tar and index have the marker's checksums and every JPEG in the tar
    is also images/KEY.jpg with the same bytes.  Returns the number of committed shards."""
    root = storage.resolve(out)
    markers = storage.list_files(root.child("_stats"), ".json")
    for marker in markers:
        st = storage.read_json(marker)
        name = marker.path.rsplit("/", 1)[-1][: -len(".json")]
        tar = storage.read_bytes(root.child("shards", f"{name}.tar"))
        index = storage.read_bytes(root.child("index", f"{name}.parquet"))
        assert hashlib.sha256(tar).hexdigest() == st["sha256"]["tar"], name
        assert hashlib.sha256(index).hexdigest() == st["sha256"]["index"], name
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            jpgs = [m for m in tf.getmembers() if m.name.endswith(".jpg")]
            assert len(jpgs) == st["images"]
            for m in jpgs:
                assert storage.read_bytes(root.child("images", m.name)) == tf.extractfile(m).read(), m.name
    return len(markers)


def test_radosgw_restarted_mid_write_then_the_stage_completes(services, s3_bucket, tmp_path):
    port = _endpoint_port()
    pid, conf = find_radosgw(port)
    out = f"{s3_bucket}/world"
    log = tmp_path / "world.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(_world_cmd(out), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    stats = storage.resolve(out).child("_stats")
    try:
        deadline = time.monotonic() + 600
        while not storage.list_files(stats, ".json"):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no shard committed within 600 s"
            time.sleep(0.2)
        _, outage = restart_radosgw(pid, conf, port)
        committed_at_restart = len(storage.list_files(stats, ".json"))
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    print(f"radosgw outage {outage:.1f} s; {committed_at_restart} of {IMAGES // SHARD} shards committed at the "
          f"restart; first run exit code {rc}")
    assert committed_at_restart < IMAGES // SHARD, "the world finished before the restart: make it bigger"
    if rc != 0:  # gave up after its retries: one clear line, nothing half-written taken for done
        assert rc == 2 and "Traceback" not in text and "error:" in text, text[-3000:]
        assert not storage.exists(storage.resolve(out).child("_world.json"))
        _check_committed_shards(out)
        again = subprocess.run(_world_cmd(out), cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    manifest = storage.read_json(storage.resolve(out).child("_world.json"))
    assert manifest["counts"]["images"] == IMAGES and manifest["counts"]["shards"] == IMAGES // SHARD
    assert _check_committed_shards(out) == IMAGES // SHARD
