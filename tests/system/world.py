"""A ledger, a Stripe simulator and the daemon, wired for the process-side tests.

Everything is real: the database (SQLite file or PostgreSQL), the stripe-python
client over HTTP on 127.0.0.1, the simulator's idempotency semantics. Only the
retry policy is shortened, so that "retry later" is due again at once.
The Stripe client keeps its defaults: a call is tried up to three times under
one idempotency key, as in production.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from ledger.bootstrap import build_daemon
from ledger.processing.daemon import DaemonOptions
from ledger.processing.policy import RetryPolicy
from ledger.stripe.gateway import StripeSettings
from ledger.stripe.simulator import OFF, SimulatorConfig, SimulatorServer, StripeSimulator
from ledger.views import TransferView
from tests.ledgers import Ledger
from tests.waiting import wait_for

API_KEY = "sk_test_ledgerSecretKey4242"
LEDGER_SCRIPT = Path(sys.executable).with_name("ledger")
T = TypeVar("T")


@contextmanager
def running_simulator(**config: Any) -> Iterator[SimulatorServer]:
    # Rate limiting off for now: the daemons' bursts would trip Stripe's test-mode limit,
    # until the ledger keeps under it (DESIGN section 5, one rate budget).
    options: dict[str, Any] = {"port": 0, "rate_limit": OFF, **config}
    server = SimulatorServer(StripeSimulator(SimulatorConfig(**options))).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class World:
    url: str
    sim: SimulatorServer
    max_attempts: int = 3
    timeout_seconds: float = 2.0
    api_key: str = API_KEY
    log: list[str] = field(default_factory=list)

    @property
    def simulator(self) -> StripeSimulator:
        return self.sim.simulator

    def stripe_settings(self) -> StripeSettings:
        return StripeSettings(
            api_key=self.api_key,
            api_base=self.sim.base_url,
            timeout_seconds=self.timeout_seconds,
        )

    def policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.max_attempts, base_seconds=0, max_seconds=0)

    # ----- the ledger side ------------------------------------------------------

    def ledger(self, pool_size: int = 1) -> Ledger:
        return Ledger.open(self.url, pool_size=pool_size)

    def create(self, order: str, *, seller: str = "acct_1Seller", amount: int = 5000) -> UUID:
        with self.ledger() as ledger:
            transfer_id, _ = ledger.create_transfer(
                seller_account_id=seller, order_ref=order, amount=amount, currency="usd"
            )
        return transfer_id

    def request_reversal(self, transfer_id: UUID, amount: int | None = None) -> None:
        with self.ledger() as ledger:
            ledger.request_reversal(
                transfer_id,
                request_ref=f"refund-{transfer_id}",
                amount=amount,
                reason="order refunded",
                actor="refund-handler",
            )

    def show(self, transfer_id: UUID) -> TransferView:
        with self.ledger() as ledger:
            return ledger.show(transfer_id)

    def events(self, transfer_id: UUID) -> list[Any]:
        with self.ledger() as ledger:
            return list(ledger.transfers.events.get(transfer_id))

    def run_daemon_once(self, concurrency: int = 4) -> None:
        """`ledger daemon --once`, in this process."""
        with self.ledger(pool_size=concurrency + 2) as ledger:
            build_daemon(
                ledger,
                self.stripe_settings(),
                self.policy(),
                DaemonOptions(concurrency=concurrency, once=True),
            ).run()

    # ----- the Stripe side ------------------------------------------------------

    def stripe_transfers(self, transfer_id: UUID | None = None) -> list[dict[str, Any]]:
        found = self.simulator.state()["transfers"]
        if transfer_id is None:
            return list(found)
        return [t for t in found if t["transfer_group"] == str(transfer_id)]

    def stripe_reversals(self, stripe_transfer_id: str) -> list[dict[str, Any]]:
        reversals = self.simulator.state()["reversals"]
        return [r for r in reversals if r["transfer"] == stripe_transfer_id]

    def money_posts(self) -> list[dict[str, Any]]:
        return [r for r in self.simulator.state()["requests"] if r["method"] == "POST"]


def new_world(url: str, sim: SimulatorServer, **kwargs: Any) -> World:
    """A world on `url`, which must be migrated already (the `migrated_url` fixtures
    copy a migrated template; migrating here again would only cost time)."""
    return World(url=url, sim=sim, **kwargs)


# ----- daemons as real processes (for SIGKILL and SIGTERM) --------------------------


def daemon_env(world: World, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "STRIPE_"))}
    env.update(
        LEDGER_DATABASE_URL=world.url,
        STRIPE_API_KEY=world.api_key,
        STRIPE_API_BASE=world.sim.base_url,
        STRIPE_TIMEOUT_SECONDS=str(world.timeout_seconds),
        LEDGER_MAX_ATTEMPTS=str(world.max_attempts),
        LEDGER_RETRY_BASE_SECONDS="0",
        LEDGER_RETRY_MAX_SECONDS="0",
        # A daemon that crashes (a signal, not an exception) writes every
        # thread's stack to its log, for the test that sees it die.
        PYTHONFAULTHANDLER="1",
    )
    env.update(extra)
    return env


# Every daemon process a test started: killed at the test's end if still
# running (tests/system/conftest.py), so that a test failing before it
# stops its daemon leaves none behind to share the machine with later work.
STARTED_DAEMONS: list[subprocess.Popen[bytes]] = []


def start_daemon(
    world: World, *args: str, log_path: Path, **extra_env: str
) -> subprocess.Popen[bytes]:
    """`ledger daemon ARGS` as a real process; its stderr goes to `log_path`."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(LEDGER_SCRIPT), "daemon", *args],
            env=daemon_env(world, **extra_env),
            stdout=log,
            stderr=log,
        )
    STARTED_DAEMONS.append(process)
    return process


