"""A reversal made at Stripe behind the ledger's back (the Dashboard, another
system), told by a webhook, is recorded through the matrix: once, with Stripe's
reversal id, and only where the lifecycle has a road to `reversed`."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import uuid4

import pytest

from ledger.domain import Transfer, TransferState
from ledger.errors import InvalidInput, TransitionRefused
from tests.unit.builders import (
    AMOUNT,
    FIRST_REFUND,
    REVERSAL_MANAGER,
    SELLER,
    a_transfer_in,
    in_memory_app,
)

WEBHOOK: Final = "system:stripe-webhook"
EVENT: Final = "evt_1Reversed"


def record_external(
    transfer: Transfer,
    reversal_id: str = "trr_outside",
    amount: int = AMOUNT,
    *,
    at_stripe: int | None = None,
    made_at: datetime | None = None,
) -> bool:
    return transfer.record_external_reversal(
        stripe_reversal_id=reversal_id,
        amount=amount,
        amount_reversed_at_stripe=amount if at_stripe is None else at_stripe,
        made_at=made_at,
        actor=WEBHOOK,
        caused_by=EVENT,
    )


def a_partly_reversed_transfer(reversed_amount: int = 4_000) -> Transfer:
    transfer = a_transfer_in("reversal_pending")
    transfer.record_reversed(
        stripe_reversal_id="trr_ledger",
        amount_reversed=reversed_amount,
        actor=REVERSAL_MANAGER,
        caused_by=None,
    )
    transfer.collect_events()
    return transfer


def test_a_completed_transfer_reversed_outside_ends_reversed_in_two_events_of_one_change() -> None:
    transfer = a_transfer_in("completed")

    assert record_external(transfer, "trr_dash", AMOUNT) is True

    requested, reversed_ = transfer.pending_events
    assert isinstance(requested, Transfer.ReversalRequested)
    assert isinstance(reversed_, Transfer.Reversed)
    assert (requested.from_status, requested.to_status) == ("completed", "reversal_pending")
    assert (reversed_.from_status, reversed_.to_status) == ("reversal_pending", "reversed")
    assert (requested.request_ref, requested.amount) == ("stripe:trr_dash", AMOUNT)
    assert (reversed_.stripe_reversal_id, reversed_.amount_reversed) == ("trr_dash", AMOUNT)
    for event in (requested, reversed_):
        assert (event.actor, event.caused_by) == (WEBHOOK, EVENT)
        assert event.reason is not None and "outside the ledger" in event.reason
    assert (transfer.status, transfer.amount_reversed) == ("reversed", AMOUNT)


def test_a_partial_reversal_outside_ends_reversed_with_the_amount_it_took() -> None:
    transfer = a_transfer_in("completed")

    record_external(transfer, "trr_part", 2_500)

    assert (transfer.status, transfer.amount_reversed) == ("reversed", 2_500)
    assert transfer.reversal_amount == 2_500


def test_a_further_reversal_outside_keeps_a_reversed_transfers_amount_up_with_stripe() -> None:
    transfer = a_partly_reversed_transfer(4_000)

    record_external(transfer, "trr_more", 1_000, at_stripe=5_000)

    (event,) = transfer.pending_events
    assert isinstance(event, Transfer.Reversed)
    assert (event.from_status, event.to_status) == ("reversed", "reversed")
    assert (event.stripe_reversal_id, event.amount_reversed) == ("trr_more", 5_000)
    assert transfer.amount_reversed == 5_000


def test_the_same_reversal_told_again_records_nothing() -> None:
    transfer = a_transfer_in("completed")
    record_external(transfer, "trr_once", 3_000)
    transfer.collect_events()

    assert record_external(transfer, "trr_once", 3_000) is False

    assert transfer.pending_events == []


def test_a_reversal_the_reversal_manager_recorded_is_not_recorded_again() -> None:
    transfer = a_partly_reversed_transfer(4_000)

    assert record_external(transfer, "trr_ledger", 4_000) is False

    assert transfer.pending_events == []


def test_nothing_is_added_to_a_transfer_the_ledger_has_fully_reversed() -> None:
    """The reversal manager found it fully reversed at Stripe and recorded one
    of the reversals that did it: the others are counted already."""
    transfer = a_transfer_in("reversed")  # trr_1, the whole amount

    assert record_external(transfer, "trr_other", 1_000, at_stripe=AMOUNT) is False

    assert transfer.pending_events == []


def test_a_reversal_pending_transfer_fully_reversed_outside_is_settled_reversed() -> None:
    transfer = a_transfer_in("reversal_pending")

    record_external(transfer, "trr_all", AMOUNT, at_stripe=AMOUNT)

    (event,) = transfer.pending_events
    assert isinstance(event, Transfer.Reversed)
    assert (event.from_status, event.to_status) == ("reversal_pending", "reversed")
    assert (event.stripe_reversal_id, event.amount_reversed) == ("trr_all", AMOUNT)


def test_the_whole_amount_is_recorded_when_stripe_has_nothing_left_to_reverse() -> None:
    """The ledger's own reversal may be at Stripe and not yet recorded: Stripe's
    total, not this reversal's amount, says nothing is left."""
    transfer = a_transfer_in("reversal_pending")

    record_external(transfer, "trr_rest", 3_000, at_stripe=AMOUNT)

    assert (transfer.status, transfer.amount_reversed) == ("reversed", AMOUNT)


