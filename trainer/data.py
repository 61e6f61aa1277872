"""The data path, Ray-free: images by key in webdataset tars, training rows, decode + preprocess.

* :func:`index_tar` reads one tar's headers once and yields ``(key, offset, size)`` of its image
  members; :class:`ImageIndex` maps key → (shard, offset, size) and reads one image as a byte range
  (local or ``s3://``).  Tars are the world's ``shards/NNNNN.tar`` or an img2dataset folder's ``NNNNN.tar``.
* A triplet row names its images by ``*_key`` and ``*_url``; :func:`image_key` resolves one to a key of
  the index: the key itself when the index has it (img2dataset, or a miner run on the world's ``index/``),
  else the stem of the URL (the world's ``images/KEY.jpg``, when the miner read ``captions.tsv`` and its
  keys are caption rows).  Two caption rows of one image resolve to the same image key, so a mined
  distractor that *is* the target image is detected by comparing resolved keys.
* :func:`plan_rows` lays out the rows of every epoch in a seeded order; a resumed run starts at the
  saved position, so mid-epoch resume skips what was consumed.
* :class:`DecodeTriplets` / :class:`DecodeCaptions` turn batches of planned rows into model inputs;
  a missing image or an undecodable one is a counted skip (the row is dropped and its reason counted).
"""
from __future__ import annotations

import io
import logging
import posixpath
import tarfile
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from cluster import storage
from trainer.negatives import WordSwapper

log = logging.getLogger("genecis_ray.trainer")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
INDEX_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.int32()), ("offset", pa.int64()),
                          ("size", pa.int64())])
TRIPLET_COLUMNS = ("ref_key", "ref_url", "target_key", "target_url", "distractor_key", "distractor_url",
                   "condition")


class DataError(RuntimeError):
    """Unusable training input (no tars, no rows, too many skips), naming the URI or the counts."""


# ---------------------------------------------------------------------------------------------- tars
def find_tars(images_uri: str) -> list[str]:
    """The webdataset tars of an image root: ``{root}/shards/*.tar`` (the world) or ``{root}/*.tar``."""
    root = storage.require_input(images_uri)
    for loc in (root.child("shards"), root):
        tars = [f.uri for f in storage.list_files(loc, ".tar")
                if posixpath.dirname(f.path.replace("\\", "/")) == loc.path.replace("\\", "/")]
        if tars:
            return tars
    raise DataError(f"no webdataset .tar shards under {images_uri} (looked in shards/ and the root)")


def member_key(name: str) -> tuple[str, str]:
    """webdataset key and extension of a tar member: ``dir/000123.jpg`` → (``000123``, ``.jpg``)."""
    base = posixpath.basename(name)
    stem, dot, ext = base.partition(".")
    return stem, (dot + ext).lower()


def index_tar(uri: str) -> pa.Table:
    """``key, offset, size`` of every image member of one tar (reads the headers, streams the data)."""
    loc = storage.resolve(uri)
    keys, offsets, sizes = [], [], []
    last_was_image = False
    with loc.fs.open_input_stream(loc.path) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        try:
            for member in tar:
                key, ext = member_key(member.name)
                last_was_image = member.isfile() and ext in IMAGE_EXTS
                if last_was_image:
                    keys.append(key)
                    offsets.append(member.offset_data)
                    sizes.append(member.size)
        except (tarfile.ReadError, EOFError) as err:
            # A truncated shard: the data ran out inside the last member read, the ones before it are
            # whole.  Rows naming a lost member become counted missing_image skips downstream.
            lost = None
            if last_was_image:
                lost, _, _ = keys.pop(), offsets.pop(), sizes.pop()
            log.warning("%s is truncated (%s): indexed its %d complete image members%s", uri, err, len(keys),
                        f", dropped the incomplete {lost}" if lost else "")
    return pa.table({"key": pa.array(keys, pa.string()), "offset": pa.array(offsets, pa.int64()),
                     "size": pa.array(sizes, pa.int64())})


def build_index(tars: list[str], tables: list[pa.Table]) -> pa.Table:
    """One index table from per-tar tables (``shard`` = position in ``tars``); a key in two tars keeps
    its first occurrence."""
    parts = [t.append_column("shard", pa.array(np.full(t.num_rows, i, np.int32))) for i, t in enumerate(tables)]
    table = pa.concat_tables(parts).select(INDEX_SCHEMA.names) if parts else INDEX_SCHEMA.empty_table()
    if table.num_rows == 0:
        raise DataError(f"no image members in {len(tars)} tar(s), e.g. {tars[:1]}")
    _, first = np.unique(table["key"].to_numpy(zero_copy_only=False), return_index=True)
    return table.take(pa.array(np.sort(first)))


