"""Builders shared by the unit tests: transfers in a given status, an in-memory event store.

Each builder takes a transfer along the product's own call sites (payout, refund
accounting, reversal process manager), so "a transfer in status X" is one that got
there the way real ones do.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final
from uuid import UUID, uuid4

from eventsourcing.application import Application

from ledger.domain import Transfer, TransferState, event_ref

SELLER: Final = "acct_1A2b3C"
ORDER: Final = "order-1001"
AMOUNT: Final = 10_000
CHECKOUT: Final = "system:checkout"
PAYOUT_MANAGER: Final = "system:payout-manager"
REFUND_ACCOUNTING: Final = "system:refund-accounting"
REVERSAL_MANAGER: Final = "system:reversal-manager"
SUPPORT_AGENT: Final = "alice@example.com"
FIRST_REFUND: Final = "refund-1"
LATER: Final = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
EVEN_LATER: Final = datetime(2030, 1, 2, 12, 0, tzinfo=UTC)


def in_memory_app() -> Application[UUID]:
    """An eventsourcing application on the library's in-memory (POPO) recorder."""
    return Application[UUID](env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def a_new_transfer(order_ref: str = ORDER, amount: int = AMOUNT) -> Transfer:
    return Transfer.create(
        seller_account_id=SELLER,
        order_ref=order_ref,
        amount=amount,
        currency="usd",
        actor=CHECKOUT,
    )


def a_transfer_in(status: str, app: Application[UUID] | None = None) -> Transfer:
    """A transfer brought to `status` through the call sites; its history is saved
    into `app` when given, otherwise collected and dropped, so that the returned
    transfer has no pending events."""
    transfer = a_new_transfer()

    def step() -> str:
        # Whatever happens next was caused by the latest event.
        latest = transfer.pending_events[-1]
        assert isinstance(latest, Transfer.Event)
        cause = event_ref(latest)
        if app is not None:
            app.save(transfer)
        else:
            transfer.collect_events()
        return cause

    if status in ("completed", "reversal_pending", "reversed"):
        transfer.record_payout_succeeded(
            stripe_transfer_id="tr_1", actor=PAYOUT_MANAGER, caused_by=step()
        )
    if status in ("failed", "permanently_failed"):
        transfer.record_payout_failed(
            error="card_declined", next_retry_at=LATER, actor=PAYOUT_MANAGER, caused_by=step()
        )
    if status == "permanently_failed":
        transfer.record_payout_permanently_failed(
            error="account_closed", actor=PAYOUT_MANAGER, caused_by=step()
        )
    if status in ("reversal_pending", "reversed"):
        transfer.request_reversal(
            request_ref=FIRST_REFUND,
            amount=None,
            actor=REFUND_ACCOUNTING,
            reason="order refunded",
            caused_by=step(),
        )
    if status == "reversed":
        transfer.record_reversed(
            stripe_reversal_id="trr_1",
            amount_reversed=AMOUNT,
            actor=REVERSAL_MANAGER,
            caused_by=step(),
        )
    step()
    assert transfer.status == status, f"no builder path to {status!r}"
    return transfer


SOURCE_UPDATED_AT: Final = datetime(2024, 5, 1, 8, 30, tzinfo=UTC)


def an_imported_transfer(
    *,
    status: str,
    amount_reversed: object = 0,
    transfer_id: UUID | None = None,
) -> Transfer:
    return Transfer.import_existing(
        transfer_id=transfer_id or uuid4(),
        state=TransferState(
            seller_account_id=SELLER,
            order_ref="legacy-77",
            amount=AMOUNT,
            currency="USD",
            status=status,
            retry_count=3,
            next_retry_at=LATER,
            stripe_transfer_id="tr_legacy",
            amount_reversed=amount_reversed,  # type: ignore[arg-type]
            last_error="previous error",
            reversal_request_ref=None,
            reversal_amount=None,
        ),
        source_updated_at=SOURCE_UPDATED_AT,
        actor="system:import",
    )
