"""The synthetic world: renderer, captions (and what the real parser recovers from them), the world
writer's determinism, formats, readers and resume.  Local files only (S3 goes through the same
``cluster.storage`` calls and is covered by the storage tests)."""
from __future__ import annotations

import io
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from miner.lexicon import NUMBER_WORDS
from miner.parser import SceneGraphParser
from miner.readers import CaptionRules, Record, plan_shards, read_shard
from synthetic import captions as cap
from synthetic.render import encode_jpeg, pattern_mask, render_array, render_scene, shape_mask
from synthetic.scene import RELATIONS, SHAPES, Obj, Scene, WorldSpec, cell_box, sample_scene, with_objects
from synthetic.world import ConfigMismatch, WorldConfig, iter_webdataset, load_image, run_world

SEED = 11
SPEC = WorldSpec(repeat_prob=0.25)  # some scenes with two objects of one kind and colour: plural captions
VOLATILE = ("timings", "workers", "generated_shards")  # the only manifest fields a rerun may change


# ----------------------------------------------------------------------------------------- helpers
def world(out: Path, workers: int = 2, seed: int = SEED, images: int = 240, **kw) -> dict:
    cfg = WorldConfig(output=str(out), images=images, seed=seed, shard_size=60, workers=workers, **kw)
    return run_world(cfg)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes, keyed by relative path (the manifest without its volatile fields)."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    manifest = json.loads(files.pop("_world.json"))
    files["_world.json"] = json.dumps({k: v for k, v in manifest.items() if k not in VOLATILE}, sort_keys=True).encode()
    return files


def decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    world(out)
    return out


# ----------------------------------------------------------------------------------------- renderer
def test_render_size_mode_and_purity() -> None:
    scene = sample_scene(SEED, 5)
    img = render_scene(scene)
    assert img.mode == "RGB" and img.size == (scene.image_size, scene.image_size)
    assert np.array_equal(render_array(scene), render_array(scene))
    assert encode_jpeg(img) == encode_jpeg(render_scene(scene))


@pytest.mark.parametrize("size", ["small", "large"])
def test_shapes_are_distinct(size: str) -> None:
    side = cell_box((0, 0), size, WorldSpec(), (0.0, 0.0))[2]
    masks = {s: shape_mask(s, side)[:, :, 0] > 0.5 for s in SHAPES}
    for i, a in enumerate(SHAPES):
        assert masks[a].sum() > 0.15 * side * side, a
        for b in SHAPES[i + 1:]:
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.9, (a, b, iou)


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("shape", SHAPES)
def test_patterns_visible_after_jpeg(shape: str, size: str) -> None:
    """Inside the object, a striped or dotted object has clearly more contrast than a plain one."""
    spec = WorldSpec()

    def spread(pattern: str) -> float:
        box = cell_box((1, 1), size, spec, (0.5, 0.5))
        scene = with_objects(0, spec, "grey", [Obj(shape, "blue", size, pattern, (1, 1), box)])
        x, y, w, h = box
        pixels = decode(encode_jpeg(render_scene(scene, texture=False)))[y:y + h, x:x + w].astype(float)
        inside = pattern_mask("striped", shape, w)[:, :, 0] | pattern_mask("dotted", shape, w)[:, :, 0]
        return float(pixels[inside].std(axis=0).mean()) if inside.any() else 0.0

    plain = spread("plain")
    for pattern in ("striped", "dotted"):
        assert spread(pattern) > plain + 15, (pattern, spread(pattern), plain)


# ----------------------------------------------------------------------------------------- captions
def _noun_shape(noun: str) -> str:
    return next(s for s in SHAPES if noun == s or noun in dict(cap.NOUN_SYNONYMS.get(s, [])))


def test_caption_mentions_are_ground_truth() -> None:
    for sid in range(1500):
        scene = sample_scene(SEED, sid, SPEC)
        caps = cap.captions_for(scene, 3, np.random.default_rng((SEED, 3, sid)))
        assert len(caps) == 3
        for c in caps:
            assert c.objects and c.text == " ".join(c.text.split())
            assert set(c.relations) <= set(scene.relations), (c.text, c.relations)
            for i, p, j in c.relations:
                assert p in RELATIONS and {i, j} <= {m.index for m in c.objects}
            members = defaultdict(list)
            for m in c.objects:
                members[m.phrase].append(m.index)
            for m in c.objects:
                obj = scene.objects[m.index]
                assert _noun_shape(m.noun) == obj.shape and m.noun in c.text
                for kind, value in m.attrs:
                    assert (value == str(len(members[m.phrase])) if kind == "count" else obj.value(kind) == value)
            assert Scene.from_json(json.loads(json.dumps(scene.to_json()))) == scene
            assert cap.Caption.from_json(json.loads(json.dumps(c.to_json()))) == c


