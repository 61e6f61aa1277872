"""Readers: deterministic shards, every bad-input case a counted skip, formats read alike."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cluster.storage import StorageError
from miner.readers import (BAD_FIELDS, BAD_JSON, BAD_UTF8, EMPTY, EXAMPLE_CHARS, NO_LETTERS, NON_ENGLISH,
                           NOT_DOWNLOADED, TOO_LONG, CaptionRules, Record, Skip, SkipCounter, plan_shards, read_shard,
                           safe_example)

RULES = CaptionRules()

BAD_LINES = [
    (b"a dog on a red sofa\thttp://x/1.jpg", None),
    (b"   \thttp://x/2.jpg", EMPTY),
    (b"\thttp://x/3.jpg", EMPTY),
    (b"caf\xe9 \xff on a table\thttp://x/4.jpg", BAD_UTF8),
    (b"no url here", BAD_FIELDS),
    (b"too\tmany\tfields", BAD_FIELDS),
    (("word " * 20_000).encode() + b"\thttp://x/7.jpg", TOO_LONG),
    ("一只狗坐在红色沙发上\thttp://x/8.jpg".encode(), NON_ENGLISH),
    ("un chien est assis sur le canapé avec une balle\thttp://x/9.jpg".encode(), NON_ENGLISH),
    (b"1234 5678\thttp://x/10.jpg", NO_LETTERS),
    (b"a man riding a horse on the beach\thttp://x/11.jpg", None),
]


def _all(specs):
    return [item for spec in specs for item in read_shard(spec, RULES)]


def test_every_bad_line_is_a_counted_skip_by_reason(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"\n".join(line for line, _ in BAD_LINES) + b"\n")
    items = _all(plan_shards(str(path), "cc3m-tsv", 1 << 20))
    assert len(items) == len(BAD_LINES)
    for item, (_, reason) in zip(items, BAD_LINES):
        if reason is None:
            assert isinstance(item, Record)
        else:
            assert isinstance(item, Skip) and item.reason == reason, item


@pytest.mark.parametrize("shard_bytes", [7, 64, 1000, 1 << 20])
def test_shard_boundaries_never_lose_or_duplicate_a_line(cc3m_tsv, tmp_path, shard_bytes):
    head = cc3m_tsv.read_bytes()[:20_000]
    head = head[: head.rfind(b"\n") + 1] + b"last line without newline\thttp://x/last.jpg"
    f = tmp_path / "c.tsv"
    f.write_bytes(head)
    captions = [r.caption for r in _all(plan_shards(str(f), "cc3m-tsv", shard_bytes)) if isinstance(r, Record)]
    expected = [" ".join(line.split(b"\t")[0].decode().split()) for line in head.split(b"\n")]
    assert captions == expected


def test_keys_are_deterministic_and_unique(cc3m_tsv):
    specs = plan_shards(str(cc3m_tsv), "cc3m-tsv", 500_000)
    keys1 = [r.key for r in _all(specs)]
    keys2 = [r.key for r in _all(plan_shards(str(cc3m_tsv), "cc3m-tsv", 500_000))]
    assert keys1 == keys2 and len(set(keys1)) == len(keys1) == 15_833


def test_jsonl_and_parquet_inputs(tmp_path):
    rows = [{"caption": "a cat on a mat", "url": "u1", "key": "k1"}, {"text": "two dogs", "url": "u2"},
            {"caption": None, "url": "u3"}]
    jl = tmp_path / "in.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    items = _all(plan_shards(str(jl), "jsonl", 1 << 20))
    assert [type(i).__name__ for i in items] == ["Record", "Record", "Skip", "Skip"]
    assert items[0].key == "k1" and items[1].caption == "two dogs"
    assert items[2].reason == EMPTY and items[3].reason == BAD_JSON

    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    table = pa.table({"caption": ["a red car", None, "  "], "url": ["a", "b", "c"], "key": ["0", "1", "2"]})
    pq.write_table(table, pq_dir / "000.parquet", row_group_size=2)
    specs = plan_shards(str(pq_dir), "parquet", 0, row_groups_per_shard=1)
    assert len(specs) == 2
    items = _all(specs)
    assert isinstance(items[0], Record) and items[0].key == "0"
    assert [i.reason for i in items[1:]] == [EMPTY, EMPTY]


def test_img2dataset_rows_without_an_image_are_counted_skips(tmp_path):
    """img2dataset's per-shard Parquet keeps failed downloads with their status: no image, no triplet."""
    table = pa.table({"caption": ["a red car", "a blue bus", "a dog"], "url": ["a", "b", "c"],
                      "key": ["000000000", "000000001", "000000002"],
                      "status": ["success", "failed_to_download", "success"],
                      "error_message": [None, "HTTP Error 404: Not Found", None]})
    pq.write_table(table, tmp_path / "00000.parquet")
    items = _all(plan_shards(str(tmp_path), "parquet", 0))
    assert [i.key for i in items if isinstance(i, Record)] == ["000000000", "000000002"]
    (skip,) = [i for i in items if not isinstance(i, Record)]
    assert skip.reason == NOT_DOWNLOADED and skip.row == 1
    assert "000000001" in skip.example and "failed_to_download" in skip.example and "404" in skip.example


def test_unknown_format_and_empty_directory(tmp_path):
    with pytest.raises(ValueError):
        plan_shards(str(tmp_path), "csv", 10)
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / "other.md").write_text("y")
    with pytest.raises(StorageError, match="no cc3m-tsv files"):
        plan_shards(str(tmp_path), "cc3m-tsv", 10)


def _printable(text: str) -> bool:
    return text.isprintable() and "\x1b" not in text


def test_skip_examples_of_binary_input_are_short_and_printable(tmp_path):
    """A JPEG given as a caption file: every line is a counted skip whose example never echoes raw bytes."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG")
    jpeg = tmp_path / "photo.jpg"
    jpeg.write_bytes(buf.getvalue() + b"\n\x1b[2J\x07bell\tand\tescape\n")
    items = _all(plan_shards(str(jpeg), "cc3m-tsv", 1 << 20))
    assert items and all(isinstance(i, Skip) for i in items)
    assert {i.reason for i in items} <= {BAD_UTF8, BAD_FIELDS, EMPTY}
    counter = SkipCounter()
    for item in items:
        assert _printable(item.example) and len(item.example) <= 4 * EXAMPLE_CHARS + 20, repr(item.example)
        counter.add(item, str(jpeg))
    assert all(_printable(e) for ex in counter.examples.values() for e in ex)
    escaped = items[-1]  # valid UTF-8 with terminal control characters
    assert escaped.reason == BAD_FIELDS and "\\x1b[2J\\x07bell\\tand" in escaped.example


def test_safe_example_truncates_and_escapes():
    assert safe_example("plain caption") == "plain caption"
    assert safe_example("x" * 200, limit=10) == "x" * 10 + "..."
    assert safe_example(b"caf\xe9\x00\n") == "caf\\xe9\\x00\\n"
    assert safe_example("tab\there") == "tab\\there"
