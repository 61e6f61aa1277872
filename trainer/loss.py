"""Contrastive losses with global-batch negatives, Ray-free.

Each rank scores its **local** rows against the targets of the **global** batch, gathered with
``torch.distributed.nn.functional.all_gather`` (whose backward routes every rank's gradient back to the
rank that owns the row).  Averaging parameter gradients over ranks (DDP) then gives exactly the gradient
of the single-process loss over the global batch — GENECIS.md §3.1 computes the whole B×B loss on every
rank instead (quirk 3); the gradients agree up to the scale Adam ignores.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

TEMPERATURE = 0.01  # GeneCIS: logits = 100 · q @ t.T


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows concatenated in rank order; gradients flow back to each row's owner."""
    _, size = world()
    if size == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def _labels(n_local: int, device: torch.device) -> torch.Tensor:
    rank, _ = world()
    return torch.arange(n_local, device=device) + rank * n_local


def info_nce(query: torch.Tensor, target: torch.Tensor, logit_scale: torch.Tensor | float, *,
             symmetric: bool = False,
             own_negatives: Sequence[tuple[torch.Tensor, torch.Tensor | None]] = ()) -> torch.Tensor:
    """InfoNCE of L2-normalised ``query`` → ``target`` rows with the global batch's targets as negatives.

    ``logit_scale`` is 1/temperature (100 in GeneCIS).  ``symmetric`` adds the target → query direction.
    ``own_negatives`` are (negatives, valid) pairs, one row per query each (the Combiner's mined distractor,
    its reference): each adds one extra hard-negative column; rows whose ``valid`` is False (e.g. the
    distractor *is* the target image) get that column masked to -inf, so they never push the target away.
    Every rank's batch must be the same size.  Returns this rank's mean loss; the mean of it over ranks is
    the global-batch loss.
    """
    n_local = query.shape[0]
    labels = _labels(n_local, query.device)
    all_targets = gather_with_grad(target)
    logits = logit_scale * query @ all_targets.t()
    for negative, valid in own_negatives:
        extra = logit_scale * (query * negative).sum(dim=-1, keepdim=True)
        if valid is not None:
            extra = extra.masked_fill(~valid.bool().view(-1, 1), float("-inf"))
        logits = torch.cat([logits, extra], dim=1)
    loss = F.cross_entropy(logits.float(), labels)
    if symmetric:
        all_queries = gather_with_grad(query)
        logits_t = logit_scale * target @ all_queries.t()
        loss = 0.5 * (loss + F.cross_entropy(logits_t.float(), labels))
    return loss


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, *,
              negatives: torch.Tensor | None = None,
              negatives_valid: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric image ↔ caption loss (normalised features, learnable scale).

    ``negatives`` (one swapped caption per row, :mod:`trainer.negatives`) join the captions every image
    is scored against, gathered from all ranks like them (image → text only, as NegCLIP: a swapped caption
    has no image of its own); columns whose ``negatives_valid`` is False are masked out."""
    if negatives is None:
        return info_nce(image, text, logit_scale, symmetric=True)
    labels = _labels(image.shape[0], image.device)
    all_text, all_img = gather_with_grad(text), gather_with_grad(image)
    all_neg = gather_with_grad(negatives)
    logits = logit_scale * image @ torch.cat([all_text, all_neg]).t()
    if negatives_valid is not None:
        valid = gather_with_grad(negatives_valid.to(logits.dtype)).bool()
        pad = torch.ones(all_text.shape[0], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(~torch.cat([pad, valid]).view(1, -1), float("-inf"))
    i2t = F.cross_entropy(logits.float(), labels)
    t2i = F.cross_entropy((logit_scale * text @ all_img.t()).float(), labels)
    return 0.5 * (i2t + t2i)


def initial_log_scale(temperature: float) -> float:
    """log(1/temperature): the learnable parameter behind a temperature (CLIP's init is 0.07)."""
    if not 0 < temperature < 1:
        raise ValueError(f"temperature must be in (0, 1), got {temperature}")
    return math.log(1.0 / temperature)


MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(log scale) at 100, i.e. temperature >= 0.01


def scale_from_log(log_scale: torch.Tensor) -> torch.Tensor:
    return log_scale.exp().clamp(max=MAX_LOGIT_SCALE)


def mean_over_ranks(value: torch.Tensor) -> float:
    """A detached scalar averaged over ranks (the logged global loss)."""
    value = value.detach().float().clone()
    _, size = world()
    if size > 1:
        dist.all_reduce(value)
        value /= size
    return float(value)
