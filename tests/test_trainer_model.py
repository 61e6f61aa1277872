"""The Ray-free model API: Combiner, combine heads, backbone loading, checkpoint round trip."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trainer import checkpoint as ckpt  # noqa: E402
from trainer.model import (HEADS, TINY_CONFIG, Combiner, combine, load_backbone, model_config,  # noqa: E402
                           register_tiny, set_finetune)


def test_combiner_parameter_count_matches_paper():
    # GENECIS.md §2.2: 59.0M for D=640 and 57.7M for D=512 at P=2560, H=5120.
    assert round(Combiner.num_parameters(640) / 1e6, 1) == 59.0
    assert round(Combiner.num_parameters(512) / 1e6, 1) == 57.7
    for dim, p, h in [(640, 2560, None), (128, 64, None), (32, 16, 40)]:
        model = Combiner(dim, projection_dim=p, hidden_dim=h)
        assert sum(t.numel() for t in model.parameters()) == Combiner.num_parameters(dim, p, h)
    assert Combiner(16, projection_dim=8).hidden_dim == 16


def test_combiner_shapes_normalised_and_text_first():
    gen = torch.Generator().manual_seed(0)
    img, txt = torch.randn(5, 32, generator=gen) * 7, torch.randn(5, 32, generator=gen) * 3
    comb = Combiner(32, projection_dim=16).eval()
    out = comb(img, txt)
    assert out.shape == (5, 32)
    assert torch.allclose(out.norm(dim=-1), torch.ones(5), atol=1e-5)
    # Text comes first in the concatenation: zero the text projection and the output depends on
    # the image only through the second half of the combiner layer's input.
    with torch.no_grad():
        comb.combiner_layer.weight[:, 16:] = 0
        comb.dynamic_scalar[0].weight[:, 16:] = 0
        comb.output_layer.weight.zero_()
        comb.output_layer.bias.zero_()
        comb.dynamic_scalar[3].weight.zero_()
        comb.dynamic_scalar[3].bias.fill_(20.0)  # λ = sigmoid(20) ≈ 1: the raw text feature
    assert torch.allclose(comb(img, txt), F.normalize(txt, dim=-1), atol=1e-6)


def test_combiner_dropout_only_in_train_mode():
    comb = Combiner(16, projection_dim=8)
    img, txt = torch.randn(4, 16), torch.randn(4, 16)
    comb.eval()
    assert torch.equal(comb(img, txt), comb(img, txt))
    comb.train()
    torch.manual_seed(1)
    a = comb(img, txt)
    torch.manual_seed(2)
    assert not torch.equal(a, comb(img, txt))


def test_combine_heads():
    img, txt = torch.randn(3, 8) * 5, torch.randn(3, 8)
    assert torch.allclose(combine("image_only", img, txt), F.normalize(img, dim=-1))
    assert torch.allclose(combine("text_only", img, txt), F.normalize(txt, dim=-1))
    # raw features averaged, not normalised first: the larger image feature dominates
    avg = combine("image_plus_text", img, txt)
    assert torch.allclose(avg, F.normalize(img + txt, dim=-1), atol=1e-6)
    assert not torch.allclose(avg, F.normalize(F.normalize(img, dim=-1) + F.normalize(txt, dim=-1), dim=-1))
    comb = Combiner(8, projection_dim=4).eval()
    assert torch.equal(combine("combiner", img, txt, comb), comb(img, txt))
    fused = combine("combiner_plus_image", img, txt, comb, reference_weight=0.7)
    assert torch.allclose(fused, F.normalize(comb(img, txt) + 0.7 * F.normalize(img, dim=-1), dim=-1))
    assert torch.allclose(fused.norm(dim=-1), torch.ones(3))
    # the weight is the late-fusion head's only: the pure Combiner and the baselines ignore it
    assert torch.equal(combine("combiner", img, txt, comb, reference_weight=0.7), comb(img, txt))
    assert torch.equal(combine("image_plus_text", img, txt, reference_weight=0.7), avg)
    assert torch.allclose(combine("combiner_plus_image", img, txt, comb, reference_weight=0.0), comb(img, txt))
    for head in ("combiner", "combiner_plus_image"):
        with pytest.raises(ValueError, match="needs a Combiner"):
            combine(head, img, txt)
    with pytest.raises(ValueError):
        combine("sum", img, txt)
    assert HEADS == ("image_only", "text_only", "image_plus_text", "combiner", "combiner_plus_image")


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny", seed=0)


def test_tiny_backbone(tiny):
    register_tiny()
    register_tiny()  # idempotent
    assert model_config("tiny") == TINY_CONFIG
    assert (tiny.embed_dim, tiny.image_size, tiny.context_length) == (128, 64, 32)
    n = sum(p.numel() for p in tiny.model.parameters())
    assert 7.5e6 < n < 8.1e6
    tokens = tiny.tokenize(["a red cube left of a blue ball", "stripes"])
    assert tokens.shape == (2, 32)
    with torch.no_grad():
        img = tiny.encode_image(torch.zeros(2, 3, 64, 64))
        txt = tiny.encode_text(tokens)
    assert img.shape == txt.shape == (2, 128)
    assert not torch.allclose(img.norm(dim=-1), torch.ones(2))  # raw, not normalised
    again = load_backbone("tiny", seed=0)
    assert all(torch.equal(a, b) for a, b in zip(tiny.model.state_dict().values(),
                                                 again.model.state_dict().values()))


def test_tiny_rn_backbone_is_convolutional_with_the_same_text_tower():
    from trainer.model import TINY_RN_CONFIG

    rn = load_backbone("tiny-rn", seed=0)
    assert model_config("tiny-rn") == TINY_RN_CONFIG
    assert type(rn.model.visual).__name__ == "ModifiedResNet"
    assert (rn.embed_dim, rn.image_size, rn.context_length) == (128, 64, 32)
    with torch.no_grad():
        img = rn.encode_image(torch.rand(2, 3, 64, 64))
        txt = rn.encode_text(rn.tokenize(["a red circle", "stripes"]))
    assert img.shape == txt.shape == (2, 128) and torch.isfinite(img).all()


def test_load_backbone_local_weights_file(tiny, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(tiny.model.state_dict(), path)
    other = load_backbone("tiny", pretrained=str(path), seed=123)
    assert all(torch.equal(a, b) for a, b in zip(tiny.model.state_dict().values(),
                                                 other.model.state_dict().values()))
    with pytest.raises(FileNotFoundError):
        load_backbone("tiny", pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_backbone("no-such-model")


def test_finetune_modes(tiny):
    model = tiny.model
    n_all = sum(1 for _ in model.parameters())
    assert set_finetune(model, "frozen") == []
    image = set_finetune(model, "image")
    assert image and all(n.startswith("visual.") for n, p in model.named_parameters() if p.requires_grad)
    text = set_finetune(model, "text")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert text and not any(n.startswith("visual.") or n.startswith("logit_") for n in names)
    assert "token_embedding.weight" in names
    assert len(set_finetune(model, "whole")) == n_all
    with pytest.raises(ValueError):
        set_finetune(model, "half")


def _perturb(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.01)


def test_checkpoint_round_trip_bit_exact(tmp_path):
    bb = load_backbone("tiny", seed=0)
    comb = Combiner(bb.embed_dim, projection_dim=64)
    _perturb(bb.model, 1)
    _perturb(comb, 2)
    params = list(bb.model.parameters()) + list(comb.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for p in params:
        p.grad = torch.ones_like(p) * 1e-3
    opt.step()
    sched.step()
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": None,
             "data_position": {"epoch": 1, "offset": 640}}
    run = tmp_path / "run"
    uri = str(run / "step_000007")
    ckpt.save_checkpoint(uri, mode="combiner", model_name="tiny", model_cfg=model_config("tiny"),
                         backbone=bb.model, combiner=comb, train_state=state, step=7, samples_seen=448)
    # an incomplete later step folder is ignored; an earlier one loses to the later
    (run / "step_000009").mkdir()
    (run / "step_000009" / "backbone.pt").write_bytes(b"partial")
    ckpt.save_checkpoint(str(run / "step_000003"), mode="clip", model_name="tiny",
                         model_cfg=model_config("tiny"), backbone=bb.model, combiner=None,
                         train_state={}, step=3, samples_seen=192)
    assert ckpt.latest_checkpoint(str(run)) == uri
    assert ckpt.latest_checkpoint(uri) == uri
    assert ckpt.latest_checkpoint(str(tmp_path / "empty")) is None

    trained = ckpt.load_trained(str(run))
    assert trained.info["step"] == 7 and trained.info["samples_seen"] == 448 and trained.info["mode"] == "combiner"
    assert trained.info["combiner"] == {"dim": 128, "projection_dim": 64, "hidden_dim": 128, "dropout": 0.5}
    for a, b in zip(bb.model.state_dict().values(), trained.backbone.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(comb.state_dict().values(), trained.combiner.state_dict().values()):
        assert torch.equal(a, b)
    assert not trained.backbone.model.training and not trained.combiner.training

    restored = ckpt.read_train_state(uri)
    assert restored["step"] == 7 and restored["samples_seen"] == 448
    assert restored["data_position"] == {"epoch": 1, "offset": 640}
    opt2 = torch.optim.AdamW(list(trained.backbone.model.parameters()) + list(trained.combiner.parameters()), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (1 + s))
    opt2.load_state_dict(restored["optimizer"])
    sched2.load_state_dict(restored["scheduler"])
    assert sched2.last_epoch == 1 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for s1, s2 in zip(opt.state.values(), opt2.state.values()):
        assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])

    clip = ckpt.load_trained(str(run / "step_000003"))
    assert clip.combiner is None and clip.info["mode"] == "clip"
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_trained(str(run / "step_000009"))


def test_save_checkpoint_refuses_mode_mismatch(tmp_path, tiny):
    with pytest.raises(ValueError):
        ckpt.save_checkpoint(str(tmp_path / "c"), mode="combiner", model_name="tiny",
                             model_cfg=model_config("tiny"), backbone=tiny.model, combiner=None,
                             train_state={}, step=0, samples_seen=0)
