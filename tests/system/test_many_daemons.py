"""Several `ledger daemon` processes against one PostgreSQL: the work spreads
between them, and still every transfer is paid once and reversed once.

Both tests run real daemon processes (the `ledger daemon` console script), the
real stripe-python client over HTTP, and the in-process Stripe simulator.

The chaos test is short in the suite: one wave of 40 transfers, the killing
stopped once they are settled (or after 60 s). For a longer soak, run it alone
with more waves (each created when the one before has settled), a longer
deadline and another seed; `-s` prints the seed and how many daemons were killed:

    LEDGER_CHAOS_WAVES=50 LEDGER_CHAOS_SECONDS=1800 LEDGER_CHAOS_SEED=7 \\
        .venv/bin/python -m pytest -q -s -p no:cacheprovider \\
        tests/system/test_many_daemons.py -k killed_at_random

LEDGER_CHAOS_TRANSFERS sets the size of a wave (default 24).

A failure names its seed. The seed fixes the transfers and refunds, each
slot's sequence of kill delays and the simulator's sequence of fault draws;
which request meets which fault still depends on timing.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import pytest

from tests.ledgers import Ledger
from tests.system.world import (
    World,
    finish,
    kill,
    ledger_matches_stripe,
    new_world,
    outcome_events,
    running_simulator,
    start_daemon,
    wait_started,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.postgres

# "payout of transfer <uuid>: succeeded: tr_...", as the daemon logs each outcome.
_OUTCOME_LINE = re.compile(r"\b(payout|reversal) of transfer ([0-9a-f-]{36}): (.+)$", re.MULTILINE)


def create_pending(world: World, count: int, *, amount: int = 5000) -> list[UUID]:
    """`count` new transfers, in one ledger session (one order each)."""
    with world.ledger() as ledger:
        return [
            ledger.create_transfer(
                seller_account_id=f"acct_1Seller{n % 7}",
                order_ref=f"order-{n}",
                amount=amount + n,
                currency="usd",
            )[0]
            for n in range(count)
        ]


def statuses(ledger: Ledger) -> dict[UUID, str]:
    return {view.id: view.status for view in ledger.list()}


def all_have_status(world: World, ids: list[UUID], status: str) -> bool:
    with world.ledger() as ledger:
        now = statuses(ledger)
    return all(now.get(transfer_id) == status for transfer_id in ids)


def outcomes_logged(log_path: Path) -> list[tuple[str, str, str]]:
    """(kind, transfer id, outcome) for every outcome line in a daemon's log."""
    return [
        (m.group(1), m.group(2), m.group(3)) for m in _OUTCOME_LINE.finditer(log_path.read_text())
    ]


# Enough for three daemons to contend over every step; kept small for the suite's time.
MANY = 150


def test_three_daemons_pay_and_reverse_150_transfers_once_each_and_share_the_work(
    migrated_postgres_url: str, tmp_path: Path
) -> None:
    with running_simulator(api_key=None, latency_ms=20) as sim:
        world = new_world(migrated_postgres_url, sim)
        ids = create_pending(world, MANY)
        logs = [tmp_path / f"daemon-{n}.log" for n in range(3)]
        daemons = [start_daemon(world, "--concurrency", "8", log_path=log) for log in logs]
        try:
            wait_for(
                lambda: all_have_status(world, ids, "completed"),
                timeout=60,
                what=f"all {MANY} transfers to be paid out",
            )
            with world.ledger() as ledger:
                for transfer_id in ids:
                    ledger.request_reversal(
                        transfer_id,
                        request_ref=f"refund-{transfer_id}",
                        amount=None,
                        reason="order refunded",
                        actor="refund-handler",
                    )
            wait_for(
                lambda: all_have_status(world, ids, "reversed"),
                timeout=60,
                what=f"all {MANY} transfers to be reversed",
            )
        finally:
            for daemon in daemons:
                if daemon.poll() is None:
                    daemon.send_signal(signal.SIGTERM)
            exits = [finish(daemon) for daemon in daemons]
        assert exits == [0, 0, 0], "\n".join(log.read_text() for log in logs)

        assert ledger_matches_stripe(world, ids) == []
        state = world.simulator.state()
        assert len(state["transfers"]) == MANY
        assert len(state["reversals"]) == MANY
        for transfer_id in ids:
            outcomes = Counter(outcome_events(world, transfer_id))
            assert outcomes == {"PayoutSucceeded": 1, "Reversed": 1}, (transfer_id, outcomes)

        # Each payout and each reversal succeeded in exactly one daemon's log,
        # and the work was spread: at least two daemons did some of it.
        done_by: dict[tuple[str, str], list[int]] = {}
        for number, log in enumerate(logs):
            for kind, transfer, outcome in outcomes_logged(log):
                if outcome.startswith(("succeeded", "found ")):
                    done_by.setdefault((kind, transfer), []).append(number)
        assert len(done_by) == 2 * MANY
        assert all(len(daemons_) == 1 for daemons_ in done_by.values())
        per_daemon = Counter(daemons_[0] for daemons_ in done_by.values())
        assert len([n for n in range(3) if per_daemon[n] > 0]) >= 2, per_daemon


