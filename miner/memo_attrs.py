"""spaCy's ``attribute_ruler`` + ``lemmatizer``, memoised per distinct token.

In ``en_core_web_sm`` these two rule components cost about 45 % of the pipeline's time on captions
(tok2vec + tagger + parser the rest), yet what they assign to a token depends on that token alone — its
text, tag and dependency label — except for a few multi-token patterns ("there is" makes "is" a VERB,
"gonna", "let's").  :class:`MemoAttributes` runs the real components once per distinct (orth, tag, dep) —
the keys a batch of captions lacks, together on one Doc — and copies the result (tag, dep, POS, morphology,
lemma) into every later token with that key through ``Doc.from_array``.  A Doc in which a multi-token
pattern could match goes through the real components whole.  The lemmatizer's known-lemma lists become
sets (it scanned a 57k-word list per suffix rule for every new word).  The output equals the real
components' token for token (tests/test_parser.py checks it on CC3M and FACTUAL captions); a pipeline
whose patterns look at anything beyond the token itself is not memoised at all (:func:`memoisable` says
why).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc

COMPONENTS = ("attribute_ruler", "lemmatizer")
# Token-pattern keys whose value is a function of the token's (orth, tag, dep): lexical attributes of the
# orth, plus the tag and label the tagger and parser gave it.
TOKEN_LOCAL_KEYS = frozenset({"ORTH", "TEXT", "LOWER", "TAG", "DEP", "IS_SPACE", "IS_PUNCT", "IS_ALPHA",
                              "IS_DIGIT", "IS_LOWER", "IS_UPPER", "IS_TITLE", "LENGTH", "SHAPE", "PREFIX",
                              "SUFFIX"})  # no "OP": an optional or repeated first token defeats the trigger
MAX_ENTRIES = 200_000  # distinct (orth, tag, dep) keys kept; later ones are computed each time (~60 MB)


def memoisable(nlp: Language) -> str | None:
    """None when :class:`MemoAttributes` reproduces ``nlp``'s two rule components exactly, else why not."""
    missing = [name for name in COMPONENTS if name not in nlp.pipe_names]
    if missing:
        return f"the pipeline has no enabled {', '.join(missing)}"
    if nlp.pipe_names[-2:] != list(COMPONENTS):
        return f"{' and '.join(COMPONENTS)} are not the last enabled components ({nlp.pipe_names})"
    for pattern in _token_patterns(nlp):
        for spec in pattern:
            extra = set(spec) - TOKEN_LOCAL_KEYS
            if extra:
                return f"an attribute_ruler pattern tests {sorted(extra)} (not a function of the token)"
        if len(pattern) > 1 and _trigger(pattern[0]) is None:
            return f"a multi-token attribute_ruler pattern starts with {pattern[0]!r} (no LOWER/DEP to spot it by)"
    return None


def _token_patterns(nlp: Language) -> list[list[dict[str, Any]]]:
    return [p for entry in nlp.get_pipe("attribute_ruler").patterns for p in entry["patterns"]]


def _trigger(spec: dict[str, Any]) -> tuple[str, Any] | None:
    """How to spot a token that could start this pattern: ("lower"|"dep", set of strings or a regex)."""
    for key, attr in (("LOWER", "lower"), ("DEP", "dep")):
        value = spec.get(key)
        if isinstance(value, str):
            return attr, frozenset({value.lower() if attr == "lower" else value})
        if isinstance(value, dict) and set(value) == {"IN"}:
            return attr, frozenset(v.lower() if attr == "lower" else v for v in value["IN"])
        if isinstance(value, dict) and set(value) == {"REGEX"}:
            return attr, re.compile(value["REGEX"])
    return None


