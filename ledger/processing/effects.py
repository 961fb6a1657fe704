"""The Stripe effects the ledger asks for: "an event asks for a Stripe effect;
the outcome is recorded as events on the transfer", one mechanism for payouts
(`Payout`) and reversals (`Reversal`), each saying which event asks for it,
how to make it at Stripe, how to find what an earlier call made, and how to
record the outcome through the aggregate's commands. `ProcessManager`
(manager.py) runs them."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, TypeVar

from ledger.domain import Transfer, payout_cause
from ledger.errors import LedgerError
from ledger.matrix import Status
from ledger.processing.ports import (
    PaymentsGateway,
    StripeReversal,
    StripeTransfer,
)

log = logging.getLogger("ledger.processing")

PAYOUT: Final = "payout"
REVERSAL: Final = "reversal"
# What `handle` returns when the read table said due but the transfer did not.
NOTHING_DUE: Final = "nothing due"


class UnresolvedOutcome(LedgerError):
    """Attempts ran out while a call's outcome is still unknown: parked for a
    person, since money may have moved."""


class NothingToReverse(LedgerError):
    """A reversal is asked for, but neither the ledger nor Stripe knows a
    Stripe transfer to reverse (an admin asked it of a transfer paid outside
    the ledger, or an imported one). Never "permanently failed" (that would
    drop the refund silently): parked, for a person to reverse it the way it
    was paid."""


class NotWhatWasAsked(LedgerError):
    """A look-up found, where only the ledger's own object should be, one that
    is not what the ledger asked for (another amount, currency, destination,
    or metadata naming another transfer or cause): money may be wrong, and
    recording it as ours could say "paid" of the wrong money. Parked, with
    both sides in the message, for a person to decide."""


class FurtherReversalRefused(LedgerError):
    """Stripe refused, for good, a further reversal of a transfer already
    reversed in part (the transfer stays `reversed`): parked for a person."""


class OperatorProblem(LedgerError):
    """Stripe refused our credentials (401) or a permission (403). Not a transfer
    failure: the daemon stops and says so; no attempt is spent, no transfer failed."""


@dataclass(frozen=True)
class Found:
    """A Stripe object that fulfils the work: made now, or found by a look-up."""

    stripe_id: str
    # Reversals: this reversal's own amount; counted on top of what the
    # transfer has reversed when the outcome is recorded (on the transfer as
    # it is then: a reversal made outside the ledger may have been recorded
    # since this handling loaded it).
    amount: int = 0
    # Reversals: Stripe has the whole transfer reversed (by others too).
    in_full: bool = False


def idempotency_key(kind: str, cause: str, attempt: int) -> str:
    """Deterministic per (work, attempt): a retried call of the same attempt
    replays Stripe's saved answer; the next attempt gets a fresh key, which is
    what a saved 500 needs (DESIGN section 6)."""
    return f"ledger-{kind}-{cause}-a{attempt}"


class StripeEffect(ABC):
    """One kind of Stripe effect the ledger asks for."""

    kind: str
    actor: str
    # Can a resend under an attempt's key carry other parameters than the
    # attempt's first request? Then Stripe's "other parameters under this
    # key" may come while that first request still runs there.
    resend_may_differ: bool = False

    @abstractmethod
    def cause(self, transfer: Transfer, now: datetime) -> str | None:
        """The event asking for this effect now, or None when nothing is due."""

    @abstractmethod
    def look_up(self, gateway: PaymentsGateway, transfer: Transfer, cause: str) -> Found | None:
        """What Stripe already did for this cause, if anything."""

    def check_callable(  # noqa: B027 - an optional step; most effects can always call
        self, gateway: PaymentsGateway, transfer: Transfer
    ) -> None:
        """Raise when the call cannot be made at all (before an attempt is
        counted); the default: it always can."""

    @abstractmethod
    def call(
        self,
        gateway: PaymentsGateway,
        transfer: Transfer,
        cause: str,
        key: str,
        send_while: Callable[[], bool],
    ) -> Found:
        """Make the effect at Stripe under `key`; each money-moving try is
        sent only while `send_while()` holds (ports.ClaimRanOut otherwise)."""

    @abstractmethod
    def record_success(self, transfer: Transfer, found: Found, cause: str) -> None: ...

    @abstractmethod
    def record_attempt_failed(
        self, transfer: Transfer, error: str, retry_at: datetime, cause: str
    ) -> None: ...

    @abstractmethod
    def record_permanent_failure(self, transfer: Transfer, error: str, cause: str) -> None: ...


class Payout(StripeEffect):
    """processSellerTransfers and TransferRetryWorker: pending, or failed with
    a retry due -> a Stripe transfer to the seller."""

    kind = PAYOUT
    actor = "system:payout-manager"

    def cause(self, transfer: Transfer, now: datetime) -> str | None:
        due = transfer.status == Status.PENDING or (
            transfer.status == Status.FAILED
            and transfer.next_retry_at is not None
            and transfer.next_retry_at <= now
        )
        return payout_cause(transfer.id) if due else None

    def look_up(self, gateway: PaymentsGateway, transfer: Transfer, cause: str) -> Found | None:
        # transfer_group is the ledger transfer id: every Stripe transfer ever
        # made for it, under any key, is in the group. Each must be what the
        # ledger asks for: a stranger in the group (a hand-made transfer, a
        # server answering with something else) is never taken as the payout.
        made = gateway.transfers_in_group(str(transfer.id))
        if not made:
            return None
        strangers = [t for t in made if not _is_our_payout(t, transfer, cause)]
        if strangers:
            raise NotWhatWasAsked(
                f"payout of transfer {transfer.id}: the ledger asks for {transfer.amount}"
                f" {transfer.currency} to {transfer.seller_account_id} (cause {cause}); Stripe's"
                f" transfer_group holds {'; '.join(_described(t) for t in strangers)}"
            )
        if len(made) > 1:
            log.error(
                "transfer %s has %d Stripe transfers (%s): money moved more than once,"
                " reverse the extras by hand",
                transfer.id,
                len(made),
                ", ".join(t.id for t in made),
            )
        return Found(_oldest(made).id)

    def call(
        self,
        gateway: PaymentsGateway,
        transfer: Transfer,
        cause: str,
        key: str,
        send_while: Callable[[], bool],
    ) -> Found:
        made = gateway.create_transfer(
            amount=transfer.amount,
            currency=transfer.currency,
            destination=transfer.seller_account_id,
            transfer_group=str(transfer.id),
            metadata={
                "ledger_transfer_id": str(transfer.id),
                "ledger_cause": cause,
                "ledger_order_ref": transfer.order_ref,
            },
            idempotency_key=key,
            send_while=send_while,
            source_transaction=getattr(transfer, "source_transaction", None),
        )
        return Found(made.id)

    def record_success(self, transfer: Transfer, found: Found, cause: str) -> None:
        transfer.record_payout_succeeded(
            stripe_transfer_id=found.stripe_id, actor=self.actor, caused_by=cause
        )

    def record_attempt_failed(
        self, transfer: Transfer, error: str, retry_at: datetime, cause: str
    ) -> None:
        transfer.record_payout_failed(
            error=error, next_retry_at=retry_at, actor=self.actor, caused_by=cause
        )

    def record_permanent_failure(self, transfer: Transfer, error: str, cause: str) -> None:
        if transfer.status == Status.PENDING:
            # The matrix has no pending -> permanently_failed: the refused
            # attempt is a failure (no retry scheduled), then the ledger gives
            # up. Both events are saved in one append.
            transfer.record_payout_failed(
                error=error, next_retry_at=None, actor=self.actor, caused_by=cause
            )
        transfer.record_payout_permanently_failed(error=error, actor=self.actor, caused_by=cause)


class Reversal(StripeEffect):
    """StripeReversalWorker: reversal_pending, due -> a Stripe transfer reversal
    of the requested amount."""

    kind = REVERSAL
    actor = "system:reversal-manager"
    # A retry asks for no more than is left at Stripe (see `call`).
    resend_may_differ = True

    def cause(self, transfer: Transfer, now: datetime) -> str | None:
        due = (
            transfer.status == Status.REVERSAL_PENDING
            and (transfer.next_retry_at is None or transfer.next_retry_at <= now)
        ) or (
            # A further refund of a reversed transfer (migration 0015).
            transfer.further_reversal_pending
            and transfer.next_retry_at is not None
            and transfer.next_retry_at <= now
        )
        return transfer.reversal_cause if due else None

    def look_up(self, gateway: PaymentsGateway, transfer: Transfer, cause: str) -> Found | None:
        stripe_transfer = self._stripe_transfer_id(gateway, transfer)
        if stripe_transfer is None:
            return None
        reversals = gateway.reversals_of(stripe_transfer)
        ours = [r for r in reversals if r.metadata.get("ledger_cause") == cause]
        strangers = [
            r
            for r in ours
            if r.metadata.get("ledger_transfer_id") != str(transfer.id)
            or r.amount > (transfer.reversal_amount or 0)
        ]
        if strangers:
            # Named as this request's, but not what it asked for: never
            # recorded as its reversal; a person decides.
            raise NotWhatWasAsked(
                f"reversal of transfer {transfer.id}: the ledger asks for at most"
                f" {transfer.reversal_amount} (cause {cause}); Stripe has "
                + "; ".join(
                    f"{r.id}: {r.amount}, metadata ledger_transfer_id="
                    f"{r.metadata.get('ledger_transfer_id')!r}"
                    for r in strangers
                )
            )
        if ours:
            if len(ours) > 1:
                log.error(
                    "transfer %s: %d Stripe reversals for one request (%s)",
                    transfer.id,
                    len(ours),
                    ", ".join(r.id for r in ours),
                )
            return self._found(transfer, _oldest(ours))
        # Reversed in full outside the ledger (the Dashboard, another system):
        # record Stripe's truth rather than ask for more than exists.
        at_stripe = gateway.retrieve_transfer(stripe_transfer)
        if reversals and at_stripe.amount_reversed >= at_stripe.amount:
            return Found(reversals[0].id, in_full=True)
        return None

    def check_callable(self, gateway: PaymentsGateway, transfer: Transfer) -> None:
        if self._stripe_transfer_id(gateway, transfer) is None:
            raise NothingToReverse(
                f"no Stripe transfer to reverse: transfer {transfer.id} records none and Stripe"
                " has none in its transfer_group; reverse the money the way it was paid, then"
                " settle the transfer with `ledger transfer set-status`"
            )

    def call(
        self,
        gateway: PaymentsGateway,
        transfer: Transfer,
        cause: str,
        key: str,
        send_while: Callable[[], bool],
    ) -> Found:
        stripe_transfer = self._stripe_transfer_id(gateway, transfer)
        assert stripe_transfer is not None  # check_callable ran first
        assert transfer.reversal_amount is not None  # set with every reversal_pending
        amount = min(transfer.reversal_amount, transfer.amount - transfer.amount_reversed)
        if transfer.retry_count > 0:
            # Someone may have reversed part of it at Stripe meanwhile (the
            # Dashboard; the webhook saying so may not have come yet), which
            # is why an earlier attempt may have been refused ("greater than
            # unreversed amount", a definite refusal that moved nothing): ask
            # for no more than is left there. Only a retry asks Stripe first:
            # the first attempt trusts the ledger's own view, so a reversal
            # costs one request, not two (half the throughput at the same
            # Stripe latency; scripts/bench --only reversals). A transfer
            # reversed in full meanwhile is refused "already fully reversed",
            # which the look-up that follows records.
            at_stripe = gateway.retrieve_transfer(stripe_transfer)
            left_at_stripe = at_stripe.amount - at_stripe.amount_reversed
            if left_at_stripe <= 0:
                newest = gateway.reversals_of(stripe_transfer)
                if newest:
                    return Found(newest[0].id, in_full=True)
            amount = min(amount, left_at_stripe)
        made = gateway.create_reversal(
            stripe_transfer,
            amount=amount,
            metadata={
                "ledger_transfer_id": str(transfer.id),
                "ledger_cause": cause,
                "ledger_request_ref": transfer.reversal_request_ref or "",
            },
            idempotency_key=key,
            send_while=send_while,
        )
        return self._found(transfer, made)

    def record_success(self, transfer: Transfer, found: Found, cause: str) -> None:
        total = (
            transfer.amount
            if found.in_full
            else min(transfer.amount, transfer.amount_reversed + found.amount)
        )
        transfer.record_reversed(
            stripe_reversal_id=found.stripe_id,
            amount_reversed=total,
            actor=self.actor,
            caused_by=cause,
        )

    def record_attempt_failed(
        self, transfer: Transfer, error: str, retry_at: datetime, cause: str
    ) -> None:
        transfer.record_reversal_attempt_failed(
            error=error, next_retry_at=retry_at, actor=self.actor, caused_by=cause
        )

    def record_permanent_failure(self, transfer: Transfer, error: str, cause: str) -> None:
        if transfer.further_reversal_pending:
            # `reversed` has no road to permanently_failed, and dropping the
            # refund silently would be worse: a person decides.
            raise FurtherReversalRefused(
                f"transfer {transfer.id}: the further reversal asked by"
                f" {transfer.reversal_request_ref!r} cannot be made: {error}"
            )
        transfer.record_reversal_permanently_failed(error=error, actor=self.actor, caused_by=cause)

    @staticmethod
    def _found(transfer: Transfer, reversal: StripeReversal) -> Found:
        return Found(reversal.id, amount=reversal.amount)

    @staticmethod
    def _stripe_transfer_id(gateway: PaymentsGateway, transfer: Transfer) -> str | None:
        if transfer.stripe_transfer_id:
            return transfer.stripe_transfer_id
        made = gateway.transfers_in_group(str(transfer.id))
        return _oldest(made).id if made else None


def _is_our_payout(made: StripeTransfer, transfer: Transfer, cause: str) -> bool:
    return (
        made.amount == transfer.amount
        and made.currency == transfer.currency
        and made.destination == transfer.seller_account_id
        and made.metadata.get("ledger_transfer_id") == str(transfer.id)
        and made.metadata.get("ledger_cause") == cause
    )


def _described(made: StripeTransfer) -> str:
    return (
        f"{made.id}: {made.amount} {made.currency} to {made.destination},"
        f" metadata ledger_transfer_id={made.metadata.get('ledger_transfer_id')!r}"
        f" ledger_cause={made.metadata.get('ledger_cause')!r}"
    )


T = TypeVar("T", StripeTransfer, StripeReversal)


def _oldest(objects: Sequence[T]) -> T:
    return objects[-1]  # Stripe lists newest first.


EFFECTS: Final[Mapping[str, StripeEffect]] = {PAYOUT: Payout(), REVERSAL: Reversal()}
