"""Input readers: caption corpora -> deterministic shards -> (key, url, caption) records or counted skips.

Formats: ``cc3m-tsv`` (``caption<TAB>url``, no header), ``jsonl`` (objects with ``caption``/``text``,
``url`` and optional ``key``), ``parquet`` (img2dataset-style: ``caption``, ``url``, optional ``key``; with img2dataset's ``status``
column, rows not ``"success"`` are skipped as ``not_downloaded``).
Text inputs are split into byte ranges (a line belongs to the shard its first byte falls in); Parquet
inputs into runs of row groups.  Shard ids are the position in the sorted plan, so the same input and
shard size always give the same shards and the same generated keys.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow.parquet as pq

from cluster import storage

FORMATS = ("cc3m-tsv", "jsonl", "parquet")
_SUFFIXES = {"cc3m-tsv": (".tsv", ".txt", ".csv"), "jsonl": (".jsonl", ".json"), "parquet": (".parquet",)}
_CHUNK = 1 << 16

# Skip reasons, each counted in the manifest with the first few examples.
EMPTY, TOO_LONG, BAD_UTF8, BAD_FIELDS, BAD_JSON, NON_ENGLISH, NO_LETTERS, NOT_DOWNLOADED = (
    "empty_caption", "caption_too_long", "not_utf8", "wrong_field_count", "bad_json", "non_english",
    "no_letters", "not_downloaded")

_FOREIGN_WORDS = frozenset(
    "le la les des une est et dans avec sur der die das und ein eine ist mit auf von el los las y en "
    "con una del por il gli della che di un per o da na em um uma com não är och på av het een van "
    "zijn op".split())
_ENGLISH_WORDS = frozenset(
    "a an the of in on with and at to is are by for from near next his her their its this that".split())
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
EXAMPLE_CHARS = 80  # characters of bad input kept as a skip's example


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: bytes [start, end) of a text file, or row groups [start, end) of a Parquet file."""

    shard_id: int
    uri: str
    fmt: str
    start: int
    end: int


@dataclass
class Record:
    key: str
    url: str
    caption: str
    row: int  # position within the shard, counting skipped lines too


@dataclass
class Skip:
    reason: str
    row: int
    example: str


@dataclass(frozen=True)
class CaptionRules:
    max_caption_chars: int = 1000
    min_ascii_letter_ratio: float = 0.9


