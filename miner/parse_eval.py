"""Scene-graph parser CLIs: ``parse`` (captions -> JSONL graphs) and ``parse-eval`` (FACTUAL metrics).

``python -m miner parse --input CAPTIONS.txt --output GRAPHS.jsonl``
``python -m miner parse-eval --gold FILE.csv [--limit N] [--output METRICS.json] [--batch-size 256]``

Both take local paths or ``s3://`` URIs (through :mod:`cluster.storage`), check every input and the output
before loading the model, and write their output atomically at the end (a failed run leaves an existing
output as it was).  ``--drop-meta-nouns false`` keeps "photo", "view", ... in the graphs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

from cluster import storage
from cluster.config import ConfigError, option, parse_config, required
from cluster.progress import Progress
from cluster.stage import InputError
from miner.parser import ModelLoadError, SceneGraphParser

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


GOLD_COLUMNS = ("caption", "scene_graph")


def read_gold(uri: str | Path, limit: int | None = None) -> list[tuple[str, set[Triple]]]:
    """(caption, gold triples) rows of a FACTUAL CSV (local path or s3:// URI)."""
    loc = storage.require_input(str(uri))
    reader = csv.DictReader(io.StringIO(storage.read_bytes(loc).decode("utf-8", errors="replace"), newline=""))
    missing = [c for c in GOLD_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise InputError(f"{loc.uri}: not a FACTUAL CSV, no {missing} column (expected "
                         f"image_id,region_id,caption,scene_graph; got {reader.fieldnames})")
    rows: list[tuple[str, set[Triple]]] = []
    for row in reader:
        if limit is not None and len(rows) >= limit:
            break
        rows.append((row["caption"], parse_gold_graph(row["scene_graph"])))
    if not rows:
        raise InputError(f"{loc.uri}: no gold rows")
    return rows


# -- normalisation -------------------------------------------------------------
class TripleNormaliser:
    """Lowercase and lemmatise every word with spaCy's rule lemmatizer, by slot.

    Words are lemmatised out of context with a fixed part of speech per slot
    (subject/object words as nouns, predicate words as verbs, attribute values as
    adjectives), so the same string always normalises the same way on both sides.
    """

    def __init__(self, nlp: Language) -> None:
        # disabled when SceneGraphParser memoises it: its tables are all this uses
        self._lemmatizer = nlp.get_pipe("lemmatizer") if "lemmatizer" in nlp.component_names else None
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
    rows: list[tuple[str, set[Triple]]] | None = None,
) -> dict[str, Any]:
    """Parse the gold CSV's captions and score them against its scene graphs (``rows``: already read)."""
    rows = read_gold(gold_path, limit) if rows is None else rows
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
@dataclass(frozen=True)
class ParseEvalConfig:
    """Score the scene-graph parser against FACTUAL-style gold graphs (micro P/R/F1, exact match)."""

    gold: str = required("FACTUAL CSV (image_id,region_id,caption,scene_graph): local path or s3://bucket/key",
                         uri=True)
    limit: int | None = option(None, "only the first N captions", min=1)
    output: str | None = option(None, "also write the metrics JSON here (local path or s3://bucket/key)", uri=True)
    batch_size: int = option(256, "captions per nlp.pipe batch", min=1)
    model: str = option("en_core_web_sm", "spaCy pipeline: an installed package or a model folder")
    drop_meta_nouns: bool = option(True, "leave picture-describing nouns (photo, view, ...: "
                                         "miner.lexicon.META_NOUNS) out of the graphs")
    meta_nouns: tuple[str, ...] | None = option(None, "head nouns to drop instead of miner.lexicon.META_NOUNS")


@dataclass(frozen=True)
class ParseConfig:
    """Parse captions (one per line) into scene graphs, one JSON object per input line, in order."""

    input: str = required("captions, one per line, UTF-8 (bad bytes become U+FFFD): local path or "
                          "s3://bucket/key", uri=True)
    output: str = required("JSON lines output, written atomically once every caption is parsed (an existing "
                           "file is replaced only then): local path or s3://bucket/key", uri=True)
    batch_size: int = option(256, "captions per nlp.pipe batch", min=1)
    model: str = option("en_core_web_sm", "spaCy pipeline: an installed package or a model folder")
    drop_meta_nouns: bool = option(True, "leave picture-describing nouns (photo, view, ...: "
                                         "miner.lexicon.META_NOUNS) out of the graphs")
    meta_nouns: tuple[str, ...] | None = option(None, "head nouns to drop instead of miner.lexicon.META_NOUNS")
    progress_interval_s: float = option(5.0, "seconds between progress lines (on stderr)", min=0.1)


def make_parser(cfg: ParseConfig | ParseEvalConfig) -> SceneGraphParser:
    """The configured parser; a bad model or meta-noun list is a :class:`ConfigError` naming the flag."""
    try:
        return SceneGraphParser(cfg.model, cfg.batch_size, cfg.drop_meta_nouns, cfg.meta_nouns)
    except ModelLoadError as err:
        raise ConfigError(f"--model: {err}") from err
    except ValueError as err:
        raise ConfigError(f"--meta-nouns: {err}") from err


def require_input_file(uri: str) -> storage.Location:
    loc = storage.require_input(uri)
    if storage.file_info(loc).type != pafs.FileType.File:
        raise storage.StorageError(f"input is not a file: {uri}")
    return loc


def require_output_file(uri: str) -> storage.Location:
    """An output file's location, checked before any work: not a directory, and its folder writable."""
    loc = storage.resolve(uri)
    if storage.file_info(loc).type == pafs.FileType.Directory:
        raise storage.StorageError(f"output is a directory, not a file: {uri}")
    parent = loc.uri.rsplit("/", 1)[0] if loc.is_s3 else os.path.dirname(loc.path)
    storage.require_writable(parent)
    return loc


def main(argv: list[str] | None = None) -> int:
    """``parse-eval``: score the parser on a FACTUAL-style CSV."""
    cfg = parse_config(ParseEvalConfig, argv, prog="python -m miner parse-eval")
    rows = read_gold(cfg.gold, cfg.limit)  # inputs and output checked before the model loads
    out = require_output_file(cfg.output) if cfg.output else None
    metrics = evaluate(cfg.gold, cfg.limit, cfg.batch_size, make_parser(cfg), rows=rows)
    metrics["drop_meta_nouns"] = cfg.drop_meta_nouns
    print(format_table(metrics))
    text = json.dumps(metrics, indent=2, sort_keys=True)
    print(text)
    if out is not None:
        storage.write_bytes_atomic(out, (text + "\n").encode("utf-8"))
    return 0


def iter_captions(uri: str | Path) -> Iterator[str]:
    """One caption per line of a local file or S3 object: UTF-8 with errors replaced, only the line ending
    removed (read in blocks, so a large input is never held whole)."""
    loc = storage.resolve(str(uri))
    with loc.fs.open_input_stream(loc.path) as src:
        rest = b""
        while block := src.read(1 << 20):
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            yield from (_decode_line(line) for line in lines)
        if rest:
            yield _decode_line(rest)


def _decode_line(line: bytes) -> str:
    return (line[:-1] if line.endswith(b"\r") else line).decode("utf-8", errors="replace")


def parse_main(argv: list[str] | None = None) -> int:
    """``parse``: captions (one per line) -> one JSON scene graph per line, same order."""
    cfg = parse_config(ParseConfig, argv, prog="python -m miner parse")
    src = require_input_file(cfg.input)  # every check before any work; the output is untouched until the end
    out = require_output_file(cfg.output)
    parser = make_parser(cfg)
    progress = Progress("parse", None, "captions", cfg.progress_interval_s,
                        emit=lambda line: print(line, file=sys.stderr, flush=True))
    lines: list[bytes] = []
    for graph in parser.iter_parse(iter_captions(src.uri)):
        lines.append((json.dumps(graph, ensure_ascii=False) + "\n").encode("utf-8"))
        progress.update(1)
    progress.finish()
    storage.write_bytes_atomic(out, b"".join(lines))
    print(f"parsed {len(lines)} captions -> {out.uri}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
