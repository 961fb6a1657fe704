"""Recording a payout the way the payout manager does once Stripe made the
transfer: for tests that need a paid-out transfer (one that records a Stripe
transfer, so that a refund can reverse it) without running the daemon."""

from __future__ import annotations

from uuid import UUID

from ledger.backend import Backend
from ledger.domain import payout_cause

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
