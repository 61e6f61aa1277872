"""Generate a procedural image-caption world, local or ``s3://``, as the corpora the miner and trainer read.

Layout under ``--output`` (keys are 9-digit zero-padded scene ids, img2dataset style)::

    images/KEY.jpg               one object per image
    shards/SSSSS.tar             webdataset shard: KEY.jpg, KEY.json (scene + captions + url), KEY.txt
    index/SSSSS.parquet          key, caption, url: one row per caption
    _stats/SSSSS.json            per shard counts and checksums, written LAST (resume marker)
    captions.tsv                 CC3M-style ``caption<TAB>url``, one line per caption, urls = image URIs
    config.json                  the output-defining config
    _world.json                  manifest, written last: counts, spec, vocabulary, seed, timings, images/s

Scene ``i`` depends only on ``(seed, i, spec)`` and its captions on ``(seed, STREAM_CAPTION, i)``, and
every file is encoded deterministically (fixed tar metadata, fixed JPEG settings, sorted JSON), so the
data files are byte-identical for any number of workers; only ``_world.json``'s timings differ.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from cluster import stage, storage
from cluster.cli import run_cli
from cluster.progress import Progress, map_with_progress
from cluster.config import (ConfigMismatch, option, parse_config, pin_config, pinned_dict,  # noqa: F401
                            required, validate_fields)  # ConfigMismatch: re-exported for callers
from synthetic import captions as cap
from synthetic.look import LookConfig
from synthetic import scene as sc
from synthetic.render import encode_jpeg, render_scene

log = logging.getLogger("genecis_ray.synthetic.world")

TAR_MTIME = 946684800  # 2000-01-01: a fixed mtime so shards are byte-identical across runs
KEY_DIGITS = 9
MANIFEST = "_world.json"



@dataclass(frozen=True)
class WorldConfig(LookConfig):
    """Generate a synthetic image-caption world (images, webdataset shards, Parquet index, CC3M TSV)."""

    output: str = required("output root, local path or s3://bucket/prefix (the image URLs written in the "
                           "index and TSV point under it)", uri=True)
    images: int = option(10_000, "number of images (scenes 0 .. images-1)", min=0)
    seed: int = option(0, "world seed: scene i is a pure function of (seed, i)", min=0)
    captions_per_image: int = option(2, "captions per image (the first is KEY.txt)", min=1)
    caption_detail: float = option(0.0, "chance that a caption names every object with all its attributes "
                                        "and the background (0 = web-like captions only)", min=0.0, max=1.0)
    shard_size: int = option(1000, "images per shard (the unit of parallelism and resume)", min=1)
    workers: int = option(2, "worker processes (does not change any output byte)", runtime=True, min=1)
    progress_interval_s: float = option(5.0, "seconds between progress lines", runtime=True, min=0.1)
    write_images: bool = option(True, "also write images/KEY.jpg (one object per image)")

    def __post_init__(self) -> None:
        validate_fields(self)
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in 1..100")
        self.spec()  # validates the WorldSpec knobs

    def n_shards(self) -> int:
        return -(-self.images // self.shard_size)

    def shard_range(self, shard: int) -> tuple[int, int]:
        return shard * self.shard_size, min((shard + 1) * self.shard_size, self.images)


# ----------------------------------------------------------------------------------------- names
def key_of(scene_id: int) -> str:
    return f"{scene_id:0{KEY_DIGITS}d}"


def shard_name(shard: int, suffix: str) -> str:
    return f"{shard:05d}{suffix}"


def image_uri(out: storage.Location, key: str) -> str:
    """The URL written for an image: its absolute local path or ``s3://bucket/prefix/images/KEY.jpg``."""
    return out.child("images", f"{key}.jpg").uri


# ----------------------------------------------------------------------------------------- one sample
@dataclass
class Sample:
    key: str
    url: str
    jpeg: bytes
    record: dict[str, Any]  # KEY.json
    captions: list[str]


def scene_json(scene: sc.Scene) -> dict[str, Any]:
    """``scene.to_json()`` without ``dataclasses.asdict``'s deep copies (5x faster, the same dict)."""
    objects = [{"shape": o.shape, "colour": o.colour, "size": o.size, "pattern": o.pattern, "cell": list(o.cell),
                "box": list(o.box)} for o in scene.objects]
    return {"scene_id": scene.scene_id, "image_size": scene.image_size, "background": scene.background,
            "objects": objects, "relations": [list(r) for r in scene.relations]}


