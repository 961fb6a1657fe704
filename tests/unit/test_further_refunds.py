"""More than one refund per transfer, within the seed's matrix: a partially
reversed transfer may be asked for further reversals until its amount is
fully reversed. Each is its own ReversalRequested (reversed -> reversed, a
same-status step) with its own request_ref, made due by next_retry_at, and
settled by its own Reversed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ledger.domain import Transfer
from ledger.errors import IdempotencyConflict, InvalidInput
from ledger.processing.effects import (
    EFFECTS,
    REVERSAL,
    FurtherReversalRefused,
    NotWhatWasAsked,
)
from ledger.processing.ports import StripeReversal, StripeTransfer
from tests.unit.builders import AMOUNT, FIRST_REFUND, REVERSAL_MANAGER, a_transfer_in

REFUND_HANDLER = "refund-handler"


def partly_reversed(reversed_amount: int = 3_000) -> Transfer:
    transfer = a_transfer_in("reversal_pending")  # FIRST_REFUND, the whole amount asked
    transfer.record_reversed(
        stripe_reversal_id="trr_first",
        amount_reversed=reversed_amount,
        actor=REVERSAL_MANAGER,
        caused_by=None,
    )
    transfer.collect_events()
    return transfer


def ask(transfer: Transfer, ref: str, amount: int | None) -> bool:
    return transfer.request_reversal(
        request_ref=ref, amount=amount, actor=REFUND_HANDLER, reason="item refunded"
    )


def test_a_second_refund_of_a_partly_reversed_transfer_is_its_own_request() -> None:
    transfer = partly_reversed(3_000)

    assert ask(transfer, "refund-2", 2_000) is True

    (event,) = transfer.pending_events
    assert isinstance(event, Transfer.ReversalRequested)
    assert (event.from_status, event.to_status) == ("reversed", "reversed")
    assert (event.request_ref, event.amount) == ("refund-2", 2_000)
    assert transfer.status == "reversed"
    assert transfer.further_reversal_pending
    assert transfer.next_retry_at == event.timestamp
    # The reversal worker finds it due, with this request as its cause.
    assert EFFECTS[REVERSAL].cause(transfer, event.timestamp) == transfer.reversal_cause


def test_its_reversal_settles_it_and_adds_up() -> None:
    transfer = partly_reversed(3_000)
    ask(transfer, "refund-2", 2_000)

    transfer.record_reversed(
        stripe_reversal_id="trr_second",
        amount_reversed=5_000,
        actor=REVERSAL_MANAGER,
        caused_by=transfer.reversal_cause,
    )

    event = transfer.pending_events[-1]
    assert isinstance(event, Transfer.Reversed)
    assert (event.from_status, event.to_status) == ("reversed", "reversed")
    assert (transfer.amount_reversed, transfer.next_retry_at) == (5_000, None)
    assert not transfer.further_reversal_pending
    assert EFFECTS[REVERSAL].cause(transfer, event.timestamp + timedelta(days=1)) is None


def test_a_failed_attempt_keeps_it_due_later_and_reversed() -> None:
    transfer = partly_reversed()
    ask(transfer, "refund-2", 1_000)
    later = transfer.pending_events[-1].timestamp + timedelta(minutes=5)

    transfer.record_reversal_attempt_failed(
        error="timeout", next_retry_at=later, actor=REVERSAL_MANAGER, caused_by=None
    )

    assert (transfer.status, transfer.next_retry_at, transfer.retry_count) == (
        "reversed",
        later,
        1,
    )
    assert EFFECTS[REVERSAL].cause(transfer, later - timedelta(seconds=1)) is None
    assert EFFECTS[REVERSAL].cause(transfer, later) is not None


def test_a_refund_above_what_is_left_is_refused_and_nothing_is_appended() -> None:
    transfer = partly_reversed(3_000)

    with pytest.raises(InvalidInput, match="only 7000 to reverse"):
        ask(transfer, "refund-2", 7_001)

    assert transfer.pending_events == []


def test_a_fully_reversed_transfer_has_nothing_left_to_refund() -> None:
    transfer = partly_reversed(AMOUNT)

    with pytest.raises(InvalidInput, match="nothing left"):
        ask(transfer, "refund-2", None)


def test_one_further_refund_at_a_time() -> None:
    transfer = partly_reversed()
    ask(transfer, "refund-2", 1_000)

    with pytest.raises(IdempotencyConflict, match="refund-2"):
        ask(transfer, "refund-3", 1_000)


def test_earlier_refunds_retried_after_a_later_one_append_nothing() -> None:
    transfer = partly_reversed()
    ask(transfer, "refund-2", 1_000)
    transfer.collect_events()

    assert ask(transfer, "refund-2", 1_000) is False
    assert ask(transfer, FIRST_REFUND, None) is False
    assert transfer.pending_events == []


def test_stripe_refusing_a_further_reversal_for_good_parks_it_for_a_person() -> None:
    transfer = partly_reversed()
    ask(transfer, "refund-2", 1_000)

    with pytest.raises(FurtherReversalRefused, match="refund-2"):
        EFFECTS[REVERSAL].record_permanent_failure(transfer, "400 refused", "cause")


def test_a_reversal_made_outside_leaves_a_waiting_refund_waiting() -> None:
    transfer = partly_reversed(3_000)
    ask(transfer, "refund-2", 2_000)

    transfer.record_external_reversal(
        stripe_reversal_id="trr_dashboard",
        amount=1_000,
        amount_reversed_at_stripe=4_000,
        made_at=None,
        actor="system:stripe-webhook",
        caused_by="evt_1",
    )

    assert transfer.amount_reversed == 4_000
    assert transfer.further_reversal_pending


class _Stripe:
    """The payments port (ledger/processing/ports.py) with one Stripe transfer
    and the reversals given: enough for a reversal's look-up."""

    def __init__(self, transfer_id: str, reversals: list[StripeReversal]) -> None:
        self.transfer = StripeTransfer(
            id=transfer_id,
            amount=AMOUNT,
            currency="usd",
            destination="acct_1Seller",
            transfer_group=None,
            amount_reversed=sum(r.amount for r in reversals),
        )
        self.reversals = reversals

    def reversals_of(self, transfer_id: str) -> list[StripeReversal]:
        return list(reversed(self.reversals))

    def retrieve_transfer(self, transfer_id: str) -> StripeTransfer:
        return self.transfer


def test_a_reversal_look_up_never_takes_one_larger_than_asked_as_the_requests() -> None:
    transfer = partly_reversed(3_000)
    ask(transfer, "refund-2", 1_000)
    cause = transfer.reversal_cause
    assert cause is not None
    stripe = _Stripe(
        "tr_1",
        [
            StripeReversal(
                id="trr_big",
                transfer="tr_1",
                amount=5_000,
                metadata={"ledger_transfer_id": str(transfer.id), "ledger_cause": cause},
            )
        ],
    )

    with pytest.raises(NotWhatWasAsked, match="trr_big: 5000"):
        EFFECTS[REVERSAL].look_up(stripe, transfer, cause)  # type: ignore[arg-type]
