"""Held-out image<->text retrieval on a procedural world, and its ground-truth ceiling.

``python -m evaluator retrieval --captions WORLD --checkpoint RUN --model tiny --images 1000`` reads the
first N images of a world (``python -m synthetic world`` output, local or ``s3://``; use a seed the
model never trained on), takes each image's FIRST caption, encodes both with the checkpoint's backbone
and reports image->text and text->image R@1/R@5 (N-way).

The ceiling: several captions of the pool may be true of one image ("a red star" fits every image with a
red star).  :func:`synthetic.captions.consistent` decides that from each image's scene and what each
caption states; a perfect model that cannot tell consistent captions apart ranks the right one first
with probability 1/(number consistent), so the mean of that is the best R@1 any model can expect.

Ray-free: one process, plain functions (encoding 1,000 64-px images with the tiny model takes seconds).
"""
from __future__ import annotations

import io
import json
import logging
import tarfile
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from cluster import storage
from cluster.config import ConfigError, option, required, validate_fields
from cluster.progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrievalConfig:
    """Image<->text retrieval R@1/R@5 on a held-out procedural world, with its ground-truth ceiling."""

    captions: str = required("a `python -m synthetic world` output (shards/*.tar) of a seed not trained on",
                             uri=True)
    model: str = option("tiny", "open_clip model name of the checkpoint's backbone")
    checkpoint: str | None = option(None, "a trainer run or checkpoint folder (none: only the ceiling, or "
                                          "--pretrained)", uri=True)
    pretrained: str | None = option(None, "open_clip pretrained tag or weights file, in place of --checkpoint")
    images: int = option(1000, "the first N images of the world (N-way retrieval)", min=2)
    ceiling: bool = option(True, "also compute the ground-truth ceiling (captions consistent with each image)")
    swap_words: tuple[str, ...] = option(
        (), "word groups, each 'w1,w2,...' (as `trainer clip --swap-negatives`): also score each image's "
            "caption against every one-word swap of it (pairwise accuracy, chance 0.5)")
    batch_size: int = option(128, "images or texts per encode batch", runtime=True, min=1)
    output: str | None = option(None, "write the result JSON here (a file path or s3:// URI)", uri=True)
    progress_interval_s: float = option(5.0, "seconds between progress lines", runtime=True, min=0.0)

    def __post_init__(self) -> None:
        if self.checkpoint and self.pretrained:
            raise ValueError("--pretrained and --checkpoint are exclusive: the checkpoint holds the weights")
        if self.swap_words and not (self.checkpoint or self.pretrained):
            raise ValueError("--swap-words needs a model (--checkpoint or --pretrained)")
        from trainer.negatives import parse_groups

        try:
            parse_groups(self.swap_words)
        except ValueError as err:
            raise ConfigError(f"--swap-words: {err}") from None
        validate_fields(self)


@dataclass(frozen=True)
class Record:
    key: str
    jpeg: bytes
    meta: dict[str, Any]  # the shard's KEY.json: scene + captions (with what each states)


class WorldError(ValueError):
    """A world folder without usable shards, or a shard record missing its image or scene."""


# ----------------------------------------------------------------------------------------- reading
def read_records(world_uri: str, n: int) -> tuple[list[Record], list[str]]:
    """The first ``n`` records (key order) of a world's shards, and the world's backgrounds."""
    root = storage.require_input(world_uri)
    shards = storage.list_files(root.child("shards"), suffix=".tar")
    if not shards:
        raise WorldError(f"no webdataset shards under {world_uri}/shards")
    manifest = root.child("_world.json")
    backgrounds = storage.read_json(manifest)["config"]["backgrounds"] if storage.exists(manifest) else []
    out: list[Record] = []
    for shard in sorted(shards, key=lambda loc: loc.path):
        out.extend(_shard_records(storage.read_bytes(shard), shard.uri))
        if len(out) >= n:
            break
    if len(out) < n:
        raise WorldError(f"{world_uri} holds {len(out)} images, fewer than --images {n}")
    return sorted(out, key=lambda r: r.key)[:n], list(backgrounds)