def plan_shards(input_uri: str, fmt: str, shard_bytes: int, row_groups_per_shard: int = 1) -> list[ShardSpec]:
    """Deterministic shards for every input file under ``input_uri`` (a file or a directory/prefix)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; expected one of {FORMATS}")
    root = storage.require_input(input_uri)
    files = storage.list_files(root)
    if len(files) > 1:
        files = [f for f in files if f.path.endswith(_SUFFIXES[fmt])]
    if not files:
        raise storage.StorageError(f"no {fmt} files under {input_uri}")
    specs: list[ShardSpec] = []
    for loc in files:
        for start, end in _ranges(loc, fmt, shard_bytes, row_groups_per_shard):
            specs.append(ShardSpec(len(specs), loc.uri, fmt, start, end))
    return specs


def _ranges(loc: storage.Location, fmt: str, shard_bytes: int, groups: int) -> list[tuple[int, int]]:
    if fmt == "parquet":
        with loc.fs.open_input_file(loc.path) as f:
            n = pq.ParquetFile(f).metadata.num_row_groups
        return [(s, min(s + groups, n)) for s in range(0, n, groups)]
    size = storage.file_info(loc).size
    return [(s, min(s + shard_bytes, size)) for s in range(0, size, shard_bytes)] or [(0, 0)]


def read_shard(spec: ShardSpec, rules: CaptionRules) -> Iterator[Record | Skip]:
    """Records and skips of one shard, in input order."""
    loc = storage.resolve(spec.uri)
    if spec.fmt == "parquet":
        yield from _parquet_records(loc, spec, rules)
        return
    for row, raw in enumerate(_lines(loc, spec.start, spec.end)):
        yield _text_record(spec, row, raw, rules)


def generated_key(shard_id: int, row: int) -> str:
    """img2dataset-style key: 5 digits of shard, 7 of row."""
    return f"{shard_id:05d}{row:07d}"


def _lines(loc: storage.Location, start: int, end: int) -> Iterator[bytes]:
    with loc.fs.open_input_file(loc.path) as f:
        pos = start
        if start > 0:
            f.seek(start - 1)
            pos = start - 1 + len(_read_through_newline(f, b""))
        if pos >= end:
            return
        f.seek(pos)
        data = f.read(end - pos)
        if data and not data.endswith(b"\n"):
            data = _read_through_newline(f, data)
    if data.endswith(b"\n"):
        data = data[:-1]  # no empty piece after the final newline
    for line in data.split(b"\n") if data else ():
        yield line[:-1] if line.endswith(b"\r") else line

def _read_through_newline(f, data: bytes) -> bytes:
    """Extend ``data`` by reading ``f`` up to and including the next newline (or EOF)."""
    while True:
        more = f.read(_CHUNK)
        if not more:
            return data
        idx = more.find(b"\n")
        if idx >= 0:
            return data + more[: idx + 1]
        data += more


def _text_record(spec: ShardSpec, row: int, raw: bytes, rules: CaptionRules) -> Record | Skip:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Skip(BAD_UTF8, row, safe_example(raw))
    if not text.strip():
        return Skip(EMPTY, row, "blank line")
    if spec.fmt == "cc3m-tsv":
        fields = text.split("\t")
        if len(fields) != 2:
            return Skip(BAD_FIELDS, row, f"{len(fields)} fields: {safe_example(text)}")
        caption, url, key = fields[0], fields[1].strip(), None
    else:
        try:
            obj = json.loads(text)
            caption = obj.get("caption", obj.get("text"))
            url, key = str(obj.get("url") or ""), obj.get("key")
        except (json.JSONDecodeError, AttributeError) as err:
            return Skip(BAD_JSON, row, f"{err}: {safe_example(text)}")
        if not isinstance(caption, str):
            return Skip(EMPTY, row, safe_example(text))
    return check_caption(caption, url, str(key) if key else generated_key(spec.shard_id, row), row, rules)


def _parquet_records(loc: storage.Location, spec: ShardSpec, rules: CaptionRules) -> Iterator[Record | Skip]:
    with loc.fs.open_input_file(loc.path) as f:
        pf = pq.ParquetFile(f)
        names = set(pf.schema_arrow.names)
        text_col = "caption" if "caption" in names else "text"
        cols = [c for c in (text_col, "url", "key", "status", "error_message") if c in names]
        if text_col not in names:
            raise ValueError(f"{spec.uri}: parquet input needs a 'caption' or 'text' column, has {sorted(names)}")
        table = pf.read_row_groups(list(range(spec.start, spec.end)), columns=cols)
    data = {c: table.column(c).to_pylist() for c in cols}
    for row, caption in enumerate(data[text_col]):
        key = data["key"][row] if "key" in data and data["key"][row] else generated_key(spec.shard_id, row)
        url = data["url"][row] if "url" in data else ""
        if caption is None:
            yield Skip(EMPTY, row, f"null caption (key {safe_example(str(key))})")
            continue
        if "status" in data and data["status"][row] != "success":
            yield _not_downloaded(data, row, key)
            continue
        yield check_caption(str(caption), url or "", str(key), row, rules)


def _not_downloaded(data: dict[str, list], row: int, key) -> Skip:
    """img2dataset's Parquet lists every input row with its download ``status``; a row whose image was not
    fetched ("failed_to_download", "failed_to_resize") has no image to mine, train or evaluate on."""
    error = data["error_message"][row] if "error_message" in data else None
    return Skip(NOT_DOWNLOADED, row, safe_example(f"key {key}: {data['status'][row]}"
                                                  + (f" ({error})" if error else "")))


def safe_example(value: str | bytes, limit: int = EXAMPLE_CHARS) -> str:
    """A short printable excerpt of bad input for messages and manifests: at most ``limit`` characters
    of it, undecodable bytes as ``\\xNN`` and every non-printable character escaped, so that (say) a
    JPEG given as ``--input`` is never echoed raw to a terminal."""
    text = value[: 4 * limit].decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
    kept = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit])
    return kept + ("..." if len(text) > limit else "")


def check_caption(caption: str, url: str, key: str, row: int, rules: CaptionRules) -> Record | Skip:
    """Validate one caption; a failure is a Skip with its reason and a short example."""
    text = " ".join(caption.split())
    if not text:
        return Skip(EMPTY, row, repr(caption[:40]))  # repr: already printable
    if len(text) > rules.max_caption_chars:
        return Skip(TOO_LONG, row, f"{len(text)} chars: {safe_example(text)}")
    reason = language_problem(text, rules.min_ascii_letter_ratio)
    if reason:
        return Skip(reason, row, safe_example(text))
    return Record(key=key, url=url, caption=text, row=row)


def language_problem(text: str, min_ascii_ratio: float) -> str | None:
    """``non_english`` / ``no_letters`` for text the English parser should not see, else None."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return NO_LETTERS
    ascii_ratio = sum(c.isascii() for c in letters) / len(letters)
    if ascii_ratio < min_ascii_ratio:
        return NON_ENGLISH
    words = [w.lower() for w in _WORD.findall(text)]
    foreign = sum(w in _FOREIGN_WORDS for w in words)
    english = sum(w in _ENGLISH_WORDS for w in words)
    if foreign >= 2 and foreign > 2 * english:
        return NON_ENGLISH
    return None


@dataclass
class SkipCounter:
    """Skips counted by reason, with the first few examples of each."""

    max_examples: int = 3
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, skip: Skip, where: str) -> None:
        self.counts[skip.reason] = self.counts.get(skip.reason, 0) + 1
        ex = self.examples.setdefault(skip.reason, [])
        if len(ex) < self.max_examples:
            ex.append(f"{where} row {skip.row}: {skip.example}")

    def merge(self, counts: dict[str, int], examples: dict[str, list[str]]) -> None:
        for reason, n in counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
            ex = self.examples.setdefault(reason, [])
            ex.extend(examples.get(reason, [])[: self.max_examples - len(ex)])
