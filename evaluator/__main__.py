"""``python -m evaluator genecis [options]``: score a model on GeneCIS (a known error: one line, exit 2)."""
from __future__ import annotations

import sys
from collections.abc import Callable

from cluster.cli import run_cli

USAGE = """usage: python -m evaluator genecis [options]
  genecis     score a model on the GeneCIS benchmark with Ray (see `genecis --help`)
  retrieval   held-out image<->text R@1/R@5 on a procedural world, with its ceiling (see `retrieval --help`)"""


def _genecis(argv: list[str]) -> int:
    import json
    import logging

    from cluster.config import parse_config
    from evaluator.config import EvalConfig

    cfg = parse_config(EvalConfig, argv, prog="python -m evaluator genecis")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from evaluator.genecis import run

    results = run(cfg)
    summary = {h: {k: (v["r1"] if isinstance(v, dict) else v) for k, v in e.items()}
               for h, e in results["heads"].items()}
    print(json.dumps({"output": cfg.output, "r1": summary}, indent=2))
    return 0


def _retrieval(argv: list[str]) -> int:
    import json
    import logging

    from cluster.config import parse_config
    from evaluator.retrieval import RetrievalConfig, run

    cfg = parse_config(RetrievalConfig, argv, prog="python -m evaluator retrieval")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(json.dumps(run(cfg), indent=2))
    return 0


def _known() -> tuple[type[BaseException], ...]:
    from evaluator.encode import ModelError
    from evaluator.genecis_data import AnnotationError
    from evaluator.retrieval import WorldError
    from trainer.checkpoint import CheckpointError

    return (ModelError, AnnotationError, CheckpointError, WorldError)


COMMANDS: dict[str, Callable[[list[str]], int]] = {"genecis": _genecis, "retrieval": _retrieval}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 0 if args[:1] in (["--help"], ["-h"]) else 2
    return run_cli(COMMANDS[args[0]], args[1:], known=_known())


if __name__ == "__main__":
    raise SystemExit(main())
