"""``python -m miner <command> [options]`` dispatcher (a known error: one line and exit code 2)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from cluster.cli import run_cli

USAGE = """usage: python -m miner {run,parse,parse-eval} [options]
  run         mine triplets from a caption corpus on Ray (see `run --help`)
  parse       captions (one per line) -> scene graphs (JSON lines)
  parse-eval  score the parser against FACTUAL-style gold scene graphs"""


def _parse(argv: list[str]) -> int:
    from miner.parse_eval import parse_main

    return parse_main(argv)


def _parse_eval(argv: list[str]) -> int:
    from miner.parse_eval import main

    return main(argv)


def _run(argv: list[str]) -> int:
    import json
    import logging

    from cluster.config import parse_config
    from miner.config import MinerConfig

    cfg = parse_config(MinerConfig, argv, prog="python -m miner run")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from miner.pipeline import run

    manifest = run(cfg)
    print(json.dumps({"counts": manifest["counts"],
                      "unavailable": {k: v["unavailable"] for k, v in manifest["kinds"].items()
                                      if "unavailable" in v}}, indent=2))
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "parse": _parse,
    "parse-eval": _parse_eval,
    "run": _run,
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 0 if args[:1] in (["--help"], ["-h"]) else 2
    return run_cli(COMMANDS[args[0]], args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