def write_index(uri: str, tars: list[str], table: pa.Table) -> None:
    loc = storage.resolve(uri)
    buf = pa.BufferOutputStream()
    meta = {b"tars": "\n".join(tars).encode()}
    pq.write_table(table.replace_schema_metadata(meta), buf)
    storage.write_bytes_atomic(loc, buf.getvalue().to_pybytes())


def read_index(uri: str) -> tuple[list[str], pa.Table]:
    loc = storage.resolve(uri)
    table = pq.read_table(io.BytesIO(storage.read_bytes(loc)))
    tars = table.schema.metadata[b"tars"].decode().split("\n")
    return tars, table


class ImageIndex:
    """key → (tar, offset, size), reading images as byte ranges; file handles are opened lazily."""

    def __init__(self, tars: list[str], table: pa.Table):
        self.tars = tars
        keys = table["key"].to_pylist()
        self._pos = {k: i for i, k in enumerate(keys)}
        self._shard = table["shard"].to_numpy()
        self._offset = table["offset"].to_numpy()
        self._size = table["size"].to_numpy()
        self._files: dict[int, Any] = {}

    @classmethod
    def load(cls, uri: str) -> "ImageIndex":
        return cls(*read_index(uri))

    def __contains__(self, key: str) -> bool:
        return key in self._pos

    def __len__(self) -> int:
        return len(self._pos)

    def read(self, key: str) -> bytes:
        i = self._pos[key]
        shard = int(self._shard[i])
        handle = self._files.get(shard)
        if handle is None:
            loc = storage.resolve(self.tars[shard])
            handle = self._files[shard] = loc.fs.open_input_file(loc.path)
        data = handle.read_at(int(self._size[i]), int(self._offset[i]))
        if len(data) != int(self._size[i]):
            raise OSError(f"short read of {key} in {self.tars[shard]}")
        return bytes(data)


def image_key(key: str | None, url: str | None, index: ImageIndex) -> str | None:
    """The index key of an image named by a row's key and URL (see module doc), or None."""
    if key and key in index:
        return key
    if url:
        stem = member_key(url.rsplit("?", 1)[0])[0]
        if stem in index:
            return stem
    return None


# ---------------------------------------------------------------------------------------------- rows
def parquet_files(uri: str) -> list[storage.Location]:
    """Every ``*.parquet`` under a folder (recursive; underscore folders such as ``_stats`` excluded)."""
    root = storage.require_input(uri)
    return [f for f in storage.list_files(root, ".parquet") if "/_" not in f.path[len(root.path):]]


def read_parquet_folder(uri: str, columns: list[str]) -> pa.Table:
    """Every ``*.parquet`` under a folder (see :func:`parquet_files`), ``columns`` only."""
    files = parquet_files(uri)
    if not files:
        raise DataError(f"no Parquet files under {uri}")
    tables = []
    for f in files:
        with f.fs.open_input_file(f.path) as src:
            table = pq.read_table(src)
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise DataError(f"{f.uri} lacks column(s) {missing}; has {table.column_names}")
        tables.append(table.select(columns))
    return pa.concat_tables(tables)


def caption_root(captions_uri: str) -> str:
    """Where the ``key, caption`` Parquet lives: the world's ``index/`` when given the world root."""
    loc = storage.require_input(captions_uri)
    if storage.exists(loc.child("index")) and storage.exists(loc.child("shards")):
        return loc.child("index").uri
    return captions_uri


def plan_rows(num_rows: int, start: int, count: int, seed: int) -> np.ndarray:
    """Positions ``start .. start+count`` of the endless sequence "epoch 0 shuffled, epoch 1 shuffled,
    …" as row numbers; epoch *e*'s order depends only on (seed, e)."""
    if num_rows <= 0:
        raise DataError("no training rows")
    out = np.empty(count, np.int64)
    pos, filled = start, 0
    while filled < count:
        epoch, within = divmod(pos, num_rows)
        order = np.random.default_rng([seed, epoch]).permutation(num_rows)
        take = min(count - filled, num_rows - within)
        out[filled:filled + take] = order[within:within + take]
        filled += take
        pos += take
    return out


