"""Storage URIs (local and a real S3 server), the typed config CLI and the progress line."""
from __future__ import annotations

import http.server
import os
import pickle
import subprocess
import sys
import threading
from dataclasses import dataclass, field

import pytest

from cluster import storage
from cluster.config import ConfigError, config_to_dict, parse_config
from cluster.progress import Progress
from miner.config import KINDS, MinerConfig


def test_local_roundtrip_and_listing(tmp_path):
    root = storage.require_writable(str(tmp_path / "out"))
    storage.write_json(root.child("a", "x.json"), {"v": 1})
    storage.write_bytes_atomic(root.child("b.bin"), b"abc")
    assert storage.read_json(root.child("a", "x.json")) == {"v": 1}
    assert [os.path.relpath(l.path, root.path) for l in storage.list_files(root)] == ["a/x.json", "b.bin"]
    assert not [p for p in os.listdir(root.path) if ".tmp-" in p]  # atomic writes leave no temp files


def test_missing_local_input_is_a_clear_error(tmp_path):
    with pytest.raises(storage.StorageError, match="input not found"):
        storage.require_input(str(tmp_path / "nope.tsv"))


def test_unsupported_scheme():
    with pytest.raises(storage.StorageError, match="unsupported URI scheme"):
        storage.resolve("gs://bucket/x")


class _RecordingS3(http.server.BaseHTTPRequestHandler):
    """Answers every request ``status`` (404) and records (method, path, Host, Authorization) of each."""

    seen: list[tuple[str, str, str, str]] = []
    status = 404

    def _answer(self) -> None:
        self.seen.append((self.command, self.path, self.headers.get("Host", ""),
                          self.headers.get("Authorization", "")))
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = _answer

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


def test_s3_filesystem_from_env_is_path_style():
    """The bucket goes in the request path, not the host name (radosgw/MinIO need path-style), and the
    endpoint, region and keys come from the standard variables: observed on the requests themselves."""
    _RecordingS3.seen.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://localhost:{server.server_port}"  # a host name: the SDK would go path-style for an IP
        fs = storage.s3_filesystem_from_env({"AWS_ENDPOINT_URL_S3": endpoint, "AWS_REGION": "eu-west-1",
                                             "AWS_ACCESS_KEY_ID": "akid-test", "AWS_SECRET_ACCESS_KEY": "b"})
        assert fs.region == "eu-west-1"
        fs.get_file_info("some-bucket/some/key.json")  # a 404: simply "not found"
    finally:
        server.shutdown()
        server.server_close()
    assert _RecordingS3.seen, "no request reached the endpoint"
    method, path, host, auth = _RecordingS3.seen[0]
    assert path.startswith("/some-bucket/some/key.json") and host == f"localhost:{server.server_port}"
    assert "Credential=akid-test/" in auth and "/eu-west-1/s3/" in auth


