"""``python -m trainer clip ...`` / ``python -m trainer combiner ...``.

A known error (a missing input, a changed config, unusable data, a missing checkpoint) is one line and
exit code 2 (``cluster.cli.run_cli``); a run that fails after its allowed restarts exits 1 naming the
worker's error."""
from __future__ import annotations

import sys

USAGE = """usage: python -m trainer {clip|combiner} [options]
  clip      CLIP image-caption contrastive pretraining (see `clip --help`)
  combiner  GeneCIS Combiner training on mined triplets (see `combiner --help`)"""


def _command(mode: str):
    def run_mode(argv: list[str]) -> int:
        from cluster.config import parse_config
        from trainer.train import MODES, TrainingFailed, run

        cfg = parse_config(MODES[mode], argv, prog=f"python -m trainer {mode}")
        try:
            run(cfg, mode)
        except TrainingFailed as err:
            print(f"error: training failed: {err}", file=sys.stderr)
            return 1
        return 0
    return run_mode


def main(argv: list[str] | None = None) -> int:
    from cluster.cli import run_cli
    from trainer.checkpoint import CheckpointError
    from trainer.data import DataError

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("clip", "combiner"):
        print(USAGE, file=sys.stderr)
        return 0 if args[:1] in (["--help"], ["-h"]) else 2
    return run_cli(_command(args[0]), args[1:], known=(DataError, CheckpointError))


if __name__ == "__main__":
    sys.exit(main())
