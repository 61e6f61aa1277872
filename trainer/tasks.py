"""The two training tasks as modules whose ``forward`` returns (loss, metrics), Ray-free.

Everything that needs gradients runs inside ``forward`` so a DistributedDataParallel wrapper sees the
whole computation (GeneCIS calls ``encode_image`` past DDP's ``forward`` and so probably never syncs the
backbone's gradients — GENECIS.md §3.3 quirk 2; here the backbone goes through DDP).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.loss import clip_loss, info_nce, initial_log_scale, scale_from_log
from trainer.model import Combiner


class ClipTask(nn.Module):
    """CLIP pretraining: symmetric image ↔ caption InfoNCE with the model's learnable ``logit_scale``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, neg_tokens: torch.Tensor | None = None,
                neg_valid: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        img = F.normalize(self.model.encode_image(images, normalize=False), dim=-1)
        n = tokens.shape[0]
        both = tokens if neg_tokens is None else torch.cat([tokens, neg_tokens])
        feats = F.normalize(self.model.encode_text(both, normalize=False), dim=-1)
        txt, neg = feats[:n], (feats[n:] if neg_tokens is not None else None)
        # open_clip 3.3 keeps logit_scale as log(1/T) and exponentiates in forward; we do it here
        scale = scale_from_log(self.model.logit_scale)
        loss = clip_loss(img, txt, scale, negatives=neg, negatives_valid=neg_valid)
        return loss, {"temperature": float(1.0 / scale.detach())}


class CombinerTask(nn.Module):
    """Query = Combiner(ref image, condition), target = image; InfoNCE over the global batch.

    With ``backbone`` given, ``ref``/``target``/``distractor`` are images and ``text`` is tokens; with
    ``backbone=None`` (frozen backbone, cached features) they are raw features already.
    """

    def __init__(self, backbone: nn.Module | None, combiner: Combiner, *, temperature: float = 0.01,
                 learn_temperature: bool = False, symmetric: bool = False):
        super().__init__()
        self.backbone = backbone
        self.combiner = combiner
        self.symmetric = symmetric
        log_scale = torch.tensor(initial_log_scale(temperature))
        if learn_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def _backbone_trains(self) -> bool:
        return self.backbone is not None and any(p.requires_grad for p in self.backbone.parameters())

    def _encode(self, ref, text, target, distractor):
        if self.backbone is None:
            return ref, text, target, distractor
        images = [ref, target] + ([distractor] if distractor is not None else [])
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._backbone_trains()):
            feats = self.backbone.encode_image(torch.cat(images), normalize=False)
            txt = self.backbone.encode_text(text, normalize=False)
        parts = feats.split(ref.shape[0])
        return parts[0], txt, parts[1], parts[2] if distractor is not None else None

    def forward(self, ref: torch.Tensor, text: torch.Tensor, target: torch.Tensor,
                distractor: torch.Tensor | None = None, distractor_valid: torch.Tensor | None = None,
                reference_valid: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """``reference_valid`` (optional, one flag per row): the reference image is one more negative of
        its own query where True (change kinds: the reference lacks the condition)."""
        ref_f, txt_f, tgt_f, dis_f = self._encode(ref, text, target, distractor)
        query = self.combiner(ref_f.float(), txt_f.float())
        tgt = F.normalize(tgt_f.float(), dim=-1)
        own = []
        if dis_f is not None:
            own.append((F.normalize(dis_f.float(), dim=-1), distractor_valid))
        if reference_valid is not None:
            own.append((F.normalize(ref_f.float(), dim=-1), reference_valid))
        scale = self.log_scale.exp()
        loss = info_nce(query, tgt, scale, symmetric=self.symmetric, own_negatives=own)
        return loss, {"temperature": float(1.0 / scale.detach())}