# -------------------------------------------------------------------------------------------- decode
def decode_image(data: bytes, transform: Callable) -> torch.Tensor:
    """Decode (PIL) and preprocess one image; raises ValueError for an unreadable one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"undecodable image: {err}") from err
    return transform(rgb)


def _seeded_transform(transform: Callable, seed: int, position: int, which: int) -> Callable:
    def run(img):
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only (what fork_rng saves and the transforms draw from): torch.manual_seed
            # would also queue a lazy CUDA seed, which records a Python stack per call (~20 % of decoding).
            torch.random.default_generator.manual_seed((seed * 1_000_003 + position * 7 + which) % (2 ** 63))
            return transform(img)
    return run


def _report(counter, positions: np.ndarray, skipped: dict[int, str]) -> None:
    """Tell the run state how far decoding got and which rows it skipped (fire and forget)."""
    if counter is None or len(positions) == 0:
        return
    furthest = int(np.max(positions))
    if hasattr(counter.add, "remote"):
        counter.add.remote(furthest, skipped)
    else:
        counter.add(furthest, skipped)


class _Decoder:
    def __init__(self, index_uri: str, transform: Callable, tokenizer: Callable, seed: int,
                 image_size: int, context_length: int, counter=None):
        self.index = ImageIndex.load(index_uri)
        self.transform, self.tokenizer, self.seed, self.counter = transform, tokenizer, seed, counter
        self.image_shape = (3, image_size, image_size)
        self.context_length = context_length

    def images(self, images: list[torch.Tensor]) -> np.ndarray:
        if not images:
            return np.zeros((0, *self.image_shape), np.float32)
        return torch.stack(images).numpy()

    def tokens(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.context_length), np.int64)
        return self.tokenizer(texts).numpy().astype(np.int64)

    def _image(self, key: str, position: int, which: int) -> torch.Tensor:
        try:
            data = self.index.read(key)
        except OSError as err:
            raise ValueError(f"unreadable tar member {key}: {err}") from err
        return decode_image(data, _seeded_transform(self.transform, self.seed, position, which))


def reference_is_negative(batch: dict[str, np.ndarray], i: int, kinds: tuple[str, ...]) -> bool:
    """Whether row ``i``'s reference image is a negative of its own query: its kind is one of ``kinds``
    (change kinds: the reference lacks the condition) and it is not the target image."""
    if "kind" not in batch:
        raise DataError("reference negatives need the triplets' 'kind' column")
    return str(batch["kind"][i]) in kinds and str(batch["ref"][i]) != str(batch["target"][i])


class DecodeTriplets(_Decoder):
    """Planned triplet rows (``position, ref, target, distractor, condition``: resolved image keys) →
    ``ref, text, target[, distractor, distractor_valid][, reference_valid], position``; bad rows dropped and
    counted.  A distractor that is missing or is the target image gets ``distractor_valid`` False (never a
    negative); ``reference_valid`` (with ``reference_kinds``) is :func:`reference_is_negative` per row."""

    def __init__(self, index_uri: str, transform: Callable, tokenizer: Callable, seed: int,
                 image_size: int, context_length: int, with_distractor: bool = False,
                 reference_kinds: tuple[str, ...] = (), counter=None):
        super().__init__(index_uri, transform, tokenizer, seed, image_size, context_length, counter)
        self.with_distractor = with_distractor
        self.reference_kinds = tuple(reference_kinds)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"ref": [], "target": [], "distractor": [], "condition": [], "position": [],
                                "distractor_valid": [], "reference_valid": []}
        skipped: dict[int, str] = {}
        for i, pos in enumerate(batch["position"]):
            pos = int(pos)
            ref, tgt, dis = batch["ref"][i], batch["target"][i], batch["distractor"][i]
            if not ref or not tgt:
                skipped[pos] = "missing_image"
                continue
            try:
                images = [self._image(ref, pos, 0), self._image(tgt, pos, 1)]
                if self.with_distractor:
                    images.append(self._image(dis, pos, 2) if dis else torch.zeros_like(images[1]))
            except ValueError:
                skipped[pos] = "corrupt_image"
                continue
            out["ref"].append(images[0])
            out["target"].append(images[1])
            if self.with_distractor:
                out["distractor"].append(images[2])
                out["distractor_valid"].append(bool(dis) and dis != tgt)
            out["condition"].append(str(batch["condition"][i]))
            out["position"].append(pos)
            if self.reference_kinds:
                out["reference_valid"].append(reference_is_negative(batch, i, self.reference_kinds))
        _report(self.counter, batch["position"], skipped)
        return self._stack(out)

    def _stack(self, out: dict[str, list]) -> dict[str, np.ndarray]:
        result = {
            "ref": self.images(out["ref"]),
            "target": self.images(out["target"]),
            "text": self.tokens(out["condition"]),
            "position": np.asarray(out["position"], np.int64),
        }
        if self.with_distractor:
            result["distractor"] = self.images(out["distractor"])
            result["distractor_valid"] = np.asarray(out["distractor_valid"], np.bool_)
        if self.reference_kinds:
            result["reference_valid"] = np.asarray(out["reference_valid"], np.bool_)
        return result


class DecodeCaptions(_Decoder):
    """Planned caption rows (``position, key, caption``) → ``images, tokens, position``; with
    ``swap_groups``, also ``neg_tokens, neg_valid``: each caption with one group word swapped
    (:mod:`trainer.negatives`), drawn from (seed, position); ``neg_valid`` is False where a caption has no
    group word (its row then repeats the caption and the loss ignores it)."""

    def __init__(self, index_uri: str, transform: Callable, tokenizer: Callable, seed: int,
                 image_size: int, context_length: int, swap_groups: list[tuple[str, ...]] | None = None,
                 counter=None):
        super().__init__(index_uri, transform, tokenizer, seed, image_size, context_length, counter)
        self.swapper = WordSwapper(swap_groups) if swap_groups else None

    def negatives(self, captions: list[str], positions: list[int]) -> dict[str, np.ndarray]:
        negs, valid = [], []
        for caption, pos in zip(captions, positions):
            neg = self.swapper(caption, np.random.default_rng([self.seed, pos, 3]))
            negs.append(caption if neg is None else neg)
            valid.append(neg is not None)
        return {"neg_tokens": self.tokens(negs), "neg_valid": np.asarray(valid, np.bool_)}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images, captions, positions = [], [], []
        skipped: dict[int, str] = {}
        for i, pos in enumerate(batch["position"]):
            key = batch["key"][i]
            if not key:
                skipped[int(pos)] = "missing_image"
                continue
            try:
                images.append(self._image(key, int(pos), 0))
            except ValueError:
                skipped[int(pos)] = "corrupt_image"
                continue
            captions.append(str(batch["caption"][i]))
            positions.append(int(pos))
        _report(self.counter, batch["position"], skipped)
        out = {"images": self.images(images), "tokens": self.tokens(captions),
               "position": np.asarray(positions, np.int64)}
        if self.swapper is not None:
            out.update(self.negatives(captions, positions))
        return out


# ------------------------------------------------------------------------------------ row resolution
def resolve_triplets(table: pa.Table, index: ImageIndex) -> pa.Table:
    """Triplet rows → ``ref, target, distractor, condition`` (and ``kind`` when the rows have it) as image
    keys ('' = not found)."""
    cols = {c: table[c].to_pylist() for c in TRIPLET_COLUMNS}
    out = {"ref": [], "target": [], "distractor": [], "condition": cols["condition"]}
    if "kind" in table.column_names:
        out["kind"] = table["kind"].to_pylist()
    for i in range(table.num_rows):
        for role in ("ref", "target", "distractor"):
            out[role].append(image_key(cols[f"{role}_key"][i], cols[f"{role}_url"][i], index) or "")
    return pa.table(out)


def drop_missing(resolved: pa.Table, columns: tuple[str, ...]) -> tuple[pa.Table, int]:
    """Rows whose required images all resolved, and how many were dropped (counted as missing_image)."""
    keep = None
    for col in columns:
        ok = pc.not_equal(resolved[col], "")
        keep = ok if keep is None else pc.and_(keep, ok)
    kept = resolved.filter(keep)
    return kept, resolved.num_rows - kept.num_rows


def resolve_captions(table: pa.Table, index: ImageIndex) -> pa.Table:
    keys = [image_key(k, u, index) or "" for k, u in
            zip(table["key"].to_pylist(), (table["url"].to_pylist() if "url" in table.column_names
                                            else [None] * table.num_rows))]
    return pa.table({"key": keys, "caption": table["caption"]})


def missing_fraction(resolved: pa.Table, column: str) -> float:
    if resolved.num_rows == 0:
        return 1.0
    return float(pc.sum(pc.equal(resolved[column], "")).as_py() or 0) / resolved.num_rows


def iter_planned(rows: pa.Table, plan: np.ndarray, start: int, batch: int) -> Iterator[pa.Table]:
    """The planned rows (with their plan ``position``) in chunks of ``batch`` (for building a dataset)."""
    for lo in range(0, len(plan), batch):
        ids = plan[lo:lo + batch]
        chunk = rows.take(pa.array(ids))
        yield chunk.append_column("position", pa.array(np.arange(start + lo, start + lo + len(ids)), pa.int64()))
