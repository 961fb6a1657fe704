"""Shrinking a failing schedule to a shorter one that fails the same way.

A schedule is its seed and the list of its draws (scheduler.Choices): every
decision it made, in order. Replaying an edited list runs a different, often
simpler schedule (a draw past the end is 0: no fault, no crash, the first
option). The shrinker deletes chunks of draws and lowers single draws,
keeping an edit whenever the replay still ends in a violation of the same
kind, until no edit helps or the budget is spent (the same idea as
Hypothesis's shrinking of its choice sequence, on our own draws).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.simulation.run import Outcome, run_schedule
from tests.simulation.world import Variant


def shrink(
    failing: Outcome,
    *,
    variant: Variant | None = None,
    budget_seconds: float = 60.0,
    max_runs: int = 400,
    progress: Callable[[str], None] | None = None,
) -> Outcome:
    """The shortest failing schedule found (the original if none is shorter)."""
    assert failing.violation is not None, "only a failing schedule can be shrunk"
    kind = failing.violation.kind
    best = failing
    deadline = time.monotonic() + budget_seconds
    runs = 0

    def attempt(draws: list[int]) -> bool:
        nonlocal best, runs
        if runs >= max_runs or time.monotonic() > deadline:
            return False
        runs += 1
        tried = run_schedule(failing.seed, variant=variant, draws=draws)
        if tried.violation is None or tried.violation.kind != kind:
            return False
        # What it actually drew: edits past the failure are dropped.
        if (len(tried.draws), tried.draws) < (len(best.draws), best.draws):
            best = tried
            if progress is not None:
                progress(f"shrunk to {len(best.draws)} draws, {best.steps} steps")
            return True
        return False

    improved = True
    while improved and runs < max_runs and time.monotonic() < deadline:
        improved = False
        # Delete chunks, big ones first.
        size = max(1, len(best.draws) // 2)
        while size >= 1:
            start = 0
            while start < len(best.draws):
                draws = best.draws[:start] + best.draws[start + size :]
                if attempt(draws):
                    improved = True
                else:
                    start += size
            size //= 2
        # Lower single draws: to 0 (the simplest choice), else by half.
        for index in range(len(best.draws)):
            value = best.draws[index] if index < len(best.draws) else 0
            for lower in sorted({0, value // 2, value - 1}):
                if 0 <= lower < value:
                    draws = list(best.draws)
                    draws[index] = lower
                    if attempt(draws):
                        improved = True
                        break
    return best
