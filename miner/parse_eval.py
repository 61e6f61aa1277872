"""Scene-graph parser CLIs: ``parse`` (captions -> JSONL graphs) and ``parse-eval`` (FACTUAL metrics).

``python -m miner parse --input CAPTIONS.txt --output GRAPHS.jsonl``
``python -m miner parse-eval --gold FILE.csv [--limit N] [--output METRICS.json] [--batch-size 256]``
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from miner.parser import SceneGraphParser

if TYPE_CHECKING:
    from spacy.language import Language

Triple = tuple[str, str, str]

_GROUP_RE = re.compile(r"\(([^()]*)\)")
ATTRIBUTE_PREDICATE = "is"


# -- gold / predicted triples -------------------------------------------------
def parse_gold_graph(text: str) -> set[Triple]:
    """FACTUAL ``"( stove , is , white ) , ( pole )"`` -> {("stove", "is", "white")}."""
    triples: set[Triple] = set()
    for group in _GROUP_RE.findall(text or ""):
        parts = [p.strip() for p in group.split(",")]
        if len(parts) == 3 and all(parts):
            triples.add((parts[0], parts[1], parts[2]))
    return triples


def graph_triples(graph: dict[str, Any]) -> set[Triple]:
    """Our graph -> relation triples plus ``(name, "is", attribute)`` triples."""
    entities = graph["entities"]
    triples: set[Triple] = set()
    for entity in entities:
        for attribute in entity["attributes"]:
            triples.add((entity["name"], ATTRIBUTE_PREDICATE, attribute))
    for rel in graph["relations"]:
        triples.add((entities[rel["subject"]]["name"], rel["predicate"], entities[rel["object"]]["name"]))
    return triples


def read_gold(path: str | Path, limit: int | None = None) -> list[tuple[str, set[Triple]]]:
    rows: list[tuple[str, set[Triple]]] = []
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        for row in csv.DictReader(handle):
            if limit is not None and len(rows) >= limit:
                break
            rows.append((row["caption"], parse_gold_graph(row.get("scene_graph", ""))))
    return rows


# -- normalisation -------------------------------------------------------------
class TripleNormaliser:
    """Lowercase and lemmatise every word with spaCy's rule lemmatizer, by slot.

    Words are lemmatised out of context with a fixed part of speech per slot
    (subject/object words as nouns, predicate words as verbs, attribute values as
    adjectives), so the same string always normalises the same way on both sides.
    """

    def __init__(self, nlp: Language) -> None:
        self._lemmatizer = nlp.get_pipe("lemmatizer") if "lemmatizer" in nlp.pipe_names else None
        self._index = self._table("lemma_index")
        self._exceptions = self._table("lemma_exc")
        self._rules = self._table("lemma_rules")
        self._cache: dict[tuple[str, str], str] = {}

    def _table(self, name: str) -> Any:
        lookups = getattr(self._lemmatizer, "lookups", None)
        if lookups is None or not lookups.has_table(name):
            return {}
        return lookups.get_table(name)

    def word(self, word: str, pos: str) -> str:
        """Lemma of one lowercase word read as part of speech ``pos``."""
        key = (word, pos)
        if key not in self._cache:
            self._cache[key] = self._lemmatise(word, pos)
        return self._cache[key]

    def _lemmatise(self, word: str, pos: str) -> str:
        """Exceptions, then suffix rules whose result is a known lemma, then the word."""
        key = pos.lower()
        exceptions = self._exceptions.get(key, {}).get(word)
        if exceptions:
            return exceptions[0]
        index = self._index.get(key, ())
        if word in index and not word.endswith("s"):
            return word  # a known base form: "vase" must not become "va"
        for old, new in self._rules.get(key, ()):
            if word.endswith(old) and len(word) > len(old):
                form = word[: len(word) - len(old)] + new
                if form in index:
                    return form
        return word  # unknown or already base: "grass", "bus"

    def phrase(self, text: str, pos: str) -> str:
        return " ".join(self.word(w, pos) for w in text.lower().split())

    def triple(self, triple: Triple) -> Triple:
        subject, predicate, obj = triple
        obj_pos = "ADJ" if predicate.strip().lower() == ATTRIBUTE_PREDICATE else "NOUN"
        return (self.phrase(subject, "NOUN"), self.phrase(predicate, "VERB"), self.phrase(obj, obj_pos))

    def triples(self, triples: Iterable[Triple]) -> set[Triple]:
        return {self.triple(t) for t in triples}


def _is_relation(triple: Triple) -> bool:
    return triple[1].strip().lower() != ATTRIBUTE_PREDICATE


# -- metrics -------------------------------------------------------------------
def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def score(
    gold: Sequence[set[Triple]], predicted: Sequence[set[Triple]], normaliser: TripleNormaliser
) -> dict[str, Any]:
    """Micro P/R/F1 over all triples and relation triples, plus exact-set-match rate."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold graphs but {len(predicted)} predictions")
    counts = dict.fromkeys(("tp", "pred", "gold", "rel_tp", "rel_pred", "rel_gold", "exact"), 0)
    for gold_raw, pred_raw in zip(gold, predicted):
        g_all, p_all = normaliser.triples(gold_raw), normaliser.triples(pred_raw)
        g_rel = normaliser.triples(t for t in gold_raw if _is_relation(t))
        p_rel = normaliser.triples(t for t in pred_raw if _is_relation(t))
        counts["tp"] += len(g_all & p_all)
        counts["pred"] += len(p_all)
        counts["gold"] += len(g_all)
        counts["rel_tp"] += len(g_rel & p_rel)
        counts["rel_pred"] += len(p_rel)
        counts["rel_gold"] += len(g_rel)
        counts["exact"] += int(g_all == p_all)
    precision, recall, f1 = _prf(counts["tp"], counts["pred"], counts["gold"])
    r_p, r_r, r_f1 = _prf(counts["rel_tp"], counts["rel_pred"], counts["rel_gold"])
    n = len(gold)
    return {
        "captions": n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "relation_precision": r_p,
        "relation_recall": r_r,
        "relation_f1": r_f1,
        "exact_match": counts["exact"] / n if n else 0.0,
        "gold_triples": counts["gold"],
        "predicted_triples": counts["pred"],
        "true_positives": counts["tp"],
    }


