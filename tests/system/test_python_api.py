"""The Python API as a marketplace uses it: its refund handler (the seed's
reverseSellerAccounting call site) and its admin tool, end to end with the
daemon paying out and reversing at the simulator, on both databases."""

from __future__ import annotations

import inspect
import json
import time
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest

from ledger.api import (
    IdempotencyConflict,
    InvalidInput,
    TransferLedger,
    TransferNotFound,
    TransitionRefused,
    open_ledger,
)
from ledger.webhooks import DEFAULT_TOLERANCE_SECONDS
from tests.system.test_webhooks import (
    SECRET,
    delivery_row,
    event_of,
    stripe_signature,
    stripe_transfer,
)
from tests.system.world import World


def on_refund(ledger: TransferLedger, refund: dict[str, object]) -> str:
    """The marketplace's refund handler, as the README shows it."""
    try:
        result = ledger.request_reversal(
            str(refund["seller_transfer_id"]),
            request_ref=str(refund["id"]),  # a retried webhook appends nothing
            amount=int(str(refund["amount"])),
            reason=f"refund {refund['id']} of order {refund['order']}",
            actor="refund-handler",
        )
    except TransitionRefused as refused:
        # Not paid out yet, or already reversed: a person decides.
        return f"needs a person: {refused}"
    return "recorded" if result.recorded else "already recorded"


def test_a_refund_handler_reverses_a_paid_transfer_through_the_daemon(world: World) -> None:
    with open_ledger(world.url) as ledger:
        transfer = ledger.create_transfer(
            seller="acct_1Seller", amount=5000, currency="USD", order_ref="order-77"
        )
        assert transfer.status == "pending" and transfer.currency == "usd"
        # The same order again is the same transfer.
        assert (
            ledger.create_transfer(
                seller="acct_1Seller", amount=5000, currency="usd", order_ref="order-77"
            ).id
            == transfer.id
        )
        refund = {"id": "re_1", "seller_transfer_id": transfer.id, "amount": 2000, "order": 77}
        # Before the payout the matrix refuses: the handler says so, nothing appended.
        assert on_refund(ledger, refund).startswith("needs a person: transition refused")
        assert ledger.get(transfer.id).version == 1

    world.run_daemon_once()
    with open_ledger(world.url) as ledger:
        paid = ledger.get(transfer.id)
        assert paid.status == "completed" and paid.stripe_transfer_id is not None
        assert on_refund(ledger, refund) == "recorded"
        assert on_refund(ledger, refund) == "already recorded"
        assert ledger.get(transfer.id).status == "reversal_pending"

    world.run_daemon_once()
    with open_ledger(world.url) as ledger:
        reversed_ = ledger.get(transfer.id)
        assert (reversed_.status, reversed_.amount_reversed) == ("reversed", 2000)
        history = ledger.history(transfer.id)
        assert [e.type for e in history.entries] == [
            "Created",
            "PayoutSucceeded",
            "ReversalRequested",
            "Reversed",
        ]
        requested = history.entries[2]
        assert requested.actor == "refund-handler"
        assert requested.reason == "refund re_1 of order 77"
        # The state as it was before the refund.
        assert ledger.history(transfer.id, version=2).state.status == "completed"
        assert ledger.history(transfer.id, at=history.entries[1].at).state.version == 2
    [made] = world.stripe_transfers(transfer.id)
    assert [r["amount"] for r in world.stripe_reversals(made["id"])] == [2000]


def test_the_api_raises_the_errors_the_cli_maps_to_exit_codes(world: World) -> None:
    with open_ledger(world.url) as ledger:
        transfer = ledger.create_transfer(
            seller="acct_1Seller", amount=900, currency="eur", order_ref="order-admin"
        )
        with pytest.raises(IdempotencyConflict):
            ledger.create_transfer(
                seller="acct_1Seller", amount=901, currency="eur", order_ref="order-admin"
            )
        for bad in (
            lambda: ledger.get("not-a-uuid"),
            lambda: ledger.create_transfer(
                seller="acct_1Seller", amount=0, currency="eur", order_ref="o"
            ),
            lambda: ledger.create_transfer(
                seller="seller-1", amount=5, currency="eur", order_ref="o"
            ),
            lambda: ledger.set_status(transfer.id, "done", actor="ops", reason="typo"),
            lambda: ledger.history(transfer.id, at=datetime(2020, 1, 1)),
        ):
            with pytest.raises(InvalidInput):
                bad()
        with pytest.raises(TransferNotFound):
            ledger.get(uuid4())
        with pytest.raises(TransferNotFound):
            ledger.history(transfer.id, at=datetime(2020, 1, 1, tzinfo=UTC))
        with pytest.raises(TransitionRefused) as refused:
            ledger.set_status(transfer.id, "reversed", actor="ops@example", reason="typo")
        assert "pending -> reversed" in str(refused.value)
        failed = ledger.set_status(
            transfer.id, "failed", actor="ops@example", reason="bank says account closed"
        )
        assert failed.status == "failed" and failed.version == 2
        assert [t.id for t in ledger.list_transfers("failed")] == [transfer.id]
        [entry] = ledger.history(transfer.id, version=2).entries[1:]
        assert (entry.actor, entry.reason) == ("ops@example", "bank says account closed")
        assert isinstance(transfer.id, UUID)


def test_the_webhook_handler_is_reachable_from_the_api(world: World) -> None:
    """For a marketplace mounting it in its own framework: an unsigned or
    stale delivery is refused and nothing is recorded; a signed one is."""
    with open_ledger(world.url) as ledger:
        transfer = ledger.create_transfer(
            seller="acct_1Seller", amount=5000, currency="usd", order_ref="order-web"
        )
    world.run_daemon_once()
    paid_as = world.show(transfer.id).stripe_transfer_id
    assert paid_as is not None
    world.simulator.reverse_outside(paid_as, 800)
    event_id, payload = event_of(stripe_transfer(world, paid_as))
    stale = stripe_signature(payload, SECRET, signed_at=int(time.time()) - 400)

    with open_ledger(world.url) as ledger:
        unsigned = ledger.handle_stripe_webhook(payload, None, SECRET)
        too_old = ledger.handle_stripe_webhook(payload, stale, SECRET)
        assert (unsigned.status, too_old.status) == (400, 400)
        assert ledger.get(transfer.id).version == 2
        assert [type(e).__name__ for e in world.events(transfer.id)] == [
            "Created",
            "PayoutSucceeded",
        ]
        with ledger.core.db.transaction(write=False) as cursor:
            cursor.execute("SELECT COUNT(*) AS n FROM stripe_webhook_events")
            assert cursor.fetchone() == {"n": 0}

        # A longer tolerance lets the same signature through.
        answer = ledger.handle_stripe_webhook(payload, stale, SECRET, tolerance_seconds=600)
        assert (answer.status, answer.outcome) == (200, "recorded")
        assert json.loads(answer.body) == {"id": event_id, "outcome": "recorded"}
        after = ledger.get(transfer.id)
    assert (after.status, after.amount_reversed, after.version) == ("reversed", 800, 4)
    row = delivery_row(world, event_id)
    assert row is not None and row["outcome"] == "recorded"


def test_the_apis_webhook_tolerance_defaults_to_the_handlers() -> None:
    default = inspect.signature(TransferLedger.handle_stripe_webhook).parameters
    assert default["tolerance_seconds"].default == DEFAULT_TOLERANCE_SECONDS