def test_captions_are_varied_and_seeded() -> None:
    texts = [c.text for sid in range(400)
             for c in cap.captions_for(sample_scene(SEED, sid, SPEC), 2, np.random.default_rng((SEED, 3, sid)))]
    again = [c.text for sid in range(400)
             for c in cap.captions_for(sample_scene(SEED, sid, SPEC), 2, np.random.default_rng((SEED, 3, sid)))]
    assert texts == again
    assert len(set(texts)) > 0.9 * len(texts)
    joined = "\n".join(texts)
    for phrase in ("to the left of", "on the right side of", "above", "below", "next to", "beside", "two",
                   "striped", "dotted", "a photo of", "and"):
        assert re.search(rf"\b{phrase}\b", joined), phrase


def _entity_ok(entity: dict, phrase: list[cap.ObjectMention]) -> bool:
    m = phrase[0]
    return entity["name"] == m.noun and {NUMBER_WORDS.get(w, w) for w in m.words} <= set(entity["attributes"])


def recovered(caption: cap.Caption, graph: dict) -> bool:
    """The parse names every phrase (noun lemma + stated attributes, counts as digits) and states every
    stated relation (parser predicate mapped to the canonical one) between matching entities."""
    phrases: dict[int, list[cap.ObjectMention]] = defaultdict(list)
    for m in caption.objects:
        phrases[m.phrase].append(m)
    of_obj: dict[int, list[list[cap.ObjectMention]]] = defaultdict(list)
    for m in caption.objects:
        of_obj[m.index].append(phrases[m.phrase])
    ents = graph["entities"]
    if not all(any(_entity_ok(e, ph) for e in ents) for ph in phrases.values()):
        return False
    return all(any(cap.canonical_relation(r["predicate"]) == p
                   and any(_entity_ok(ents[r["subject"]], ph) for ph in of_obj[i])
                   and any(_entity_ok(ents[r["object"]], ph) for ph in of_obj[j]) for r in graph["relations"])
               for i, p, j in caption.relations)


@pytest.fixture(scope="module")
def parsed() -> tuple[list[cap.Caption], list[dict]]:
    caps = [c for sid in range(300)
            for c in cap.captions_for(sample_scene(SEED, sid, SPEC), 2, np.random.default_rng((SEED, 3, sid)))]
    return caps, SceneGraphParser().parse_many([c.text for c in caps])


def test_parser_recovers_captions(parsed) -> None:
    caps, graphs = parsed
    assert len(caps) >= 500
    rate = sum(recovered(c, g) for c, g in zip(caps, graphs)) / len(caps)
    with_rel = [(c, g) for c, g in zip(caps, graphs) if c.relations]
    rel_rate = sum(recovered(c, g) for c, g in with_rel) / len(with_rel)
    print(f"caption -> parse round trip: {rate:.1%} of {len(caps)} captions "
          f"({rel_rate:.1%} of the {len(with_rel)} that state relations)")
    assert rate >= 0.9 and rel_rate >= 0.9 and len(with_rel) >= 150


def test_round_trip_check_can_fail(parsed) -> None:
    """The same check against the wrong caption's graph fails almost always."""
    caps, graphs = parsed
    shifted = graphs[7:] + graphs[:7]
    assert sum(recovered(c, g) for c, g in zip(caps, shifted)) / len(caps) < 0.2


def test_canonical_relation() -> None:
    assert cap.canonical_relation("at the left of") == "left of"
    assert cap.canonical_relation("on the right side of") == "right of"
    assert cap.canonical_relation("place under") == "below"
    assert cap.canonical_relation("on top of") == "above"
    assert cap.canonical_relation("beside") == "next to"
    assert cap.canonical_relation("hold") is None


# ----------------------------------------------------------------------------------------- world files
def test_layout_and_counts(built: Path) -> None:
    manifest = json.loads((built / "_world.json").read_text())
    assert manifest["counts"]["images"] == 240 and manifest["counts"]["captions"] == 480
    assert manifest["counts"]["tsv_lines"] == 480 and manifest["counts"]["shards"] == 4
    assert sorted(p.name for p in (built / "shards").iterdir()) == [f"{s:05d}.tar" for s in range(4)]
    assert len(list((built / "images").glob("*.jpg"))) == 240
    assert (built / "images" / "000000239.jpg").exists()
    assert manifest["vocabulary"]["shapes"] == list(SHAPES) and manifest["seed"] == SEED
    assert json.loads((built / "config.json").read_text())["seed"] == SEED


