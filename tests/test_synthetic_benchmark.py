"""The synthetic GeneCIS benchmark: proofs, schema, oracles, determinism, and the shared loader."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluator.genecis_data import (AnnotationError, BenchmarkLayout, Item, crop_instance, dilated_box,
                                    expand2square, item_uri, load_item_image, load_templates, parse_templates)
from evaluator.tasks import GALLERY_SIZE, TASKS
from synthetic import benchmark as bm
from synthetic import templates as tp
from synthetic.oracles import TemplateError, check_template, is_valid
from synthetic.scene import STREAM_SCENE, sample_scene
from synthetic.world import WorldConfig

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "genecis" / "annotations"
TINY = 20


def _cfg(out: Path, **kw) -> bm.BenchmarkConfig:
    base = dict(output=str(out), templates=TINY, image_size=64, seed=7, workers=2, chunk=7)
    return bm.BenchmarkConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench") / "a"
    return out, bm.generate(_cfg(out))


def _gt(root: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (root / "gt" / f"{task}.jsonl").read_text().splitlines()]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------- proofs
def test_every_template_is_proved_from_files(tiny):
    root, _ = tiny
    verified = bm.verify_benchmark(str(root))
    assert set(verified) == set(TASKS)
    for task in TASKS:
        templates = _gt(root, task)
        assert len(templates) == verified[task]["templates"] == TINY
        for t in templates:
            check_template(task, t)
            valid = [is_valid(t, c) for c in [t["target"], *t["gallery"]]]
            assert valid == [True] + [False] * (GALLERY_SIZE[task] - 1)


def _swap_target(t: dict) -> dict:
    bad = copy.deepcopy(t)
    bad["target"], bad["gallery"][0] = bad["gallery"][0], bad["target"]
    return bad


@pytest.mark.parametrize("task", TASKS)
def test_checker_rejects_a_wrong_target(tiny, task):
    t = _gt(tiny[0], task)[0]
    with pytest.raises(TemplateError, match="not valid"):
        check_template(task, _swap_target(t))
    dup = copy.deepcopy(t)
    dup["gallery"][3] = copy.deepcopy(dup["target"])  # a second valid candidate
    dup["gallery"][3]["image_id"] = dup["gallery"][3]["scene"]["scene_id"] = 1
    with pytest.raises(TemplateError, match="distractor 3"):
        check_template(task, dup)
    short = copy.deepcopy(t)
    short["gallery"].pop()
    with pytest.raises(TemplateError, match="gallery of"):
        check_template(task, short)


def test_checker_rejects_broken_preconditions(tiny):
    root = tiny[0]
    t = _gt(root, "change_object")[0]
    t["condition"] = t["reference"]["scene"]["objects"][0]["shape"]  # already present
    with pytest.raises(TemplateError, match="already in the reference"):
        check_template("change_object", t)
    t = _gt(root, "change_attribute")[0]
    ref = t["reference"]["scene"]["objects"][t["reference"]["instance"]]
    t["condition"] = {"color": ref["colour"], "size": ref["size"], "pattern": ref["pattern"]}[t["attribute_type"]]
    with pytest.raises(TemplateError, match="already has"):
        check_template("change_attribute", t)


def test_object_targets_keep_the_reference_and_add_the_condition(tiny):
    for t in _gt(tiny[0], "change_object"):
        ref = {(o["shape"], o["colour"]) for o in t["reference"]["scene"]["objects"]}
        tgt = {(o["shape"], o["colour"]) for o in t["target"]["scene"]["objects"]}
        assert ref < tgt and {s for s, _ in tgt - ref} == {t["condition"]}
        roles = [g["role"].split(":")[0] for g in t["gallery"]]
        assert roles == ["similar_without"] * 9 + ["dissimilar_with"] * 5


# ----------------------------------------------------------------------------------------- schema
def _shape(value) -> object:
    """The schema of a JSON value: dict keys with value schemas, list -> element schema, else the type."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        shapes = {json.dumps(_shape(v), sort_keys=True) for v in value}
        assert len(shapes) <= 1, "heterogeneous list"
        return [_shape(value[0])] if value else []
    return type(value).__name__


