"""The deterministic simulation, in the suite: 2,000 seeded schedules keep
every invariant; the same seed gives the same trace; and each deliberately
broken ledger (variants.py) is caught, named, replayed and shrunk.

LEDGER_SIM_SCHEDULES changes how many schedules the suite runs (longer runs:
`scripts/simulate --seeds N --workers W`).
"""

from __future__ import annotations

import os

import pytest

from tests.simulation.run import Outcome, run_schedule
from tests.simulation.shrink import shrink
from tests.simulation.variants import VARIANTS

SCHEDULES = int(os.environ.get("LEDGER_SIM_SCHEDULES", "2000"))
CHUNK = 100
# How many seeds a broken variant may take to be found (each is found far
# sooner: see the README for the rates measured over 10,000 seeds).
VARIANT_BUDGET = 1500


def _failure(outcome: Outcome) -> str:
    return f"seed {outcome.seed} broke an invariant:\n{outcome.report(last=80)}"


@pytest.mark.parametrize("first", range(0, SCHEDULES, CHUNK), ids=lambda first: f"seeds{first}")
def test_every_schedule_keeps_every_invariant(first: int) -> None:
    for seed in range(first, min(first + CHUNK, SCHEDULES)):
        outcome = run_schedule(seed)
        assert outcome.ok, _failure(outcome)


@pytest.mark.parametrize("seed", [7, 1992, 3679])
def test_the_same_seed_gives_the_same_schedule_byte_for_byte(seed: int) -> None:
    first = run_schedule(seed)
    second = run_schedule(seed)
    assert first.trace == second.trace
    assert first.draws == second.draws
    # And its draws alone replay it.
    replayed = run_schedule(seed, draws=first.draws)
    assert replayed.trace == first.trace


def test_a_schedule_does_work_worth_checking() -> None:
    """Guards the simulation itself: schedules pay, refund, fail and crash
    (a harness that quietly did nothing would pass every invariant)."""
    seen: dict[str, int] = {}
    marks = {
        "paid": " PayoutSucceeded",
        "reversed": " Reversed",
        "a daemon crashed": " CRASHES",
        "a call committed, its answer lost": "[drop_after]",
        "an outcome looked up": "GET /v1/transfers key=-",
        "a reversal webhook": "webhook transfer.reversed",
        "an import": "import legacy",
        "a client timed out, Stripe still at it": "timed out, still at Stripe",
        "Stripe finished a gone client's request": "(its client is gone)",
        "a same-key request met one in flight": "-> 409",
        "two workers' outcomes saved in one append": "commits 2 outcome(s) in one append",
        "a group commit committed, its answer lost": "append (committed, its answer lost",
        "a client's command committed, its answer lost": "(its append committed, its answer lost",
    }
    for seed in range(60):
        text = "\n".join(run_schedule(seed).trace)
        for name, mark in marks.items():
            seen[name] = seen.get(name, 0) + (mark in text)
    assert all(count > 0 for count in seen.values()), seen


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_a_broken_ledger_is_caught_and_the_violation_named(name: str) -> None:
    variant = VARIANTS[name]
    for seed in range(VARIANT_BUDGET):
        outcome = run_schedule(seed, variant=variant)
        if not outcome.ok:
            break
    else:
        pytest.fail(f"{name}: no violation in {VARIANT_BUDGET} schedules")
    assert outcome.violation is not None
    assert outcome.violation.kind in variant.expected, outcome.report()
    report = outcome.report()
    assert f"scripts/simulate --seed {seed} --variant {name}" in report
    # The replay command's seed gives the same violation.
    again = run_schedule(seed, variant=variant)
    assert str(again.violation) == str(outcome.violation)


def test_a_failing_schedule_is_shrunk_to_a_shorter_one_failing_the_same_way() -> None:
    variant = VARIANTS["no-lookup"]
    failing = next(
        o for o in (run_schedule(seed, variant=variant) for seed in range(200)) if not o.ok
    )
    assert failing.violation is not None
    shrunk = shrink(failing, variant=variant, budget_seconds=30, max_runs=150)
    assert shrunk.violation is not None
    assert shrunk.violation.kind == failing.violation.kind
    assert len(shrunk.draws) < len(failing.draws)
    # The shrunk schedule's command (seed and draws) replays it.
    command = shrunk.replay_command(draws=True)
    draws = [int(d) for d in command.split("--draws ")[1].split(",")]
    replayed = run_schedule(failing.seed, variant=variant, draws=draws)
    assert replayed.trace == shrunk.trace
