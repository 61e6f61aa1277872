"""``python -m cluster pipeline --config FILE``: every stage in order under one storage prefix and run name."""
from __future__ import annotations

import sys

from cluster.cli import run_cli

USAGE = """usage: python -m cluster pipeline --config FILE [--storage URI] [--name RUN] [--seed S] [--quick]
  pipeline   world -> mine -> clip -> combiner -> benchmark -> evaluate, skipping complete stages
             (see `python -m cluster pipeline --help`; configs in cluster/configs/)"""


def _pipeline(argv: list[str]) -> int:
    import logging

    from cluster.pipeline import main

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return main(argv)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "pipeline":
        print(USAGE, file=sys.stderr)
        return 0 if args[:1] in (["--help"], ["-h"]) else 2
    return run_cli(_pipeline, args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