def evaluate(
    gold_path: str | Path,
    limit: int | None = None,
    batch_size: int = 256,
    parser: SceneGraphParser | None = None,
) -> dict[str, Any]:
    """Parse the gold CSV's captions and score them against its scene graphs."""
    rows = read_gold(gold_path, limit)
    parser = parser or SceneGraphParser(batch_size=batch_size)
    start = time.perf_counter()
    graphs = parser.parse_many([caption for caption, _ in rows])
    seconds = time.perf_counter() - start
    metrics = score([g for _, g in rows], [graph_triples(g) for g in graphs], TripleNormaliser(parser.nlp))
    metrics["parse_seconds"] = seconds
    metrics["captions_per_second"] = len(rows) / seconds if seconds > 0 else 0.0
    return metrics


def format_table(metrics: dict[str, Any]) -> str:
    lines = [f"{'metric':<22}{'value':>10}", "-" * 32]
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<22}{shown:>10}")
    return "\n".join(lines)


# -- CLIs ----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``parse-eval``: score the parser on a FACTUAL-style CSV."""
    ap = argparse.ArgumentParser(prog="python -m miner parse-eval", description=__doc__)
    ap.add_argument("--gold", required=True, help="FACTUAL CSV: image_id,region_id,caption,scene_graph")
    ap.add_argument("--limit", type=int, default=None, help="only the first N captions")
    ap.add_argument("--output", default=None, help="write the metrics JSON here")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--model", default="en_core_web_sm")
    args = ap.parse_args(argv)
    parser = SceneGraphParser(model=args.model, batch_size=args.batch_size)
    metrics = evaluate(args.gold, args.limit, args.batch_size, parser)
    print(format_table(metrics))
    text = json.dumps(metrics, indent=2, sort_keys=True)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    return 0


def iter_captions(path: str | Path) -> Iterator[str]:
    """One caption per line: UTF-8 with errors replaced, only the line ending removed."""
    with open(path, "rb") as handle:
        for raw in handle:
            line = raw[:-1] if raw.endswith(b"\n") else raw
            if line.endswith(b"\r"):
                line = line[:-1]
            yield line.decode("utf-8", errors="replace")


def parse_main(argv: list[str] | None = None) -> int:
    """``parse``: captions (one per line) -> one JSON scene graph per line, same order."""
    ap = argparse.ArgumentParser(prog="python -m miner parse", description=__doc__)
    ap.add_argument("--input", required=True, help="UTF-8 text file, one caption per line")
    ap.add_argument("--output", required=True, help="JSONL output, one graph per input line")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--model", default="en_core_web_sm")
    args = ap.parse_args(argv)
    parser = SceneGraphParser(model=args.model, batch_size=args.batch_size)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(args.output, "w", encoding="utf-8") as out:
        for graph in parser.iter_parse(iter_captions(args.input)):
            out.write(json.dumps(graph, ensure_ascii=False) + "\n")
            count += 1
    print(f"parsed {count} captions -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