def _shard_records(data: bytes, uri: str) -> list[Record]:
    parts: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            key, _, ext = member.name.rpartition(".")
            fh = tar.extractfile(member)
            assert fh is not None  # a regular file always has content
            parts.setdefault(key, {})[ext] = fh.read()
    out = []
    for key, p in sorted(parts.items()):
        if "jpg" not in p or "json" not in p:
            raise WorldError(f"record {key} of {uri} lacks its {'jpg' if 'jpg' not in p else 'json'}")
        meta = json.loads(p["json"])
        if not meta.get("captions"):
            raise WorldError(f"record {key} of {uri} has no captions")
        out.append(Record(key, p["jpg"], meta))
    return out


# ----------------------------------------------------------------------------------------- metrics
def recall_at(sim: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Row i's right column is i: the fraction of rows whose right column ranks in the top k.

    Ties count against the model (a column scoring equal to the right one ranks above it), so a
    constant similarity scores 0, not 1."""
    right = np.diag(sim)[:, None]
    rank = (sim >= right).sum(axis=1) - 1  # others scoring at least as high
    return {f"r{k}": float(np.mean(rank < k)) for k in ks}


def retrieval_metrics(image_feats: np.ndarray, text_feats: np.ndarray) -> dict[str, dict[str, float]]:
    """i2t and t2i R@1/R@5 of L2-normalised features (image i's caption is text i)."""
    a = image_feats / np.linalg.norm(image_feats, axis=1, keepdims=True)
    b = text_feats / np.linalg.norm(text_feats, axis=1, keepdims=True)
    sim = a @ b.T
    return {"i2t": recall_at(sim), "t2i": recall_at(sim.T)}


def consistency_matrix(records: list[Record], backgrounds: list[str], progress: Progress | None = None) -> np.ndarray:
    """``M[i, j]``: caption j (the first of image j) is true of image i's scene."""
    from synthetic.captions import Caption, consistent
    from synthetic.scene import Scene

    scenes = [Scene.from_json(r.meta["scene"]) for r in records]
    caps = [Caption.from_json(r.meta["captions"][0]) for r in records]
    m = np.zeros((len(scenes), len(caps)), dtype=bool)
    for i, scene in enumerate(scenes):
        m[i] = [consistent(c, scene, backgrounds) for c in caps]
        if progress:
            progress.update(1)
    return m


def _specific_r1(m: np.ndarray, weight: np.ndarray) -> float:
    """Expected R@1 when row i ranks its consistent columns by ``weight`` (ties broken at random)."""
    scores = np.where(m, weight[None, :], -1.0)
    best = scores.max(axis=1)
    own = np.diag(scores)
    return float(np.mean(np.where(own >= best, 1.0 / (scores == best[:, None]).sum(axis=1), 0.0)))


def ceiling(m: np.ndarray) -> dict[str, Any]:
    """What ground truth allows.  ``*_r1``: a model that cannot tell consistent captions (images) apart,
    1/(number consistent) on average.  ``*_r1_specific``: one that also prefers the caption true of the
    fewest images (the image with the fewest true captions) among the consistent ones -- what a
    contrastive model's p(x, c)/p(x)p(c) tends to; above the first, still a ceiling for most models."""
    bad = np.flatnonzero(~np.diag(m))
    if bad.size:  # a caption always describes its own image; anything else is a bug in `consistent`
        raise WorldError(f"{bad.size} captions are inconsistent with their own image (first: row {int(bad[0])})")
    per_image, per_caption = m.sum(axis=1), m.sum(axis=0)
    return {"i2t_r1": float(np.mean(1.0 / per_image)), "t2i_r1": float(np.mean(1.0 / per_caption)),
            "i2t_r1_specific": _specific_r1(m, 1.0 / per_caption),
            "t2i_r1_specific": _specific_r1(m.T, 1.0 / per_image),
            "consistent_captions_per_image": {"mean": float(per_image.mean()), "median": float(np.median(per_image)),
                                              "unique": float(np.mean(per_image == 1))},
            "consistent_images_per_caption": {"mean": float(per_caption.mean()),
                                              "median": float(np.median(per_caption)),
                                              "unique": float(np.mean(per_caption == 1))}}


def swap_accuracy(image_feats: np.ndarray, true: np.ndarray, swaps: list[list[tuple[int, str]]],
                  encode_texts, groups: list[tuple[str, ...]]) -> dict[str, dict[str, float]]:
    """Per word group: the fraction of (image i, one-word swap of caption i) pairs where image i scores its
    caption (features ``true[i]``) above the swap (ties count as wrong), and how many pairs that is."""
    a = image_feats / np.linalg.norm(image_feats, axis=1, keepdims=True)
    true_score = np.sum(a * true / np.linalg.norm(true, axis=1, keepdims=True), axis=1)
    rows = [(i, g, text) for i, sw in enumerate(swaps) for g, text in sw]
    if not rows:
        return {}
    feats = encode_texts([text for _, _, text in rows])
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    idx = np.array([i for i, _, _ in rows])
    won = np.sum(a[idx] * feats, axis=1) < true_score[idx]
    grp = np.array([g for _, g, _ in rows])
    return {groups[g][0] + "...": {"accuracy": float(won[grp == g].mean()), "pairs": int((grp == g).sum())}
            for g in sorted(set(grp.tolist()))}


# ----------------------------------------------------------------------------------------- encoding
def encode(cfg: RetrievalConfig, records: list[Record]) -> tuple[np.ndarray, np.ndarray, str, Any]:
    from evaluator.encode import Encoder, ModelSpec, load_model

    loaded = load_model(ModelSpec(cfg.model, cfg.pretrained, cfg.checkpoint))
    enc = Encoder(loaded.backbone)
    imgs, txts = [], []
    progress = Progress("encode", len(records), unit="pairs", interval_s=cfg.progress_interval_s)
    for s in range(0, len(records), cfg.batch_size):
        batch = records[s:s + cfg.batch_size]
        imgs.append(enc.images([Image.open(io.BytesIO(r.jpeg)).convert("RGB") for r in batch]))
        txts.append(enc.texts([r.meta["captions"][0]["text"] for r in batch]))
        progress.update(len(batch))
    progress.finish()
    return np.concatenate(imgs), np.concatenate(txts), str(loaded.checkpoint or cfg.pretrained), enc


def _batched(encode_texts, batch_size: int):
    return lambda texts: np.concatenate([encode_texts(texts[s:s + batch_size])
                                         for s in range(0, len(texts), batch_size)])


def run(cfg: RetrievalConfig) -> dict[str, Any]:
    records, backgrounds = read_records(cfg.captions, cfg.images)
    result: dict[str, Any] = {"world": cfg.captions, "images": len(records), "caption": "first per image"}
    if cfg.checkpoint or cfg.pretrained:
        image_feats, text_feats, source, enc = encode(cfg, records)
        result.update(model=cfg.model, weights=source, **retrieval_metrics(image_feats, text_feats))
        if cfg.swap_words:
            from trainer.negatives import WordSwapper, parse_groups

            groups = parse_groups(cfg.swap_words)
            captions = [r.meta["captions"][0]["text"] for r in records]
            swapper = WordSwapper(groups)
            swaps = [swapper.all_swaps(c) for c in captions]
            result["swap_accuracy"] = swap_accuracy(image_feats, text_feats, swaps,
                                                    _batched(enc.texts, cfg.batch_size), groups)
    if cfg.ceiling:
        progress = Progress("ceiling", len(records), unit="images", interval_s=cfg.progress_interval_s)
        result["ceiling"] = ceiling(consistency_matrix(records, backgrounds, progress))
        progress.finish()
    if cfg.output:
        storage.write_json(storage.resolve(cfg.output), result)
    return result
