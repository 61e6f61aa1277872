"""The model, Ray-free: an open_clip backbone, the GeneCIS/CLIP4Cir Combiner and the one ``combine`` seam.

Every baseline head and the trained Combiner turn (image features, text features) into a query through
:func:`combine`; the evaluator and the trainer share it.  Features going in are *raw* (unnormalised)
backbone outputs, as in GeneCIS (GENECIS.md §2.2–2.3); every query coming out is L2-normalised.
"""
from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainer.heads import COMBINER_HEADS, HEADS

# The project's CPU model (≈7.8M parameters, 6.3M of them the token embedding).
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}

# The same text tower with a small convolutional image tower (open_clip's ModifiedResNet: 3-conv stem,
# one bottleneck block per stage, attention pooling).  Convolutions learn shape identity from scratch
# far faster than the ViT above: see cluster/configs/demo.yaml for the measured difference.
TINY_RN_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
    "text_cfg": TINY_CONFIG["text_cfg"],
}
LOCAL_CONFIGS: dict[str, dict[str, Any]] = {"tiny": TINY_CONFIG, "tiny-rn": TINY_RN_CONFIG}

FINETUNE_MODES = ("frozen", "image", "text", "whole")


def _registry() -> dict[str, Any]:
    from open_clip import factory

    return factory._MODEL_CONFIGS  # open_clip 3.3 keeps its configs here; add_model_config needs a file


def register_config(name: str, cfg: dict[str, Any]) -> None:
    """Make ``name`` an open_clip model with config ``cfg``; idempotent, refuses a conflicting config."""
    registry = _registry()
    if name in registry:
        if registry[name] != cfg:
            raise ValueError(f"open_clip model {name!r} already exists with a different config")
        return
    registry[name] = copy.deepcopy(cfg)


def register_tiny() -> None:
    """Register the project's CPU configs (``tiny``, ``tiny-rn``) with open_clip (idempotent)."""
    for name, cfg in LOCAL_CONFIGS.items():
        register_config(name, cfg)


def model_config(name: str) -> dict[str, Any]:
    """The open_clip config dict of a model name (the project's CPU configs are registered on demand)."""
    if name in LOCAL_CONFIGS:
        register_tiny()
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {name!r} (open_clip.list_models() names the known ones)")
    return cfg


@dataclass
class Backbone:
    """An open_clip model with its transforms and tokenizer."""

    model: nn.Module
    preprocess_train: Callable
    preprocess_eval: Callable
    tokenizer: Callable
    embed_dim: int
    image_size: int
    context_length: int
    name: str
    pretrained: str | None

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) image features."""
        return self.model.encode_image(images, normalize=False)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) text features."""
        return self.model.encode_text(tokens, normalize=False)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))


def _image_size(model: nn.Module) -> int:
    size = getattr(model.visual, "image_size", None)
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ValueError(f"non-square image size {size} is not supported")
        size = size[0]
    return int(size)


