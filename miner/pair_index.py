"""The pair index the mining rule draws from: integer rows (subject, object, image) sorted once.

Rows are sorted by (subject, object, image, input position); per subject and per (subject, object)
"group" the index holds row ranges and distinct-image counts, and a by-object permutation gives each
object's rows.  All arrays are small integers (about 28 bytes a row).  Positions are SORTED positions;
``PairIndex.rows`` maps them back to input rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


def _small_int(values: NDArray[np.integer], bound: int) -> NDArray[np.integer]:
    """int32 when every value fits in [-2**31, bound] with bound < 2**31, else int64."""
    dtype = np.int32 if bound < 2**31 else np.int64
    return values.astype(dtype, copy=False)


def starts(counts: NDArray[np.integer]) -> NDArray[np.int64]:
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


@dataclass(frozen=True, eq=False)
class PairIndex:
    """Rows (subject, obj, image) sorted by (subject, obj, image, input position).

    Positions below are SORTED positions; ``order[pos]`` is the input row.
    A (subject, obj) "group" is a run of sorted rows; a subject's groups are its
    distinct objects.  ``by_obj`` lists sorted positions ordered by object.
    """

    order: NDArray[np.integer]  # sorted pos -> input row
    subj: NDArray[np.int32]  # per sorted pos
    obj: NDArray[np.int32]
    image: NDArray[np.integer]
    subj_start: NDArray[np.int64]  # per subject code: row range
    subj_images: NDArray[np.int32]  # distinct images per subject
    subj_objects: NDArray[np.int32]  # distinct objects (= groups) per subject
    subj_group_start: NDArray[np.int64]  # per subject code: group range
    group_start: NDArray[np.integer]  # per group: row range (n_groups + 1)
    group_images: NDArray[np.int32]  # distinct images per group
    by_obj: NDArray[np.integer]  # sorted positions ordered by object
    obj_start: NDArray[np.int64]  # per object code: range into by_obj

    @property
    def n_rows(self) -> int:
        return len(self.order)

    def rows(self, positions: NDArray[np.integer]) -> NDArray[np.int64]:
        """Sorted positions -> input row indices (-1 stays -1)."""
        positions = np.asarray(positions, dtype=np.int64)
        out = self.order[np.maximum(positions, 0)].astype(np.int64)
        out[positions < 0] = -1
        return out


def _key_bits(values: NDArray[np.integer]) -> int:
    return int(values.max()).bit_length() if len(values) else 0


def _sort_order(subject: NDArray, obj: NDArray, image_off: NDArray) -> NDArray[np.int64]:
    """Stable order by (subject, obj, image): one int64 key when it fits, else lexsort."""
    b_obj, b_img = _key_bits(obj), _key_bits(image_off)
    if _key_bits(subject) + b_obj + b_img <= 63:
        key = subject.astype(np.int64) << np.int64(b_obj + b_img)
        key |= obj.astype(np.int64) << np.int64(b_img)
        key |= image_off
        return np.argsort(key, kind="stable")
    return np.lexsort((image_off, obj, subject))


def _distinct_images_per_subject(
    subj: NDArray, image_off: NDArray, n_subj: int
) -> NDArray[np.int32]:
    b_img = _key_bits(image_off)
    if _key_bits(subj) + b_img <= 63:
        key = (subj.astype(np.int64) << np.int64(b_img)) | image_off
        key.sort()
        first = np.ones(len(key), dtype=bool)
        first[1:] = key[1:] != key[:-1]
        owners = key[first] >> np.int64(b_img)
    else:
        perm = np.lexsort((image_off, subj))
        s, im = subj[perm], image_off[perm]
        first = np.ones(len(s), dtype=bool)
        first[1:] = (s[1:] != s[:-1]) | (im[1:] != im[:-1])
        owners = s[first]
    return np.bincount(owners, minlength=n_subj).astype(np.int32)


def _check_codes(name: str, codes: NDArray, n: int) -> NDArray[np.int32]:
    codes = np.asarray(codes)
    if codes.ndim != 1 or len(codes) != n:
        raise ValueError(f"{name} must be 1-D with {n} rows, got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{name} must be integer codes, got {codes.dtype}")
    if n and (codes.min() < 0 or codes.max() >= 2**31):
        raise ValueError(f"{name} codes must lie in [0, 2**31)")
    return codes.astype(np.int32, copy=False)


def build_pair_index(
    subject: NDArray[np.int32], obj: NDArray[np.int32], image: NDArray[np.int64]
) -> PairIndex:
    """Index rows (subject code, object code, image id); O(rows) small-int memory."""
    image = np.asarray(image)
    n = len(image)
    subject = _check_codes("subject", subject, n)
    obj = _check_codes("obj", obj, n)
    if image.ndim != 1 or not np.issubdtype(image.dtype, np.integer):
        raise ValueError("image must be a 1-D integer array")
    image_off = image.astype(np.int64) - (image.min() if n else 0)
    order = _sort_order(subject, obj, image_off)
    n_subj = int(subject.max()) + 1 if n else 0
    n_obj = int(obj.max()) + 1 if n else 0
    s, o, im = subject[order], obj[order], image_off[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = (s[1:] != s[:-1]) | (o[1:] != o[:-1])
    new_image = new_group.copy()
    new_image[1:] |= im[1:] != im[:-1]
    group_first = np.flatnonzero(new_group)
    group_start = np.append(group_first, n)
    subj_objects = np.bincount(s[group_first], minlength=n_subj).astype(np.int32)
    group_images = np.add.reduceat(new_image.astype(np.int32), group_first) if n else new_image
    by_obj = np.argsort(o, kind="stable")
    img_bound = max(abs(int(image.min())), int(image.max())) if n else 0
    return PairIndex(
        order=_small_int(order, n),
        subj=s,
        obj=o,
        image=_small_int(image[order], img_bound),
        subj_start=starts(np.bincount(s, minlength=n_subj)),
        subj_images=_distinct_images_per_subject(subject, image_off, n_subj),
        subj_objects=subj_objects,
        subj_group_start=starts(subj_objects),
        group_start=_small_int(group_start, n),
        group_images=group_images.astype(np.int32),
        by_obj=_small_int(by_obj, n),
        obj_start=starts(np.bincount(o, minlength=n_obj)),
    )
