"""`scripts/simulate`: run seeded schedules of the deterministic simulation.

    scripts/simulate --seeds 100000 --workers 2     # a long sweep
    scripts/simulate --seed 1992                     # one schedule, its trace
    scripts/simulate --seed 7 --variant no-lookup    # a broken ledger, for comparison
    scripts/simulate --seed 7 --draws 3,0,12,...     # a shrunk schedule

The last line is always `simulated N schedules: V violations`; a failing
schedule prints its trace up to the violation and the command that replays
it, and is shrunk first (--no-shrink to skip). Exit 1 if any failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

from tests.simulation.run import Outcome, run_schedule
from tests.simulation.shrink import shrink
from tests.simulation.variants import VARIANTS


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/simulate", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=1, help="how many schedules (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="a deliberately broken ledger")
    parser.add_argument("--draws", help="replay these draws (comma-separated) with --seed")
    parser.add_argument("--no-shrink", action="store_true", help="report failures unshrunk")
    parser.add_argument("--trace", action="store_true", help="print the trace of every schedule")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.workers < 1:
        parser.error("--seeds and --workers must be at least 1")
    return args


def _chunk(first: int, count: int, variant: str | None) -> list[Outcome]:
    """Run seeds [first, first + count); keep only the failures' outcomes
    (a passing one is a count, not a trace to ship between processes)."""
    chosen = VARIANTS[variant] if variant else None
    failures = []
    for seed in range(first, first + count):
        outcome = run_schedule(seed, variant=chosen)
        if not outcome.ok:
            failures.append(outcome)
    return failures


def _chunks(first: int, total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(first, first + total, size):
        yield start, min(size, first + total - start)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    variant = VARIANTS[args.variant] if args.variant else None
    started = time.monotonic()
    if args.draws is not None or args.seeds == 1:
        draws = [int(d) for d in args.draws.split(",") if d] if args.draws is not None else None
        outcome = run_schedule(args.seed, variant=variant, draws=draws)
        print(outcome.report(draws=draws is not None, last=len(outcome.trace)))
        failures = [] if outcome.ok else [outcome]
    else:
        failures = []
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            jobs = [
                pool.submit(_chunk, start, count, args.variant)
                for start, count in _chunks(args.seed, args.seeds, 200)
            ]
            done = 0
            for job in jobs:
                found = job.result()
                done += 200
                failures.extend(found)
                for outcome in found:
                    print(f"seed {outcome.seed}: {outcome.violation}", file=sys.stderr)
                if done % 10_000 == 0:
                    print(
                        f"... {done} schedules, {len(failures)} violations,"
                        f" {time.monotonic() - started:.0f} s",
                        file=sys.stderr,
                    )
        for outcome in failures[:3]:
            if not args.no_shrink:
                outcome = shrink(outcome, variant=variant)  # noqa: PLW2901
            print(outcome.report(draws=not args.no_shrink))
    elapsed = time.monotonic() - started
    print(f"in {elapsed:.1f} s")
    print(f"simulated {args.seeds} schedules: {len(failures)} violations")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
