"""Word-swap hard negatives for CLIP pretraining (trainer/negatives.py) and their place in the loss."""
import numpy as np
import pytest
import torch

from cluster.config import ConfigError
from trainer.loss import clip_loss
from trainer.negatives import WordSwapper, parse_groups, plural

SHAPES = "circle,square,cross,arrow"


def test_swap_changes_exactly_one_group_word_and_keeps_number():
    swap = WordSwapper(parse_groups([SHAPES, "red,blue"]))
    cap = "a red circle and three blue crosses on a grey background"
    seen = set()
    for seed in range(60):
        neg = swap(cap, np.random.default_rng(seed))
        assert neg != cap
        a, b = cap.split(), neg.split()
        assert len(a) == len(b)
        diff = [(x, y) for x, y in zip(a, b) if x != y]
        assert len(diff) == 1, (cap, neg)
        old, new = diff[0]
        if old == "crosses":
            assert new in {"circles", "squares", "arrows"}
        if old == "circle":
            assert new in {"square", "cross", "arrow"}
        if old in {"red", "blue"}:
            assert new in {"red", "blue"} and new != old
        seen.add(old)
    assert seen == {"red", "circle", "blue", "crosses"}  # every occurrence can be the one swapped


def test_swap_is_a_function_of_the_generator_and_none_without_group_words():
    swap = WordSwapper(parse_groups([SHAPES]))
    cap = "a circle left of an arrow"
    assert swap(cap, np.random.default_rng([0, 5, 3])) == swap(cap, np.random.default_rng([0, 5, 3]))
    assert swap("the encircled squarely thing", np.random.default_rng(0)) is None  # whole words only
    assert swap("", np.random.default_rng(0)) is None


@pytest.mark.parametrize("bad", [["circle"], ["circle,square", "square,star"], ["Circle!,x"]])
def test_bad_groups_are_refused(bad):
    with pytest.raises(ValueError):
        parse_groups(bad)


def test_clip_config_refuses_a_bad_swap_group():
    from trainer.config import ClipConfig
    with pytest.raises(ConfigError, match="--swap-negatives"):
        ClipConfig(storage_path="/tmp/x", name="n", captions="/tmp/w", swap_negatives=("circle",))


def test_plural():
    assert [plural(w) for w in ("cross", "box", "star")] == ["crosses", "boxes", "stars"]


def test_swapped_captions_are_extra_columns_and_invalid_ones_are_ignored():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    scale = torch.tensor(10.0)
    plain = clip_loss(img, txt, scale)
    # invalid negatives change nothing, even when they equal the true caption
    assert torch.allclose(clip_loss(img, txt, scale, negatives=txt.clone(),
                                    negatives_valid=torch.zeros(4, dtype=torch.bool)), plain)
    # a valid negative equal to the image raises the image->text loss only
    hard = clip_loss(img, txt, scale, negatives=img.clone(), negatives_valid=torch.ones(4, dtype=torch.bool))
    assert hard > plain + 0.5
    i2t = torch.nn.functional.cross_entropy(scale * img @ torch.cat([txt, img]).t(), torch.arange(4))
    t2i = torch.nn.functional.cross_entropy(scale * txt @ img.t(), torch.arange(4))
    assert torch.allclose(hard, 0.5 * (i2t + t2i))