# ----- chaos: daemons SIGKILLed at random moments while Stripe misbehaves ------------

CHAOS_SEED = int(os.environ.get("LEDGER_CHAOS_SEED", "20261126"))
# How long the killing goes on at most; it stops sooner once all is settled.
CHAOS_SECONDS = float(os.environ.get("LEDGER_CHAOS_SECONDS", "20"))
CHAOS_TRANSFERS = int(os.environ.get("LEDGER_CHAOS_TRANSFERS", "24"))
# Batches of CHAOS_TRANSFERS, each created once the one before has settled.
CHAOS_WAVES = int(os.environ.get("LEDGER_CHAOS_WAVES", "1"))
CHAOS_FAULTS = {"500_after": 0.1, "drop_after": 0.1, "500_before": 0.05, "429": 0.05}
KILL_AFTER_SECONDS = (0.2, 0.6)


@dataclass
class ChaosDaemon:
    """One daemon slot: its process is SIGKILLed at a random moment 0.2-0.6 s
    after it has started, and replaced at once by a new one."""

    name: str
    world: World
    log_dir: Path
    rng: random.Random
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    started_at: float = 0.0
    kill_at: float | None = None
    kills: int = 0
    logs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        self.log_path = self.log_dir / f"{self.name}-{len(self.logs):04d}.log"
        self.logs.append(self.log_path)
        self.process = start_daemon(
            self.world, "--concurrency", "4", log_path=self.log_path, **chaos_env()
        )
        self.started_at = time.monotonic()
        self.kill_at = None

    def tick(self) -> None:
        assert self.process is not None and self.log_path is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self.name} exited by itself ({self.process.returncode}):\n"
                + self.log_path.read_text()
            )
        now = time.monotonic()
        if self.kill_at is None:
            if "daemon started" in self.log_path.read_text():
                self.kill_at = now + self.rng.uniform(*KILL_AFTER_SECONDS)
            elif now - self.started_at > 30:
                raise AssertionError(f"{self.name} did not start:\n" + self.log_path.read_text())
        elif now >= self.kill_at:
            kill(self.process)
            self.kills += 1
            self.start()


def chaos_env() -> dict[str, str]:
    # Default claims: a killed daemon is known dead at once (its process is
    # gone; on PostgreSQL its life lock too), and its work taken over.
    return {}