def make_sample(cfg: WorldConfig, spec: sc.WorldSpec, out: storage.Location, scene_id: int) -> Sample:
    scene = sc.sample_scene(cfg.seed, scene_id, spec)
    jpeg = encode_jpeg(render_scene(scene, cfg.texture), cfg.jpeg_quality)
    rng = np.random.default_rng((cfg.seed, sc.STREAM_CAPTION, scene_id))
    caps = cap.captions_for(scene, cfg.captions_per_image, rng, detail=cfg.caption_detail)
    key = key_of(scene_id)
    url = image_uri(out, key)
    record = {"key": key, "url": url, "seed": cfg.seed, "scene": scene_json(scene),
              "captions": [c.to_json() for c in caps]}
    return Sample(key, url, jpeg, record, [c.text for c in caps])


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def shard_tar(samples: Sequence[Sample]) -> bytes:
    """A webdataset shard: per sample KEY.jpg, KEY.json, KEY.txt in sorted order, fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in sorted(samples, key=lambda s: s.key):
            _tar_member(tar, f"{s.key}.jpg", s.jpeg)
            _tar_member(tar, f"{s.key}.json", dumps(s.record))
            _tar_member(tar, f"{s.key}.txt", s.captions[0].encode())
    return buf.getvalue()


INDEX_SCHEMA = pa.schema([("key", pa.string()), ("caption", pa.string()), ("url", pa.string())])


def shard_index(samples: Sequence[Sample]) -> bytes:
    """Parquet index of one shard (one row per caption), one row group, written deterministically."""
    rows = [(s.key, c, s.url) for s in samples for c in s.captions]
    table = pa.table({"key": [r[0] for r in rows], "caption": [r[1] for r in rows], "url": [r[2] for r in rows]},
                     schema=INDEX_SCHEMA)
    return stage.parquet_bytes(table, row_group_size=max(len(rows), 1))


# ----------------------------------------------------------------------------------------- one shard
def write_shard(cfg: WorldConfig, shard: int) -> dict[str, Any]:
    """Generate and write one shard (images, tar, index), then its stats marker; returns stats + timing."""
    t0 = time.perf_counter()
    out = storage.resolve(cfg.output)
    spec = cfg.spec()
    start, stop = cfg.shard_range(shard)
    samples = [make_sample(cfg, spec, out, i) for i in range(start, stop)]
    images = [(out.child("images", f"{s.key}.jpg"), s.jpeg) for s in samples] if cfg.write_images else []
    tar, index = shard_tar(samples), shard_index(samples)
    stats = {"shard": shard, "first_id": start, "stop_id": stop, "images": len(samples),
             "captions": sum(len(s.captions) for s in samples), "objects": sum(len(s.record["scene"]["objects"])
                                                                             for s in samples),
             "bytes": {"tar": len(tar), "index": len(index), "jpeg": sum(len(s.jpeg) for s in samples)},
             "sha256": {"tar": hashlib.sha256(tar).hexdigest(), "index": hashlib.sha256(index).hexdigest()}}
    data = [*images, (out.child("shards", shard_name(shard, ".tar")), tar),
            (out.child("index", shard_name(shard, ".parquet")), index)]
    stage.write_committed(data, out.child("_stats", shard_name(shard, ".json")), stats)
    return {**stats, "seconds": time.perf_counter() - t0}


def pending_shards(cfg: WorldConfig, out: storage.Location) -> list[int]:
    done = {loc.path.rsplit("/", 1)[-1] for loc in storage.list_files(out.child("_stats"), ".json")}
    return [s for s in range(cfg.n_shards()) if shard_name(s, ".json") not in done]


def _pool(workers: int) -> ProcessPoolExecutor:
    # forkserver: children never inherit an initialised S3 client from the driver (unsafe after fork)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["synthetic.world"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def generate(cfg: WorldConfig, shards: Sequence[int]) -> list[dict[str, Any]]:
    """Write the given shards, in-process for one worker, else over a process pool (a progress line per
    interval)."""
    total = sum(stop - start for start, stop in map(cfg.shard_range, shards))
    prog = Progress("world", total, "images", cfg.progress_interval_s, emit=log.info)
    jobs = [(cfg, s) for s in shards]
    if cfg.workers == 1 or len(shards) <= 1:
        return map_with_progress(write_shard, jobs, prog, _images)
    with _pool(min(cfg.workers, len(shards))) as pool:
        return map_with_progress(write_shard, jobs, prog, _images, pool)


def _images(stats: dict[str, Any]) -> tuple[int, int]:
    return stats["images"], 0


# ----------------------------------------------------------------------------------------- the run
def write_tsv(cfg: WorldConfig, out: storage.Location) -> int:
    """captions.tsv = every shard's index rows in order, as ``caption<TAB>url`` lines."""
    lines: list[str] = []
    for shard in range(cfg.n_shards()):
        loc = out.child("index", shard_name(shard, ".parquet"))
        with loc.fs.open_input_file(loc.path) as f:
            table = pq.read_table(f, columns=["caption", "url"])
        lines.extend(f"{c}\t{u}\n" for c, u in zip(table.column("caption").to_pylist(), table.column("url").to_pylist()))
    storage.write_bytes_atomic(out.child("captions.tsv"), "".join(lines).encode())
    return len(lines)


