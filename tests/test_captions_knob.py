"""The caption-detail knob, caption/scene consistency, and benchmark conditions in the captions' words."""
from __future__ import annotations

import numpy as np
import pytest

from synthetic import captions as cap
from synthetic.scene import BACKGROUNDS, Obj, Scene, WorldSpec, sample_scene, scene_relations, with_objects
from synthetic.templates import TemplateSpec, annotation_record, build_template

BGS = tuple(BACKGROUNDS)


def _texts(seed: int, scene_id: int, **kw) -> list[str]:
    scene = sample_scene(seed, scene_id)
    return [c.text for c in cap.captions_for(scene, 2, np.random.default_rng((seed, 3, scene_id)), **kw)]


def test_detail_zero_draws_exactly_the_default_captions():
    for i in range(40):
        assert _texts(7, i) == _texts(7, i, detail=0.0)
    assert any(_texts(7, i) != _texts(7, i, detail=0.5) for i in range(40))


def test_dense_caption_names_every_object_with_all_attributes_and_background():
    for i in range(60):
        scene = sample_scene(11, i, WorldSpec(repeat_prob=0.3))
        c = cap.captions_for(scene, 1, np.random.default_rng(i), detail=1.0)[0]
        assert {m.index for m in c.objects} == set(range(len(scene.objects)))
        assert c.text.endswith(f"on a {scene.background} background")
        for m in c.objects:
            o, attrs = scene.objects[m.index], dict(m.attrs)
            assert attrs["color"] == o.colour
            assert attrs.get("pattern", o.pattern) == o.pattern and attrs.get("size", o.size) == o.size
            if "count" not in attrs:  # a single object: every attribute stated (no size before "cross")
                assert "pattern" in attrs and ("size" in attrs or o.shape == "cross")
        assert "plain" not in c.text.split()


def test_every_caption_is_consistent_with_its_own_scene():
    for i in range(150):
        scene = sample_scene(3, i, WorldSpec(repeat_prob=0.2))
        for c in cap.captions_for(scene, 3, np.random.default_rng(i), detail=0.3):
            assert cap.consistent(c, scene, BGS), c.text


def _scene(objs: list[tuple[str, str, tuple[int, int]]], background: str = "grey") -> Scene:
    spec = WorldSpec()
    base = sample_scene(0, 0, spec).objects[0]
    return with_objects(0, spec, background, [Obj(s, col, "large", "plain", cell, base.box) for s, col, cell in objs])


def test_consistency_checks_kind_attributes_counts_relations_and_background():
    red_star_left = _scene([("star", "red", (1, 0)), ("heart", "blue", (1, 2))])
    caption = cap.Caption("a red star to the left of a blue heart",
                          (cap.ObjectMention(0, "star", (("color", "red"),), ("red",), 0),
                           cap.ObjectMention(1, "heart", (("color", "blue"),), ("blue",), 1)),
                          ((0, "left of", 1),))
    assert scene_relations(red_star_left.objects)  # the helper gives the scene its relations
    assert cap.consistent(caption, red_star_left)
    assert not cap.consistent(caption, _scene([("star", "red", (1, 2)), ("heart", "blue", (1, 0))]))  # relation
    assert not cap.consistent(caption, _scene([("star", "green", (1, 0)), ("heart", "blue", (1, 2))]))  # colour
    assert not cap.consistent(caption, _scene([("star", "red", (1, 0))]))  # object missing
    two = cap.Caption("two red stars", tuple(cap.ObjectMention(i, "star", (("count", "2"), ("color", "red")),
                                                               ("two", "red"), 0) for i in (0, 1)), ())
    assert cap.consistent(two, _scene([("star", "red", (0, 0)), ("star", "red", (2, 2))]))
    assert not cap.consistent(two, _scene([("star", "red", (0, 0)), ("star", "red", (2, 2)), ("star", "red", (1, 1))]))
    on_bg = cap.Caption("a disc on a teal background", (cap.ObjectMention(0, "disc", (), (), 0),), ())
    assert cap.consistent(on_bg, _scene([("circle", "red", (0, 0))], "teal"), BGS)
    assert not cap.consistent(on_bg, _scene([("circle", "red", (0, 0))], "grey"), BGS)


def test_benchmark_conditions_use_the_captions_words():
    ts = TemplateSpec(WorldSpec(), seed=1)
    plain = 0
    for index in range(1, 80, 2):  # odd indices: the pattern type (types alternate)
        template = build_template("change_attribute", ts, index)
        record = annotation_record(template)
        assert record["condition"] != "plain"
        if template["condition"] == "plain":
            plain += 1
            assert record["condition"] == "solid"
        else:
            assert record["condition"] == template["condition"]
    assert plain > 0
    caption_words = {w for ws in cap.PATTERN_WORDS.values() for w, _ in ws}
    assert "solid" in caption_words and "plain" not in caption_words


@pytest.mark.parametrize("detail", [-0.1, 1.5])
def test_world_rejects_a_detail_outside_0_1(detail, tmp_path):
    from synthetic.world import WorldConfig

    with pytest.raises(ValueError):
        WorldConfig(output=str(tmp_path), caption_detail=detail)