def test_a_partial_reversal_outside_is_counted_and_the_pending_request_stays_pending() -> None:
    """The ledger's own request (FIRST_REFUND) is not settled by someone
    else's money: the transfer stays reversal_pending for it, and
    amount_reversed says what Stripe did (found by the deterministic
    simulation: refused, the Dashboard's reversal was never recorded)."""
    transfer = a_transfer_in("reversal_pending")

    assert record_external(transfer, "trr_part", 3_000, at_stripe=3_000) is True

    (event,) = transfer.pending_events
    assert isinstance(event, Transfer.Reversed)
    assert (event.from_status, event.to_status) == ("reversal_pending", "reversal_pending")
    assert (event.stripe_reversal_id, event.amount_reversed) == ("trr_part", 3_000)
    assert event.reason is not None and "outside the ledger" in event.reason
    assert (transfer.status, transfer.amount_reversed) == ("reversal_pending", 3_000)
    assert transfer.reversal_request_ref == FIRST_REFUND
    # Told again: nothing new.
    transfer.collect_events()
    assert record_external(transfer, "trr_part", 3_000, at_stripe=3_000) is False
    assert transfer.pending_events == []


def test_the_ledgers_own_reversal_then_counts_on_top_of_the_one_made_outside() -> None:
    transfer = a_transfer_in("reversal_pending")
    record_external(transfer, "trr_part", 3_000, at_stripe=3_000)

    transfer.record_reversed(
        stripe_reversal_id="trr_ledger",
        amount_reversed=transfer.amount_reversed + 2_000,
        actor=REVERSAL_MANAGER,
        caused_by=None,
    )

    assert (transfer.status, transfer.amount_reversed) == ("reversed", 5_000)


def test_a_partial_reversal_outside_larger_than_what_is_left_is_not_recorded() -> None:
    transfer = a_transfer_in("reversal_pending")
    record_external(transfer, "trr_part", 3_000, at_stripe=3_000)
    transfer.collect_events()
    before = copy.deepcopy(transfer)

    with pytest.raises(InvalidInput, match="left to reverse"):
        record_external(transfer, "trr_huge", AMOUNT - 2_000, at_stripe=AMOUNT - 1_000)

    assert transfer.pending_events == []
    assert transfer == before


@pytest.mark.parametrize("status", ["pending", "failed", "permanently_failed"])
def test_a_reversal_outside_is_refused_where_the_matrix_has_no_road_to_reversed(
    status: str,
) -> None:
    transfer = a_transfer_in(status)

    with pytest.raises(TransitionRefused, match=f"{status} -> reversal_pending"):
        record_external(transfer, "trr_x", 1_000)

    assert transfer.pending_events == []


def test_a_reversal_of_more_than_the_ledger_has_left_is_not_recorded() -> None:
    transfer = a_partly_reversed_transfer(9_000)

    with pytest.raises(InvalidInput, match="only 1000 left"):
        record_external(transfer, "trr_big", 2_000, at_stripe=AMOUNT)

    assert transfer.pending_events == []


@pytest.mark.parametrize(
    "change",
    [
        {"stripe_reversal_id": " "},
        {"amount": 0},
        {"amount": 1.5},
        {"amount_reversed_at_stripe": -1},
        {"amount_reversed_at_stripe": 10},  # less than this reversal alone
        {"actor": ""},
    ],
)
def test_a_malformed_report_is_not_recorded(change: dict[str, Any]) -> None:
    transfer = a_transfer_in("completed")
    arguments: dict[str, Any] = {
        "stripe_reversal_id": "trr_x",
        "amount": 1_000,
        "amount_reversed_at_stripe": 1_000,
        "made_at": None,
        "actor": WEBHOOK,
        "caused_by": EVENT,
    }

    with pytest.raises(InvalidInput):
        transfer.record_external_reversal(**{**arguments, **change})

    assert transfer.pending_events == []


def test_a_reversal_older_than_an_import_is_counted_in_what_was_imported() -> None:
    transfer = Transfer.import_existing(
        transfer_id=uuid4(),
        state=TransferState(
            status="completed",
            seller_account_id=SELLER,
            order_ref="legacy-1",
            amount=AMOUNT,
            currency="usd",
            retry_count=0,
            next_retry_at=None,
            stripe_transfer_id="tr_legacy",
            amount_reversed=2_000,
            last_error=None,
            reversal_request_ref=None,
            reversal_amount=None,
        ),
        source_updated_at=None,
        actor="system:import",
    )
    transfer.collect_events()
    assert transfer.imported_at is not None
    long_ago = transfer.imported_at - timedelta(days=30)

    assert record_external(transfer, "trr_old", 2_000, at_stripe=2_000, made_at=long_ago) is False
    recorded = record_external(
        transfer, "trr_new", 1_000, at_stripe=3_000, made_at=datetime.now(UTC)
    )

    assert recorded is True
    assert (transfer.status, transfer.amount_reversed) == ("reversed", 3_000)


def test_replaying_a_transfer_reversed_outside_rebuilds_the_same_transfer() -> None:
    app = in_memory_app()
    transfer = a_transfer_in("completed", app)
    record_external(transfer, "trr_a", 3_000, at_stripe=3_000)
    app.save(transfer)
    record_external(transfer, "trr_b", 2_000, at_stripe=5_000)
    app.save(transfer)

    replayed: Transfer = app.repository.get(transfer.id)

    assert replayed == transfer
    assert replayed.stripe_reversal_ids == ("trr_a", "trr_b")
    assert (replayed.status, replayed.amount_reversed, replayed.version) == ("reversed", 5_000, 5)
    # And the same reversal after a replay is still recognised.
    assert record_external(replayed, "trr_a", 3_000, at_stripe=5_000) is False