def vocabulary(cfg: WorldConfig) -> dict[str, Any]:
    return {"shapes": list(cfg.shapes), "colours": list(cfg.colours), "sizes": list(sc.SIZES),
            "patterns": list(sc.PATTERNS), "backgrounds": list(cfg.backgrounds), "relations": list(sc.RELATIONS),
            "attributes": {k: list(v) for k, v in sc.ATTRIBUTES.items()},
            "caption_words": {"size": cap.SIZE_WORDS, "pattern": cap.PATTERN_WORDS, "colour": cap.COLOUR_SYNONYMS,
                              "noun": cap.NOUN_SYNONYMS, "relation": cap.RELATION_PHRASES}}


def _totals(out: storage.Location) -> dict[str, int]:
    totals = {"images": 0, "captions": 0, "objects": 0, "shards": 0, "jpeg_bytes": 0, "tar_bytes": 0}
    for loc in storage.list_files(out.child("_stats"), ".json"):
        st = storage.read_json(loc)
        for k in ("images", "captions", "objects"):
            totals[k] += st[k]
        totals["shards"] += 1
        totals["jpeg_bytes"] += st["bytes"]["jpeg"]
        totals["tar_bytes"] += st["bytes"]["tar"]
    return totals


def run_world(cfg: WorldConfig) -> dict[str, Any]:
    """Generate (or finish) the world under ``cfg.output``; returns the manifest written to ``_world.json``."""
    t0 = time.perf_counter()
    out = storage.require_writable(cfg.output)
    pin_config(out, cfg, "world")
    todo = pending_shards(cfg, out)
    finished = stage.finished(out, MANIFEST)
    if not todo and finished is not None:  # a marker removed after the manifest: that shard is redone
        log.info("%s is complete: nothing to do", cfg.output)
        return finished
    log.info("generating %d of %d shards with %d worker(s)", len(todo), cfg.n_shards(), cfg.workers)
    t_gen = time.perf_counter()
    shard_stats = generate(cfg, todo)
    gen_s = time.perf_counter() - t_gen
    n_lines = write_tsv(cfg, out)
    made = sum(s["images"] for s in shard_stats)
    manifest = {"output": out.uri, "seed": cfg.seed, "config": pinned_dict(cfg), "workers": cfg.workers,
                "spec": asdict(cfg.spec()), "vocabulary": vocabulary(cfg), "counts": {**_totals(out), "tsv_lines": n_lines},
                "generated_shards": list(todo), "timings": {"generate_s": gen_s, "total_s": time.perf_counter() - t0,
                                                           "images_per_s": made / gen_s if gen_s > 0 else 0.0}}
    stage.write_manifest(out, manifest, MANIFEST)
    log.info("wrote %d images in %.2fs (%.0f images/s)", made, gen_s, manifest["timings"]["images_per_s"])
    return manifest


# ----------------------------------------------------------------------------------------- readers
def load_image(url_or_uri: str, root: str | None = None) -> Image.Image:
    """The RGB image at a URL from the index/TSV (local path, ``file://`` or ``s3://``), or a bare KEY under ``root``."""
    if root is not None and url_or_uri.isdigit():
        url_or_uri = storage.join_uri(root, "images", f"{url_or_uri}.jpg")
    img = Image.open(io.BytesIO(storage.read_bytes(storage.resolve(url_or_uri))))
    return img.convert("RGB")


def iter_webdataset(uri: str) -> Iterator[dict[str, Any]]:
    """Samples ``{"__key__", "jpg": bytes, "json": dict, "txt": str}`` of a shard or every shard under ``uri``."""
    for loc in storage.list_files(storage.resolve(uri), ".tar"):
        with loc.fs.open_input_stream(loc.path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            yield from _tar_samples(tar)


def _tar_samples(tar: tarfile.TarFile) -> Iterator[dict[str, Any]]:
    current: dict[str, Any] = {}
    for member in tar:
        key, _, ext = member.name.partition(".")
        if current and current["__key__"] != key:
            yield current
            current = {}
        data = tar.extractfile(member).read()
        current["__key__"] = key
        current[ext] = json.loads(data) if ext == "json" else data.decode() if ext == "txt" else data
    if current:
        yield current


# ----------------------------------------------------------------------------------------- CLI
def _main(argv: list[str]) -> int:
    cfg = parse_config(WorldConfig, argv, prog="python -m synthetic world")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest = run_world(cfg)
    print(json.dumps({"counts": manifest["counts"], "timings": manifest["timings"]}, indent=2, sort_keys=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m synthetic world``: a known error is one line and exit code 2 (cluster.cli)."""
    return run_cli(_main, argv)
