"""Natural, varied English captions of a ground-truth scene, each with what it mentions.

A caption names some of the scene's objects ("noun phrases": one object, or a group of objects of the
same kind and colour with a number word) and states some of the true relations between them.  Noise
as in web alt-text: attributes left out at random, synonyms ("to the left of" / "on the left side of",
"under" / "beneath", "big" / "large"), article variation, plurals, lists, extra words ("a photo of").

Every caption records its mentions in canonical form, so the caption -> scene-graph parser can be
scored against the ground truth:

* ``objects``: one :class:`ObjectMention` per ground-truth object named -- its index in
  ``scene.objects``, the noun lemma used, the attributes stated as ``(type, canonical value)`` (type in
  ``color`` / ``size`` / ``pattern`` / ``count``), the surface words that state them, and the phrase it
  was named in (objects of one group share a phrase);
* ``relations``: ``(i, predicate, j)`` with ``predicate`` in :data:`synthetic.scene.RELATIONS`, each a
  relation of the scene.

The phrasings are ones the spaCy small model parses as intended (e.g. "cross" stays a noun after an
adjective or article; "left of" without "to"/"on the" is avoided because it is read as a noun).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from synthetic.scene import INVERSE, Obj, Scene

NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}

# canonical value -> [(surface word, weight)]; the first is the canonical word itself
SIZE_WORDS = {"small": [("small", 7), ("tiny", 3)], "large": [("large", 5), ("big", 4), ("huge", 1)]}
PATTERN_WORDS = {"striped": [("striped", 1)], "dotted": [("dotted", 7), ("spotted", 3)],
                 "plain": [("solid", 1)]}
COLOUR_SYNONYMS = {"purple": [("purple", 9), ("violet", 1)]}
NOUN_SYNONYMS = {"circle": [("circle", 9), ("disc", 1)], "crescent": [("crescent", 8), ("moon", 2)]}
PLURALS = {"cross": "crosses"}

RELATION_PHRASES = {
    "left of": [("to the left of", 6), ("on the left side of", 2), ("on the left of", 2)],
    "right of": [("to the right of", 6), ("on the right side of", 2), ("on the right of", 2)],
    "above": [("above", 7), ("over", 3)],
    "below": [("below", 5), ("under", 3), ("beneath", 1), ("underneath", 1)],
    "next to": [("next to", 7), ("beside", 3)],
}

# how the parser (miner/parser.py, FACTUAL conventions) writes each canonical relation
PARSED_PREDICATES = {
    "left of": ("at the left of", "to the left of", "left of", "on the left of"),
    "right of": ("on the right side of", "to the right of", "right of", "on the right of"),
    "above": ("above", "over", "on top of", "atop"),
    "below": ("under", "below", "beneath", "underneath"),
    "next to": ("next to", "beside", "by", "near", "close to"),
}
_PARTICIPLES = frozenset(w for ws in PATTERN_WORDS.values() for w, _ in ws)
_PARSED_TO_CANONICAL = {p: c for c, ps in PARSED_PREDICATES.items() for p in ps}

SINGLE_FRAMES = [("{a}", 5), ("a photo of {a}", 2), ("an image of {a}", 1), ("there is {a}", 2),
                 ("a picture of {a}", 1), ("{a} on a {bg} background", 1)]
RELATION_FRAMES = [("{a} {rel} {b}", 8), ("{a} is {rel} {b}", 3), ("{a} placed {rel} {b}", 1)]
# two relations: a plain "and" makes the parser read "B and C" as one object of the first preposition
CLAUSE_JOINS = [("{x}, and {y}", 3), ("{x}; {y}", 1), ("{x} while {y}", 1)]
LIST_FRAMES = [("{list}", 5), ("a photo of {list}", 1), ("{list} on a {bg} background", 1)]
ATTRIBUTE_FRAMES = [("{a} that is {adj}", 1), ("{the} is {adj}", 1)]
# caption kinds and their weights when the scene allows them
KIND_WEIGHTS = {"single": 2, "relation": 8, "list": 1, "two_relations": 2, "attribute": 1}
# probability of stating each attribute of a named object (pattern: when not plain / when plain)
P_STATE = {"color": 0.8, "size": 0.45, "pattern": 0.55, "plain": 0.05}


class ObjectMention(NamedTuple):
    index: int  # into scene.objects
    noun: str  # lemma of the noun used: "star", "disc"
    attrs: tuple[tuple[str, str], ...]  # (type, canonical value) stated: ("color", "purple"), ("count", "2")
    words: tuple[str, ...]  # the surface words stating them, in order: ("violet", "two")
    phrase: int  # which noun phrase of the caption names it (a group shares one)


@dataclass(frozen=True)
class Caption:
    text: str
    objects: tuple[ObjectMention, ...]
    relations: tuple[tuple[int, str, int], ...]

    def to_json(self) -> dict:
        return {"text": self.text,
                "objects": [{"index": m.index, "noun": m.noun, "attrs": [list(a) for a in m.attrs],
                             "words": list(m.words), "phrase": m.phrase} for m in self.objects],
                "relations": [list(r) for r in self.relations]}

    @classmethod
    def from_json(cls, d: dict) -> "Caption":
        objs = tuple(ObjectMention(o["index"], o["noun"], tuple((t, v) for t, v in o["attrs"]), tuple(o["words"]),
                                   o["phrase"]) for o in d["objects"])
        return cls(d["text"], objs, tuple((int(s), str(p), int(o)) for s, p, o in d["relations"]))


def canonical_relation(predicate: str) -> str | None:
    """The canonical relation a parsed predicate states, or None: "at the left of" -> "left of";
    a leading verb is ignored ("place under" -> "below")."""
    words = predicate.lower().split()
    for k in range(len(words)):
        found = _PARSED_TO_CANONICAL.get(" ".join(words[k:]))
        if found:
            return found
    return None


# ----------------------------------------------------------------------------------------- sampling
def _pick(rng: np.random.Generator, options: Sequence[tuple[str, int]]) -> str:
    """One option, with probability proportional to its weight (one uniform draw)."""
    r = rng.random() * sum(w for _, w in options)
    for value, weight in options:
        r -= weight
        if r < 0:
            return value
    return options[-1][0]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class _Phrase(NamedTuple):
    text: str  # "a small red star" / "two yellow hearts"
    mentions: tuple[ObjectMention, ...]


def _attribute_words(obj: Obj, rng: np.random.Generator, p_scale: float = 1.0) -> list[tuple[str, str, str]]:
    """(type, canonical, word) of the attributes stated, in English order: size, pattern, colour.

    Orders and stacks the small parser misreads are avoided: colour before pattern ("a red striped
    star" -> noun "red"), size + pattern without a colour ("a large striped square" -> "large" lost),
    and more than one size/pattern word before "cross" (tagged as a verb or adjective).
    """
    size = rng.random() < P_STATE["size"] * p_scale
    pattern = rng.random() < P_STATE["plain" if obj.pattern == "plain" else "pattern"] * p_scale
    colour = rng.random() < P_STATE["color"] * p_scale
    if size and pattern:  # both only half the time (and never before "cross"), and then with a colour
        if obj.shape == "cross":
            size = False
        elif rng.random() < 0.5:
            size, pattern = (False, True) if rng.random() < 0.5 else (True, False)
        colour = True
    out = [("size", obj.size, _pick(rng, SIZE_WORDS[obj.size]))] if size else []
    if pattern:
        out.append(("pattern", obj.pattern, _pick(rng, PATTERN_WORDS[obj.pattern])))
    if colour:
        out.append(("color", obj.colour, _pick(rng, COLOUR_SYNONYMS.get(obj.colour, [(obj.colour, 1)]))))
    return out


def _noun(shape: str, rng: np.random.Generator) -> str:
    return _pick(rng, NOUN_SYNONYMS.get(shape, [(shape, 1)]))


def _determiner(core: str, rng: np.random.Generator, allow_bare: bool) -> str:
    """ "a"/"an" mostly, "the" sometimes, none at the start of a caption now and then (not before a
    participle: "dotted star above ..." reads as an imperative)."""
    r = rng.random()
    if allow_bare and r < 0.08 and core.split()[0] not in _PARTICIPLES:
        return core
    return f"the {core}" if r < 0.2 else f"{_article(core)} {core}"


def single_phrase(scene: Scene, i: int, phrase: int, rng: np.random.Generator, allow_bare: bool = False,
                  p_scale: float = 1.0) -> _Phrase:
    obj = scene.objects[i]
    attrs = _attribute_words(obj, rng, p_scale)
    noun = _noun(obj.shape, rng)
    core = " ".join([w for _, _, w in attrs] + [noun])
    mention = ObjectMention(i, noun, tuple((t, v) for t, v, _ in attrs), tuple(w for _, _, w in attrs), phrase)
    return _Phrase(_determiner(core, rng, allow_bare), (mention,))


def group_phrase(scene: Scene, members: Sequence[int], phrase: int, rng: np.random.Generator) -> _Phrase:
    """ "two yellow hearts": colour always stated (the group is one kind and colour), shared size/pattern sometimes."""
    objs = [scene.objects[i] for i in members]
    count = NUMBER_WORDS[len(members)]
    attrs = [("count", str(len(members)), count)]
    if len({o.size for o in objs}) == 1 and rng.random() < P_STATE["size"]:
        attrs.append(("size", objs[0].size, _pick(rng, SIZE_WORDS[objs[0].size])))
    if len({o.pattern for o in objs}) == 1 and objs[0].pattern != "plain" and rng.random() < P_STATE["pattern"]:
        attrs.append(("pattern", objs[0].pattern, _pick(rng, PATTERN_WORDS[objs[0].pattern])))
    attrs.append(("color", objs[0].colour, _pick(rng, COLOUR_SYNONYMS.get(objs[0].colour, [(objs[0].colour, 1)]))))
    noun = objs[0].shape
    core = " ".join([w for _, _, w in attrs] + [PLURALS.get(noun, noun + "s")])
    mentions = tuple(ObjectMention(i, noun, tuple((t, v) for t, v, _ in attrs), tuple(w for _, _, w in attrs), phrase)
                     for i in members)
    return _Phrase(core, mentions)


# ----------------------------------------------------------------------------------------- referents
def groups(scene: Scene) -> list[tuple[int, ...]]:
    """Objects sharing kind and colour, two or more of them (reading order)."""
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, o in enumerate(scene.objects):
        by_key.setdefault((o.shape, o.colour), []).append(i)
    return [tuple(v) for v in by_key.values() if len(v) >= 2]


def referents(scene: Scene) -> list[tuple[int, ...]]:
    """What a noun phrase can name: each object not in a group, and each group."""
    grouped = groups(scene)
    in_group = {i for g in grouped for i in g}
    return [(i,) for i in range(len(scene.objects)) if i not in in_group] + grouped


def referent_relations(scene: Scene) -> list[tuple[tuple[int, ...], str, tuple[int, ...]]]:
    """(referent, predicate, referent) true for every member pair; one direction per unordered pair+kind."""
    rels = set(scene.relations)
    refs = referents(scene)
    out = []
    for a in refs:
        for b in refs:
            if a >= b:
                continue
            for pred in ("left of", "above", "right of", "below", "next to"):
                if all((i, pred, j) in rels for i in a for j in b):
                    out.append((a, pred, b))
    return out


def _phrase_for(scene: Scene, ref: tuple[int, ...], phrase: int, rng: np.random.Generator, **kw) -> _Phrase:
    return single_phrase(scene, ref[0], phrase, rng, **kw) if len(ref) == 1 else group_phrase(scene, ref, phrase, rng)


def _verb_agrees(frame: str, ref: tuple[int, ...]) -> str:
    """Plural verb for a group subject: "there are two red stars", "two red stars are above ..."."""
    if len(ref) == 1:
        return frame
    return frame.replace("{a} is ", "{a} are ", 1).replace("there is {a}", "there are {a}", 1)


# ----------------------------------------------------------------------------------------- caption kinds
def _single(scene: Scene, rng: np.random.Generator) -> Caption:
    refs = referents(scene)
    ref = refs[int(rng.integers(len(refs)))]
    frame = _pick(rng, SINGLE_FRAMES)
    p = _phrase_for(scene, ref, 0, rng, allow_bare=frame == "{a}")
    return Caption(_fill(_verb_agrees(frame, ref), scene, a=p.text), p.mentions, ())


def _relation_clause(scene: Scene, rel, first_phrase: int, rng: np.random.Generator, allow_bare: bool):
    a, pred, b = rel
    if rng.random() < 0.5:  # state it from either side: "A left of B" or "B right of A"
        a, pred, b = b, INVERSE[pred], a
    pa = _phrase_for(scene, a, first_phrase, rng, allow_bare=allow_bare)
    pb = _phrase_for(scene, b, first_phrase + 1, rng)
    stated = tuple((i, pred, j) for i in a for j in b)
    return pa, _pick(rng, RELATION_PHRASES[pred]), pb, stated, a


def _relation(scene: Scene, rng: np.random.Generator) -> Caption:
    rels = referent_relations(scene)
    frame = _pick(rng, RELATION_FRAMES)
    pa, rel, pb, stated, a = _relation_clause(scene, rels[int(rng.integers(len(rels)))], 0, rng, frame.startswith("{a}"))
    text = _fill(_verb_agrees(frame, a), scene, a=pa.text, rel=rel, b=pb.text)
    return Caption(text, pa.mentions + pb.mentions, stated)


def _two_relations(scene: Scene, rng: np.random.Generator) -> Caption:
    """Two relations over different pairs of referents, as two clauses."""
    rels = referent_relations(scene)
    first = rels[int(rng.integers(len(rels)))]
    others = [r for r in rels if {r[0], r[2]} != {first[0], first[2]}]
    if not others:
        return _relation(scene, rng)
    p1a, r1, p1b, s1, _ = _relation_clause(scene, first, 0, rng, True)
    p2a, r2, p2b, s2, a2 = _relation_clause(scene, others[int(rng.integers(len(others)))], 2, rng, False)
    join = _pick(rng, CLAUSE_JOINS)
    verb = ("are " if len(a2) > 1 else "is ") if "while" in join else ""
    text = join.format(x=f"{p1a.text} {r1} {p1b.text}", y=f"{p2a.text} {verb}{r2} {p2b.text}")
    return Caption(text, p1a.mentions + p1b.mentions + p2a.mentions + p2b.mentions, s1 + s2)


def _list(scene: Scene, rng: np.random.Generator) -> Caption:
    refs = referents(scene)
    k = int(rng.integers(2, min(len(refs), 3) + 1))
    chosen = sorted(int(r) for r in rng.choice(len(refs), size=k, replace=False))
    phrases = [_phrase_for(scene, refs[c], n, rng, p_scale=0.8) for n, c in enumerate(chosen)]
    texts = [p.text for p in phrases]
    joined = " and ".join(texts) if k == 2 else f"{', '.join(texts[:-1])}{',' if rng.random() < 0.3 else ''} and {texts[-1]}"
    frame = _pick(rng, LIST_FRAMES)
    return Caption(_fill(frame, scene, list=joined), tuple(m for p in phrases for m in p.mentions), ())


def _attribute(scene: Scene, rng: np.random.Generator) -> Caption:
    """ "a star that is red" / "the star is striped": one attribute as a predicate."""
    i = int(rng.integers(len(scene.objects)))
    obj = scene.objects[i]
    kind = _pick(rng, [("color", 3), ("size", 1)] + ([("pattern", 2)] if obj.pattern != "plain" else []))
    value = obj.value(kind)
    word = _pick(rng, {"color": COLOUR_SYNONYMS.get(value, [(value, 1)]), "size": SIZE_WORDS.get(value, []),
                       "pattern": PATTERN_WORDS.get(value, [])}[kind])
    noun = _noun(obj.shape, rng)
    frame = _pick(rng, ATTRIBUTE_FRAMES)
    text = frame.format(a=f"{_article(noun)} {noun}", the=f"the {noun}", adj=word)
    return Caption(text, (ObjectMention(i, noun, ((kind, value),), (word,), 0),), ())


_KINDS = {"single": _single, "relation": _relation, "list": _list, "two_relations": _two_relations,
          "attribute": _attribute}


def _fill(frame: str, scene: Scene, **parts: str) -> str:
    return frame.format(bg=scene.background, **parts)


def allowed_kinds(scene: Scene) -> list[str]:
    n_refs, n_rels = len(referents(scene)), len(referent_relations(scene))
    ok = {"single": True, "attribute": True, "list": n_refs >= 2, "relation": n_rels >= 1, "two_relations": n_rels >= 2}
    return [k for k in KIND_WEIGHTS if ok[k]]


def caption_for(scene: Scene, rng: np.random.Generator) -> Caption:
    kinds = allowed_kinds(scene)
    kind = _pick(rng, [(k, KIND_WEIGHTS[k]) for k in kinds])
    return _KINDS[kind](scene, rng)


def full_phrase(scene: Scene, ref: tuple[int, ...], phrase: int, rng: np.random.Generator) -> _Phrase:
    """A referent with every attribute it has: "a large solid red star", "two small striped blue hearts"
    (size, pattern, colour: the order the parser reads; no size before "cross", which it misreads)."""
    objs = [scene.objects[i] for i in ref]
    attrs = [("count", str(len(ref)), NUMBER_WORDS[len(ref)])] if len(ref) > 1 else []
    if len({o.size for o in objs}) == 1 and objs[0].shape != "cross":
        attrs.append(("size", objs[0].size, _pick(rng, SIZE_WORDS[objs[0].size])))
    if len({o.pattern for o in objs}) == 1:
        attrs.append(("pattern", objs[0].pattern, _pick(rng, PATTERN_WORDS[objs[0].pattern])))
    attrs.append(("color", objs[0].colour, _pick(rng, COLOUR_SYNONYMS.get(objs[0].colour, [(objs[0].colour, 1)]))))
    shape = objs[0].shape
    noun = _noun(shape, rng) if len(ref) == 1 else PLURALS.get(shape, shape + "s")
    lemma = noun if len(ref) == 1 else shape
    core = " ".join([w for _, _, w in attrs] + [noun])
    mentions = tuple(ObjectMention(i, lemma, tuple((t, v) for t, v, _ in attrs), tuple(w for _, _, w in attrs),
                                   phrase) for i in ref)
    return _Phrase(core if len(ref) > 1 else f"{_article(core)} {core}", mentions)


def _dense(scene: Scene, rng: np.random.Generator) -> Caption:
    """Every object with all its attributes, and the background: the caption-detail knob's kind."""
    phrases = [full_phrase(scene, ref, n, rng) for n, ref in enumerate(referents(scene))]
    texts = [p.text for p in phrases]
    joined = texts[0] if len(texts) == 1 else f"{', '.join(texts[:-1])} and {texts[-1]}"
    return Caption(_fill("{list} on a {bg} background", scene, list=joined),
                   tuple(m for p in phrases for m in p.mentions), ())


def captions_for(scene: Scene, n: int, rng: np.random.Generator, detail: float = 0.0) -> list[Caption]:
    """``n`` captions of ``scene`` (distinct texts where the scene allows; draws only from ``rng``).

    ``detail``: the chance that a caption is "dense" (every object with all its attributes, and the
    background) instead of one of the web-like kinds.  At 0 nothing extra is drawn, so the captions are
    exactly those of a world without the knob."""
    def one() -> Caption:
        if detail > 0 and rng.random() < detail:
            return _dense(scene, rng)
        return caption_for(scene, rng)

    out: list[Caption] = []
    seen: set[str] = set()
    for _ in range(8 * n):
        if len(out) == n:
            break
        c = one()
        if c.text not in seen:
            seen.add(c.text)
            out.append(c)
    while len(out) < n:  # a tiny scene may have fewer distinct captions than asked for
        out.append(one())
    return out


# ----------------------------------------------------------------------------------------- consistency
_NOUN_TO_SHAPE = {w: shape for shape, ws in NOUN_SYNONYMS.items() for w, _ in ws}


def stated_background(text: str, backgrounds: Sequence[str]) -> str | None:
    """The background a caption names ("... on a teal background"), or None."""
    for bg in backgrounds:
        if f"on a {bg} background" in text:
            return bg
    return None


def consistent(caption: Caption, scene: Scene, backgrounds: Sequence[str] = ()) -> bool:
    """Whether ``caption`` (written for some scene) is a true description of ``scene``.

    True when the caption's mentioned objects can be assigned to distinct objects of ``scene`` such that
    every noun names the object's kind, every stated attribute is its value, a group ("two red stars")
    is all of the scene's objects of that kind and colour, every stated relation holds, and a stated
    background (one of ``backgrounds``) is the scene's.  A single noun phrase ("a red star") is true of
    any matching object.  A perfect model cannot tell apart the images a caption is consistent with,
    which bounds 1,000-way retrieval (evaluator/retrieval.py).
    """
    bg = stated_background(caption.text, backgrounds)
    if bg is not None and bg != scene.background:
        return False
    kinds: dict[tuple[str, str], int] = {}
    for o in scene.objects:
        kinds[(o.shape, o.colour)] = kinds.get((o.shape, o.colour), 0) + 1

    def fits(m: ObjectMention, j: int) -> bool:
        o = scene.objects[j]
        if _NOUN_TO_SHAPE.get(m.noun, m.noun) != o.shape:
            return False
        for kind, value in m.attrs:
            if kind == "count":
                if kinds[(o.shape, o.colour)] != int(value):
                    return False
            elif o.value(kind) != value:
                return False
        return True

    by_index: dict[int, list[ObjectMention]] = {}  # one object may be named twice (two clauses)
    for m in caption.objects:
        by_index.setdefault(m.index, []).append(m)
    candidates = {i: [j for j in range(len(scene.objects)) if all(fits(m, j) for m in ms)]
                  for i, ms in by_index.items()}
    if any(not c for c in candidates.values()):
        return False
    facts = set(scene.relations)
    order = sorted(candidates, key=lambda i: len(candidates[i]))
    assign: dict[int, int] = {}  # caption's object index -> scene object index

    def relations_hold() -> bool:
        return all((assign[s], p, assign[o]) in facts for s, p, o in caption.relations
                   if s in assign and o in assign)

    def search(pos: int) -> bool:
        if pos == len(order):
            return True
        i = order[pos]
        for j in candidates[i]:
            if j in assign.values():
                continue
            assign[i] = j
            if relations_hold() and search(pos + 1):
                return True
            del assign[i]
        return False

    return search(0)
