"""Bad data in the middle and hostile keys (issue 11, "Faults"); each a counted skip or a clear error
naming the record, never a hang, never a path outside the output, never a secret in a log.

Already covered elsewhere (not repeated here): corrupt JPEGs counted as ``corrupt_image`` by the trainer
(test_trainer_data.py, test_trainer_ray.py) and the evaluator (test_evaluator_ray.py); triplet keys without
an image dropped/counted as ``missing_image`` (test_trainer_data.py); malformed annotation records named by
task and index (test_evaluator.py::test_cli_bad_input_is_one_line_naming_the_record,
test_synthetic_benchmark.py::test_loader_rejects_malformed_records); bad caption lines counted by reason
(test_readers.py, test_pipeline.py).
"""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster import storage
from tests.conftest import ROOT

HOSTILE_KEYS = ["../../outside", "/etc/passwd", "a/b/../../c", "nul\0key", "k" * 5000, "..", "ok"]


def _tar(path: Path, n: int, size: int = 3000) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(n):
            for ext, data in ((".jpg", bytes([i]) * size), (".txt", b"a caption")):
                info = tarfile.TarInfo(f"{i:06d}{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_truncated_tar_shard_keeps_its_whole_members_and_names_itself(tmp_path, caplog):
    from trainer import data

    raw = _tar(tmp_path / "whole.tar", 5)
    whole = data.index_tar(str(tmp_path / "whole.tar"))
    assert whole["key"].to_pylist() == [f"{i:06d}" for i in range(5)]
    cut = whole["offset"][2].as_py() + 1000  # inside the third image's bytes
    (tmp_path / "cut.tar").write_bytes(raw[:cut])
    with caplog.at_level(logging.WARNING, logger="genecis_ray.trainer"):
        table = data.index_tar(str(tmp_path / "cut.tar"))
    assert table["key"].to_pylist() == ["000000", "000001"]  # the incomplete 000002 is dropped
    assert f"{tmp_path / 'cut.tar'} is truncated" in caplog.text and "000002" in caplog.text
    index = data.ImageIndex([str(tmp_path / "cut.tar")], data.build_index([str(tmp_path / "cut.tar")], [table]))
    assert index.read("000001") == bytes([1]) * 3000
    assert "000002" not in index and "000004" not in index  # rows naming them: missing_image skips


def test_hostile_image_ids_in_annotations_are_refused_by_name():
    from evaluator.genecis_data import AnnotationError, parse_item

    assert parse_item({"image_id": 2345, "instance_bbox": [0, 0, 4, 4]}).image_id == "2345"
    for bad in HOSTILE_KEYS[:-1]:
        with pytest.raises(AnnotationError, match="cannot name a file under the image root"):
            parse_item({"image_id": bad, "instance_bbox": [0, 0, 4, 4]})


def test_hostile_keys_and_captions_stay_data_inside_one_shard(tmp_path):
    """Keys with '/', '..', NUL, 5 kB and captions with control bytes: one shard, keys kept byte-exact,
    nothing written outside graphs/ (the graph writer of the miner, Ray-free)."""
    from miner import graphs as G
    from miner.parser import SceneGraphParser
    from miner.readers import CaptionRules, plan_shards

    rows = [{"key": k, "url": f"http://x/{i}.jpg", "caption": f"a red dog on a {'blue' if i % 2 else 'green'} sofa"}
            for i, k in enumerate(HOSTILE_KEYS)]
    rows.append({"key": "ctl", "url": "http://x/c.jpg", "caption": "a cat\x1b[31m under a table\r"})
    src = tmp_path / "in" / "hostile.jsonl"
    src.parent.mkdir()
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    before = {p for p in Path(tmp_path).rglob("*")}
    [spec] = plan_shards(str(src), "jsonl", 1 << 20)
    parser = SceneGraphParser("en_core_web_sm", 64)
    stats = G.process_shard(spec, parser.iter_parse, storage.resolve(str(out / "graphs")), CaptionRules(1000, 0.5))
    assert stats["read"] == len(rows)
    created = {p for p in Path(tmp_path).rglob("*")} - before
    assert {p.relative_to(out).as_posix() for p in created if p.is_file()} == \
        {"graphs/part-00000.parquet", "graphs/_stats/part-00000.json"}
    table = pq.read_table(out / "graphs" / "part-00000.parquet")
    kept = dict(zip(table["key"].to_pylist(), table["caption"].to_pylist()))
    assert set(kept) <= {r["key"] for r in rows} and len(kept) == stats["parsed"]
    assert {"../../outside", "nul\0key", "k" * 5000, "/etc/passwd"} <= set(kept)
    assert not (tmp_path / "outside").exists() and not (out.parent / "c").exists()


def test_logs_and_outputs_never_print_the_s3_secret(services, s3_bucket, tmp_path):
    """A stage on S3, a run refused for a missing bucket and one refused for a wrong key: the secret of the
    environment appears in no output line and in no file the stage wrote."""
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert len(secret) >= 16
    world = [sys.executable, "-m", "synthetic", "world", "--images", "8", "--shard-size", "4", "--workers", "1"]
    runs = [subprocess.run(world + ["--output", f"{s3_bucket}/w"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300),
            subprocess.run(world + ["--output", "s3://no-such-bucket-for-secrets/w"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300),
            subprocess.run(world + ["--output", f"{s3_bucket}/w2"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300, env={**os.environ, "AWS_SECRET_ACCESS_KEY": secret[::-1],
                                             "AWS_MAX_ATTEMPTS": "1"})]
    assert runs[0].returncode == 0, runs[0].stderr[-2000:]
    assert runs[1].returncode == 2 and runs[2].returncode == 2, (runs[1].stderr[-1000:], runs[2].stderr[-1000:])
    for res in runs:
        assert secret not in res.stdout + res.stderr and secret[::-1] not in res.stdout + res.stderr
    loc = storage.resolve(f"{s3_bucket}/w")
    files = storage.list_files(loc)
    assert any(f.uri.endswith("_world.json") for f in files)
    for f in files:
        if f.uri.endswith((".json", ".tsv", ".txt")):
            assert secret.encode() not in storage.read_bytes(f), f.uri


def test_lost_ray_capacity_is_one_line_and_exit_code_3(capsys):
    """A node lost mid-run reaches the driver as Ray's actor/node errors: one line saying the same command
    resumes, exit 3 (2 stays for the user's input); an actor whose constructor raised stays a bug."""
    import ray.exceptions as rex

    from cluster.cli import LOST_CAPACITY_EXIT, run_cli

    def lose(error):
        def fn(_args):
            raise error
        return fn

    for err in (rex.ActorUnavailableError("RPC error: Socket closed", b"\x01" * 16),
                rex.NodeDiedError("node 1f2e marked dead")):
        assert run_cli(lose(err), []) == LOST_CAPACITY_EXIT == 3
        line = capsys.readouterr().err.strip()
        assert line.count("\n") == 0 and line.startswith("error: lost Ray capacity mid-run")
        assert "run the same command again" in line
    with pytest.raises(ValueError):
        run_cli(lose(ValueError("a bug")), [])
