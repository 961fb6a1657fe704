"""`ledger reconcile` against the simulator, over real HTTP, on both databases.

One paid-out world per database serves the whole module (a real daemon paid
four transfers and reversed part of one): each test makes Stripe and the
ledger disagree in its own way, checks that reconcile says so with both
values, and then settles the difference the way an operator would, so that
the world is clean again for the next test. Each test that takes the shared
world first checks that it is clean (the `paid` fixture), so a test that fails
to settle its difference fails alone, and the next ones say so instead of
failing for its reason. A test whose difference cannot be settled (an admin's
status change) or that depends on the listing's order has a world of its own.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import stripe

from ledger import values
from ledger.cli import run
from ledger.domain import event_ref, payout_cause
from ledger.importing import parse_lines
from ledger.processing.effects import PAYOUT, REVERSAL, idempotency_key
from ledger.reconcile import reconcile
from ledger.stripe.listing import Backoff, StripeReader, StripeReadFailed
from ledger.stripe.simulator import SimulatorServer
from tests.e2e.support import Cli, CliResult, assert_one_line_error
from tests.paying import unknown_outcome_attempt
from tests.stripe_sim import stripe_client
from tests.system.world import API_KEY, World, new_world, running_simulator
from tests.waiting import wait_for

SELLER = "acct_1Seller"


@dataclass
class Paid:
    """The module's world: transfers 0..3 paid out, transfer 0 partly reversed."""

    world: World
    ids: list[UUID]

    @property
    def sim(self) -> SimulatorServer:
        return self.world.sim

    def stripe_id(self, transfer_id: UUID) -> str:
        stripe_id = self.world.show(transfer_id).stripe_transfer_id
        assert stripe_id is not None
        return stripe_id

    def client(self) -> stripe.StripeClient:
        return stripe_client(self.sim.base_url, api_key=API_KEY)


@pytest.fixture(scope="module")
def shared_url(module_migrated_url: str) -> str:
    return module_migrated_url


@pytest.fixture(scope="module")
def paid_world(shared_url: str) -> Iterator[Paid]:
    with running_simulator(api_key=None) as sim:
        world = new_world(shared_url, sim)
        ids = [world.create(f"order-{i}", amount=5000 + i) for i in range(4)]
        world.run_daemon_once()
        world.request_reversal(ids[0], amount=1200)
        world.run_daemon_once()
        assert world.show(ids[0]).status == "reversed"
        yield Paid(world, ids)


@pytest.fixture
def paid(paid_world: Paid) -> Paid:
    """The module's world, found clean: the tests share it (one daemon run
    for all is what keeps the module fast), and each leaves it clean."""
    with paid_world.world.ledger() as ledger:
        report = reconcile(ledger, StripeReader(paid_world.world.stripe_settings()))
    assert report.ok, (
        "the module's shared world is not clean at the start of this test: an earlier test"
        " left a difference unsettled (fix that test first; this failure is its cascade): "
        + "; ".join(d.as_text() for d in report.differences)
    )
    return paid_world


Reconcile = Callable[..., CliResult]


