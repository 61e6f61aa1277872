"""A small attribute lexicon: attribute value -> attribute type (VAW-style types).

Used to give focus_attribute its condition ("color", "material", ...) and to
choose distractors with another value of the same type.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

_COLORS = """
red blue green yellow orange purple pink brown black white gray grey silver gold
golden beige tan maroon navy teal turquoise cyan magenta violet lavender lilac
indigo crimson scarlet burgundy khaki olive cream ivory bronze copper coral peach
mint lime aqua amber rust charcoal blond blonde brunette ginger multicolored
multicoloured colorful colourful reddish bluish greenish yellowish brownish
orangish pinkish purplish grayish greyish blackish whitish rainbow
"""
_COLOR_MODIFIERS = frozenset(
    "dark light pale bright deep dull vivid pastel neon navy olive sky royal forest "
    "lime hot baby dusty rosy jet off".split()
)
_SIZE = """
small large big tiny huge little giant enormous massive tall short long wide
narrow thick thin medium miniature mini oversized petite high low deep shallow
"""
_MATERIAL = """
wooden wood metal metallic steel iron glass plastic stone concrete brick ceramic
leather cotton wool woolen denim silk paper cardboard rubber marble granite tile
tiled porcelain fabric cloth straw wicker bamboo velvet aluminum aluminium tin
clay fur furry feathered wire chrome canvas lace
"""
_PATTERN = """
striped stripes spotted dotted polka-dot plaid checkered checked floral
patterned camouflage zebra-striped leopard-print paisley speckled solid plain
"""
_SHAPE = """
round square rectangular circular triangular oval curved straight flat pointed
pointy cylindrical spherical rounded hexagonal curly wavy
"""
_AGE = """
old young new ancient elderly modern antique vintage adult baby
"""
_NUMBER_WORDS = """
one two three four five six seven eight nine ten eleven twelve single double
several many few multiple
"""

UNTYPED = "untyped"  # the name of the values the lexicon does not know (type code -1)


def _build_lexicon() -> dict[str, str]:
    lexicon: dict[str, str] = {}
    for kind, words in (
        ("color", _COLORS),
        ("size", _SIZE),
        ("material", _MATERIAL),
        ("pattern", _PATTERN),
        ("shape", _SHAPE),
        ("age", _AGE),
        ("count", _NUMBER_WORDS),
    ):
        for word in words.split():
            lexicon.setdefault(word, kind)  # first type wins ("olive" -> color)
    return lexicon


_LEXICON: dict[str, str] = _build_lexicon()

ATTRIBUTE_TYPES: tuple[str, ...] = (
    "color", "size", "material", "pattern", "shape", "age", "count",
)


def _normalise(value: str) -> str:
    return " ".join(value.lower().replace("_", " ").split())


def _is_color_compound(words: list[str]) -> bool:
    """'dark green', 'navy blue', 'blue green', 'light-blue' style colour values."""
    if len(words) < 2 or _LEXICON.get(words[-1]) != "color":
        return False
    return all(w in _COLOR_MODIFIERS or _LEXICON.get(w) == "color" for w in words[:-1])


def attribute_type(value: str) -> str | None:
    """Type of an attribute value ("color", "size", ...), or None if untyped."""
    text = _normalise(value)
    if not text:
        return None
    if text in _LEXICON:
        return _LEXICON[text]
    if text.isdigit():
        return "count"
    words = text.replace("-", " ").split()
    if _is_color_compound(words):
        return "color"
    if len(words) == 1 and words[0] in _LEXICON:
        return _LEXICON[words[0]]
    return None


def type_codes(values: Sequence[str], types: Sequence[str] = ATTRIBUTE_TYPES) -> NDArray[np.int64]:
    """Value code -> type code (index into ``types``), -1 where untyped."""
    lookup = {name: code for code, name in enumerate(types)}
    return np.fromiter(
        (lookup.get(attribute_type(v) or "", -1) for v in values),
        dtype=np.int64,
        count=len(values),
    )


def keep_mask(codes: NDArray[np.int64], keep: Sequence[str], types: Sequence[str] = ATTRIBUTE_TYPES
              ) -> NDArray[np.bool_]:
    """Which type codes (from :func:`type_codes`) fall in ``keep`` (type names, or ``UNTYPED`` for -1)."""
    wanted = [types.index(t) for t in keep if t != UNTYPED]
    mask = np.isin(codes, wanted)
    return mask | (codes < 0) if UNTYPED in keep else mask
