"""The shared state of one trainer run, Ray-free and torch-free (it runs as a tiny zero-CPU Ray actor, so it
imports nothing heavy)."""
from __future__ import annotations

from collections import Counter
from typing import Any


class RunState:
    """What a run's decoders and workers share (a zero-CPU Ray actor in a run; a plain object in tests):

    * the skipped rows **by plan position**, so a row decoded again by a restarted attempt is counted
      once, and the furthest position decoded (rows attempted = furthest + 1 − the driver's start);
    * the (step, data position) each worker-group attempt was planned from and started at."""

    def __init__(self, start_position: int = 0):
        self.start_position = int(start_position)
        self.furthest = self.start_position - 1
        self.skipped: dict[int, str] = {}
        self.planned: list[tuple[int, int]] = []
        self.attempts: list[int] = []

    def add(self, furthest: int, skipped: dict[int, str]) -> None:
        self.furthest = max(self.furthest, int(furthest))
        self.skipped.update({int(k): v for k, v in skipped.items()})

    def totals(self) -> dict[str, Any]:
        return {"attempted": self.furthest + 1 - self.start_position, "skipped": dict(Counter(self.skipped.values())),
                "attempts": list(self.attempts)}

    def plan(self, step: int, position: int) -> None:
        """The dataset of a (new) worker group starts at ``position``, the data position of ``step``."""
        self.planned.append((int(step), int(position)))

    def last_plan(self) -> tuple[int, int] | None:
        return self.planned[-1] if self.planned else None

    def start_attempt(self, step: int) -> None:
        """Rank 0 of a (new) worker group resumes training at ``step``."""
        self.attempts.append(int(step))
