"""Payouts as the process managers leave them, without running the daemon:
recorded as paid once Stripe made the transfer (for tests that need one a
refund can reverse), or an attempt whose outcome is unknown."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from ledger.backend import Backend
from ledger.domain import payout_cause
from ledger.processing.effects import EFFECTS, PAYOUT, StripeEffect
from ledger.processing.work import WorkStore

PAYOUT_MANAGER = "system:payout-manager"


def pay_out(ledger: Backend, transfer_id: UUID, stripe_transfer_id: str | None = None) -> str:
    """Record `transfer_id` as paid out as `stripe_transfer_id` (default: one
    derived from the id); returns the Stripe id."""
    stripe_id = stripe_transfer_id or f"tr_{transfer_id.hex[:16]}"
    ledger.transfers.change(
        transfer_id,
        lambda t: t.record_payout_succeeded(
            stripe_transfer_id=stripe_id, actor=PAYOUT_MANAGER, caused_by=payout_cause(transfer_id)
        ),
    )
    ledger.catch_up()
    return stripe_id


def unknown_outcome_attempt(
    ledger: Backend,
    transfer_id: UUID,
    began: datetime,
    effect: StripeEffect = EFFECTS[PAYOUT],
    *,
    until: datetime | None = None,
    reason: str | None = None,
) -> str:
    """An attempt of `effect` begun at `began` whose call ended with its
    outcome unknown (its request timed out): the work released so, for the
    next handling to look it up; `until`, `reason`: not due again before then,
    as a wait for proof leaves it. Returns the attempt's cause."""
    earlier = WorkStore(ledger.db, "daemon-that-timed-out", 30)
    (claim,) = earlier.claim_many([(transfer_id, effect.kind)], began)
    cause = effect.cause(ledger.transfers.get(transfer_id), began)
    assert cause is not None
    earlier.begin_attempt(claim, cause, began)
    earlier.release(claim, outcome_unknown=True, now=began, until=until, reason=reason)
    return cause
