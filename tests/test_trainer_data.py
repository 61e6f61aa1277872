"""The trainer's Ray-free data path: tar index and byte-range reads, row resolution and plans, decoding with
counted skips, the frozen-backbone feature cache, and the loop's skip check, clock and seeds."""
from __future__ import annotations

import io
import os
import tarfile
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trainer import data, features  # noqa: E402
from trainer.loop import SkipWatch, StepClock, step_seed  # noqa: E402
from trainer.runstate import RunState  # noqa: E402
from trainer.model import Combiner, load_backbone  # noqa: E402
from trainer.tasks import CombinerTask  # noqa: E402
from trainer.train import drop_failed  # noqa: E402
from trainer.negatives import parse_groups  # noqa: E402


def _jpeg(colour: tuple[int, int, int], size: int = 48) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), colour)
    ImageDraw.Draw(img).rectangle([size // 4, size // 4, size // 2, size // 2], fill=(255 - colour[0], 20, 90))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


KEYS = [f"{i:06d}" for i in range(6)]
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (120, 120, 120)]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A world-like image root: two tars under shards/ (key 000004 is not a JPEG), and its index."""
    root = tmp_path_factory.mktemp("images")
    (root / "shards").mkdir()
    jpegs = {k: _jpeg(c) for k, c in zip(KEYS, COLOURS)}
    jpegs["000004"] = b"not a jpeg at all" * 10
    _write_tar(root / "shards" / "00000.tar", {f"{k}.jpg": jpegs[k] for k in KEYS[:3]} | {"000000.txt": b"cap"})
    _write_tar(root / "shards" / "00001.tar", {f"sub/{k}.jpg": jpegs[k] for k in KEYS[3:]})
    tars = data.find_tars(str(root))
    index_uri = str(root / "index.parquet")
    data.write_index(index_uri, tars, data.build_index(tars, [data.index_tar(t) for t in tars]))
    return root, index_uri, jpegs


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny", seed=0)


def test_index_reads_each_image_by_byte_range(images, tmp_path):
    root, index_uri, jpegs = images
    index = data.ImageIndex.load(index_uri)
    assert len(index) == 6 and "000000" in index and "nope" not in index  # .txt members are not images
    for key in KEYS:
        assert index.read(key) == jpegs[key]
    # an img2dataset folder: tars at the root
    _write_tar(tmp_path / "00000.tar", {"x.jpg": jpegs["000001"]})
    assert data.find_tars(str(tmp_path)) == [str(tmp_path / "00000.tar")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="no webdataset"):
        data.find_tars(str(tmp_path / "empty"))


def test_rows_resolve_by_key_then_url_stem_and_missing_ones_drop(images):
    _, index_uri, _ = images
    index = data.ImageIndex.load(index_uri)
    assert data.image_key("000001", None, index) == "000001"
    assert data.image_key("caption-17", "/w/images/000002.jpg", index) == "000002"
    assert data.image_key("caption-17", "s3://b/images/missing.jpg?x=1", index) is None
    table = pa.table({"ref_key": ["000000", "c1", "zz"], "ref_url": [None, "/i/000003.jpg", "/i/zz.jpg"],
                      "target_key": ["000001", "000002", "000001"], "target_url": [None, None, None],
                      "distractor_key": ["000001", "", "000005"], "distractor_url": [None, None, None],
                      "condition": ["red", "blue", "green"]})
    rows, dropped = data.drop_missing(data.resolve_triplets(table, index), ("ref", "target"))
    assert dropped == 1 and rows["ref"].to_pylist() == ["000000", "000003"]
    assert rows["distractor"].to_pylist() == ["000001", ""]


def test_plan_is_seeded_endless_and_resumable():
    full = data.plan_rows(7, 0, 30, seed=3)
    assert sorted(full[:7]) == list(range(7)) and sorted(full[7:14]) == list(range(7))
    assert not np.array_equal(full[:7], full[7:14])  # each epoch its own order
    np.testing.assert_array_equal(data.plan_rows(7, 11, 19, seed=3), full[11:])  # resume mid-epoch
    assert not np.array_equal(data.plan_rows(7, 0, 30, seed=4), full)
    rows = pa.table({"x": list("abcdefg")})
    chunks = list(data.iter_planned(rows, full[11:], 11, 8))
    assert [c.num_rows for c in chunks] == [8, 8, 3]
    assert chunks[0]["position"].to_pylist() == list(range(11, 19))
    assert chunks[0]["x"].to_pylist() == [rows["x"][int(i)].as_py() for i in full[11:19]]


def _triplet_batch(positions, refs, targets, distractors, conditions):
    return {"position": np.asarray(positions), "ref": np.asarray(refs, object), "target": np.asarray(targets, object),
            "distractor": np.asarray(distractors, object), "condition": np.asarray(conditions, object)}


def test_decoder_counts_corrupt_images_and_masks_distractors_that_are_the_target(images, tiny):
    _, index_uri, _ = images
    state = RunState()
    decode = data.DecodeTriplets(index_uri, tiny.preprocess_train, tiny.tokenizer, seed=0, image_size=64,
                                 context_length=32, with_distractor=True, counter=state)
    batch = _triplet_batch([0, 1, 2, 3], ["000000", "000004", "000002", "000003"],
                           ["000001", "000001", "000003", "000005"], ["000002", "", "", "000005"],
                           ["red", "blue", "green", "big"])
    out = decode(batch)
    assert out["position"].tolist() == [0, 2, 3]  # row 1's reference is not a JPEG
    assert out["ref"].shape == (3, 3, 64, 64) and out["text"].shape == (3, 32)
    assert out["distractor_valid"].tolist() == [True, False, False]  # none, and the target itself
    assert state.totals()["skipped"] == {"corrupt_image": 1} and state.totals()["attempted"] == 4
    again = decode(batch)  # augmentation is seeded by (seed, position): the same rows decode the same
    np.testing.assert_array_equal(again["ref"], out["ref"])
    # a row decoded again (by a worker group that replaced a failed one) is one skip, not two
    assert state.totals() == {"attempted": 4, "skipped": {"corrupt_image": 1}, "attempts": []}
    state.plan(step=5, position=80)
    state.start_attempt(step=5)
    assert state.last_plan() == (5, 80) and state.totals()["attempts"] == [5]


def test_caption_decoder_adds_one_swapped_negative_per_caption(images, tiny):
    _, index_uri, _ = images
    groups = parse_groups(["circle,square,star"])
    decode = data.DecodeCaptions(index_uri, tiny.preprocess_train, tiny.tokenizer, seed=0, image_size=64,
                                 context_length=32, swap_groups=groups)
    captions = ["a red circle", "two blue squares", "a grey background"]
    batch = {"position": np.array([0, 1, 2]), "key": np.array(KEYS[:3], dtype=object),
             "caption": np.array(captions, dtype=object)}
    out = decode(batch)
    assert out["neg_tokens"].shape == out["tokens"].shape == (3, 32)
    assert out["neg_valid"].tolist() == [True, True, False]  # the last caption names no shape
    np.testing.assert_array_equal(out["neg_tokens"][2], out["tokens"][2])
    assert all((out["neg_tokens"][i] != out["tokens"][i]).any() for i in (0, 1))
    np.testing.assert_array_equal(decode(batch)["neg_tokens"], out["neg_tokens"])  # seeded per position
    plain = data.DecodeCaptions(index_uri, tiny.preprocess_train, tiny.tokenizer, seed=0, image_size=64,
                                context_length=32)
    assert "neg_tokens" not in plain(batch)


def test_feature_cache_encodes_once_and_matches_the_backbone(images, tiny, tmp_path):
    _, index_uri, jpegs = images
    rows = pa.table({"ref": ["000000", "000004", "000002"], "target": ["000001", "000001", "000000"],
                     "distractor": ["000005", "", "000003"], "condition": ["red", "blue", "red"]})
    items = features.distinct_items(rows, with_distractor=False)
    assert items["kind"].to_pylist() == ["image"] * 4 + ["text"] * 2
    assert items["item"].to_pylist() == ["000000", "000001", "000002", "000004", "blue", "red"]
    assert features.distinct_items(rows, with_distractor=True).num_rows == 8

    encode = features.EncodeItems(lambda: tiny, index_uri)
    table = encode(items)
    assert table["reason"].to_pylist() == ["", "", "", "corrupt_image", "", ""]
    feats = features.column_matrix(table["feature"], 128)
    with torch.no_grad():
        img = tiny.encode_image(torch.stack([data.decode_image(jpegs["000002"], tiny.preprocess_eval)]))
        txt = tiny.encode_text(tiny.tokenize(["red"]))
    np.testing.assert_allclose(feats[2], img[0].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feats[5], txt[0].numpy(), rtol=1e-5, atol=1e-5)

    cache = tmp_path / "features"
    cache.mkdir()
    import pyarrow.parquet as pq

    pq.write_table(table, cache / "part-0.parquet")
    assert features.failed_items(str(cache)) == {"000004": "corrupt_image"}
    kept, dropped = drop_failed(rows, features.failed_items(str(cache)), ("ref", "target"))
    assert kept["ref"].to_pylist() == ["000000", "000002"] and dropped == Counter({"corrupt_image": 1})

    state = RunState()
    lookup = features.LookupFeatures(str(cache), 128, with_distractor=True, counter=state)
    out = lookup(_triplet_batch([4, 5, 6], ["000000", "000002", "000004"], ["000001", "000000", "000001"],
                                ["", "000000", "000002"], ["red", "red", "blue"]))
    assert out["position"].tolist() == [4, 5]  # row 6 names the corrupt image
    np.testing.assert_array_equal(out["ref"][1], feats[2])
    np.testing.assert_array_equal(out["text"][0], feats[5])
    assert out["distractor_valid"].tolist() == [False, False]  # none; the target itself
    assert state.totals()["skipped"] == {"missing_image": 1}
    assert "reference_valid" not in out

    kinds = np.asarray(["change_object", "focus_object", "change_attribute"], object)
    by_kind = features.LookupFeatures(str(cache), 128, reference_kinds=("change_object", "change_attribute"))
    batch = {**_triplet_batch([7, 8, 9], ["000000", "000002", "000001"], ["000001", "000000", "000001"],
                              ["", "", ""], ["red", "red", "blue"]), "kind": kinds}
    # change kinds only, and never a reference that is the target image itself
    assert by_kind(batch)["reference_valid"].tolist() == [True, False, False]
    without_kind = {k: v for k, v in batch.items() if k != "kind"}
    with pytest.raises(data.DataError, match="kind"):
        by_kind(without_kind)


def test_decoder_marks_references_of_change_kinds_as_negatives(images, tiny):
    _, index_uri, _ = images
    decode = data.DecodeTriplets(index_uri, tiny.preprocess_train, tiny.tokenizer, seed=0, image_size=64,
                                 context_length=32, reference_kinds=("change_object",))
    batch = {**_triplet_batch([0, 1, 2], ["000000", "000002", "000003"], ["000001", "000003", "000005"],
                              ["", "", ""], ["circle", "red", "star"]),
             "kind": np.asarray(["change_object", "change_attribute", "focus_object"], object)}
    out = decode(batch)
    assert out["reference_valid"].tolist() == [True, False, False]
    assert out["ref"].shape[0] == 3


def test_resolve_triplets_keeps_the_kind_when_asked():
    index = data.ImageIndex(["x.tar"], pa.table({"key": ["a"], "shard": [0], "offset": [0], "size": [1]}))
    table = pa.table({**{c: ["a"] for c in data.TRIPLET_COLUMNS}, "kind": ["change_object"]})
    assert data.resolve_triplets(table, index)["kind"].to_pylist() == ["change_object"]
    assert "kind" not in data.resolve_triplets(table.drop(["kind"]), index).column_names


def test_cached_features_give_the_loss_of_the_frozen_backbone(images, tiny):
    """A Combiner on cached features computes what it computes on images through the frozen backbone."""
    _, index_uri, jpegs = images
    pixels = torch.stack([data.decode_image(jpegs[k], tiny.preprocess_eval) for k in KEYS[:4]])
    tokens = tiny.tokenize(["red", "blue"])
    tiny.model.eval()
    with torch.no_grad():
        img_f, txt_f = tiny.encode_image(pixels), tiny.encode_text(tokens)
    torch.manual_seed(0)
    combiner = Combiner(128, projection_dim=32, dropout=0.0)
    through_backbone = CombinerTask(tiny.model, combiner)
    on_features = CombinerTask(None, combiner)
    with torch.no_grad():
        loss_a, _ = through_backbone(pixels[:2], tokens, pixels[2:])
    loss_b, _ = on_features(img_f[:2], txt_f, img_f[2:])
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-5)


def test_skip_watch_clock_and_step_seeds():
    watch = SkipWatch(limit=0.1, skipped_before=30)  # rows dropped before planning: checked by the driver
    metrics: dict = {}
    watch.update({"attempted": 40, "skipped": {"corrupt_image": 30}}, metrics)
    assert watch.ok and metrics["skipped"] == 60  # too few rows decoded yet to judge
    watch.update({"attempted": 100, "skipped": {"corrupt_image": 10}}, metrics)
    assert watch.ok  # exactly the limit
    watch.update({"attempted": 100, "skipped": {"corrupt_image": 9, "missing_image": 2}}, metrics)
    assert not watch.ok and "11 of 100 rows skipped" in watch.message

    clock = StepClock()
    for _ in range(3):
        clock.ask()
        clock.got_batch()
        out = clock.stepped(16)
    assert set(out) == {"step_s", "samples_per_s", "data_wait_s", "data_wait_fraction"}
    assert clock.steps == 3 and 0 <= clock.wait_fraction() <= 1

    assert step_seed(0, 5, 1) == step_seed(0, 5, 1)
    assert len({step_seed(0, 5, 0), step_seed(0, 5, 1), step_seed(0, 6, 0), step_seed(1, 5, 0)}) == 4


def test_crop_scale_reaches_the_training_transform(images, tmp_path):
    """--crop-scale is the smallest area of the training RandomResizedCrop; the default is open_clip's."""
    from torchvision.transforms import RandomResizedCrop

    from cluster.config import ConfigError
    from trainer.config import ClipConfig
    from trainer.train import decoder

    _, index_uri, _ = images

    def crop_of(**kw) -> RandomResizedCrop:
        cfg = ClipConfig(storage_path=str(tmp_path), name="c", captions=str(tmp_path), model="tiny", **kw)
        _, kwargs = decoder(cfg, "clip", index_uri, None, None, None)
        return next(t for t in kwargs["transform"].transforms if isinstance(t, RandomResizedCrop))

    assert crop_of().scale == (0.9, 1.0) == load_backbone("tiny").preprocess_train.transforms[0].scale
    assert crop_of(crop_scale=0.25).scale == (0.25, 1.0)
    with pytest.raises(ConfigError, match="crop-scale"):
        ClipConfig(storage_path=str(tmp_path), name="c", captions=str(tmp_path), crop_scale=0.0)


def test_reference_negatives_reach_the_decoder_and_refuse_focus_kinds(images, tmp_path):
    from cluster.config import ConfigError
    from trainer.config import CombinerConfig
    from trainer.train import decoder

    _, index_uri, _ = images

    def cfg(**kw):
        return CombinerConfig(storage_path=str(tmp_path), name="c", triplets=str(tmp_path), images=str(tmp_path),
                              model="tiny", **kw)

    _, kwargs = decoder(cfg(finetune="whole", reference_negatives=("change_object",)), "combiner", index_uri,
                        None, None, None)
    assert kwargs["reference_kinds"] == ("change_object",)
    _, cached = decoder(cfg(reference_negatives=("change_attribute",)), "combiner", index_uri, None, None,
                        (str(tmp_path), 128))
    assert cached["reference_kinds"] == ("change_attribute",)
    with pytest.raises(ConfigError, match="reference-negatives"):
        cfg(reference_negatives=("focus_object",))
