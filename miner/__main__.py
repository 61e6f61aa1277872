"""``python -m miner <command> [options]`` dispatcher."""

from __future__ import annotations

import sys
from collections.abc import Callable


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
    from miner.pipeline import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_config(MinerConfig, argv, prog="python -m miner run")
    manifest = run(cfg)
    print(json.dumps(manifest["counts"], indent=2))
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "parse": _parse,
    "parse-eval": _parse_eval,
    "run": _run,
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(f"usage: python -m miner {{{','.join(COMMANDS)}}} [options]\n"
              "  run         mine triplets from a caption corpus on Ray (see `run --help`)\n"
              "  parse       captions (one per line) -> scene graphs (JSON lines)\n"
              "  parse-eval  score the parser against FACTUAL-style gold scene graphs",
              file=sys.stderr)
        return 0 if args[:1] in (["--help"], ["-h"]) else 2
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
