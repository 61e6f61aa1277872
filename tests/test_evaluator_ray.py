"""The evaluator on Ray: the four heads end to end on a procedural benchmark (tiny model, a trained-format
Combiner checkpoint), counted skips of a missing and an unreadable image, rerun = no work, the S3 path
with the embedding cache on radosgw, and `ray job submit`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evaluator.config import EvalConfig
from evaluator.genecis_data import BenchmarkLayout
from evaluator.plan import build_plan
from evaluator.protocol import discover_tasks, load_tasks, read_results

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("focus_attribute", "change_attribute", "focus_object", "change_object")


def _benchmark(dest: Path, templates: int) -> Path:
    subprocess.run([sys.executable, "-m", "synthetic", "benchmark", "--output", str(dest), "--templates",
                    str(templates), "--seed", "1"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    return dest


def _combiner_checkpoint(dest: Path) -> str:
    import torch

    from trainer import checkpoint as ckpt
    from trainer.model import Combiner, load_backbone, model_config, seeded

    bb = load_backbone("tiny", seed=3)  # not the default tiny init: workers must load the checkpoint's
    with seeded(4):
        comb = Combiner(bb.embed_dim, projection_dim=32, hidden_dim=64)
    with torch.no_grad():
        comb.output_layer.weight.mul_(10.0)  # make the learned branch matter
    ckpt.save_checkpoint(str(dest / "step_000001"), mode="combiner", model_name="tiny",
                         model_cfg=model_config("tiny"), backbone=bb.model, combiner=comb, train_state={},
                         step=1, samples_seen=8)
    return str(dest)


@pytest.fixture(scope="module")
def local_run(ray_session, tmp_path_factory):
    """Four heads on a 12-template benchmark with one missing and one corrupt image, --skip-missing."""
    from evaluator.genecis import run

    tmp = tmp_path_factory.mktemp("eval-ray")
    bench = _benchmark(tmp / "bench", 12)
    layout = BenchmarkLayout.synthetic(str(bench))
    fo = json.loads(Path(layout.annotation_uri("focus_object")).read_text())
    fa = json.loads(Path(layout.annotation_uri("focus_attribute")).read_text())
    missing = Path(layout.coco_root) / f"{fo[0]['gallery'][3]['val_image_id']:012d}.jpg"
    corrupt = Path(layout.vg_root) / f"{fa[1]['target']['image_id']}.jpg"
    missing.unlink()
    corrupt.write_bytes(b"not a jpeg")
    cfg = EvalConfig(model="tiny", output=str(tmp / "out"), benchmark=str(bench),
                     checkpoint=_combiner_checkpoint(tmp / "run"), heads=",".join(
                         ["image_only", "text_only", "image_plus_text", "combiner"]),
                     skip_missing=True, batch_size=32, progress_interval_s=1)
    results = run(cfg)
    return {"cfg": cfg, "results": results, "bench": bench, "out": tmp / "out", "missing": missing,
            "corrupt": corrupt, "layout": layout}


def test_four_heads_end_to_end(local_run):
    res = local_run["results"]
    assert list(res["heads"]) == ["image_only", "text_only", "image_plus_text", "combiner"]
    for head, entry in res["heads"].items():
        assert set(entry) == {*TASKS, "average_r1"}
        for task in TASKS:
            r = entry[task]
            assert 0.0 <= r["r1"] <= r["r2"] <= r["r3"] <= 100.0
            assert r["templates"] == res["tasks"][task]["scored"]
        assert entry["average_r1"] == pytest.approx(sum(entry[t]["r1"] for t in TASKS) / 4, abs=1e-3)
    assert res["model"]["combiner_fingerprint"] and res["model"]["checkpoint"].endswith("step_000001")
    assert res["heads"]["combiner"] != res["heads"]["image_plus_text"]
    on_disk = read_results(str(local_run["out"]))
    assert on_disk["heads"]["combiner"]["average_r1"] == res["heads"]["combiner"]["average_r1"]


def test_every_distinct_image_encoded_once_and_bad_images_counted(local_run):
    res, layout = local_run["results"], local_run["layout"]
    files, _ = discover_tasks(layout.annotations)
    full = build_plan({t: td.templates for t, td in load_tasks(files).items()})
    enc = res["encodes"]
    assert enc["images"]["encoded"] == len(full.items) - 2  # the missing one is never sent, the corrupt fails
    assert enc["texts"]["encoded"] == len(full.texts) and enc["images"]["from_cache"] == 0
    assert enc["images"]["slots_all_heads"] == 4 * enc["images"]["slots"]
    assert res["skipped"]["focus_object"]["images_by_reason"] == {"missing_image": 1}
    assert res["skipped"]["focus_attribute"]["images_by_reason"] == {"unreadable_image": 1}
    example = res["skipped"]["focus_attribute"]["examples"][0]
    assert example["path"] == str(local_run["corrupt"]) and example["template"] == 1
    for task in TASKS:
        info = res["tasks"][task]
        assert info["scored"] == info["selected"] - info["skipped"] == 12 - info["skipped"]
    assert res["tasks"]["focus_object"]["skipped"] >= 1 and res["tasks"]["focus_attribute"]["skipped"] >= 1


def test_outputs_and_results_json_last(local_run):
    out = local_run["out"]
    names = {"config.json", "results.md", "r1_by_task.png", "recall_at_k.png", "results.json"}
    assert names <= {p.name for p in out.iterdir()}
    last = (out / "results.json").stat().st_mtime_ns
    assert all((out / n).stat().st_mtime_ns <= last for n in names)
    md = (out / "results.md").read_text()
    assert "| Combiner (ours) |" in md and "Focus Attribute" in md
    assert (out / "r1_by_task.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_on_finished_output_does_no_work(local_run):
    from evaluator.genecis import run

    before = (local_run["out"] / "results.json").stat().st_mtime_ns
    again = run(local_run["cfg"])
    assert (local_run["out"] / "results.json").stat().st_mtime_ns == before
    assert again["heads"]["combiner"] == json.loads((local_run["out"] / "results.json").read_text())["heads"]["combiner"]


def _upload(s3_client, local: Path, bucket_uri: str, prefix: str) -> str:
    bucket = bucket_uri[len("s3://"):]
    for path in local.rglob("*"):
        if path.is_file():
            s3_client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local)}")
    return f"{bucket_uri}/{prefix}"


def test_s3_path_with_embedding_cache(ray_session, s3_client, s3_bucket, tmp_path):
    from evaluator.genecis import run

    bench = _upload(s3_client, _benchmark(tmp_path / "bench", 4), s3_bucket, "bench")
    common = dict(model="tiny", benchmark=bench, heads="image_only,text_only", cache=f"{s3_bucket}/cache",
                  batch_size=16)
    first = run(EvalConfig(output=f"{s3_bucket}/out1", **common))
    assert first["encodes"]["images"]["encoded"] == first["encodes"]["images"]["distinct"] > 0
    assert read_results(f"{s3_bucket}/out1")["heads"] == json.loads(json.dumps(first["heads"]))
    second = run(EvalConfig(output=f"{s3_bucket}/out2", **{**common, "heads": "image_plus_text,image_only"}))
    assert second["encodes"]["images"]["encoded"] == second["encodes"]["texts"]["encoded"] == 0  # all cached
    assert second["encodes"]["images"]["from_cache"] == first["encodes"]["images"]["distinct"]
    assert second["heads"]["image_only"] == first["heads"]["image_only"]  # same embeddings, same ranks
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket[5:], Prefix="out2/")["Contents"]}
    assert {"out2/results.json", "out2/results.md", "out2/config.json", "out2/r1_by_task.png"} <= keys


def test_ray_job_submit(services, tmp_path):
    bench = _benchmark(tmp_path / "bench", 3)
    shutil.rmtree(Path(bench) / "gt")  # not needed by the evaluator
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [str(ray_bin), "job", "submit", "--working-dir", str(ROOT), "--",
           "python", "-m", "evaluator", "genecis", "--benchmark", str(bench), "--model", "tiny",
           "--heads", "image_only,image_plus_text", "--output", str(tmp_path / "out"),
           "--progress-interval-s", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=500, cwd=ROOT,
                         env={**os.environ, "PATH": f"{ray_bin.parent}:{os.environ['PATH']}"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "[encode]" in res.stdout and "fewer encodes than slots" in res.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["heads"]) == {"image_only", "image_plus_text"}
    assert set(results["heads"]["image_only"]) == {*TASKS, "average_r1"}
