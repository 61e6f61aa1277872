"""Dev-time builder for ``miner/data/concreteness.tsv.gz`` (not imported at runtime).

Reads the Brysbaert, Warriner & Kuperman (2014) concreteness norms and writes the
lookup table GeneCIS uses: ``word.lower() -> Conc.M`` plus, for every key, its
plural ``inflect.engine().plural(key)`` with the same score.  A plural never
overrides an existing (singular) entry; when two keys share a plural the first
key in file order wins.

Usage::

    .venv/bin/python miner/data/build_concreteness.py \
        /work/shared/genecis/annotations/Concreteness_ratings_Brysbaert_et_al_BRM.txt \
        miner/data/concreteness.tsv.gz
"""

from __future__ import annotations

import argparse
import csv
import gzip
from pathlib import Path

# pandas.read_csv (what GeneCIS uses) parses the word "null" as NaN and GeneCIS
# then maps NaN back to 'null'; plain csv parsing gives the same key.
NAN_WORD = "null"


def read_singulars(source: Path) -> dict[str, str]:
    """Map lower-cased word -> Conc.M as written in the source (first row wins)."""
    table: dict[str, str] = {}
    with source.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header[:3] != ["Word", "Bigram", "Conc.M"]:
            raise ValueError(f"unexpected header in {source}: {header[:3]}")
        for row in reader:
            word = row[0].strip().lower() or NAN_WORD
            float(row[2])  # validate
            table.setdefault(word, row[2])
    return table


def add_plurals(table: dict[str, str]) -> dict[str, str]:
    """Return a copy with every key's inflect plural added (never overriding)."""
    import inflect  # dev-only dependency

    engine = inflect.engine()
    merged = dict(table)
    for word, score in table.items():
        merged.setdefault(engine.plural(word).lower(), score)
    return merged


def write_table(table: dict[str, str], target: Path) -> None:
    """Write a sorted two-column ``word<TAB>score`` gzip TSV, reproducibly."""
    lines = "".join(f"{word}\t{score}\n" for word, score in sorted(table.items()))
    with target.open("wb") as raw, gzip.GzipFile(
        filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9
    ) as handle:
        handle.write(lines.encode("utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument(
        "target", type=Path, nargs="?",
        default=Path(__file__).with_name("concreteness.tsv.gz"),
    )
    args = parser.parse_args()
    singulars = read_singulars(args.source)
    table = add_plurals(singulars)
    write_table(table, args.target)
    print(f"{len(singulars)} words, {len(table)} with plurals -> {args.target}")


if __name__ == "__main__":
    main()