def test_pickled_s3_filesystem_keeps_its_retries_and_carries_no_keys(monkeypatch):
    """What a Ray worker receives: rebuilt from that process's environment, so AWS_MAX_ATTEMPTS still holds
    (pyarrow's own pickle falls back to the SDK's 3 attempts) and the secret is not in the bytes."""
    _RecordingS3.seen.clear()
    monkeypatch.setattr(_RecordingS3, "status", 503)  # retryable: every attempt reaches the server
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {"AWS_ENDPOINT_URL_S3": f"http://localhost:{server.server_port}", "AWS_REGION": "eu-west-1",
           "AWS_ACCESS_KEY_ID": "akid-test", "AWS_SECRET_ACCESS_KEY": "secret-xyz", "AWS_MAX_ATTEMPTS": "4"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        data = pickle.dumps(storage.resolve("s3://some-bucket/x").fs)
        assert b"secret-xyz" not in data and b"akid-test" not in data
        fs = pickle.loads(data)
        with pytest.raises(OSError):
            fs.get_file_info("some-bucket/some/key.json")
    finally:
        server.shutdown()
        server.server_close()
    assert isinstance(fs, storage.EnvS3FileSystem) and fs.region == "eu-west-1"
    assert len(_RecordingS3.seen) == 4  # AWS_MAX_ATTEMPTS, not the SDK's 3


@pytest.mark.s3
def test_s3_roundtrip(s3_bucket):
    root = storage.require_writable(f"{s3_bucket}/prefix")
    storage.write_json(root.child("m.json"), {"ok": True})
    assert storage.read_json(storage.require_input(f"{s3_bucket}/prefix/m.json")) == {"ok": True}
    assert [l.uri for l in storage.list_files(root)] == [f"{s3_bucket}/prefix/m.json"]


@pytest.mark.s3
def test_s3_missing_bucket_is_a_clear_error(services):
    with pytest.raises(storage.StorageError, match="not writable: s3://no-such-bucket-xyz/out"):
        storage.require_writable("s3://no-such-bucket-xyz/out")


@pytest.mark.s3
def test_s3_bad_secret_is_a_clear_error(s3_bucket, monkeypatch):
    """Against a bucket that exists, so only the secret can be what fails."""
    storage.require_writable(f"{s3_bucket}/out")  # the right secret writes here
    storage.write_json(storage.resolve(f"{s3_bucket}/in.json"), {"ok": True})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(storage.StorageError, match=f"not writable: {s3_bucket}/out"):
        storage.require_writable(f"{s3_bucket}/out")
    with pytest.raises(storage.StorageError, match=f"{s3_bucket}/in.json"):
        storage.require_input(f"{s3_bucket}/in.json")


def test_unreachable_endpoint_fails_before_work(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    with pytest.raises(storage.StorageError, match="s3://bucket/in"):
        storage.require_input("s3://bucket/in")


@dataclass(frozen=True)
class _Cfg:
    input: str = field(metadata={"help": "in"})
    n: int = 3
    kinds: tuple[str, ...] = ("a", "b")
    ratio: float | None = None
    flag: bool = True


def test_config_cli_roundtrip():
    cfg = parse_config(_Cfg, ["--input", "x", "--n", "7", "--kinds", "b", "--flag", "false", "--ratio", "0.5"])
    assert cfg == _Cfg(input="x", n=7, kinds=("b",), ratio=0.5, flag=False)
    assert config_to_dict(cfg)["kinds"] == ["b"]
    with pytest.raises(ConfigError, match="--input"):
        parse_config(_Cfg, ["--n", "1"])  # --input is required
    assert parse_config(_Cfg, ["--input", "x", "--flag"]).flag is True  # a bare boolean flag means true


def test_miner_config_defaults_follow_genecis():
    cfg = parse_config(MinerConfig, ["--input", "a", "--output", "b"])
    assert (cfg.num_triplets, cfg.min_images_per_subject, cfg.min_objects_per_subject) == (1_600_000, 5, 2)
    assert (cfg.concreteness_threshold, cfg.val_fraction, cfg.max_target_attempts) == (4.8, 0.1, 100)
    assert cfg.kinds == KINDS
    with pytest.raises(ValueError):
        MinerConfig(input="a", output="b", kinds=("nope",))


def test_miner_run_help_lists_every_field():
    out = subprocess.run([sys.executable, "-m", "miner", "run", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for name in ("--num-triplets", "--seed", "--format", "--concreteness-threshold", "--kinds"):
        assert name in out


def test_progress_line_has_rate_skips_and_eta():
    t = [0.0]
    lines: list[str] = []
    p = Progress("parse", 1000, "captions", interval_s=5, emit=lines.append, clock=lambda: t[0])
    t[0] = 2.0
    p.update(100, 3)
    assert not lines  # less than interval_s since start
    t[0] = 10.0
    p.update(400, 1)
    assert lines and "500/1,000 captions" in lines[0] and "50 captions/s" in lines[0]
    assert "skipped 4" in lines[0] and "ETA 0h00m10s" in lines[0]