def test_object_schema_matches_the_official_files(tiny):
    root = tiny[0]
    for task in ("focus_object", "change_object"):
        official_path = OFFICIAL / f"{task}.json"
        if not official_path.exists():
            pytest.skip("official GeneCIS object annotations not present")
        official = json.loads(official_path.read_text())
        ours = json.loads((root / "annotations" / f"{task}.json").read_text())
        schema = {json.dumps(_shape(official[0]), sort_keys=True)}
        assert {json.dumps(_shape(r), sort_keys=True) for r in official} == schema
        assert {json.dumps(_shape(r), sort_keys=True) for r in ours} == schema
        theirs, mine = load_templates(str(official_path)), load_templates(str(root / "annotations" / f"{task}.json"))
        assert len(theirs) == 1960 and {len(t.gallery) for t in theirs} == {14}
        assert {len(t.candidates) for t in mine} == {15}
        assert all(isinstance(t.target.image_id, int) and t.target.bbox is None for t in theirs + mine)


def test_attribute_schema_is_vaw_style(tiny):
    root = tiny[0]
    item_shape = {"image_id": "str", "instance_bbox": ["int"]}
    for task in ("focus_attribute", "change_attribute"):
        ours = json.loads((root / "annotations" / f"{task}.json").read_text())
        for r in ours:
            assert _shape(r) == {"condition": "str", "gallery": [item_shape], "reference": item_shape,
                                 "target": item_shape}
            assert all(len(it["instance_bbox"]) == 4 for it in [r["reference"], r["target"], *r["gallery"]])
        assert {len(t.candidates) for t in load_templates(str(root / "annotations" / f"{task}.json"))} == {
            GALLERY_SIZE[task]}


def test_gallery_sizes_and_conditions(tiny):
    root = tiny[0]
    for task in TASKS:
        templates = BenchmarkLayout.synthetic(str(root)).load(task)
        assert len(templates) == TINY
        assert {len(t.gallery) + 1 for t in templates} == {GALLERY_SIZE[task]}
        for t, gt in zip(templates, _gt(root, task)):
            assert t.condition == tp.condition_text(gt["condition"])  # the captions' word for the GT value
            ids = [gt["target"]["image_id"]] + [g["image_id"] for g in gt["gallery"]]
            assert [str(c.image_id) for c in t.candidates] == [str(i) for i in ids]
    focus = _gt(root, "focus_attribute")
    assert {t["condition"] for t in focus} == {"color", "pattern"}


# ----------------------------------------------------------------------------------------- oracles
def test_oracles_full_solves_single_modalities_do_not(tiny):
    _, manifest = tiny
    report = {task: {k: v["R@1"] for k, v in manifest["tasks"][task]["oracle"].items()} for task in TASKS}
    print("\noracle R@1 (tiny):", json.dumps(report, indent=1))
    for task in TASKS:
        assert report[task]["full"] == 100.0
        assert report[task]["image_only"] < 60.0, task
        assert report[task]["text_only"] < 60.0, task


def test_oracle_ties_are_broken_randomly_but_reproducibly():
    from synthetic.oracles import target_rank

    scores = np.ones(10)
    ranks = [target_rank(scores, np.random.default_rng((0, i))) for i in range(400)]
    assert ranks == [target_rank(scores, np.random.default_rng((0, i))) for i in range(400)]
    assert 0.05 < np.mean(np.array(ranks) == 0) < 0.15  # ~1/10 on a full tie
    assert target_rank(np.array([1.0, 0.0, 2.0]), np.random.default_rng(0)) == 1