@contextlib.contextmanager
def seeded(seed: int | None):
    """Run a block (e.g. a model's random init) with torch's RNG seeded, leaving the global RNG as it was."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs every creation step on the root logger (and warns about random init, which is
    what we asked for): keep those out of job logs."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def load_backbone(name: str, pretrained: str | None = None, seed: int | None = 0,
                  crop_scale: float | None = None) -> Backbone:
    """An open_clip backbone by name.

    ``pretrained``: an open_clip tag (e.g. ``laion2b_s34b_b79k``; downloads, so it needs a network and
    ``HF_HUB_OFFLINE`` unset), a local weights file (an open_clip/OpenAI state dict), or None (random
    init, reproducible from ``seed``).  A trainer checkpoint folder is loaded with
    :func:`trainer.checkpoint.load_trained`.  ``crop_scale``: the smallest area fraction of the training
    transform's RandomResizedCrop (open_clip's default, None, is 0.9).
    """
    import open_clip

    cfg = model_config(name)
    if pretrained is not None and os.path.sep in pretrained and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"pretrained weights file not found: {pretrained}")
    with seeded(seed), _quiet_open_clip():
        model, preprocess_train, preprocess_eval = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, output_dict=True,
            aug_cfg=None if crop_scale is None else {"scale": (crop_scale, 1.0)})
        tokenizer = open_clip.get_tokenizer(name)
    return Backbone(
        model=model, preprocess_train=preprocess_train, preprocess_eval=preprocess_eval, tokenizer=tokenizer,
        embed_dim=int(cfg["embed_dim"]), image_size=_image_size(model),
        context_length=int(model.context_length), name=name, pretrained=pretrained)


def _is_image_param(name: str) -> bool:
    return name.startswith("visual.")


def _is_text_param(name: str) -> bool:
    return not _is_image_param(name) and not name.startswith("logit_")


def set_finetune(model: nn.Module, mode: str) -> list[nn.Parameter]:
    """Set ``requires_grad`` for a fine-tune mode and return the trainable parameters.

    ``frozen``: nothing; ``image``: the image tower; ``text``: the text tower; ``whole``: every
    parameter (GeneCIS's default ``image_plus_text_whole``; ``logit_scale`` included, used only in CLIP mode).
    """
    if mode not in FINETUNE_MODES:
        raise ValueError(f"finetune mode {mode!r} is not one of {FINETUNE_MODES}")
    keep = {
        "frozen": lambda n: False,
        "image": _is_image_param,
        "text": _is_text_param,
        "whole": lambda n: True,
    }[mode]
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(keep(name))
        if param.requires_grad:
            trainable.append(param)
    return trainable


class Combiner(nn.Module):
    """The GeneCIS / CLIP4Cir Combiner (GENECIS.md §2.2): raw features in, L2-normalised query out.

    Text and image are projected to P, concatenated **text first**, mapped to H; a sigmoid scalar λ
    (from its own 2P→H→1 branch) mixes the raw inputs as ``λ·txt + (1−λ)·img`` into the output
    projection.  Four dropouts of p = ``dropout``.
    """

    def __init__(self, dim: int, projection_dim: int = 2560, hidden_dim: int | None = None,
                 dropout: float = 0.5):
        super().__init__()
        hidden_dim = 2 * projection_dim if hidden_dim is None else hidden_dim
        self.dim, self.projection_dim, self.hidden_dim, self.dropout_p = dim, projection_dim, hidden_dim, dropout
        self.text_projection = nn.Linear(dim, projection_dim)
        self.image_projection = nn.Linear(dim, projection_dim)
        self.combiner_layer = nn.Linear(2 * projection_dim, hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, dim)
        self.dynamic_scalar = nn.Sequential(
            nn.Linear(2 * projection_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, 1), nn.Sigmoid())
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "projection_dim": self.projection_dim, "hidden_dim": self.hidden_dim,
                "dropout": self.dropout_p}

    @staticmethod
    def num_parameters(dim: int, projection_dim: int = 2560, hidden_dim: int | None = None) -> int:
        """The closed-form parameter count (59.0M for D=640, 57.7M for D=512 at P=2560, H=5120)."""
        p, d = projection_dim, dim
        h = 2 * p if hidden_dim is None else hidden_dim
        return 2 * (d * p + p) + (2 * p * h + h) + (2 * p * h + h) + (h + 1) + (h * d + d)

    def forward(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        t = self.dropout1(F.relu(self.text_projection(text_feats)))
        v = self.dropout2(F.relu(self.image_projection(image_feats)))
        c = torch.cat([t, v], dim=-1)
        h = self.dropout3(F.relu(self.combiner_layer(c)))
        lam = self.dynamic_scalar(c)
        out = self.output_layer(h) + lam * text_feats + (1 - lam) * image_feats
        return F.normalize(out, dim=-1)


def combine(head: str, image_feats: torch.Tensor, text_feats: torch.Tensor,
            combiner: Combiner | None = None, reference_weight: float = 0.0) -> torch.Tensor:
    """The query of a head from RAW features, L2-normalised (GENECIS.md §2.3).

    ``image_only``: normalize(img); ``text_only``: normalize(txt); ``image_plus_text``:
    normalize(0.5·img + 0.5·txt) of the raw features; ``combiner``: the trained Combiner;
    ``combiner_plus_image``: the late fusion normalize(combiner(img, txt) + w·normalize(img)) with
    w = ``reference_weight``, whose cosine ranks candidates by Combiner similarity + w × image-only
    similarity (the prior that the target looks like the reference, which mined triplets do not teach).
    """
    if head == "image_only":
        return F.normalize(image_feats, dim=-1)
    if head == "text_only":
        return F.normalize(text_feats, dim=-1)
    if head == "image_plus_text":
        return F.normalize(0.5 * image_feats + 0.5 * text_feats, dim=-1)
    if head in COMBINER_HEADS:
        if combiner is None:
            raise ValueError(f"head {head!r} needs a Combiner")
        query = combiner(image_feats, text_feats)
        if head == "combiner_plus_image":
            query = F.normalize(query + reference_weight * F.normalize(image_feats, dim=-1), dim=-1)
        return query
    raise ValueError(f"unknown head {head!r}; one of {HEADS}")
