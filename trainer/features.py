"""The frozen-backbone feature cache, Ray-free.

With ``--finetune frozen`` the backbone never changes, so each distinct image and each distinct
condition text is encoded **once** and the Combiner trains on the cached raw features: no JPEG
decoding and no backbone forward per step.

* :func:`distinct_items` lists what a run needs: every image key its rows name (ref, target, and the
  distractor when it is used as a negative) and every condition string, as ``kind, item`` rows.
* :class:`EncodeItems` (a Ray Data actor; the backbone is loaded in ``__init__``) turns batches of those
  rows into ``kind, item, feature, reason``: the raw (unnormalised) feature, or ``reason`` =
  ``missing_image`` / ``corrupt_image`` for an image that cannot be read (its feature is zeros and is
  never used).  Images go through the **eval** transform (short-side resize, centre crop): a cached
  feature is one view of the image, so a cached run has no per-step augmentation — the one difference
  from ``--feature-cache false``, which decodes, augments (GeneCIS's RandomResizedCrop) and encodes
  every step.
* :class:`FeatureTable` holds the usable features by item; :class:`LookupFeatures` (a Ray Data actor)
  turns planned triplet rows into ``ref, text, target[, distractor, distractor_valid], position``
  feature arrays for the training workers.

The cache lives in ``{run}/data/features/`` (Parquet parts, then ``_manifest.json`` last, see
``cluster.stage``), so a resumed run reuses it and a run killed while encoding encodes again.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from trainer.data import ImageIndex, _report, decode_image, read_parquet_folder, reference_is_negative

KINDS = ("image", "text")
COLUMNS = ("kind", "item", "feature", "reason")


def distinct_items(rows: pa.Table, with_distractor: bool) -> pa.Table:
    """``kind, item`` rows: the distinct image keys of ``rows`` (resolved triplets) and their distinct
    conditions, each sorted (so the encode plan does not depend on row order)."""
    roles = ("ref", "target") + (("distractor",) if with_distractor else ())
    keys = set()
    for role in roles:
        keys.update(pc.unique(rows[role]).to_pylist())
    keys.discard("")
    texts = sorted(set(pc.unique(rows["condition"]).to_pylist()))
    images = sorted(keys)
    return pa.table({"kind": ["image"] * len(images) + ["text"] * len(texts), "item": images + texts})


def feature_column(features: np.ndarray) -> pa.FixedSizeListArray:
    """An (N, D) float32 array as a fixed-size-list column (plain Parquet, readable without Ray)."""
    flat = pa.array(np.ascontiguousarray(features, np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, features.shape[1])


def column_matrix(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """A fixed-size-list column back to an (N, D) float32 array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


class EncodeItems:
    """``kind, item`` batches → ``kind, item, feature, reason`` (raw features of one frozen backbone).

    ``load`` returns the :class:`trainer.model.Backbone` to use (called once, in the actor); images are
    read by key from ``index_uri`` and preprocessed with the backbone's eval transform."""

    def __init__(self, load, index_uri: str, device: str = "cpu", dtype: torch.dtype | None = None):
        self.backbone = load()
        self.backbone.model.to(device).eval()
        self.device, self.dtype = torch.device(device), dtype
        self.index = ImageIndex.load(index_uri)
        self.dim = int(self.backbone.embed_dim)

    def _images(self, keys: list[str]) -> tuple[list[torch.Tensor], list[str]]:
        pixels, reasons = [], []
        for key in keys:
            if key not in self.index:
                pixels.append(None)
                reasons.append("missing_image")
                continue
            try:
                pixels.append(decode_image(self.index.read(key), self.backbone.preprocess_eval))
                reasons.append("")
            except (ValueError, OSError):
                pixels.append(None)
                reasons.append("corrupt_image")
        return pixels, reasons

    @torch.no_grad()
    def _encode(self, fn, inputs: torch.Tensor) -> np.ndarray:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return fn(inputs.to(self.device)).float().cpu().numpy()

    def __call__(self, batch: pa.Table) -> pa.Table:
        kinds, items = batch["kind"].to_pylist(), batch["item"].to_pylist()
        feats = np.zeros((len(items), self.dim), np.float32)
        reasons = [""] * len(items)
        img_rows = [i for i, k in enumerate(kinds) if k == "image"]
        txt_rows = [i for i, k in enumerate(kinds) if k == "text"]
        if img_rows:
            pixels, why = self._images([items[i] for i in img_rows])
            ok = [j for j, p in enumerate(pixels) if p is not None]
            for j, reason in enumerate(why):
                reasons[img_rows[j]] = reason
            if ok:
                out = self._encode(self.backbone.encode_image, torch.stack([pixels[j] for j in ok]))
                feats[[img_rows[j] for j in ok]] = out
        if txt_rows:
            tokens = self.backbone.tokenize([items[i] for i in txt_rows])
            feats[txt_rows] = self._encode(self.backbone.encode_text, tokens)
        return pa.table({"kind": kinds, "item": items, "feature": feature_column(feats), "reason": reasons})


