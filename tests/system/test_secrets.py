"""The Stripe API key never leaves the daemon's memory: not in a log line, an
event, a stored error, a row, or the error a refused key ends with.

A real `ledger daemon` process runs with a distinctive key through a flow that
makes it log and store as much as it can: a payout, a reversal, a rate limit,
500s after Stripe committed, an unknown destination, work parked for a reused
idempotency key, and at last a key Stripe refuses (401). Then every byte the
product wrote is searched for the key, and for its last 8 characters.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import stripe

from ledger.domain import payout_cause
from ledger.processing.effects import idempotency_key
from tests.ledgers import Ledger
from tests.system.world import (
    World,
    finish,
    new_world,
    running_simulator,
    start_daemon,
    wait_started,
)
from tests.waiting import wait_for

SECRET_KEY = "sk_test_51QzLedgerSecret0xKv93JdWq7Rt2Pm"
# The simulator, like Stripe, masks a key in its errors to its last 4 characters.
SECRET_TAIL = SECRET_KEY[-8:]
OTHER_KEY = "sk_test_otherAccountKey0000aaaa1111"
# Not the daemon's to use, but in its environment as it is in production's:
# it must not leak either.
WEBHOOK_SECRET = "whsec_ledgerWebhookSecret9Zq4"


def test_the_api_key_is_in_no_log_line_event_stored_error_or_row(
    migrated_url: str, tmp_path: Path
) -> None:
    with running_simulator(api_key=SECRET_KEY) as sim:
        world = new_world(migrated_url, sim, api_key=SECRET_KEY)
        logs = run_every_kind_of_answer(world, tmp_path)

    # The same ledger, pointed at a Stripe account that does not know our key.
    refused_log = tmp_path / "refused.log"
    with running_simulator(api_key=OTHER_KEY) as other_sim:
        refused_world = World(url=migrated_url, sim=other_sim, api_key=SECRET_KEY)
        waiting = refused_world.create("order-refused")
        daemon = start_daemon(
            refused_world, log_path=refused_log, STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET
        )
        assert finish(daemon, timeout=30) == 1, refused_log.read_text()
    assert refused_world.show(waiting).status == "pending"

    # The refusal ends the daemon with one clear line saying so.
    refused_output = refused_log.read_text()
    [error_line] = [line for line in refused_output.splitlines() if "ledger: error:" in line]
    assert error_line.startswith("ledger: error: ")
    assert re.search(r"Stripe refused the API key \(401\)", error_line), error_line
    assert "STRIPE_API_KEY" in error_line
    assert "Traceback" not in refused_output

    output = "".join(log.read_text() for log in logs) + refused_output
    stored = every_stored_value(migrated_url)
    # The search would be empty-handed if nothing had been written: it was.
    assert "payout of transfer" in output and "waiting for rate_limit" in output
    assert "resource_missing" in stored["events"]
    assert "resource_missing" in stored["seller_transfers"]
    assert "same parameters" in stored["stripe_work"]
    for where, text in {"daemon output": output, **stored}.items():
        assert SECRET_KEY not in text, f"the API key is in the {where}"
        assert SECRET_TAIL not in text, f"the API key's last 8 characters are in the {where}"
        assert WEBHOOK_SECRET not in text, f"the webhook secret is in the {where}"


def run_every_kind_of_answer(world: World, log_dir: Path) -> list[Path]:
    """Parked work for a reused idempotency key; then a payout, a rate limit,
    a 500 after commit and an unknown destination; then a reversal through a
    500 after commit. Returns the daemons' logs (stdout and stderr)."""
    logs = [log_dir / f"{name}.log" for name in ("parked", "payouts", "reversal")]
    # Another system used the key the ledger will use, with other parameters:
    # the work is parked with Stripe's message as its last failure. Alone, so
    # that no fault meant for the others answers its call first.
    poisoned = world.create("order-poisoned", amount=900)
    client = stripe.StripeClient(SECRET_KEY, base_addresses={"api": world.sim.base_url})
    client.v1.transfers.create(
        params={"amount": 1, "currency": "usd", "destination": "acct_1Other"},
        options={"idempotency_key": idempotency_key("payout", payout_cause(poisoned), 1)},
    )
    daemon = start_daemon(world, "--once", log_path=logs[0], STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)
    assert finish(daemon, timeout=60) == 0, logs[0].read_text()
    assert world.show(poisoned).status == "pending"

    paid = world.create("order-paid", amount=4200)
    also_paid = world.create("order-also-paid", amount=1300)
    refused = world.create("order-unknown", seller="acct_unknownSeller")
    world.simulator.add_fault("429", path="/v1/transfers")
    world.simulator.add_fault("500_after", path="/v1/transfers")
    daemon = start_daemon(world, "--once", log_path=logs[1], STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)
    assert finish(daemon, timeout=60) == 0, logs[1].read_text()
    assert world.show(paid).status == "completed"
    assert world.show(also_paid).status == "completed"
    assert world.show(refused).status == "permanently_failed"

    world.simulator.add_fault("500_after", path="/reversals")
    world.request_reversal(paid, amount=2000)
    daemon = start_daemon(world, log_path=logs[2], STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)
    try:
        wait_started(daemon, logs[2])
        wait_for(lambda: world.show(paid).status == "reversed", what="the reversal")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert finish(daemon) == 0, logs[2].read_text()
    return logs


def every_stored_value(url: str) -> dict[str, str]:
    """Every table's rows, as text (bytes decoded leniently), by table name."""
    with Ledger.open(url) as ledger:
        db = ledger.db
        with db.transaction(write=False) as cursor:
            if db.dialect == "sqlite":
                cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                tables = [str(row["name"]) for row in cursor.fetchall()]
            else:
                cursor.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                )
                tables = [str(row["tablename"]) for row in cursor.fetchall()]
            assert db.events_table in tables
            stored: dict[str, str] = {}
            for table in tables:
                cursor.execute(f"SELECT * FROM {table}")  # the names come from the catalog
                rows = cursor.fetchall()
                stored[table] = "\n".join(
                    " ".join(as_text(value) for value in row.values()) for row in rows
                )
    stored["events"] = stored.pop(db.events_table)
    assert {"seller_transfers", "stripe_work"} <= stored.keys()
    return stored


def as_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)
