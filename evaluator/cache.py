"""An embedding cache in object storage, keyed by (model fingerprint, image, crop box) and by text.

Layout under the cache URI: ``{backbone fingerprint}/part-{digest}.npz``, each part holding ``keys``
(str) and ``embeddings`` (float32) for one encoded batch, written atomically by the worker that encoded
it.  An image's key is the digest of its URI, file size, modification time and crop box, so a changed
or regenerated image is a miss, never a stale hit; a text's key is the digest of the text (the backbone
fingerprint already pins the tokenizer).  A second head, a rerun or another run with the same backbone
therefore encodes nothing again.
"""
from __future__ import annotations

import hashlib
import io
import json
from typing import Iterable

import numpy as np

from cluster import storage
from evaluator.genecis_data import Item


def image_key(uri: str, stat: tuple[int, int], item: Item) -> str:
    raw = json.dumps(["image", uri, list(stat), list(item.bbox) if item.bbox is not None else None])
    return hashlib.sha1(raw.encode()).hexdigest()


def text_key(text: str) -> str:
    return hashlib.sha1(json.dumps(["text", text]).encode()).hexdigest()


def _folder(cache_uri: str, fingerprint: str) -> storage.Location:
    return storage.resolve(cache_uri).child(fingerprint[:32])


def write_part(cache_uri: str, fingerprint: str, keys: list[str], embeddings: np.ndarray) -> None:
    """One part object (keys + embeddings), named by the digest of its keys, written atomically."""
    if not keys:
        return
    buf = io.BytesIO()
    np.savez(buf, keys=np.asarray(keys), embeddings=np.asarray(embeddings, dtype=np.float32))
    name = "part-" + hashlib.sha1("\n".join(keys).encode()).hexdigest()[:24] + ".npz"
    storage.write_bytes_atomic(_folder(cache_uri, fingerprint).child(name), buf.getvalue())


def read_cache(cache_uri: str, fingerprint: str, wanted: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Every cached embedding of this backbone (only ``wanted`` keys when given)."""
    wanted_set = set(wanted) if wanted is not None else None
    found: dict[str, np.ndarray] = {}
    for loc in storage.list_files(_folder(cache_uri, fingerprint), suffix=".npz"):
        with np.load(io.BytesIO(storage.read_bytes(loc))) as part:
            for key, emb in zip(part["keys"].tolist(), part["embeddings"]):
                if wanted_set is None or key in wanted_set:
                    found[key] = emb
    return found