# ----------------------------------------------------------------------------------------- determinism
def test_same_seed_gives_byte_identical_files(tiny, tmp_path):
    root, manifest = tiny
    again = bm.generate(_cfg(tmp_path / "b", workers=1, chunk=20))  # other split of the work, same files
    a, b = _files(root), _files(tmp_path / "b")
    assert set(a) == set(b)
    differ = [k for k in a if a[k] != b[k] and k not in ("config.json", "_benchmark.json")]
    assert not differ
    cfg_a, cfg_b = json.loads(a["config.json"]), json.loads(b["config.json"])
    assert cfg_a.pop("output") != cfg_b.pop("output") and cfg_a == cfg_b and "workers" not in cfg_a
    strip = lambda m: {k: v for k, v in m.items() if k != "timings"}  # noqa: E731
    assert strip(manifest) == strip(again)
    other = bm.generate(_cfg(tmp_path / "c", seed=8, tasks=("focus_object",)))
    assert (tmp_path / "c" / "annotations" / "focus_object.json").read_bytes() != a["annotations/focus_object.json"]
    assert other["tasks"]["focus_object"]["templates"] == TINY


def test_cli_is_idempotent_and_refuses_another_benchmark(tmp_path, capsys):
    args = ["--output", str(tmp_path / "cli"), "--templates", "3", "--workers", "1", "--tasks", "change_object"]
    assert bm.main(args) == 0
    first = (tmp_path / "cli" / "_benchmark.json").read_bytes()
    assert bm.main(args) == 0 and (tmp_path / "cli" / "_benchmark.json").read_bytes() == first
    assert bm.main(args + ["--seed", "5"]) == 2
    assert "different config (--seed 0 -> 5)" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- loader
def _reference_crop(path: Path, bbox: list[int]) -> np.ndarray:
    """§4.2 written out independently: asymmetric 0.7 dilation, then a centred black square."""
    img = Image.open(path).convert("RGB")
    x, y, w, h = bbox
    left, top = max(0, x - 0.7 * w), max(0, y - 0.7 * h)
    right, bottom = min(img.width, left + 1.7 * w), min(img.height, top + 1.7 * h)
    crop = np.asarray(img)[round(top):round(bottom), round(left):round(right)]
    side = max(crop.shape[:2])
    out = np.zeros((side, side, 3), np.uint8)
    oy, ox = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    out[oy:oy + crop.shape[0], ox:ox + crop.shape[1]] = crop
    return out


def test_load_item_image_round_trip(tiny):
    root = tiny[0]
    layout = BenchmarkLayout.synthetic(str(root))
    records = json.loads((root / "annotations" / "change_attribute.json").read_text())
    for r, t in zip(records[:5], layout.load("change_attribute")[:5]):
        ref = r["reference"]
        path = root / "vg" / "VG_100K_all" / f"{ref['image_id']}.jpg"
        assert item_uri(t.reference, layout.vg_root, layout.coco_root) == str(path)
        got = np.asarray(load_item_image(t.reference, layout.vg_root, layout.coco_root))
        assert np.array_equal(got, _reference_crop(path, ref["instance_bbox"]))
    obj = layout.load("focus_object")[0]
    full = load_item_image(obj.target, layout.vg_root, layout.coco_root)
    stored = root / "coco" / "val2017" / f"{obj.target.image_id:012d}.jpg"
    assert full.size == (64, 64) and np.array_equal(np.asarray(full), np.asarray(Image.open(stored).convert("RGB")))


