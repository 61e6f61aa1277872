"""How much two images' captions say alike, for choosing reference-like change targets; Ray-free.

GeneCIS draws a change triplet's target uniformly from the captions that keep the reference's subject and
state another object (or value).  With ``MinerConfig.similar_targets = K`` the miner instead keeps, of the
first K valid target draws, the one whose image shares the most *features* with the reference's image —
a change condition then reads "the reference, but with X" rather than "some other picture with X".

An image's features are what its captions' mining rows state: every entity name (relation subjects and
objects, attribute nouns) and every (noun, attribute value) pair.  Images are the distinct ``url`` values
of the corpus (a procedural world has two captions per image; CC3M one), so a candidate that is another
caption of the reference's own picture is recognisable and refused.

All arrays are integers; ``shared`` is vectorised over pairs (one ``searchsorted`` per reference feature).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from miner.pair_index import starts


@dataclass(frozen=True, eq=False)
class ImageFeatures:
    """Per image, the sorted codes of its features; per caption, its image."""

    caption_ids: NDArray[np.int64]  # sorted caption ids
    caption_image: NDArray[np.int64]  # image index of each caption id above
    start: NDArray[np.int64]  # per image index: range into ``keys``
    keys: NDArray[np.int64]  # sorted, unique: image index * n_features + feature code
    n_features: int

    @classmethod
    def build(cls, caption_ids: NDArray[np.integer], caption_image: NDArray[np.integer],
              rows: list[tuple[NDArray[np.integer], NDArray[np.integer]]], n_features: int) -> "ImageFeatures":
        """``caption_ids``/``caption_image``: each caption's image index (any order, ids unique);
        ``rows``: (caption id, feature code) arrays, codes in [0, n_features)."""
        caption_ids = np.asarray(caption_ids, dtype=np.int64)
        order = np.argsort(caption_ids, kind="stable")
        ids, images = caption_ids[order], np.asarray(caption_image, dtype=np.int64)[order]
        if len(ids) and (ids[1:] == ids[:-1]).any():
            raise ValueError("caption ids must be unique")
        n_images = int(images.max()) + 1 if len(images) else 0
        keys = [np.zeros(0, np.int64)]
        for cap, feat in rows:
            cap, feat = np.asarray(cap, dtype=np.int64), np.asarray(feat, dtype=np.int64)
            if len(feat) and (feat.min() < 0 or feat.max() >= n_features):
                raise ValueError(f"feature codes must lie in [0, {n_features})")
            img = _lookup(ids, images, cap)
            if (img < 0).any():
                missing = int(cap[np.flatnonzero(img < 0)[0]])
                raise ValueError(f"caption id {missing} of a mining row has no image")
            keys.append(img * n_features + feat)
        keys_all = np.unique(np.concatenate(keys))
        counts = np.bincount(keys_all // max(n_features, 1), minlength=n_images) if n_features else \
            np.zeros(n_images, np.int64)
        return cls(ids, images, starts(counts), keys_all, int(n_features))

    def image_of(self, caption_id: NDArray[np.integer]) -> NDArray[np.int64]:
        """Image index of each caption id (-1 for an id this corpus does not have)."""
        return _lookup(self.caption_ids, self.caption_image, np.asarray(caption_id, dtype=np.int64))

    def shared(self, image_a: NDArray[np.integer], image_b: NDArray[np.integer]) -> NDArray[np.int64]:
        """Number of features images ``a[i]`` and ``b[i]`` have in common, per pair."""
        a, b = np.asarray(image_a, dtype=np.int64), np.asarray(image_b, dtype=np.int64)
        lo, hi = self.start[a], self.start[a + 1]
        lens = hi - lo
        pair = np.repeat(np.arange(len(a)), lens)
        pos = np.repeat(lo - starts(lens)[:-1], lens) + np.arange(int(lens.sum()))  # every feature of a[i]
        probe = b[pair] * self.n_features + self.keys[pos] % max(self.n_features, 1)
        at = np.minimum(np.searchsorted(self.keys, probe), max(len(self.keys) - 1, 0))
        hit = self.keys[at] == probe if len(self.keys) else np.zeros(len(probe), bool)
        return np.bincount(pair, weights=hit, minlength=len(a)).astype(np.int64)


def _lookup(sorted_ids: NDArray[np.int64], values: NDArray[np.int64], query: NDArray[np.int64]) -> NDArray[np.int64]:
    if not len(sorted_ids):
        return np.full(len(query), -1, np.int64)
    at = np.minimum(np.searchsorted(sorted_ids, query), len(sorted_ids) - 1)
    return np.where(sorted_ids[at] == query, values[at], -1)