@dataclass
class ChaosPlan:
    """Which transfers exist, and which of them a refund asks back (and how much)."""

    ids: list[UUID] = field(default_factory=list)
    reversal_amounts: dict[UUID, int | None] = field(default_factory=dict)
    requested: set[UUID] = field(default_factory=set)

    def add_wave(self, world: World, rng: random.Random, wave: int) -> None:
        with world.ledger() as ledger:
            for n in range(CHAOS_TRANSFERS):
                amount = rng.randint(100, 100_000)
                transfer_id, _ = ledger.create_transfer(
                    seller_account_id=f"acct_1Chaos{rng.randint(0, 9)}",
                    order_ref=f"chaos-{wave}-{n}",
                    amount=amount,
                    currency="usd",
                )
                self.ids.append(transfer_id)
                if rng.random() < 1 / 3:
                    # Half of the refunds are partial.
                    partial = rng.randint(1, amount) if rng.random() < 0.5 else None
                    self.reversal_amounts[transfer_id] = partial

    def step(self, ledger: Ledger) -> bool:
        """Ask for the reversals whose transfers are paid by now; True when
        every transfer is settled (completed, or reversed when a refund asked)."""
        now = statuses(ledger)
        for transfer_id, amount in self.reversal_amounts.items():
            if transfer_id not in self.requested and now.get(transfer_id) == "completed":
                ledger.request_reversal(
                    transfer_id,
                    request_ref=f"refund-{transfer_id}",
                    amount=amount,
                    reason="order refunded",
                    actor="refund-handler",
                )
                self.requested.add(transfer_id)
        return all(now.get(t) == self.wanted_status(t) for t in self.ids)

    def wanted_status(self, transfer_id: UUID) -> str:
        return "reversed" if transfer_id in self.reversal_amounts else "completed"


def test_daemons_killed_at_random_while_stripe_fails_at_random_move_no_money_twice(
    migrated_postgres_url: str, tmp_path: Path
) -> None:
    """Two daemons, each SIGKILLed at a random moment every 0.2-0.6 s of its
    life and restarted, while the simulator answers 500s (before and after
    committing), drops connections after committing and rate-limits, all at
    random. Then one clean daemon finishes. Every transfer ends paid once, and
    reversed once where a refund asked, with one outcome event each.

    Knobs (environment): LEDGER_CHAOS_SEED, LEDGER_CHAOS_SECONDS (how long the
    killing may go on), LEDGER_CHAOS_TRANSFERS (per wave), LEDGER_CHAOS_WAVES.
    """
    rng = random.Random(CHAOS_SEED)
    faults = {"faults": CHAOS_FAULTS, "seed": CHAOS_SEED, "latency_ms": 20}
    with running_simulator(api_key=None, **faults) as sim:
        # Enough attempts that faults alone never exhaust them; retries at once.
        world = new_world(migrated_postgres_url, sim, max_attempts=20, timeout_seconds=1.0)
        plan = ChaosPlan()
        plan.add_wave(world, rng, 0)
        slots = [
            ChaosDaemon(name, world, tmp_path, random.Random(f"{CHAOS_SEED}-{name}"))
            for name in ("a", "b")
        ]
        waves = 1
        deadline = time.monotonic() + CHAOS_SECONDS
        try:
            for slot in slots:
                slot.start()
            with world.ledger() as ledger:
                while time.monotonic() < deadline:
                    for slot in slots:
                        slot.tick()
                    if plan.step(ledger):
                        if waves == CHAOS_WAVES:
                            break
                        plan.add_wave(world, rng, waves)
                        waves += 1
                    time.sleep(0.02)
        finally:
            for slot in slots:
                if slot.process is not None:
                    kill(slot.process)
        chaos_log = "\n".join(
            f"{slot.name}: {slot.kills} kills, {len(slot.logs)} daemons" for slot in slots
        )

        clean_log = tmp_path / "clean.log"
        clean = start_daemon(world, log_path=clean_log, **chaos_env())
        try:
            wait_started(clean, clean_log)

            def settled() -> bool:
                with world.ledger() as ledger:
                    return plan.step(ledger)

            wait_for(settled, timeout=60, what="settlement")
        finally:
            clean.send_signal(signal.SIGTERM)
            assert finish(clean) == 0, clean_log.read_text()

        context = f"seed {CHAOS_SEED}; {chaos_log}"
        assert ledger_matches_stripe(world, plan.ids) == [], context
        state = world.simulator.state()
        assert len(state["transfers"]) == len(plan.ids), context
        assert len(state["reversals"]) == len(plan.reversal_amounts), context
        for transfer_id in plan.ids:
            outcomes = Counter(outcome_events(world, transfer_id))
            reversed_ = 1 if transfer_id in plan.reversal_amounts else 0
            assert outcomes["PayoutSucceeded"] == 1, (context, transfer_id, outcomes)
            assert outcomes["Reversed"] == reversed_, (context, transfer_id, outcomes)
        # The chaos happened: daemons were killed while there was work.
        assert sum(slot.kills for slot in slots) >= 2, context
        print(context)