class MemoAttributes:
    """:meth:`pipe` takes Docs that have been through tok2vec/tagger/parser only and sets what the two rule
    components would.  Build with :meth:`detach`, which takes them out of ``nlp``'s enabled pipes."""

    KEY = ("ORTH", "TAG", "DEP")
    OUT = ("TAG", "DEP", "POS", "MORPH", "LEMMA")

    def __init__(self, nlp: Language, max_entries: int = MAX_ENTRIES) -> None:
        from spacy.attrs import IDS

        reason = memoisable(nlp)
        if reason is not None:
            raise ValueError(f"cannot memoise this pipeline's rule components: {reason}")
        self.components = [nlp.get_pipe(name) for name in COMPONENTS]
        _index_as_sets(self.components[1])
        self.vocab = nlp.vocab
        self.key_ids = [IDS[k] for k in self.KEY]
        self.out_ids = [IDS[k] for k in self.OUT]
        triggers = [_trigger(p[0]) for p in _token_patterns(nlp) if len(p) > 1]
        self.read_ids = self.key_ids + [IDS["LOWER"]]
        self.lower_hashes = self._hashes(triggers, "lower")
        self.dep_hashes = self._hashes(triggers, "dep")
        self.regexes = [(attr, rx) for attr, rx in triggers if not isinstance(rx, frozenset)]
        self.regex_memo: dict[tuple[int, int], bool] = {}
        self.max_entries = max_entries
        self.memo: dict[tuple[int, int, int], list[int]] = {}
        self.whole_docs = 0  # Docs that went through the real components (a multi-token pattern could match)

    def _hashes(self, triggers, attr: str) -> frozenset[int]:
        words = [w for a, ws in triggers if a == attr and isinstance(ws, frozenset) for w in ws]
        return frozenset(self.vocab.strings.add(w) for w in words)

    @classmethod
    def detach(cls, nlp: Language) -> MemoAttributes | None:
        """A memo for ``nlp`` with its rule components disabled there, or None (``nlp`` untouched) when
        the pipeline cannot be memoised exactly."""
        if memoisable(nlp) is not None:
            return None
        memo = cls(nlp)
        for name in COMPONENTS:
            nlp.disable_pipe(name)
        return memo

    def pipe(self, docs: Iterable[Doc], chunk: int = 256) -> Iterator[Doc]:
        """Annotate ``docs`` in order; the keys a chunk of them lacks are computed together, on one Doc."""
        for group in _chunks(docs, chunk):
            tables = [doc.to_array(self.read_ids).tolist() for doc in group]
            plain = [not self._context_sensitive(table) for table in tables]
            wanted = {tuple(row[:3]) for table, ok in zip(tables, plain) if ok for row in table}
            fresh = self._compute({key for key in wanted if key not in self.memo})
            for doc, table, ok in zip(group, tables, plain):
                yield self._annotate(doc, table, fresh) if ok else self._whole(doc)

    def _annotate(self, doc: Doc, table: list[list[int]], fresh: dict[tuple, list[int]]) -> Doc:
        rows = [self.memo.get(key) or fresh[key] for key in (tuple(row[:3]) for row in table)]
        if rows:
            doc.from_array(self.out_ids, np.asarray(rows, dtype=np.uint64))
        return doc

    def _whole(self, doc: Doc) -> Doc:
        self.whole_docs += 1
        for component in self.components:
            doc = component(doc)
        return doc

    def _context_sensitive(self, table: list[list[int]]) -> bool:
        """True if a multi-token pattern could match in the Doc (judged by its first token's lower form or
        label); ``table`` holds each token's orth, tag, dep and lower hashes."""
        for _, _, dep, lower in table:
            if lower in self.lower_hashes or dep in self.dep_hashes:
                return True
            if self.regexes and self._regex_trigger(lower, dep):
                return True
        return False

    def _regex_trigger(self, lower: int, dep: int) -> bool:
        key = (lower, dep)
        if key not in self.regex_memo:
            text = {"lower": self.vocab.strings[lower], "dep": self.vocab.strings[dep] if dep else ""}
            self.regex_memo[key] = any(rx.search(text[attr]) for attr, rx in self.regexes)
        return self.regex_memo[key]

    def _compute(self, keys: set[tuple[int, int, int]]) -> dict[tuple[int, int, int], list[int]]:
        """Run the real components on one Doc of the keys' words with their tags and labels.  None of the
        words can start a multi-token pattern (their Docs were not context-sensitive), so each token's
        result is its own, as on a Doc of that token alone."""
        from spacy.tokens import Doc

        if not keys:
            return {}
        order = list(keys)
        doc = Doc(self.vocab, words=[self.vocab.strings[orth] for orth, _, _ in order], spaces=[False] * len(order))
        doc.from_array(self.key_ids[1:], np.array([key[1:] for key in order], dtype=np.uint64))
        for component in self.components:
            doc = component(doc)
        rows = dict(zip(order, doc.to_array(self.out_ids).tolist()))
        room = self.max_entries - len(self.memo)
        self.memo.update(rows if room >= len(rows) else dict(list(rows.items())[:max(room, 0)]))
        return rows


def _index_as_sets(lemmatizer: Any) -> None:
    """The rule lemmatizer's known-lemma lists (57k nouns) as frozensets: it only asks ``form in index``
    and whether the list is empty, so the answers stay the same, in O(1) instead of a scan per rule."""
    lookups = getattr(lemmatizer, "lookups", None)
    if lookups is None or not lookups.has_table("lemma_index"):
        return
    table = lookups.get_table("lemma_index")
    for key in list(table.keys()):
        table[key] = frozenset(table[key])


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    group: list[Any] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
