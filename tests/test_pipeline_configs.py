"""The pipeline's plan without Ray or storage: every shipped config loads and builds each stage's typed
config, the stage plan of each is right, real data replaces the procedural stages, ``base:`` overlays,
a complete stage pinned with other values is refused, and pipeline.json is not rewritten by a no-op rerun."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from cluster import pipeline as P
from cluster.config import ConfigError, ConfigMismatch, pin_config
from cluster import storage

CONFIGS = Path(__file__).resolve().parents[1] / "cluster" / "configs"
SHIPPED = sorted(CONFIGS.glob("*.yaml"))
ALL = ("world", "mine", "clip", "combiner", "benchmark", "evaluate")
EXPECTED_STAGES = {"demo": ALL, "cpu-cluster": ALL, "cc3m-cluster": ("mine", "combiner", "evaluate")}


def _configs(run: P.PipelineRun) -> dict:
    return {s: P.stage_config(run, P.STAGE_TABLE[s]) for s in run.stages}


def test_every_shipped_config_is_expected():
    assert {p.stem for p in SHIPPED} == set(EXPECTED_STAGES)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_shipped_config_builds_every_stage_config(path, quick):
    run = P.plan(P.load_config_file(str(path)), quick=quick)
    assert run.stages == EXPECTED_STAGES[path.stem] and run.dropped == ()
    configs = _configs(run)
    for name, cfg in configs.items():
        assert type(cfg) is P.STAGE_TABLE[name].config_class()
        assert dataclasses.replace(cfg) == cfg  # constructs again: its own validation passes
    for name, folder in (("mine", "mined"), ("evaluate", "eval")):
        assert configs[name].output == run.path(folder)


def test_demo_wiring_hands_each_output_to_the_next_stage():
    run = P.plan(P.load_config_file(str(CONFIGS / "demo.yaml")), "/data/x", seed=3, quick=True)
    c = _configs(run)
    assert run.root == "/data/x/seed3-quick"
    assert c["world"].seed == 3 and c["benchmark"].seed == 4 and c["benchmark"].world_seed == 3
    assert c["benchmark"].avoid_world_scenes == c["world"].images
    assert c["mine"].input == run.path("world", "captions.tsv")
    assert c["clip"].captions == run.path("world") and c["clip"].storage_path == run.path("runs")
    assert c["combiner"].triplets == run.path("mined", "triplets", "train")
    assert c["combiner"].images == run.path("world") and c["combiner"].backbone == run.path("runs", "clip")
    assert c["evaluate"].benchmark == run.path("benchmark")
    assert c["evaluate"].checkpoint == run.path("runs", "combiner")
    assert c["evaluate"].head_list == ("image_only", "text_only", "image_plus_text", "combiner", "combiner_plus_image")
    assert c["evaluate"].reference_weight == 0.03  # tuned on dev seed 2 with reference-like change targets
    assert c["mine"].similar_targets == 16 and c["mine"].change_object_condition == "object"
    assert c["clip"].precision == "bf16"


def test_cc3m_config_is_genecis():
    run = P.plan(P.load_config_file(str(CONFIGS / "cc3m-cluster.yaml")))
    c = _configs(run)
    assert run.storage.startswith("s3://") and "YOUR-BUCKET" in run.storage
    mine, comb, ev = c["mine"], c["combiner"], c["evaluate"]
    assert mine.input.startswith("s3://") and mine.concreteness_threshold == 4.8 and mine.kinds == ("change_object",)
    assert mine.num_triplets == 1_600_000 and mine.min_images_per_subject == 5 and mine.val_fraction == 0.1
    assert (comb.model, comb.pretrained, comb.finetune, comb.backbone) == ("RN50x4", "openai", "whole", None)
    assert (comb.lr, comb.weight_decay, comb.batch_size, comb.temperature) == (1e-6, 0.0, 256, 0.01)
    assert (comb.projection_dim, comb.hidden_dim, comb.dropout, comb.grad_clip) == (2560, None, 0.5, 1.0)
    assert comb.max_steps == 6 * 1_440_000 // 256 and comb.use_gpu and not comb.symmetric
    assert comb.triplets == run.path("mined", "triplets", "train")
    assert ev.benchmark is None and ev.annotations and ev.coco_root and ev.vg_root
    assert ev.model == "RN50x4" and ev.checkpoint == run.path("runs", "combiner")


def test_real_data_replaces_the_procedural_stages():
    data = P.load_config_file(str(CONFIGS / "demo.yaml"))
    data["mine"]["input"] = "s3://corpus/cc3m.tsv"
    data["evaluate"].update(annotations="s3://g/ann", coco_root="s3://g/coco", vg_root="s3://g/vg")
    run = P.plan(data, "/data/x")
    assert run.stages == ("mine", "clip", "combiner", "evaluate")
    assert dict(run.dropped) == {"world": "mine.input is given", "benchmark": "evaluate.annotations is given"}
    # clip and combiner took their captions/images from the world: now the sections must say where
    with pytest.raises(ConfigError, match=r"'clip' needs captions"):
        P.stage_config(run, P.STAGE_TABLE["clip"])
    data["clip"]["captions"] = "s3://corpus/index"
    data["combiner"]["images"] = "s3://corpus/tars"
    c = _configs(P.plan(data, "/data/x"))
    assert c["mine"].input == "s3://corpus/cc3m.tsv" and c["combiner"].images == "s3://corpus/tars"
    assert c["evaluate"].benchmark is None and c["evaluate"].annotations == "s3://g/ann"


def test_absent_or_null_sections_do_not_run():
    data = P.load_config_file(str(CONFIGS / "demo.yaml"))
    data.update(clip=None, benchmark=None)
    data["evaluate"].update(annotations="s3://g/ann", coco_root="s3://g/coco", vg_root="s3://g/vg")
    run = P.plan(data, "/data/x")
    assert run.stages == ("world", "mine", "combiner", "evaluate") and run.dropped == ()
    assert _configs(run)["combiner"].backbone is None  # no clip stage: the model by name


def test_base_overlays_and_refuses_cycles(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"base": "b.yaml", "name": "a", "clip": None,
                                                     "mine": {"num_triplets": 7}}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"base": str(CONFIGS / "demo.yaml"), "seed": 5}))
    data = P.load_config_file(str(tmp_path / "a.yaml"))
    assert data["name"] == "a" and data["seed"] == 5 and data["clip"] is None
    assert data["mine"]["num_triplets"] == 7 and data["mine"]["shard_bytes"] == 400000  # option by option
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"base": "a.yaml"}))
    with pytest.raises(ConfigError, match="cycle"):
        P.load_config_file(str(tmp_path / "a.yaml"))


def test_unknown_options_and_keys_are_refused():
    data = P.load_config_file(str(CONFIGS / "demo.yaml"))
    with pytest.raises(ConfigError, match="unknown pipeline keys"):
        P.plan({**data, "trainer": {}}, "/data/x")
    data["clip"]["max_step"] = 3
    run = P.plan(data, "/data/x")
    with pytest.raises(ConfigError, match=r"'clip': unknown options \['max_step'\]"):
        P.stage_config(run, P.STAGE_TABLE["clip"])


def test_a_stage_pinned_with_other_values_is_refused(tmp_path):
    run = P.plan(P.load_config_file(str(CONFIGS / "demo.yaml")), str(tmp_path), quick=True)
    stage = P.STAGE_TABLE["clip"]
    cfg = P.stage_config(run, stage)
    pin_config(storage.resolve(run.path(stage.folder)), cfg, "clip run")
    P.check_pinned(run, stage, cfg)  # the same config
    P.check_pinned(run, stage, dataclasses.replace(cfg, num_workers=2, checkpoint_every=7))  # runtime only
    with pytest.raises(ConfigMismatch, match=r"runs/clip holds a clip stage .*max_steps: 30 -> 31"):
        P.check_pinned(run, stage, dataclasses.replace(cfg, max_steps=31))
    P.check_pinned(run, P.STAGE_TABLE["world"], P.stage_config(run, P.STAGE_TABLE["world"]))  # nothing pinned


def test_pipeline_record_is_kept_by_a_rerun_that_runs_nothing(tmp_path):
    run = P.plan(P.load_config_file(str(CONFIGS / "demo.yaml")), str(tmp_path))
    first = {"root": run.root, "seconds": 9.0,
             "stages": {"world": {"output": "w", "seconds": 4.0}, "mine": {"output": "m", "seconds": 5.0}}}
    P._record(run, first)
    record = Path(run.path("pipeline.json"))
    stamp = record.stat().st_mtime_ns
    os.utime(record, ns=(stamp - 10**9, stamp - 10**9))
    stamp = record.stat().st_mtime_ns
    P._record(run, {"root": run.root, "seconds": 0.0, "stages": {
        "world": {"output": "w", "skipped": True}, "mine": {"output": "m", "skipped": True}}})
    assert record.stat().st_mtime_ns == stamp
    P._record(run, {"root": run.root, "seconds": 3.0, "stages": {
        "world": {"output": "w", "skipped": True}, "mine": {"output": "m", "seconds": 3.0}}})
    stages = storage.read_json(storage.resolve(str(record)))["stages"]
    assert stages == {"world": {"output": "w", "seconds": 4.0}, "mine": {"output": "m", "seconds": 3.0}}