def test_crop_math_on_a_hand_made_image():
    arr = (np.arange(80 * 100 * 3) % 251 + 1).astype(np.uint8).reshape(80, 100, 3)  # no black pixels
    img = Image.fromarray(arr, "RGB")
    # clamped at 0 on both axes: the crop extends right/down instead
    assert dilated_box((10, 5, 20, 30), 100, 80) == pytest.approx((0.0, 0.0, 34.0, 51.0))
    # unclamped: expanded only left and up, ending at the box's right/bottom edge
    assert dilated_box((50, 40, 20, 10), 100, 80) == pytest.approx((36.0, 33.0, 70.0, 50.0))
    # clamped at the far edges
    assert dilated_box((90, 70, 20, 20), 100, 80) == pytest.approx((76.0, 56.0, 100.0, 80.0))
    out = np.asarray(crop_instance(img, (10, 5, 20, 30)))  # 34 wide x 51 high -> padded left/right
    assert out.shape == (51, 51, 3)
    pad = (51 - 34) // 2
    assert np.array_equal(out[:, pad:pad + 34], arr[0:51, 0:34])
    assert not out[:, :pad].any() and not out[:, pad + 34:].any()
    wide = np.asarray(crop_instance(img, (50, 40, 20, 10)))  # 34 wide x 17 high -> padded top/bottom
    assert wide.shape == (34, 34, 3)
    assert np.array_equal(wide[8:25], arr[33:50, 36:70]) and not wide[:8].any() and not wide[25:].any()
    grey = expand2square(Image.new("L", (4, 2), 200))
    assert np.asarray(grey).tolist() == [[0] * 4, [200] * 4, [200] * 4, [0] * 4]


def test_loader_rejects_malformed_records():
    good = {"reference": {"val_image_id": 1}, "target": {"val_image_id": 2}, "condition": "x",
            "gallery": [{"val_image_id": 3}]}
    assert parse_templates([good])[0].candidates == (Item(2), Item(3))
    for bad in ({**good, "condition": 3}, {k: v for k, v in good.items() if k != "gallery"},
                {**good, "target": {"val_image_id": "2"}}, {**good, "target": {"image_id": "2"}},
                {**good, "target": {"image_id": "2", "instance_bbox": [1, 2, 3]}}):
        with pytest.raises(AnnotationError):
            parse_templates([bad])
    mixed = {**good, "target": {"image_id": "2", "instance_bbox": [1, 2, 3, 4]}}
    with pytest.raises(AnnotationError, match="mixes"):
        parse_templates([mixed])


# ----------------------------------------------------------------------------------------- disjointness
def test_benchmark_images_do_not_reuse_training_ids_or_streams(tiny):
    from synthetic.render import STREAM_TEXTURE

    root = tiny[0]
    assert STREAM_SCENE not in tp.STREAM_BENCH.values() and STREAM_TEXTURE not in tp.STREAM_BENCH.values()
    ids = [it["image_id"] for task in TASKS for t in _gt(root, task) for it in tp.template_items(t)]
    assert len(set(ids)) == len(ids) and min(ids) >= tp.BENCH_ID_BASE
    names = [p.stem for p in (root / "vg" / "VG_100K_all").glob("*.jpg")]
    names += [p.stem for p in (root / "coco" / "val2017").glob("*.jpg")]
    assert sorted(int(n) for n in names) == sorted(ids)


def test_avoid_world_scenes_redraws_colliding_templates(tmp_path):
    cfg = _cfg(tmp_path / "x", attribute_context=0)
    first = tp.build_template("focus_attribute", cfg.template_spec(), 0)
    assert first["attempt"] == 0
    avoid = frozenset({tp.scene_key(first["reference"]["scene"])})
    redrawn = tp.build_template("focus_attribute", cfg.template_spec(), 0, avoid)
    assert redrawn["attempt"] >= 1
    assert not any(tp.scene_key(it["scene"]) in avoid for it in tp.template_items(redrawn))
    bench = bm.BenchmarkConfig(output=str(tmp_path), avoid_world_scenes=50)
    world = tp.world_scene_keys(bench.spec(), bench.world_seed, bench.avoid_world_scenes)
    world_spec = WorldConfig(output=str(tmp_path / "w")).spec()  # the training world's own scenes
    assert world == {tp.scene_key(sample_scene(0, i, world_spec)) for i in range(50)}
    assert any(len({o.shape for o in sample_scene(0, i, world_spec).objects}) <
               len(sample_scene(0, i, world_spec).objects) for i in range(50))  # repeats included