def test_byte_identical_across_workers_and_seed_changes_output(tmp_path: Path) -> None:
    out = tmp_path / "w"  # the same path each time: image URLs are absolute
    world(out, workers=1)
    one = snapshot(out)
    shutil.rmtree(out)
    world(out, workers=2)
    assert snapshot(out) == one
    shutil.rmtree(out)
    world(out, workers=2, seed=SEED + 1)
    other = snapshot(out)
    assert other.keys() == one.keys()
    assert other["shards/00000.tar"] != one["shards/00000.tar"]
    assert other["images/000000000.jpg"] != one["images/000000000.jpg"]


def test_webdataset_and_images_match_ground_truth(built: Path) -> None:
    samples = list(iter_webdataset(str(built / "shards")))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(240)]
    for s in samples[::7]:
        scene = Scene.from_json(s["json"]["scene"])
        assert scene == sample_scene(SEED, int(s["__key__"]), WorldConfig(output="unused").spec())
        assert s["jpg"] == encode_jpeg(render_scene(scene))
        assert s["txt"] == s["json"]["captions"][0]["text"]
        assert np.array_equal(np.asarray(load_image(s["json"]["url"])), decode(s["jpg"]))
        assert np.array_equal(np.asarray(load_image(s["__key__"], root=str(built))), decode(s["jpg"]))
        drift = np.abs(decode(s["jpg"]).astype(int) - render_array(scene).astype(int)).mean()
        assert drift < 4, drift


def test_parquet_index_and_tsv(built: Path) -> None:
    by_key = {s["__key__"]: s for s in iter_webdataset(str(built / "shards"))}
    table = pq.read_table(built / "index")
    assert table.column_names == ["key", "caption", "url"] and table.num_rows == 480
    rows = table.to_pylist()
    lines = (built / "captions.tsv").read_text().splitlines()
    assert lines == [f"{r['caption']}\t{r['url']}" for r in rows]
    for r in rows[::25]:
        sample = by_key[r["key"]]
        assert r["caption"] in [c["text"] for c in sample["json"]["captions"]]
        assert r["url"] == str(built / "images" / f"{r['key']}.jpg") == sample["json"]["url"]
        assert np.array_equal(np.asarray(load_image(r["url"])), decode(sample["jpg"]))


def test_miner_readers_read_tsv_and_index(built: Path) -> None:
    rows = pq.read_table(built / "index").to_pylist()
    for uri, fmt, size in ((str(built / "captions.tsv"), "cc3m-tsv", 4096), (str(built / "index"), "parquet", 0)):
        records = [r for spec in plan_shards(uri, fmt, size) for r in read_shard(spec, CaptionRules())]
        assert all(isinstance(r, Record) for r in records), fmt
        assert [(r.caption, r.url) for r in records] == [(x["caption"], x["url"]) for x in rows], fmt
        if fmt == "parquet":
            assert [r.key for r in records] == [x["key"] for x in rows]


def test_resume_regenerates_only_missing_shard(tmp_path: Path) -> None:
    out = tmp_path / "w"
    world(out)
    before = snapshot(out)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    assert world(out)["generated_shards"] == list(range(4))  # complete: nothing redone, manifest as is
    (out / "_stats" / "00001.json").unlink()
    manifest = world(out)
    assert manifest["generated_shards"] == [1]
    assert snapshot(out) == before
    changed = sorted(p.name for p, t in mtimes.items() if p.stat().st_mtime_ns != t)
    assert changed == ["00001.tar"]


def test_rerun_with_other_config_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "w"
    world(out, images=60)
    with pytest.raises(ConfigMismatch):
        world(out, images=60, seed=SEED + 1)


def test_cli(tmp_path: Path, capsys) -> None:
    from synthetic.__main__ import main

    assert main(["world", "--output", str(tmp_path / "w"), "--images", "30", "--seed", "3", "--workers", "1",
                 "--captions-per-image", "1"]) == 0
    assert json.loads((tmp_path / "w" / "_world.json").read_text())["counts"]["tsv_lines"] == 30
    assert main(["nope"]) == 2 and main([]) == 2
    assert "benchmark" in capsys.readouterr().out
