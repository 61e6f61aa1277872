"""The demo chain end to end: ``python -m cluster pipeline --config cluster/configs/demo.yaml --quick`` on
local Ray with its storage on the radosgw S3 server, then a rerun that must do (and write) nothing.

The run uses the shipped demo config through ``base:`` with its quick overlay shrunk further (a few hundred
images, a few training steps, three templates per task): the chain and its wiring are the demo's, only
the sizes are smaller, so the test checks that every stage runs on S3 and hands its output to the next.
"""
from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import pytest
import yaml

from cluster.__main__ import main as cluster_main
from cluster.pipeline import STAGES

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
TASKS = ("focus_attribute", "change_attribute", "focus_object", "change_object")
HEADS = ("image_only", "text_only", "image_plus_text", "combiner", "combiner_plus_image")
SMALLER = {  # overlays the demo's `quick` section
    "world": {"images": 300, "shard_size": 150},
    "mine": {"num_triplets": 200, "shard_bytes": 20000, "triplets_per_shard": 400, "parse_workers": 1},
    "clip": {"max_steps": 3, "batch_size": 16, "checkpoint_every": 3},
    "combiner": {"max_steps": 3, "batch_size": 16, "checkpoint_every": 3},
    "benchmark": {"templates": 3},
    "evaluate": {"workers": 1},
}
CLIP_STEPS, COMBINER_STEPS = SMALLER["clip"]["max_steps"], SMALLER["combiner"]["max_steps"]


def _pipeline(*args: str) -> tuple[int, list[str]]:
    """``python -m cluster pipeline ARGS`` in this process; its exit code and stdout lines."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cluster_main(["pipeline", *args])
    return code, [line for line in out.getvalue().splitlines() if line.strip()]


def _objects(s3_client, bucket: str) -> dict[str, tuple[str, object]]:
    """Every object of the bucket: key -> (ETag, LastModified)."""
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: (o["ETag"], o["LastModified"]) for page in pages for o in page.get("Contents", [])}


def _json(s3_client, bucket: str, key: str) -> dict:
    return json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())


@pytest.fixture(scope="module")
def chain(services, s3_client, tmp_path_factory):
    bucket = f"demo-chain-{int(time.time() * 1000) % 10**10}"
    s3_client.create_bucket(Bucket=bucket)
    config = tmp_path_factory.mktemp("demo-chain") / "demo-small.yaml"
    config.write_text(yaml.safe_dump({"base": str(ROOT / "cluster" / "configs" / "demo.yaml"),
                                      "quick": SMALLER}))
    args = ("--config", str(config), "--quick", "--storage", f"s3://{bucket}/demo")
    t0 = time.monotonic()
    code, lines = _pipeline(*args)
    took = time.monotonic() - t0
    assert code == 0, "\n".join(lines[-20:])
    root = "demo/seed0-quick"
    return {"bucket": bucket, "root": root, "args": args, "lines": lines, "seconds": took,
            "summary": _json(s3_client, bucket, f"{root}/pipeline.json")}


def test_last_line_is_the_results_uri_and_every_stage_ran(chain):
    assert chain["lines"][-1] == f"s3://{chain['bucket']}/{chain['root']}/eval/results.json"
    stages = chain["summary"]["stages"]
    assert set(stages) == set(STAGES)
    for name, info in stages.items():
        assert not info.get("skipped") and info["seconds"] > 0, (name, info)
    print(f"\ndemo chain on S3: {chain['seconds']:.0f} s; stages (s): "
          + ", ".join(f"{n} {i['seconds']:.0f}" for n, i in stages.items()))


def test_results_have_every_head_and_task(chain, s3_client):
    results = _json(s3_client, chain["bucket"], f"{chain['root']}/eval/results.json")
    assert set(results["heads"]) == set(HEADS)
    for head in HEADS:
        res = results["heads"][head]
        for task in TASKS:
            r = res[task]
            assert r["templates"] == SMALLER["benchmark"]["templates"], (head, task)
            assert 0.0 <= r["r1"] <= r["r2"] <= r["r3"] <= 100.0, (head, task, r)
        assert res["average_r1"] == pytest.approx(sum(res[t]["r1"] for t in TASKS) / len(TASKS), abs=1e-3)
    keys = _objects(s3_client, chain["bucket"])
    for name in ("results.md", "r1_by_task.png", "recall_at_k.png"):
        assert f"{chain['root']}/eval/{name}" in keys


def test_each_stage_really_ran(chain, s3_client):
    bucket, root = chain["bucket"], chain["root"]
    keys = _objects(s3_client, bucket)
    world = _json(s3_client, bucket, f"{root}/world/_world.json")["counts"]
    assert world["images"] == SMALLER["world"]["images"] and world["shards"] == 2
    assert sum(k.startswith(f"{root}/world/shards/") and k.endswith(".tar") for k in keys) == 2
    counts = _json(s3_client, bucket, f"{root}/mined/_manifest.json")["counts"]["triplets"]
    assert sum(split for kind in counts.values() for split in kind.values()) > 0
    assert counts["change_object"]["train"] > 0
    assert any(k.startswith(f"{root}/mined/triplets/train/") and k.endswith(".parquet") for k in keys)
    for run, steps in (("clip", CLIP_STEPS), ("combiner", COMBINER_STEPS)):
        summary = _json(s3_client, bucket, f"{root}/runs/{run}/summary.json")
        assert summary["finished"] and summary["step"] == steps and summary["mode"] == run
        assert any(k.startswith(f"{root}/runs/{run}/step_{steps:06d}/") for k in keys), run
    assert any(k.startswith(f"{root}/runs/combiner/step_") and k.endswith("combiner.pt") for k in keys)
    bench = _json(s3_client, bucket, f"{root}/benchmark/_benchmark.json")
    assert bench["templates_per_task"] == SMALLER["benchmark"]["templates"] and bench["verified_from_files"]
    assert bench["seed"] == 1  # world seed 0, benchmark seed 1
    for task in TASKS:
        assert f"{root}/benchmark/annotations/{task}.json" in keys


def test_rerun_does_nothing_and_rewrites_no_object(chain, s3_client):
    before = _objects(s3_client, chain["bucket"])
    t0 = time.monotonic()
    code, lines = _pipeline(*chain["args"])
    assert code == 0
    assert time.monotonic() - t0 < 60
    assert lines[-1] == f"s3://{chain['bucket']}/{chain['root']}/eval/results.json"
    complete = [line for line in lines if line.endswith("(already complete)")]
    assert len(complete) == len(STAGES), lines
    assert _objects(s3_client, chain["bucket"]) == before


def test_rerun_with_a_changed_stage_option_is_refused_before_any_work(chain, s3_client, tmp_path, capsys):
    before = _objects(s3_client, chain["bucket"])
    config = tmp_path / "changed.yaml"
    changed = {**SMALLER, "clip": {**SMALLER["clip"], "max_steps": CLIP_STEPS + 1}}
    config.write_text(yaml.safe_dump({"base": str(ROOT / "cluster" / "configs" / "demo.yaml"), "quick": changed}))
    args = list(chain["args"])
    args[1] = str(config)
    code, _ = _pipeline(*args)
    assert code == 2
    err = capsys.readouterr().err
    assert "runs/clip" in err and "max_steps" in err
    assert _objects(s3_client, chain["bucket"]) == before
