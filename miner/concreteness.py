"""Concreteness look-ups (Brysbaert et al. 2014 norms, GeneCIS §1.4).

The shipped table ``miner/data/concreteness.tsv.gz`` is derived by
``miner/data/build_concreteness.py``; see ``miner/data/README.md``.
"""

from __future__ import annotations

import gzip
import importlib.resources
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

DATA_FILE = "concreteness.tsv.gz"
MISSING = -1.0


def _read_lines(path: str | None) -> list[str]:
    if path is None:
        resource = importlib.resources.files("miner") / "data" / DATA_FILE
        raw = resource.read_bytes()
    else:
        raw = Path(path).read_bytes()
    return gzip.decompress(raw).decode("utf-8").splitlines()


def load_concreteness(path: str | None = None) -> dict[str, float]:
    """Load ``lower-cased word (or plural) -> Conc.M`` from the shipped gzip TSV."""
    table: dict[str, float] = {}
    for number, line in enumerate(_read_lines(path), start=1):
        word, sep, score = line.partition("\t")
        if not sep:
            raise ValueError(f"concreteness table line {number}: no tab in {line!r}")
        table[word] = float(score)
    return table


def parse_overrides(entries: Sequence[str]) -> dict[str, float]:
    """``["circle=4.9", ...]`` -> ``{"circle": 4.9}``; a malformed entry or a score outside the table's
    1-5 scale is a ValueError naming the entry."""
    out: dict[str, float] = {}
    for entry in entries:
        word, sep, score = entry.partition("=")
        try:
            value = float(score)
        except ValueError:
            value = float("nan")
        if not sep or not word.strip() or not 1.0 <= value <= 5.0:
            raise ValueError(f"concreteness override {entry!r}: expected WORD=SCORE with 1 <= SCORE <= 5")
        out[word.strip().lower()] = value
    return out


def score_strings(
    names: Sequence[str], table: Mapping[str, float], missing: float = MISSING
) -> np.ndarray:
    """Score WHOLE entity strings (lower-cased, not split into words); misses -> ``missing``."""
    return np.fromiter(
        (table.get(name.lower(), missing) for name in names),
        dtype=np.float64,
        count=len(names),
    )