def wait_started(process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Until the daemon says it started (its signal handlers are in place)."""
    wait_for(
        lambda: process.poll() is not None or "daemon started" in log_path.read_text(),
        what="the daemon to start",
    )


def finish(process: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()


def ledger_matches_stripe(world: World, transfer_ids: Sequence[UUID]) -> list[str]:
    """Every settled transfer agrees with Stripe, and nothing moved twice.
    Returns the disagreements (empty when all is well)."""
    problems: list[str] = []
    state = world.simulator.state()
    by_group: dict[str, list[dict[str, Any]]] = {}
    for made in state["transfers"]:
        by_group.setdefault(made["transfer_group"], []).append(made)
    reversals_by_transfer: dict[str, list[dict[str, Any]]] = {}
    for reversal in state["reversals"]:
        reversals_by_transfer.setdefault(reversal["transfer"], []).append(reversal)
    with world.ledger() as ledger:
        for transfer_id in transfer_ids:
            view = ledger.show(transfer_id)
            made = by_group.get(str(transfer_id), [])
            if len(made) > 1:
                problems.append(f"{transfer_id}: {len(made)} Stripe transfers")
            if view.stripe_transfer_id is None:
                if made:
                    problems.append(f"{transfer_id}: paid at Stripe, not in the ledger")
                continue
            if [m["id"] for m in made] != [view.stripe_transfer_id]:
                problems.append(f"{transfer_id}: ledger {view.stripe_transfer_id}, Stripe {made}")
                continue
            reversals = reversals_by_transfer.get(view.stripe_transfer_id, [])
            # One Stripe reversal per refund (several refunds may reverse a
            # transfer in parts): never two for one request.
            causes = [(r.get("metadata") or {}).get("ledger_cause") for r in reversals]
            ours = [c for c in causes if c is not None]
            if len(ours) != len(set(ours)):
                problems.append(f"{transfer_id}: two Stripe reversals for one request: {causes}")
            reversed_at_stripe = sum(r["amount"] for r in reversals)
            if reversed_at_stripe != view.amount_reversed:
                problems.append(
                    f"{transfer_id}: reversed {view.amount_reversed} in the ledger,"
                    f" {reversed_at_stripe} at Stripe"
                )
            if made[0]["amount"] != view.amount:
                problems.append(f"{transfer_id}: amount differs")
    return problems


def outcome_events(world: World, transfer_id: UUID) -> list[str]:
    """The types of the events process managers recorded for a transfer."""
    return [
        type(e).__name__
        for e in world.events(transfer_id)
        if getattr(e, "actor", "").startswith("system:") and e.originator_version > 1
    ]


def as_json(data: Any) -> str:
    return json.dumps(data, default=str)
