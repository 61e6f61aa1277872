"""Word-swap hard-negative captions for CLIP pretraining, Ray-free.

A caption's hard negative is the same caption with one word swapped for another word of its group
("a red circle and a blue star" → "a red circle and a blue heart"), the way NegCLIP builds negatives
(Yuksekgonul et al., ICLR 2023).  In a batch of web captions the easiest cues (colours, backgrounds)
already tell images apart, so a contrastive model need not learn what an object *is*; a negative that
differs from the true caption only in an object noun makes the image tower tell objects apart.

Groups are words of one kind that exclude each other (object nouns, colours); the swap keeps a plural
plural ("three arrows" → "three hearts").  Which occurrence is swapped and for what is drawn from the
caller's seeded generator, so a row's negative is a function of (seed, row).
"""
from __future__ import annotations

import re

import numpy as np


def parse_groups(groups: tuple[str, ...] | list[str]) -> list[tuple[str, ...]]:
    """``("circle,square,star", "red,blue")`` → word groups; each needs ≥ 2 distinct words and a word may
    sit in one group only."""
    out: list[tuple[str, ...]] = []
    seen: dict[str, int] = {}
    for i, text in enumerate(groups):
        words = tuple(dict.fromkeys(w.strip().lower() for w in str(text).split(",") if w.strip()))
        if len(words) < 2:
            raise ValueError(f"swap group {text!r} needs at least two comma-separated words")
        for w in words:
            if not re.fullmatch(r"[a-z][a-z\-]*", w):
                raise ValueError(f"swap group {text!r}: {w!r} is not a plain lower-case word")
            if w in seen:
                raise ValueError(f"swap word {w!r} is in two groups ({groups[seen[w]]!r} and {text!r})")
            seen[w] = i
        out.append(words)
    return out


def plural(word: str) -> str:
    """English plural of a regular noun (the world's and most CC3M object nouns)."""
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    return word + "s"


class WordSwapper:
    """``swapper(caption, rng)`` → the caption with one group word swapped, or None when it has none."""

    def __init__(self, groups: list[tuple[str, ...]]):
        self.groups = groups
        self.lookup: dict[str, tuple[int, bool]] = {}  # surface form → (group, is plural)
        for g, words in enumerate(groups):
            for w in words:
                self.lookup.setdefault(plural(w), (g, True))
                self.lookup[w] = (g, False)
        forms = sorted(self.lookup, key=len, reverse=True)
        self.pattern = re.compile(r"\b(" + "|".join(map(re.escape, forms)) + r")\b", re.IGNORECASE)

    def _alternatives(self, hit: re.Match) -> tuple[int, list[str]]:
        """The group of a matched word and the surface forms it may be swapped for."""
        form = hit.group(0).lower()
        group, is_plural = self.lookup[form]
        others = [w for w in self.groups[group] if form not in (w, plural(w))]
        return group, [plural(w) if is_plural else w for w in others]

    def __call__(self, caption: str, rng: np.random.Generator) -> str | None:
        hits = list(self.pattern.finditer(caption))
        if not hits:
            return None
        hit = hits[int(rng.integers(len(hits)))]
        _, others = self._alternatives(hit)
        new = others[int(rng.integers(len(others)))]
        return caption[:hit.start()] + new + caption[hit.end():]

    def all_swaps(self, caption: str) -> list[tuple[int, str]]:
        """Every one-word swap of ``caption`` as (group index, swapped caption), in text order."""
        out = []
        for hit in self.pattern.finditer(caption):
            group, others = self._alternatives(hit)
            out.extend((group, caption[:hit.start()] + w + caption[hit.end():]) for w in others)
        return out
