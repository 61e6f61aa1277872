"""Ray-free tests of the GeneCIS evaluator: crops as read, the pessimistic metric, the encoding plan,
scoring through trainer.model.combine, bad input, outputs, and the official object files scored with
stand-in images (noise -> near chance; identical images -> exactly 0, never above chance)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluator.config import EvalConfig, EvalConfigError
from evaluator.encode import ImageReader, stat_items
from evaluator.genecis_data import Item, Template
from evaluator.metrics import chance_recall, recall_at_k, target_ranks
from evaluator.plan import build_plan
from evaluator.protocol import MissingImageError, UnfinishedRunError, bad_items, discover_tasks, read_results
from evaluator.report import paper_backbone, paper_row, results_markdown
from evaluator.scoring import score_head, summarize, task_similarities

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT.parent / "shared" / "genecis" / "annotations"


# ------------------------------------------------------------------------------------------- crops
def _quadrants(path: Path, w: int = 200, h: int = 100) -> None:
    """An image whose pixel (x, y) encodes x in red and y in green (so a crop reveals its box)."""
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    arr = np.stack([xs % 256, ys % 256, np.full_like(xs, 200)], axis=-1).astype(np.uint8)
    Image.fromarray(arr).save(path, format="PNG")  # lossless, saved under a .jpg name as VG files are


@pytest.mark.parametrize("bbox, box", [
    ((100, 50, 20, 10), (86, 43, 120, 60)),  # no clamping: [x - 0.7w, x + w] x [y - 0.7h, y + h]
    ((10, 20, 30, 40), (0, 0, 51, 68)),  # clamped at 0: extends right/down instead (1.7w from 0)
    ((190, 95, 20, 10), (176, 88, 200, 100)),  # clamped at the right/bottom edges
])
def test_reader_crops_the_hand_computed_box_and_pads_black(tmp_path, bbox, box):
    _quadrants(tmp_path / "7.jpg")
    img = np.asarray(ImageReader(str(tmp_path), str(tmp_path)).image(Item("7", bbox)))
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    side = max(w, h)
    assert img.shape == (side, side, 3)
    ox, oy = (side - w) // 2, (side - h) // 2
    assert img[oy, ox, 0] == left and img[oy, ox, 1] == top  # top-left of the crop = (left, top)
    assert img[oy + h - 1, ox + w - 1, 0] == right - 1 and img[oy + h - 1, ox + w - 1, 1] == bottom - 1
    pad = np.ones((side, side), dtype=bool)
    pad[oy:oy + h, ox:ox + w] = False
    assert (img[pad] == 0).all()  # black square padding around the crop


def test_reader_uses_the_whole_coco_image(tmp_path):
    _quadrants(tmp_path / f"{42:012d}.jpg")
    img = ImageReader(str(tmp_path / "none"), str(tmp_path)).image(Item(42))
    assert img.size == (200, 100) and img.mode == "RGB"


# ------------------------------------------------------------------------------------------ metric
def test_metric_perfect_constant_and_adversarial_ties():
    perfect = np.array([[0.9, 0.1, 0.2], [0.5, -0.1, 0.4]])
    assert target_ranks(perfect).tolist() == [0, 0]
    assert recall_at_k(target_ranks(perfect)) == {1: 1.0, 2: 1.0, 3: 1.0}
    constant = np.full((4, 15), 0.3)  # a constant model: every candidate tied with the target
    ranks = target_ranks(constant)
    assert ranks.tolist() == [14] * 4
    assert recall_at_k(ranks)[1] == 0.0 <= chance_recall(np.full(4, 15))
    ties = np.array([[0.5, 0.5, 0.1, 0.1],  # one distractor tied: rank 1, never 0
                     [0.5, 0.1, 0.5, 0.5],  # two tied: rank 2
                     [0.5, 0.6, 0.5, 0.1]])  # one above, one tied: rank 2
    assert target_ranks(ties).tolist() == [1, 2, 2]
    assert recall_at_k(target_ranks(ties)) == {1: 0.0, 2: pytest.approx(1 / 3), 3: 1.0}


def test_metric_padding_and_nan():
    sims = np.array([[0.5, 0.9, -np.inf, -np.inf], [np.nan, 0.1, 0.2, 0.3], [0.5, np.nan, 0.1, 0.2]])
    valid = np.array([[True, True, False, False], [True] * 4, [True] * 4])
    assert target_ranks(sims, valid).tolist() == [1, 3, 1]  # padding never ranks; NaN never helps the target
    assert chance_recall(np.array([10, 15])) == pytest.approx((0.1 + 1 / 15) / 2)
    with pytest.raises(ValueError):
        target_ranks(np.zeros(3))


# -------------------------------------------------------------------------------------------- plan
def _tpl(index, ref, cands, cond):
    items = [Item(i) for i in cands]
    return Template(index, cond, Item(ref), items[0], tuple(items[1:]))


def test_plan_dedups_images_and_texts_across_tasks():
    templates = {"focus_object": [_tpl(0, 1, [2, 3, 4], "cat"), _tpl(1, 1, [3, 5, 2], "dog")],
                 "change_object": [_tpl(0, 2, [1, 4, 6, 7], "cat")]}
    plan = build_plan(templates)
    assert plan.counts() == {"image_slots": 4 + 4 + 5, "distinct_images": 7, "text_slots": 3,
                             "distinct_texts": 2, "templates": 3}
    fo, co = plan.tasks["focus_object"], plan.tasks["change_object"]
    assert [plan.items[i].image_id for i in fo.candidates[1]] == [3, 5, 2]
    assert fo.candidates.shape == (2, 3) and co.candidates.shape == (1, 4)
    assert plan.texts[co.text[0]] == "cat" and fo.text[0] == co.text[0]
    dropped = build_plan(templates, {"focus_object": {0}})
    assert dropped.tasks["focus_object"].template_index.tolist() == [1] and dropped.image_slots == 9


@pytest.mark.skipif(not OFFICIAL.exists(), reason="../shared/genecis annotations not present")
def test_plan_of_the_official_object_files():
    from evaluator.protocol import load_tasks

    files, unknown = discover_tasks(str(OFFICIAL))
    assert list(files) == ["focus_object", "change_object"]
    assert "Concreteness_ratings_Brysbaert_et_al_BRM.txt" in unknown  # reported, not scored
    tasks = load_tasks(files)
    plan = build_plan({t: td.templates for t, td in tasks.items()})
    assert plan.image_slots == 62_720 and len(plan.items) == 3_033  # GENECIS.md §4.1
    assert plan.counts()["templates"] == 3_920


# ------------------------------------------------------------------------------------------ scoring
def test_scoring_goes_through_combine_and_ranks_pessimistically():
    templates = {"focus_object": [_tpl(0, 1, [2, 3], "a"), _tpl(1, 1, [3, 2], "b")]}
    plan = build_plan(templates)
    row = {it.image_id: i for i, it in enumerate(plan.items)}
    images = np.zeros((3, 2), dtype=np.float32)
    images[row[1]], images[row[2]], images[row[3]] = [1, 0], [1, 0.1], [0, 1]
    texts = np.zeros((2, 2), dtype=np.float32)
    texts[plan.texts.index("a")], texts[plan.texts.index("b")] = [0, 5], [0, 5]
    ranks = {h: score_head(h, plan, images, texts) for h in ("image_only", "text_only", "image_plus_text")}
    assert ranks["image_only"]["focus_object"].tolist() == [0, 1]  # query = ref = [1, 0] -> item 2 wins
    assert ranks["text_only"]["focus_object"].tolist() == [1, 0]  # query = [0, 1] -> item 3 wins
    # image+text: 0.5 * raw ref + 0.5 * raw text = [0.5, 2.5] -> item 3 ([0, 1]) wins
    assert ranks["image_plus_text"]["focus_object"].tolist() == [1, 0]
    heads = summarize(ranks, plan)
    assert heads["image_only"]["focus_object"] == {"r1": 50.0, "r2": 100.0, "r3": 100.0, "templates": 2,
                                                   "chance_r1": 50.0}
    assert heads["image_only"]["average_r1"] == 50.0


def test_reference_weight_ranks_by_combiner_plus_w_times_image_similarity():
    """Late fusion: cosine with normalize(q + w*unit(ref)) orders candidates as sim_comb + w*sim_image."""
    import torch

    from trainer.model import Combiner

    rng = np.random.default_rng(0)
    templates = {"focus_object": [_tpl(3 * k, 3 * k + 1, [3 * k + 2, 100 + k, 200 + k], f"t{k}")
                                  for k in range(40)]}
    plan = build_plan(templates)
    images = rng.normal(size=(len(plan.items), 16)).astype(np.float32)
    texts = rng.normal(size=(len(plan.texts), 16)).astype(np.float32)
    torch.manual_seed(0)
    comb = Combiner(16, projection_dim=8).eval()
    idx = plan.tasks["focus_object"]
    s_comb = task_similarities("combiner", idx, images, texts, comb)
    s_img = task_similarities("image_only", idx, images, texts)
    for w in (0.5, 3.0):
        fused = task_similarities("combiner_plus_image", idx, images, texts, comb, reference_weight=w)
        assert (np.argsort(-fused, axis=1) == np.argsort(-(s_comb + w * s_img), axis=1)).all()
        ranks = score_head("combiner_plus_image", plan, images, texts, comb, reference_weight=w)["focus_object"]
        assert ranks.tolist() == target_ranks(s_comb + w * s_img, idx.valid).tolist()
    huge = score_head("combiner_plus_image", plan, images, texts, comb, reference_weight=1e4)["focus_object"]
    assert huge.tolist() == score_head("image_only", plan, images, texts)["focus_object"].tolist()
    assert not (task_similarities("combiner", idx, images, texts, comb, reference_weight=w) - s_comb).any()
    with pytest.raises(ValueError, match="reference-weight"):
        EvalConfig(model="tiny", output="o", benchmark="b", reference_weight=-0.1)
    with pytest.raises(EvalConfigError, match="need --checkpoint"):
        EvalConfig(model="tiny", output="o", benchmark="b", heads="image_only,combiner_plus_image")


# --------------------------------------------------------------------------------------- bad input
def test_bad_items_error_names_task_template_and_path_or_counts_skips():
    templates = {"focus_object": [_tpl(0, 1, [2, 3], "a"), _tpl(1, 4, [3, 5], "b")],
                 "change_object": [_tpl(0, 3, [6, 7], "c")]}
    bad = {Item(3): ("missing_image", "")}
    with pytest.raises(MissingImageError, match=r"focus_object template 0: missing image /x/000000000003\.jpg"):
        bad_items(bad, templates, lambda it: f"/x/{it.image_id:012d}.jpg", skip=False)
    drop, report = bad_items(bad, templates, lambda it: str(it.image_id), skip=True)
    assert drop == {"focus_object": {0, 1}, "change_object": {0}}
    assert report["focus_object"]["templates"] == 2
    assert report["focus_object"]["images_by_reason"] == {"missing_image": 1}


def test_stat_items_finds_missing_files(tmp_path):
    (tmp_path / f"{1:012d}.jpg").write_bytes(b"x")
    stats, missing = stat_items([Item(1), Item(2)], ImageReader(str(tmp_path), str(tmp_path)))
    assert list(stats) == [Item(1)] and stats[Item(1)][0] == 1 and missing == [Item(2)]


def test_config_rules():
    with pytest.raises(EvalConfigError, match="--benchmark"):
        EvalConfig(model="tiny", output="/o")
    with pytest.raises(EvalConfigError, match="unknown heads"):
        EvalConfig(model="tiny", output="/o", benchmark="/b", heads="image_only,bogus")
    with pytest.raises(EvalConfigError, match="need --checkpoint"):
        EvalConfig(model="tiny", output="/o", benchmark="/b", heads="combiner")
    cfg = EvalConfig(model="tiny", output="/o", annotations="/a", coco_root="/c", vg_root="/v",
                     heads="text_only, image_only,text_only")
    assert cfg.head_list == ("text_only", "image_only") and cfg.layout().coco_root == "/c"


def _write_object_benchmark(root: Path, records: list[dict], images: dict[int, np.ndarray]) -> None:
    (root / "ann").mkdir(parents=True)
    (root / "coco").mkdir()
    (root / "vg").mkdir()
    (root / "ann" / "focus_object.json").write_text(json.dumps(records))
    (root / "ann" / "notes.txt").write_text("not a task file")
    for i, arr in images.items():
        Image.fromarray(arr).save(root / "coco" / f"{i:012d}.jpg")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "evaluator", "genecis", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_bad_input_is_one_line_naming_the_record(tmp_path):
    rng = np.random.default_rng(0)
    good = {"reference": {"val_image_id": 1}, "target": {"val_image_id": 2}, "condition": "cat",
            "gallery": [{"val_image_id": 3}]}
    _write_object_benchmark(tmp_path / "bad", [good, {"reference": {"val_image_id": 1}}],
                            {i: rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for i in (1, 2, 3)})
    data = ["--annotations", str(tmp_path / "bad" / "ann"), "--coco-root", str(tmp_path / "bad" / "coco"),
            "--vg-root", str(tmp_path / "bad" / "vg"), "--model", "tiny"]
    res = _cli(*data, "--output", str(tmp_path / "o1"))
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: focus_object (")
    assert "record 1" in res.stderr
    (tmp_path / "bad" / "ann" / "focus_object.json").write_text(json.dumps([good, good]))
    os.remove(tmp_path / "bad" / "coco" / f"{3:012d}.jpg")
    res = _cli(*data, "--output", str(tmp_path / "o2"))
    assert res.returncode == 2
    assert f"focus_object template 0: missing image {tmp_path}/bad/coco/000000000003.jpg" in res.stderr
    assert "not GeneCIS task files: notes.txt" in res.stderr  # unknown file names are reported
    assert not (tmp_path / "o2").exists()  # every check before anything is written
    res = _cli("--benchmark", str(tmp_path / "nowhere"), "--model", "tiny", "--output", str(tmp_path / "o3"))
    assert res.returncode == 2 and "input not found" in res.stderr and "nowhere" in res.stderr


def test_an_unfinished_output_is_never_read_as_a_result(tmp_path):
    from cluster.config import pin_config
    from cluster.storage import StorageError, resolve

    cfg = EvalConfig(model="tiny", output=str(tmp_path / "o"), benchmark=str(tmp_path / "b"))
    with pytest.raises(StorageError, match="no evaluation results"):
        read_results(cfg.output)
    pin_config(resolve(cfg.output), cfg, "GeneCIS evaluation")  # what a run writes first
    (tmp_path / "o" / "results.md").write_text("written before results.json")
    with pytest.raises(UnfinishedRunError, match="unfinished"):
        read_results(cfg.output)


# ------------------------------------------------------------------ official files, stand-in images
def _official_run(tmp_path: Path, same: bool, n: int):
    from evaluator.genecis import run
    from evaluator.protocol import load_tasks

    files, _ = discover_tasks(str(OFFICIAL))
    tasks = load_tasks(files, n)
    ids = {it.image_id for td in tasks.values() for t in td.templates for it in (t.reference, *t.candidates)}
    (tmp_path / "coco").mkdir()
    for i in ids:  # one stand-in per referenced id: its own noise, or one shared image for all
        rng = np.random.default_rng(0 if same else i)
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "coco" / f"{i:012d}.jpg")
    cfg = EvalConfig(model="tiny", output=str(tmp_path / "out"), annotations=str(OFFICIAL),
                     coco_root=str(tmp_path / "coco"), vg_root=str(tmp_path / "vg"), max_templates=n)
    return run(cfg, in_process=True)


@pytest.mark.skipif(not OFFICIAL.exists(), reason="../shared/genecis annotations not present")
def test_official_object_files_with_noise_images_score_near_chance(tmp_path):
    res = _official_run(tmp_path, same=False, n=150)
    assert set(res["heads"]["image_only"]) == {"focus_object", "change_object", "average_r1"}
    for head, entry in res["heads"].items():
        for task in ("focus_object", "change_object"):
            r = entry[task]
            assert r["templates"] == 150 and r["chance_r1"] == pytest.approx(100 / 15, abs=1e-3)
            assert r["r1"] <= r["r2"] <= r["r3"]
        assert 1.0 <= entry["average_r1"] <= 14.0, (head, entry)  # chance 6.67 (300 templates, sd ~1.5)
    enc = res["encodes"]["images"]
    assert enc["encoded"] == enc["distinct"] < enc["slots"] / 4  # each distinct image once
    assert (tmp_path / "out" / "results.md").exists() and (tmp_path / "out" / "r1_by_task.png").exists()


@pytest.mark.skipif(not OFFICIAL.exists(), reason="../shared/genecis annotations not present")
def test_official_object_files_with_identical_images_never_beat_chance(tmp_path):
    res = _official_run(tmp_path, same=True, n=60)
    for entry in res["heads"].values():
        for task in ("focus_object", "change_object"):
            assert entry[task]["r1"] == entry[task]["r2"] == entry[task]["r3"] == 0.0  # ties go against it


# ------------------------------------------------------------------------------------------- report
def test_report_puts_paper_numbers_beside_ours_only_for_the_papers_backbone():
    assert paper_backbone("RN50x4") == "RN50x4" and paper_backbone("ViT-B-16-quickgelu") == "ViT-B/16"
    assert paper_backbone("tiny") is None
    assert paper_row("image_only", {"name": "RN50x4", "pretrained": "openai"})[1]["focus_attribute"] == 17.7
    assert paper_row("image_only", {"name": "RN50x4", "pretrained": "laion"}) is None  # not the paper's CLIP
    assert paper_row("combiner", {"name": "ViT-B-16", "pretrained": None})[1]["average"] == 17.63
    task = {"r1": 10.0, "r2": 20.0, "r3": 30.0, "templates": 5, "chance_r1": 6.6667}
    results = {"model": {"name": "RN50x4", "pretrained": "openai"},
               "tasks": {"focus_object": {"scored": 5, "skipped": 1}},
               "heads": {"text_only": {"focus_object": task, "average_r1": 10.0},
                         "image_only": {"focus_object": task, "average_r1": 10.0}},
               "encodes": {k: {"encoded": 1, "from_cache": 0, "slots_all_heads": 2} for k in ("images", "texts")}}
    md = results_markdown(results)
    assert "| Image Only (ours) | 10.0 | **10.0** |" in md and "| CLIP Image only | 9.3 | 11.5 |" in md
    assert md.index("Image Only (ours)") < md.index("Text Only (ours)")  # the paper's row order
    fused = {**results, "config": {"reference_weight": 0.1},
             "heads": {"combiner_plus_image": {"focus_object": task, "average_r1": 10.0}}}
    assert "| Combiner + 0.1·Image (ours) | 10.0 | **10.0** |" in results_markdown(fused)
