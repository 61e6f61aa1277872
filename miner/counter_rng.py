"""Counter-based random numbers: every draw is a pure function of (seed, kind, id, draw, slot).

A splitmix64 finaliser in wrapping uint64 arithmetic hashes the key; there is no generator state, so
triplet ``i`` gets the same numbers whichever process evaluates it and however an id range is split
(this replaces GeneCIS's ``np.random.seed(i)`` per sample).  ``draw_base`` hashes (seed, kind, id,
draw) once per element; ``unit`` / ``below`` derive the number of one slot (one random choice inside a
draw) from that base, so a draw that needs many choices hashes its key once.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_SLOT_STEP = 0xD1B54A32D192ED03  # odd, distinct from the draw step
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 2.0**-53


def _mix_int(z: int) -> int:
    z &= _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _mix(z: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """splitmix64 finaliser, in place on a temporary uint64 array."""
    z ^= z >> np.uint64(30)
    z *= _C1
    z ^= z >> np.uint64(27)
    z *= _C2
    z ^= z >> np.uint64(31)
    return z


def _as_u64(values: NDArray[np.int64] | int, shape: tuple[int, ...]) -> NDArray[np.uint64]:
    arr = np.asarray(values, dtype=np.int64)
    return np.broadcast_to(arr, shape).astype(np.uint64)  # copy, wraps negatives


def draw_base(
    seed: int, kind_id: int, ids: NDArray[np.int64], draw: NDArray[np.int64] | int
) -> NDArray[np.uint64]:
    """Per-(id, draw) hash state; ``uniform`` = ``unit(draw_base(...), slot)``."""
    key = _mix_int(_mix_int(seed + _GOLDEN) + (kind_id + 1) * _GOLDEN)
    ids = np.asarray(ids, dtype=np.int64)
    state = _mix(_as_u64(ids, ids.shape) ^ np.uint64(key))
    state += _as_u64(draw, ids.shape) * np.uint64(_GOLDEN) + np.uint64(_GOLDEN)
    return _mix(state)


def unit(base: NDArray[np.uint64], slot: int) -> NDArray[np.float64]:
    z = base + np.uint64(((slot + 1) * _SLOT_STEP) & _MASK)
    return (_mix(z) >> np.uint64(11)).astype(np.float64) * _TO_UNIT


def below(base: NDArray[np.uint64], slot: int, n: NDArray[np.integer]) -> NDArray[np.int64]:
    """Uniform integer in [0, n) per element (n >= 1)."""
    n = np.asarray(n, dtype=np.int64)
    k = np.floor(unit(base, slot) * n).astype(np.int64)
    return np.minimum(k, n - 1)


def uniform(
    seed: int,
    kind_id: int,
    ids: NDArray[np.int64],
    draw: NDArray[np.int64] | int,
    slot: int,
) -> NDArray[np.float64]:
    """U[0,1) for each id, a pure function of (seed, kind_id, id, draw, slot)."""
    return unit(draw_base(seed, kind_id, ids, draw), slot)


def uniform_int(
    seed: int,
    kind_id: int,
    ids: NDArray[np.int64],
    draw: NDArray[np.int64] | int,
    slot: int,
    n: NDArray[np.integer] | int,
) -> NDArray[np.int64]:
    """floor(uniform * n): a uniform integer in [0, n) for each id (n >= 1)."""
    return below(draw_base(seed, kind_id, ids, draw), slot, n)
