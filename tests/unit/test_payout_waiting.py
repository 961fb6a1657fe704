"""A payout waiting for a condition outside the transfer (the platform's
balance, the seller's onboarding) says so on the transfer, as a same-status
step that counts no attempt; only where a payout is due."""

from __future__ import annotations

import pytest

from ledger.domain import Transfer
from ledger.errors import TransitionRefused
from tests.unit.builders import a_transfer_in

MANAGER = "system:payout-manager"


@pytest.mark.parametrize("status", ["pending", "failed"])
def test_a_waiting_payout_keeps_its_status_and_attempts_and_says_why(status: str) -> None:
    transfer = a_transfer_in(status)
    retries = transfer.retry_count

    transfer.record_payout_waiting(
        error="waiting for the platform's Stripe balance", actor=MANAGER, caused_by=None
    )

    (event,) = transfer.pending_events
    assert isinstance(event, Transfer.PayoutWaiting)
    assert (event.from_status, event.to_status) == (status, status)
    assert (transfer.status, transfer.retry_count) == (status, retries)
    assert transfer.last_error == "waiting for the platform's Stripe balance"


@pytest.mark.parametrize("status", ["completed", "reversal_pending", "reversed"])
def test_only_a_payout_still_due_can_wait(status: str) -> None:
    transfer = a_transfer_in(status)

    with pytest.raises(TransitionRefused):
        transfer.record_payout_waiting(error="waiting", actor=MANAGER, caused_by=None)

    assert transfer.pending_events == []