def reconcile_cli(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Reconcile:
    """`ledger reconcile ARGS` in this process, against `world`."""
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    monkeypatch.setenv("STRIPE_API_BASE", world.sim.base_url)
    monkeypatch.setenv("STRIPE_TIMEOUT_SECONDS", "5")
    cli = Cli(capsys)
    return lambda *args: cli("reconcile", "--database-url", world.url, *args)


@pytest.fixture
def run_reconcile(
    paid: Paid, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Reconcile:
    """`ledger reconcile ARGS` in this process, against the module's world."""
    return reconcile_cli(paid.world, capsys, monkeypatch)


@pytest.fixture
def own_reconcile(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Reconcile:
    """`ledger reconcile ARGS` against this test's own world."""
    return reconcile_cli(world, capsys, monkeypatch)


def _ledger_payout_at_stripe(world: World, transfer_id: UUID, order_ref: str, amount: int) -> Any:
    """The ledger's first payout attempt for this transfer, as a daemon sends
    it, made at Stripe and not recorded (its daemon died, or waits)."""
    cause = payout_cause(transfer_id)
    return stripe_client(world.sim.base_url, api_key=API_KEY).v1.transfers.create(
        params={
            "amount": amount,
            "currency": "usd",
            "destination": SELLER,
            "transfer_group": str(transfer_id),
            "metadata": {
                "ledger_transfer_id": str(transfer_id),
                "ledger_cause": cause,
                "ledger_order_ref": order_ref,
            },
        },
        options={"idempotency_key": idempotency_key(PAYOUT, cause, 1)},
    )


def differences(result: CliResult) -> list[dict[str, Any]]:
    data = result.json()
    assert data["ok"] is (result.code == 0)
    found: list[dict[str, Any]] = data["differences"]
    return found


def about(found: list[dict[str, Any]], transfer_id: UUID | str) -> list[dict[str, Any]]:
    return [d for d in found if d["transfer_id"] == str(transfer_id)]


def assert_clean(run_reconcile: Reconcile) -> dict[str, Any]:
    result = run_reconcile("--json")
    assert (result.code, differences(result)) == (0, [])
    data: dict[str, Any] = result.json()
    return data


# ----- agreement ------------------------------------------------------------------


def test_a_ledger_paid_out_by_the_daemon_agrees_with_stripe(
    paid: Paid, run_reconcile: Reconcile
) -> None:
    text = run_reconcile()
    assert text.code == 0, text.out
    assert text.out.startswith("reconcile: the ledger and Stripe agree: ")
    assert text.out.count("\n") == 1
    # Progress goes to stderr, plain lines when it is not a terminal.
    assert "reconcile: " in text.err and "checked in" in text.err

    data = assert_clean(run_reconcile)
    state = paid.sim.simulator.state()
    with paid.world.ledger() as ledger:
        paid_out = [v for v in ledger.list() if v.stripe_transfer_id]
    assert data["since"] is None
    assert data["checked"]["ledger_transfers"] == len(paid_out) >= 4
    assert data["checked"]["stripe_transfers"] == len(state["transfers"])
    assert data["checked"]["reversals"] == len(state["reversals"]) >= 1
    assert data["checked"]["retrieved"] == 0
    assert (data["money_moved_twice"], data["in_flight"]) == (0, 0)


# ----- each kind of difference ----------------------------------------------------


def test_a_reversal_made_at_stripe_behind_the_ledgers_back_is_reported_until_recorded(
    paid: Paid, run_reconcile: Reconcile
) -> None:
    world = paid.world
    transfer_id = world.create("order-outside", amount=3000)
    world.run_daemon_once()
    stripe_id = paid.stripe_id(transfer_id)
    reversal = world.simulator.reverse_outside(stripe_id)

    result = run_reconcile("--json")
    assert result.code == 1
    found = about(differences(result), transfer_id)
    assert [(d["field"], d["ledger"], d["stripe"]) for d in found] == [
        ("amount_reversed", 0, 3000),
        ("reversal", None, {"id": reversal["id"], "amount": 3000}),
    ]
    assert all(d["stripe_transfer_id"] == stripe_id for d in found)
    assert "outside the ledger" in found[1]["note"]
    assert not any(d["in_flight"] for d in found)
    text = run_reconcile()
    assert f"{transfer_id} {stripe_id} amount_reversed: ledger 0, Stripe 3000" in text.out
    assert text.out.splitlines()[-1].startswith("reconcile: 2 differences: ")

    # The refund reaches the ledger: the reversal manager finds the transfer
    # already fully reversed and records Stripe's reversal. Agreement again.
    world.request_reversal(transfer_id)
    world.run_daemon_once()
    assert world.show(transfer_id).status == "reversed"
    assert_clean(run_reconcile)


def test_an_amount_changed_at_stripe_is_reported_with_both_values(
    paid: Paid, run_reconcile: Reconcile
) -> None:
    transfer_id = paid.ids[1]
    stripe_id = paid.stripe_id(transfer_id)
    paid.sim.simulator.edit_transfer(stripe_id, amount=4000)
    try:
        result = run_reconcile("--json")
        assert result.code == 1
        assert differences(result) == [
            {
                "transfer_id": str(transfer_id),
                "stripe_transfer_id": stripe_id,
                "field": "amount",
                "ledger": 5001,
                "stripe": 4000,
                "note": "",
                "in_flight": False,
                "money_moved_twice": False,
            }
        ]
        text = run_reconcile()
        assert text.code == 1
        assert text.out.splitlines() == [
            f"{transfer_id} {stripe_id} amount: ledger 5001, Stripe 4000",
            text.out.splitlines()[-1],
        ]
        assert text.out.splitlines()[-1].startswith("reconcile: 1 difference: ")
    finally:
        paid.sim.simulator.edit_transfer(stripe_id, amount=5001)
    assert_clean(run_reconcile)


def test_a_stripe_transfer_for_a_transfer_the_ledger_does_not_have_is_reported(
    paid: Paid, run_reconcile: Reconcile
) -> None:
    # A payout made by the old system before the ledger existed, under the
    # ledger's conventions, and partly refunded then.
    unknown_id = uuid.uuid4()
    made = paid.client().v1.transfers.create(
        params={
            "amount": 7000,
            "currency": "usd",
            "destination": SELLER,
            "transfer_group": str(unknown_id),
        }
    )
    paid.sim.simulator.reverse_outside(made.id, 2500)

    result = run_reconcile("--json")
    assert result.code == 1
    [found] = differences(result)
    assert (found["transfer_id"], found["stripe_transfer_id"], found["field"]) == (
        str(unknown_id),
        made.id,
        "transfer",
    )
    assert (found["ledger"], found["stripe"]) == (
        None,
        {"amount": 7000, "currency": "usd", "destination": SELLER},
    )
    assert "money moved without a ledger record" in found["note"]

    # Importing the old row, with what it had reversed, settles it: the
    # ledger's amount_reversed accounts for the reversal it names no id of.
    line = {
        "id": str(unknown_id),
        "seller_account_id": SELLER,
        "order_ref": "legacy-77",
        "amount": 7000,
        "currency": "usd",
        "status": "completed",
        "stripe_transfer_id": made.id,
        "amount_reversed": 2500,
    }
    with paid.world.ledger() as ledger:
        ledger.import_transfers(parse_lines([json.dumps(line)]))
    assert_clean(run_reconcile)


def test_an_imported_transfers_stripe_transfer_is_found_by_its_stripe_id_in_the_listing(
    paid: Paid, run_reconcile: Reconcile
) -> None:
    # The old system's payout carries no ledger metadata at all; the import
    # records its Stripe id. Beside it, a transfer of the platform's other
    # business, which no ledger transfer records.
    made = paid.client().v1.transfers.create(
        params={"amount": 6600, "currency": "usd", "destination": SELLER}
    )
    paid.client().v1.transfers.create(
        params={"amount": 300, "currency": "usd", "destination": "acct_1Other"}
    )
    imported_id = uuid.uuid4()
    line = {
        "id": str(imported_id),
        "seller_account_id": SELLER,
        "order_ref": "legacy-unnamed",
        "amount": 6600,
        "currency": "usd",
        "status": "completed",
        "stripe_transfer_id": made.id,
    }
    with paid.world.ledger() as ledger:
        ledger.import_transfers(parse_lines([json.dumps(line)]))

    # Compared from the listing (no GET of its own), not counted as foreign.
    checked = assert_clean(run_reconcile)["checked"]
    assert (checked["retrieved"], checked["other_stripe_transfers"]) == (0, 1)
    assert "(1 not the ledger's)" in run_reconcile().out

    paid.sim.simulator.edit_transfer(made.id, amount=6000)
    try:
        result = run_reconcile("--json")
        assert result.code == 1
        assert [
            (d["transfer_id"], d["stripe_transfer_id"], d["field"], d["ledger"], d["stripe"])
            for d in differences(result)
        ] == [(str(imported_id), made.id, "amount", 6600, 6000)]
        assert result.json()["checked"]["retrieved"] == 0
    finally:
        paid.sim.simulator.edit_transfer(made.id, amount=6600)
    assert_clean(run_reconcile)


def test_a_second_stripe_transfer_for_a_paid_transfer_is_money_moved_twice(
    paid: Paid, run_reconcile: Reconcile
) -> None:
    transfer_id = paid.ids[2]
    recorded = paid.stripe_id(transfer_id)
    # Another system paying "its" copy of the order, with the ledger's group.
    again = paid.client().v1.transfers.create(
        params={
            "amount": 5002,
            "currency": "usd",
            "destination": SELLER,
            "transfer_group": str(transfer_id),
            "metadata": {"ledger_transfer_id": str(transfer_id)},
        }
    )
    # A plain difference elsewhere, to see that money moved twice comes first.
    paid.sim.simulator.edit_transfer(paid.stripe_id(paid.ids[1]), destination="acct_9Other")
    try:
        result = run_reconcile("--json")
        assert result.code == 1
        data = result.json()
        assert data["money_moved_twice"] == 1
        first = data["differences"][0]
        assert (first["transfer_id"], first["field"], first["ledger"], first["stripe"]) == (
            str(transfer_id),
            "stripe_transfer_id",
            recorded,
            again.id,
        )
        assert first["money_moved_twice"] is True
        assert first["note"].startswith("MONEY MOVED TWICE: ")
        assert [d["field"] for d in data["differences"][1:]] == ["destination"]
        text = run_reconcile()
        lines = text.out.splitlines()
        assert lines[0].startswith(f"{transfer_id} {again.id} stripe_transfer_id: ledger")
        assert "MONEY MOVED TWICE" in lines[0]
        assert "(1 money moved twice)" in lines[-1]
    finally:
        paid.sim.simulator.edit_transfer(paid.stripe_id(paid.ids[1]), destination=SELLER)

    # The extra payout reversed in full at Stripe: the money came back.
    paid.sim.simulator.reverse_outside(again.id)
    data = assert_clean(run_reconcile)
    assert data["checked"]["extra_payouts_reversed"] == 1


def test_a_payout_and_a_reversal_between_stripe_and_the_ledger_may_be_in_flight(
    paid: Paid, run_reconcile: Reconcile
) -> None:
    world = paid.world
    transfer_id = world.create("order-in-flight", amount=4100)
    # What a daemon that died right after Stripe committed leaves behind:
    # Stripe's transfer under the first attempt's key, nothing in the ledger.
    made = paid.client().v1.transfers.create(
        params={
            "amount": 4100,
            "currency": "usd",
            "destination": SELLER,
            "transfer_group": str(transfer_id),
            "metadata": {
                "ledger_transfer_id": str(transfer_id),
                "ledger_cause": payout_cause(transfer_id),
                "ledger_order_ref": "order-in-flight",
            },
        },
        options={"idempotency_key": idempotency_key(PAYOUT, payout_cause(transfer_id), 1)},
    )
    result = run_reconcile("--json")
    assert result.code == 1
    data = result.json()
    [found] = data["differences"]
    assert (found["transfer_id"], found["field"], found["ledger"], found["stripe"]) == (
        str(transfer_id),
        "stripe_transfer_id",
        None,
        made.id,
    )
    assert found["in_flight"] is True
    assert found["note"].startswith("may be in flight: ")
    # Checked again at the end, and the daemons' work table consulted.
    assert "no daemon has started the payout yet" in found["note"]
    assert (data["in_flight"], data["checked"]["rechecked"], data["checked"]["settled"]) == (
        1,
        1,
        0,
    )

    # The daemon's first attempt replays Stripe's saved answer and records it.
    world.run_daemon_once()
    assert world.show(transfer_id).stripe_transfer_id == made.id
    assert_clean(run_reconcile)

    # The same for the refund's reversal: made at Stripe, not yet recorded.
    world.request_reversal(transfer_id, amount=600)
    [requested] = [e for e in world.events(transfer_id) if type(e).__name__ == "ReversalRequested"]
    cause = event_ref(requested)
    reversal = paid.client().v1.transfers.reversals.create(
        made.id,
        params={
            "amount": 600,
            "metadata": {
                "ledger_transfer_id": str(transfer_id),
                "ledger_cause": cause,
                "ledger_request_ref": f"refund-{transfer_id}",
            },
        },
        options={"idempotency_key": idempotency_key(REVERSAL, cause, 1)},
    )
    result = run_reconcile("--json")
    found = differences(result)
    assert [(d["field"], d["ledger"], d["stripe"], d["in_flight"]) for d in found] == [
        ("amount_reversed", 0, 600, True),
        ("reversal", None, {"id": reversal.id, "amount": 600}, True),
    ]
    assert "no daemon has started the reversal yet" in found[1]["note"]
    world.run_daemon_once()
    assert world.show(transfer_id).amount_reversed == 600
    assert_clean(run_reconcile)


def test_money_moved_twice_for_an_unrecorded_payout_is_listed_once_after_the_recheck(
    world: World, own_reconcile: Reconcile
) -> None:
    # Its own world: the listing's order decides what pass 1 meets first.
    transfer_id = world.create("order-paid-twice", amount=4200)
    client = stripe_client(world.sim.base_url, api_key=API_KEY)
    # Another system paid the order first, under the ledger's group...
    other = client.v1.transfers.create(
        params={
            "amount": 4200,
            "currency": "usd",
            "destination": SELLER,
            "transfer_group": str(transfer_id),
        }
    )
    # ...then the daemon's first attempt, not recorded yet (it died).
    ours = _ledger_payout_at_stripe(world, transfer_id, "order-paid-twice", 4200)
    # Newest first: the ledger's own payout is met before the other one, and
    # checked again at the end as "may be in flight".
    assert [t.id for t in client.v1.transfers.list().data] == [ours.id, other.id]

    result = own_reconcile("--json")
    assert result.code == 1
    data = result.json()
    assert [
        (d["stripe_transfer_id"], d["field"], d["ledger"], d["stripe"], d["money_moved_twice"])
        for d in about(data["differences"], transfer_id)
    ] == [
        (other.id, "stripe_transfer_id", None, other.id, True),
        (ours.id, "stripe_transfer_id", None, ours.id, False),
    ]
    assert len(data["differences"]) == 2
    assert data["money_moved_twice"] == 1
    assert data["differences"][1]["in_flight"] is True
    assert (data["checked"]["rechecked"], data["checked"]["settled"]) == (1, 0)

    # The daemon records its own payout; the other one is still money moved twice.
    world.run_daemon_once()
    assert world.show(transfer_id).stripe_transfer_id == ours.id
    [moved_twice] = differences(own_reconcile("--json"))
    assert (moved_twice["stripe_transfer_id"], moved_twice["ledger"]) == (other.id, ours.id)
    assert moved_twice["money_moved_twice"] is True


def test_a_transfer_set_to_completed_without_a_stripe_transfer_is_reported(
    world: World, own_reconcile: Reconcile, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its own world: completed -> pending is not in the matrix, so it stays.
    by_hand = world.create("order-by-hand", amount=900)
    paid_elsewhere = world.create("order-paid-elsewhere", amount=700)
    # Paid by another system under the ledger's group, an hour ago.
    made = stripe_client(world.sim.base_url, api_key=API_KEY).v1.transfers.create(
        params={
            "amount": 700,
            "currency": "usd",
            "destination": SELLER,
            "transfer_group": str(paid_elsewhere),
        }
    )
    world.simulator.edit_transfer(made.id, created=made.created - 3600)
    since = datetime.now(UTC)
    changed = Cli(capsys)(
        "transfer",
        "set-status",
        str(by_hand),
        "completed",
        "--database-url",
        world.url,
        "--actor",
        "ops:alice",
        "--reason",
        "paid by hand",
    )
    assert changed.code == 0, changed.err
    with world.ledger() as ledger:
        ledger.set_status(paid_elsewhere, "completed", actor="ops:alice", reason="paid elsewhere")

    result = own_reconcile("--json")
    assert result.code == 1
    found = differences(result)
    assert [(d["field"], d["ledger"], d["stripe"]) for d in about(found, by_hand)] == [
        ("stripe_transfer_id", "none (status completed)", None)
    ]
    assert "records no Stripe transfer" in about(found, by_hand)[0]["note"]
    # Stripe's transfer naming the other one is reported once, from the listing.
    assert [
        (d["stripe_transfer_id"], d["ledger"], d["stripe"]) for d in about(found, paid_elsewhere)
    ] == [(made.id, None, made.id)]
    assert len(found) == 2
    text = own_reconcile()
    assert text.code == 1
    assert (
        f"{by_hand} - stripe_transfer_id: ledger none (status completed), Stripe none -- "
        in text.out
    )

    # --since: both changed after TIME; Stripe's transfer was made before it.
    found = differences(own_reconcile("--json", "--since", since.isoformat()))
    assert sorted((d["transfer_id"], d["stripe"]) for d in found) == sorted(
        [(str(by_hand), None), (str(paid_elsewhere), None)]
    )
    assert all("among those made since" in d["note"] for d in found)
    # Nothing changed after a later TIME.
    later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    assert own_reconcile("--json", "--since", later).code == 0


def test_a_stripe_transfer_the_ledger_records_but_stripe_does_not_have_is_reported(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its own world: an imported row with a mistyped Stripe id stays wrong.
    transfer_id = uuid.uuid4()
    line = {
        "id": str(transfer_id),
        "seller_account_id": SELLER,
        "order_ref": "legacy-typo",
        "amount": 800,
        "currency": "usd",
        "status": "completed",
        "stripe_transfer_id": "tr_mistyped",
    }
    with world.ledger() as ledger:
        ledger.import_transfers(parse_lines([json.dumps(line)]))
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    monkeypatch.setenv("STRIPE_API_BASE", world.sim.base_url)
    result = Cli(capsys)("reconcile", "--database-url", world.url, "--json")
    assert result.code == 1
    data = result.json()
    assert [
        (d["transfer_id"], d["field"], d["ledger"], d["stripe"]) for d in data["differences"]
    ] == [(str(transfer_id), "transfer", "tr_mistyped", None)]
    assert (data["checked"]["stripe_transfers"], data["checked"]["retrieved"]) == (0, 1)


# ----- webhooks ---------------------------------------------------------------------


def test_webhook_deliveries_the_ledger_refused_or_could_not_match_are_listed(
    paid: Paid, run_reconcile: Reconcile
) -> None:
    received = datetime.now(UTC)
    rows = [
        (
            "evt_refused1",
            "transfer.reversed",
            paid.stripe_id(paid.ids[0]),
            str(paid.ids[0]),
            "refused",
            "partial reversal while a reversal request is pending",
        ),
        ("evt_unknown1", "transfer.reversed", "tr_nobody", None, "unknown_transfer", None),
        ("evt_fine1", "transfer.reversed", "tr_x", str(paid.ids[1]), "recorded", None),
    ]
    with paid.world.ledger() as ledger:
        db = ledger.db
        with db.transaction() as cursor:
            cursor.executemany(
                "INSERT INTO stripe_webhook_events (stripe_event_id, event_type,"
                " stripe_transfer_id, transfer_id, outcome, detail, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*row, db.to_db_time(received)) for row in rows],
            )
        try:
            result = run_reconcile("--json")
            assert result.code == 1
            found = differences(result)
            assert [
                (d["stripe_event_id"], d["transfer_id"], d["field"], d["ledger"], d["stripe"])
                for d in found
            ] == [
                ("evt_refused1", str(paid.ids[0]), "webhook", "refused", "transfer.reversed"),
                ("evt_unknown1", None, "webhook", "unknown_transfer", "transfer.reversed"),
            ]
            assert "partial reversal while a reversal request is pending" in found[0]["note"]
            assert result.json()["checked"]["webhook_events"] == 2
            # Deliveries before --since are not listed.
            later = (received + timedelta(seconds=1)).isoformat()
            assert run_reconcile("--json", "--since", later).code == 0
        finally:
            with db.transaction() as cursor:
                cursor.execute("DELETE FROM stripe_webhook_events")
    assert_clean(run_reconcile)


# ----- --since ----------------------------------------------------------------------


def test_since_limits_reconcile_to_what_changed_at_stripe_and_in_the_ledger(
    paid: Paid, run_reconcile: Reconcile
) -> None:
    world, simulator = paid.world, paid.sim.simulator
    # Everything so far was made an hour ago, at Stripe; now is TIME.
    backdated = {t["id"]: t["created"] for t in simulator.state()["transfers"]}
    for stripe_id, created in backdated.items():
        simulator.edit_transfer(stripe_id, created=created - 3600)
    since = _a_fresh_second()
    try:
        new = world.create("order-after-since", amount=6100)
        world.request_reversal(paid.ids[3], amount=100)  # changed after TIME
        world.run_daemon_once()
        old_stripe_id, new_stripe_id = paid.stripe_id(paid.ids[1]), paid.stripe_id(new)
        simulator.edit_transfer(old_stripe_id, amount=1)
        simulator.edit_transfer(new_stripe_id, amount=2)

        result = run_reconcile("--json", "--since", since.isoformat())
        assert result.code == 1
        data = result.json()
        assert data["since"] == since.isoformat().replace("+00:00", "Z")
        assert [(d["transfer_id"], d["field"]) for d in data["differences"]] == [
            (str(new), "amount")
        ]
        # Stripe lists only the new transfer; the transfer reversed after TIME
        # was paid before it, and is retrieved on its own.
        checked = data["checked"]
        assert (checked["stripe_transfers"], checked["ledger_transfers"]) == (1, 2)
        assert (checked["retrieved"], checked["reversals"]) == (1, 1)

        everything = differences(run_reconcile("--json"))
        assert sorted((d["transfer_id"], d["field"]) for d in everything) == sorted(
            [(str(new), "amount"), (str(paid.ids[1]), "amount")]
        )
    finally:
        simulator.edit_transfer(paid.stripe_id(paid.ids[1]), amount=5001)
        simulator.edit_transfer(paid.stripe_id(new), amount=6100)
        for stripe_id, created in backdated.items():
            simulator.edit_transfer(stripe_id, created=created)
    assert_clean(run_reconcile)


def _a_fresh_second() -> datetime:
    """Now, once the second changes: Stripe's times are whole seconds, and
    --since rounds down, so the earlier tests' events (made this second)
    would count as made after it."""
    start = int(time.time())
    wait_for(lambda: int(time.time()) > start, timeout=5, what="the next second")
    return datetime.now(UTC)


def test_since_finds_a_later_reversal_of_an_older_transfer_through_stripes_events(
    paid: Paid, run_reconcile: Reconcile, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stripe lists reversals per transfer only, and lists transfers by when
    they were made: a reversal made after TIME of a transfer made before it
    is found through /v1/events, which names the transfer."""
    world, simulator = paid.world, paid.sim.simulator
    transfer_id = world.create("order-old-refunded-later", amount=2200)
    world.run_daemon_once()
    stripe_id = paid.stripe_id(transfer_id)
    [created] = [t["created"] for t in simulator.state()["transfers"] if t["id"] == stripe_id]
    simulator.edit_transfer(stripe_id, created=created - 3600)
    since = datetime.now(UTC)
    # A Dashboard refund whose webhook never arrived.
    reversal = simulator.reverse_outside(stripe_id)

    result = run_reconcile("--json", "--since", since.isoformat())
    assert result.code == 1
    found = about(differences(result), transfer_id)
    assert [(d["field"], d["stripe"]) for d in found] == [
        ("amount_reversed", 2200),
        ("reversal", {"id": reversal["id"], "amount": 2200}),
    ]
    with pytest.raises(SystemExit):
        run(["reconcile", "--help"])
    assert "events say changed" in " ".join(capsys.readouterr().out.split())

    # The refund reaches the ledger; the reversal manager finds the transfer
    # reversed in full already and records Stripe's reversal.
    world.request_reversal(transfer_id)
    world.run_daemon_once()
    assert world.show(transfer_id).amount_reversed == 2200
    assert run_reconcile("--json", "--since", since.isoformat()).code == 0
    simulator.edit_transfer(stripe_id, created=created)
    assert_clean(run_reconcile)


# ----- Stripe's rate limits -------------------------------------------------------


def test_rate_limits_while_listing_are_waited_out_with_growing_waits(paid: Paid) -> None:
    world = paid.world
    world.simulator.add_fault("429", count=3, path="/v1/transfers", method="GET")
    waits: list[float] = []
    reader = StripeReader(
        world.stripe_settings(),
        backoff=Backoff(base_seconds=0.01, max_seconds=0.03),
        sleep=waits.append,
    )
    with world.ledger() as ledger:
        report = reconcile(ledger, reader)
    assert report.ok, [d.as_text() for d in report.differences]
    assert report.checked.rate_limited == 3
    limited = [r for r in world.simulator.state()["requests"] if r["status"] == 429]
    assert [r["method"] for r in limited] == ["GET"] * 3
    # Exponential with jitter: each wait between half and all of 10, 20, then 30 ms (capped).
    for wait, ceiling in zip(waits, (0.01, 0.02, 0.03), strict=True):
        assert ceiling / 2 <= wait <= ceiling


def test_reconcile_gives_up_when_stripe_keeps_rate_limiting(paid: Paid) -> None:
    world = paid.world
    world.simulator.add_fault("429", count=2, path="/v1/transfers", method="GET")
    waits: list[float] = []
    reader = StripeReader(world.stripe_settings(), backoff=Backoff(max_tries=2), sleep=waits.append)
    with world.ledger() as ledger, pytest.raises(StripeReadFailed) as gave_up:
        reconcile(ledger, reader)
    # Two tries, one wait between them: no wait after the last.
    assert len(waits) == 1
    message = str(gave_up.value)
    assert "429 (rate limited) 2 times in a row to list transfers" in message
    assert "\n" not in message
    assert API_KEY not in message


# ----- bad input and operator problems --------------------------------------------


def test_a_malformed_since_is_bad_input(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    result = Cli(capsys)(
        "reconcile", "--database-url", f"sqlite:///{tmp_path / 'x.db'}", "--since", "yesterday"
    )
    assert result.code == 2
    assert "--since" in assert_one_line_error(result)
    assert result.out == ""


def test_reconcile_needs_the_stripe_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    result = Cli(capsys)("reconcile", "--database-url", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.code == 2
    assert "STRIPE_API_KEY is not set" in assert_one_line_error(result)


def test_a_rejected_key_is_one_line_and_never_shown(
    paid: Paid, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong_key = "sk_test_notTheRightKeyAtAll9876"
    with running_simulator(api_key=API_KEY) as guarded:
        monkeypatch.setenv("STRIPE_API_KEY", wrong_key)
        monkeypatch.setenv("STRIPE_API_BASE", guarded.base_url)
        result = Cli(capsys)("reconcile", "--database-url", paid.world.url, "--json")
    assert result.code == 1
    line = assert_one_line_error(result)
    assert "401" in line and "Invalid API Key" in line
    assert wrong_key not in result.err + result.out


def test_an_unrecorded_payout_whose_work_waits_says_until_when_and_why(
    world: World, own_reconcile: Reconcile
) -> None:
    """A payout made at Stripe and not recorded yet, whose work waits (a
    daemon will look it up again only once a look-up can prove anything):
    reconcile says until when and why, not "is `ledger daemon` running?"."""
    transfer_id = world.create("order-waiting", amount=4200)
    now = datetime.now(UTC)
    with world.ledger() as ledger:
        unknown_outcome_attempt(
            ledger,
            transfer_id,
            now,
            until=now + timedelta(minutes=70),
            reason="not sent: the earlier attempt's request may have been running at Stripe",
        )
    _ledger_payout_at_stripe(world, transfer_id, "order-waiting", 4200)

    [found] = about(differences(own_reconcile("--json")), transfer_id)
    assert found["in_flight"] is True
    assert (
        f"the payout is due again at {values.iso(now + timedelta(minutes=70))} (not sent: the"
        " earlier attempt's request may have been running at Stripe)"
    ) in found["note"]
