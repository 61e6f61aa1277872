"""``python -m synthetic <command> [options]``: ``world`` (generate the image-caption world) or ``benchmark``.

Each command's ``main`` follows cluster.cli.run_cli: a known error is one line and exit code 2."""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

USAGE = """usage: python -m synthetic <command> [options]

commands:
  world       generate the procedural image-caption world (images, webdataset shards, Parquet index,
              CC3M-style captions.tsv), local or s3://
  benchmark   build the GeneCIS-format benchmark from the synthetic world

`python -m synthetic <command> --help` lists a command's options."""


def _world(argv: list[str]) -> int:
    from synthetic.world import main

    return main(argv)


def _benchmark(argv: list[str]) -> int:
    from synthetic.benchmark import main

    return main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {"world": _world, "benchmark": _benchmark}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"unknown command {args[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return int(command(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