def failed_items(uri: str) -> dict[str, str]:
    """``item -> reason`` of the images the cache could not encode (read from its Parquet parts)."""
    table = read_parquet_folder(uri, ["item", "reason"])
    bad = table.filter(pc.not_equal(table["reason"], ""))
    return dict(zip(bad["item"].to_pylist(), bad["reason"].to_pylist()))


class FeatureTable:
    """The usable cached features: image key → row and condition → row, one (N, D) matrix per kind."""

    def __init__(self, table: pa.Table, dim: int):
        table = table.filter(pc.equal(table["reason"], ""))
        self.dim = dim
        self._pos: dict[str, dict[str, int]] = {}
        self._mat: dict[str, np.ndarray] = {}
        for kind in KINDS:
            part = table.filter(pc.equal(table["kind"], kind))
            self._pos[kind] = {item: i for i, item in enumerate(part["item"].to_pylist())}
            self._mat[kind] = column_matrix(part["feature"], dim) if part.num_rows else np.zeros((0, dim),
                                                                                                  np.float32)

    @classmethod
    def load(cls, uri: str, dim: int) -> "FeatureTable":
        return cls(read_parquet_folder(uri, list(COLUMNS)), dim)

    def has(self, kind: str, item: str) -> bool:
        return item in self._pos[kind]

    def get(self, kind: str, items: list[str]) -> np.ndarray:
        """The features of ``items`` (KeyError for one not in the cache)."""
        pos = self._pos[kind]
        return self._mat[kind][[pos[i] for i in items]] if items else np.zeros((0, self.dim), np.float32)


class LookupFeatures:
    """Planned triplet rows (``position, ref, target, distractor, condition``) → cached features
    ``ref, text, target[, distractor, distractor_valid][, reference_valid], position``.

    A row whose image is not in the cache is a counted skip (the driver drops those before planning,
    so this only happens when the cache and the rows disagree)."""

    def __init__(self, features_uri: str, dim: int, with_distractor: bool = False,
                 reference_kinds: tuple[str, ...] = (), counter: Any = None):
        self.table = FeatureTable.load(features_uri, dim)
        self.with_distractor, self.counter = with_distractor, counter
        self.reference_kinds = tuple(reference_kinds)

    def _usable(self, ref: str, tgt: str, dis: str, cond: str) -> str:
        images = [ref, tgt] + ([dis] if self.with_distractor and dis else [])
        if not ref or not tgt or not all(self.table.has("image", k) for k in images):
            return "missing_image"
        if not self.table.has("text", cond):
            return "missing_text"
        return ""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep: list[int] = []
        skipped: dict[int, str] = {}
        for i, pos in enumerate(batch["position"]):
            reason = self._usable(str(batch["ref"][i]), str(batch["target"][i]), str(batch["distractor"][i]),
                                  str(batch["condition"][i]))
            if reason:
                skipped[int(pos)] = reason
            else:
                keep.append(i)
        _report(self.counter, batch["position"], skipped)
        col = {k: [str(batch[k][i]) for i in keep] for k in ("ref", "target", "distractor", "condition")}
        out = {"ref": self.table.get("image", col["ref"]), "text": self.table.get("text", col["condition"]),
               "target": self.table.get("image", col["target"]),
               "position": np.asarray([int(batch["position"][i]) for i in keep], np.int64)}
        if self.with_distractor:
            dis = [d if d else t for d, t in zip(col["distractor"], col["target"])]
            out["distractor"] = self.table.get("image", dis)
            out["distractor_valid"] = np.asarray([bool(d) and d != t for d, t in
                                                  zip(col["distractor"], col["target"])], np.bool_)
        if self.reference_kinds:
            out["reference_valid"] = np.asarray([reference_is_negative(batch, i, self.reference_kinds)
                                                 for i in keep], np.bool_)
        return out
