"""How every stage commits its outputs, so that a killed run resumes and a finished one does nothing.

The rule a stage follows (ARCHITECTURE.md, "The run protocol"):

1. its typed config is validated when it is built, and everything checkable (inputs exist and hold valid
   records, models exist, the output is writable) is checked before anything is written;
2. ``config.json`` is pinned (:func:`cluster.config.pin_config`): a rerun with other output-defining
   fields or a changed input is refused;
3. the work is cut into deterministic items; each item writes its data objects and **then** its stats
   marker (:func:`write_committed`): an item with a marker is done, one without is redone from scratch
   (every data object is written atomically, so a half-written one is never read);
4. the manifest is written **last** (:func:`write_manifest`); an output whose manifest exists is finished
   and a rerun returns it without work (:func:`finished`);
5. one progress line per interval (:mod:`cluster.progress`, :mod:`cluster.rayutil`).
"""
from __future__ import annotations

import io
from typing import Hashable, Iterable, Mapping, Sequence, TypeVar, Union

import pyarrow as pa
import pyarrow.parquet as pq

from cluster import storage

K = TypeVar("K", bound=Hashable)
MANIFEST = "_manifest.json"
Data = Union[bytes, pa.Table]


class InputError(ValueError):
    """An input that exists but cannot be used, e.g. one without a single valid record (no manifest)."""


def parquet_bytes(table: pa.Table, **kwargs) -> bytes:
    """A table as one zstd Parquet file (``kwargs`` go to ``pq.write_table``, e.g. ``row_group_size``)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", **kwargs)
    return buf.getvalue()


def write_parquet(loc: storage.Location, table: pa.Table, **kwargs) -> int:
    """Write a table as zstd Parquet, atomically (readers see all of it or nothing); returns its size."""
    data = parquet_bytes(table, **kwargs)
    storage.write_bytes_atomic(loc, data)
    return len(data)


def write_committed(items: Sequence[tuple[storage.Location, Data]], marker: storage.Location,
                    stats: dict) -> dict:
    """Write a work item's data objects (tables as zstd Parquet; concurrent PUTs on S3), **then** its
    stats marker: the marker is the commit, so it is written only once every data object is complete."""
    blobs = [(loc, parquet_bytes(data) if isinstance(data, pa.Table) else data) for loc, data in items]
    storage.write_many(blobs)
    storage.write_json(marker, stats)
    return stats


def committed(markers: Mapping[K, storage.Location]) -> dict[K, dict]:
    """The stats of the items that are done (those whose marker exists), by item key."""
    done = {}
    for key, loc in markers.items():
        if storage.exists(loc):
            done[key] = storage.read_json(loc)
    return done


def pending(keys: Iterable[K], done: Mapping[K, dict]) -> list[K]:
    return [k for k in keys if k not in done]


def finished(out: storage.Location, name: str = MANIFEST) -> dict | None:
    """The manifest of a finished output, or None: a stage that gets one back does no work."""
    loc = out.child(name)
    return storage.read_json(loc) if storage.exists(loc) else None


def write_manifest(out: storage.Location, manifest: dict, name: str = MANIFEST) -> storage.Location:
    """Write the manifest: the last object of a run, whose presence means the output is complete."""
    loc = out.child(name)
    storage.write_json(loc, manifest)
    return loc
