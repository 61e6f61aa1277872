"""One progress line every few seconds: done/total, rate, skips and ETA (for ``ray job logs``)."""
from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Executor, wait
from typing import Any, Callable, Iterable, Sequence


def _fmt_eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600:d}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


class Progress:
    """Accumulates counts and emits a line at most every ``interval_s`` seconds."""

    def __init__(self, what: str, total: int | None, unit: str = "rows", interval_s: float = 5.0,
                 emit: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.unit, self.interval_s = what, total, unit, interval_s
        self.emit = emit or logging.getLogger("genecis_ray.progress").info
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0
        self.skipped = 0
        self.note = ""  # appended to the line, e.g. "shards 3/9"

    def update(self, done: int = 0, skipped: int = 0, force: bool = False) -> None:
        self.done += done
        self.skipped += skipped
        now = self.clock()
        if force or now - self.last >= self.interval_s:
            self.last = now
            self.emit(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now if now is not None else self.clock()) - self.start, 1e-9)
        rate = self.done / elapsed
        total = f"/{self.total:,}" if self.total else ""
        eta = _fmt_eta((self.total - self.done) / rate) if self.total and rate > 0 else "?"
        note = f" | {self.note}" if self.note else ""
        return (f"[{self.what}] {self.done:,}{total} {self.unit} | {rate:,.0f} {self.unit}/s | "
                f"skipped {self.skipped:,} | elapsed {_fmt_eta(elapsed)} | ETA {eta}{note}")

    def finish(self) -> None:
        """The final line of a stage (always printed, however short the stage was)."""
        self.emit(self.line() + " | done")


def map_with_progress(fn: Callable[..., Any], jobs: Iterable[Sequence[Any]], progress: Progress,
                      count: Callable[[Any], tuple[int, int]], executor: Executor | None = None) -> list[Any]:
    """``[fn(*job) for job in jobs]``, in this process or over ``executor`` (a process pool), with one
    progress line per interval and a final line; ``count(result)`` gives the (done, skipped) it adds.
    Results come back in the order of ``jobs`` whatever order they finish in."""
    jobs = list(jobs)
    if executor is None:
        results = []
        for job in jobs:
            results.append(fn(*job))
            progress.update(*count(results[-1]))
    else:
        futures = [executor.submit(fn, *job) for job in jobs]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=progress.interval_s, return_when=FIRST_COMPLETED)
            for future in done:
                d, s = count(future.result())
                progress.done, progress.skipped = progress.done + d, progress.skipped + s
            progress.update(force=not done)
        results = [f.result() for f in futures]
    progress.finish()
    return results
