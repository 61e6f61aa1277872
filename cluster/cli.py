"""One rule for every ``python -m <package> <command>``: a known error is one line and exit code 2.

A *known* error is something the user must fix — a missing or unreachable input (:class:`StorageError`),
an output holding another run (:class:`ConfigMismatch`), a bad argument or value (:class:`ConfigError`),
an input without one valid record (:class:`InputError`), a malformed GeneCIS annotation file
(``evaluator.genecis_data.AnnotationError``) or any class a command adds with ``known=``.  It prints
``error: <message naming the input>`` on stderr and the command exits 2.  Capacity lost mid-run (a Ray
worker, actor, node or object gone: a killed or preempted node) is one line too, with exit code 3: every
stage keeps its committed work items, so the same command resumes.  Anything else is a bug in the
project: its traceback is shown in full.
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence

from cluster.config import ConfigError, ConfigMismatch
from cluster.stage import InputError
from cluster.storage import StorageError


def known_errors(extra: Sequence[type[BaseException]] = ()) -> tuple[type[BaseException], ...]:
    known: list[type[BaseException]] = [StorageError, ConfigMismatch, ConfigError, InputError, *extra]
    annotations = sys.modules.get("evaluator.genecis_data")  # only when loaded: cluster imports no stage
    if annotations is not None and hasattr(annotations, "AnnotationError"):
        known.append(annotations.AnnotationError)
    return tuple(known)


LOST_CAPACITY_EXIT = 3


def lost_capacity_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors for a worker, actor, node or object lost mid-run (only once Ray is loaded)."""
    exc = sys.modules.get("ray.exceptions")
    names = ("RayActorError", "NodeDiedError", "ObjectLostError", "WorkerCrashedError")
    return tuple(getattr(exc, n) for n in names if hasattr(exc, n)) if exc is not None else ()


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def run_cli(fn: Callable[[list[str]], int | None], argv: Sequence[str] | None = None,
            known: Sequence[type[BaseException]] = ()) -> int:
    """Run ``fn(argv)`` and return its exit code: 0 (or its own), 2 for a known error, which is printed as
    one line; ``--help`` exits 0; any other exception propagates with its traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(fn(args) or 0)
    except known_errors(known) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except lost_capacity_errors() as err:
        if getattr(err, "actor_init_failed", False):  # an actor whose constructor raised: a bug
            raise
        print(f"error: lost Ray capacity mid-run ({type(err).__name__}: {one_line(err)[:300]}); committed work "
              "is kept: run the same command again to resume", file=sys.stderr)
        return LOST_CAPACITY_EXIT
    except SystemExit as done:  # --help, or a command that exits on its own
        if isinstance(done.code, str):
            print(f"error: {done.code}", file=sys.stderr)
            return 2
        return done.code or 0
