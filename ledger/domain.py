"""The Transfer aggregate: a seller transfer whose status changes are events.

Reads as a list of commands, each with its past-tense event. Commands validate
(values, then the transition matrix) BEFORE any event exists, so a refusal
appends nothing. Each event's `apply` only assigns state: it runs again on every
replay, and the seller_transfers projection runs the very same `apply` against
its row, so the read table cannot drift from the aggregate.

No database, HTTP or Stripe code is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, HasOriginatorIDVersion

from ledger import values
from ledger.errors import IdempotencyConflict, InvalidInput, TransitionRefused
from ledger.matrix import AWAITING_PAYOUT, Status, can_transition

# Transfer ids of created transfers derive from the order reference, so that
# "create the transfer for order X" is idempotent across retries and processes.
ORDER_NAMESPACE: Final = uuid5(NAMESPACE_URL, "urn:transfer-ledger:order")


@dataclass(frozen=True)
class TransferState:
    """What a transfer is at a point in its history: the fields defined once.
    The read table's row (`TransferView`) is this with its id, version and
    times; an import line (`ImportRecord`) is this with its line and id. The
    aggregate and its Imported event spell the fields out again, as the
    event-sourcing library builds them from their own annotations (and the
    stored events name them); a test keeps all of them equal to these."""

    status: str
    seller_account_id: str
    order_ref: str
    amount: int
    currency: str
    retry_count: int
    next_retry_at: datetime | None
    stripe_transfer_id: str | None
    amount_reversed: int
    last_error: str | None
    reversal_request_ref: str | None
    reversal_amount: int | None

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in STATE_FIELDS)


# The fields every status-bearing thing (the aggregate, a read-table row) has.
STATE_FIELDS: Final = tuple(f.name for f in fields(TransferState))


# The stages whose outcomes the process managers record.
_AWAITING_REVERSAL: Final = frozenset({Status.REVERSAL_PENDING.value})
_REVERSED: Final = frozenset({Status.REVERSED.value})

# The request_ref of a reversal made outside the ledger and recorded from
# Stripe's word: `stripe:<the Stripe reversal id>`.
EXTERNAL_REVERSAL_REF_PREFIX: Final = "stripe:"
EXTERNAL_REVERSAL_REASON: Final = "reversal made outside the ledger, as reported by Stripe"
NO_STRIPE_TRANSFER_TO_REVERSE: Final = (
    "is refused: the transfer records no Stripe transfer (paid outside the ledger, or"
    " never paid out), so there is nothing to reverse at Stripe; reverse the money the way"
    " it was paid"
)


def payout_cause(transfer_id: UUID) -> str:
    """The event that asks for a transfer's payout: its first one (Created or Imported)."""
    return f"{transfer_id}:1"


def transfer_id_for_order(order_ref: str) -> UUID:
    return uuid5(ORDER_NAMESPACE, order_ref)


def imported_reversal_amount(
    *, status: str, amount: int, amount_reversed: int, reversal_amount: int | None
) -> int | None:
    """The cross-field rules of an imported transfer's state; returns the
    reversal amount to record (a transfer imported mid-reversal without one is
    owed the rest of its amount). The import reader applies these too, so a
    file is refused before anything in it is saved."""
    if amount_reversed > amount:
        raise InvalidInput(f"invalid amount_reversed {amount_reversed}: exceeds amount {amount}")
    if reversal_amount is not None:
        reversal_amount = values.amount(reversal_amount, "reversal_amount")
    if status != Status.REVERSAL_PENDING:
        return reversal_amount
    outstanding = amount - amount_reversed
    if outstanding == 0:
        raise InvalidInput(
            "invalid amount_reversed: a reversal_pending transfer must have something left"
            " to reverse"
        )
    if reversal_amount is None:
        return outstanding
    if reversal_amount > outstanding:
        raise InvalidInput(
            f"invalid reversal_amount {reversal_amount}: only {outstanding} is left to reverse"
        )
    return reversal_amount


def event_ref(event: HasOriginatorIDVersion[Any]) -> str:
    """The id of a stored event: its transfer and version, e.g. for `caused_by`."""
    return f"{event.originator_id}:{event.originator_version}"


class Transfer(Aggregate):
    """One Stripe Connect transfer to a seller, from creation to a terminal status."""

    if TYPE_CHECKING:
        # State, assigned only by events' apply methods. Declared for type checkers
        # only: at run time, class-level annotations would become __init__ params.
        seller_account_id: str
        order_ref: str
        amount: int
        currency: str
        status: str
        retry_count: int
        next_retry_at: datetime | None
        stripe_transfer_id: str | None
        amount_reversed: int
        last_error: str | None
        reversal_request_ref: str | None
        reversal_amount: int | None
        # The event that asked for the pending reversal (a ReversalRequested, or
        # the Imported event of a transfer imported mid-reversal). Not a column:
        # the reversal process manager derives caused_by and Stripe keys from it.
        reversal_cause: str | None
        # The Stripe reversals recorded in Reversed events, so that one Stripe
        # tells of again (a webhook) is recognised. Not a column either.
        stripe_reversal_ids: tuple[str, ...]
        # Every reversal request recorded (its request_ref), so that a refund
        # handler retrying an earlier refund is recognised after a later one.
        # Not a column either.
        reversal_request_refs: tuple[str, ...]
        # When an imported transfer entered the ledger (None for created ones):
        # Stripe reversals older than that are in the amount_reversed it brought.
        imported_at: datetime | None

    class Event(Aggregate.Event):
        """Every event says who or what caused it: a person, or `system:<component>`;
        why, where a person acted; and the causing event, where there is one."""

        actor: str
        reason: str | None
        caused_by: str | None

    class Created(Event, Aggregate.Created):
        seller_account_id: str
        order_ref: str
        amount: int
        currency: str
        # The charge funding the payout (Stripe's source_transaction), if the
        # marketplace names one. Events stored before it existed read None.
        source_transaction: str | None = None

        def apply(self, transfer: Any) -> None:
            transfer.source_transaction = self.source_transaction
            transfer.seller_account_id = self.seller_account_id
            transfer.order_ref = self.order_ref
            transfer.amount = self.amount
            transfer.currency = self.currency
            transfer.status = Status.PENDING.value
            transfer.retry_count = 0
            transfer.next_retry_at = None
            transfer.stripe_transfer_id = None
            transfer.amount_reversed = 0
            transfer.last_error = None
            transfer.reversal_request_ref = None
            transfer.reversal_amount = None
            transfer.reversal_cause = None
            transfer.stripe_reversal_ids = ()
            transfer.reversal_request_refs = ()
            transfer.imported_at = None

    class Imported(Event, Aggregate.Created):
        """The first event of a transfer brought over from the old mutable table:
        it records the state the row had, whatever status that was."""

        seller_account_id: str
        order_ref: str
        amount: int
        currency: str
        status: str
        retry_count: int
        next_retry_at: datetime | None
        stripe_transfer_id: str | None
        amount_reversed: int
        last_error: str | None
        reversal_request_ref: str | None
        reversal_amount: int | None
        source_updated_at: datetime | None
        # As Created's; events stored before it existed read None.
        source_transaction: str | None = None

        def apply(self, transfer: Any) -> None:
            for field in STATE_FIELDS:
                setattr(transfer, field, getattr(self, field))
            in_reversal = self.status == Status.REVERSAL_PENDING
            transfer.reversal_cause = event_ref(self) if in_reversal else None
            transfer.stripe_reversal_ids = ()
            transfer.reversal_request_refs = (
                (self.reversal_request_ref,) if self.reversal_request_ref else ()
            )
            transfer.source_transaction = self.source_transaction
            transfer.imported_at = self.timestamp

    class StatusChanged(Event):
        """Base of the events that (may) move the status: they record both ends."""

        from_status: str
        to_status: str

        def apply(self, transfer: Any) -> None:
            transfer.status = self.to_status

    class PayoutSucceeded(StatusChanged):
        stripe_transfer_id: str

        def apply(self, transfer: Any) -> None:
            transfer.status = self.to_status
            transfer.stripe_transfer_id = self.stripe_transfer_id
            transfer.next_retry_at = None
            transfer.last_error = None

    class PayoutFailed(StatusChanged):
        """A payout attempt failed; `next_retry_at` None means no retry is scheduled."""

        error: str
        next_retry_at: datetime | None

        def apply(self, transfer: Any) -> None:
            transfer.status = self.to_status
            transfer.retry_count += 1
            transfer.next_retry_at = self.next_retry_at
            transfer.last_error = self.error

    class PayoutWaiting(StatusChanged):
        """Stripe refused the payout for a condition outside the transfer (the
        platform's balance, the seller's onboarding): no attempt counted, the
        status stays; `error` says what it waits for, for the person reading."""

        error: str

        def apply(self, transfer: Any) -> None:
            transfer.status = self.to_status
            transfer.last_error = self.error

    class PayoutPermanentlyFailed(StatusChanged):
        error: str

        def apply(self, transfer: Any) -> None:
            transfer.status = self.to_status
            transfer.next_retry_at = None
            transfer.last_error = self.error

    class ReversalRequested(StatusChanged):
        request_ref: str
        amount: int

        def apply(self, transfer: Any) -> None:
            transfer.status = self.to_status
            transfer.reversal_request_ref = self.request_ref
            transfer.reversal_amount = self.amount
            transfer.reversal_cause = event_ref(self)
            # reversal_pending: NULL = due now, the reversal worker picks it up
            # on its first pass (the seed's rule). A further refund of a
            # reversed transfer stays `reversed` (reversed -> reversed), and
            # next_retry_at set is what makes it due (migration 0015).
            further = self.to_status == Status.REVERSED
            transfer.next_retry_at = self.timestamp if further else None
            transfer.retry_count = 0
            transfer.last_error = None
            recorded = getattr(transfer, "reversal_request_refs", ())
            transfer.reversal_request_refs = (*recorded, self.request_ref)

    class ReversalAttemptFailed(StatusChanged):
        error: str
        next_retry_at: datetime

        def apply(self, transfer: Any) -> None:
            transfer.status = self.to_status
            transfer.retry_count += 1
            transfer.next_retry_at = self.next_retry_at
            transfer.last_error = self.error

    class Reversed(StatusChanged):
        stripe_reversal_id: str
        amount_reversed: int

        def apply(self, transfer: Any) -> None:
            transfer.status = self.to_status
            transfer.amount_reversed = self.amount_reversed
            # The ledger's own reversal settles its request; one made outside
            # the ledger leaves a request still waiting (next_retry_at) as it
            # is, unless nothing is left to reverse.
            if self.reason != EXTERNAL_REVERSAL_REASON or self.amount_reversed >= transfer.amount:
                transfer.next_retry_at = None
            transfer.last_error = None
            # A read-table row loaded from its columns starts without the list.
            recorded = getattr(transfer, "stripe_reversal_ids", ())
            transfer.stripe_reversal_ids = (*recorded, self.stripe_reversal_id)

    class ReversalPermanentlyFailed(StatusChanged):
        error: str

        def apply(self, transfer: Any) -> None:
            transfer.status = self.to_status
            transfer.next_retry_at = None
            transfer.last_error = self.error

    class StatusSetByAdmin(StatusChanged):
        def apply(self, transfer: Any) -> None:
            transfer.status = self.to_status
            # An operator's change cancels any scheduled retry: for `failed`,
            # NULL next_retry_at means "no retry scheduled".
            transfer.next_retry_at = None

    # ----- creation -----------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        seller_account_id: str,
        order_ref: str,
        amount: int | str,
        currency: str,
        actor: str,
        source_transaction: str | None = None,
    ) -> Transfer:
        order_ref = values.order_ref(order_ref)
        funded_by = source_transaction
        if funded_by is not None:
            funded_by = values.source_transaction(funded_by)
        return cls._create(
            cls.Created,
            id=transfer_id_for_order(order_ref),
            seller_account_id=values.seller_account_id(seller_account_id),
            order_ref=order_ref,
            amount=values.amount(amount),
            currency=values.currency(currency),
            actor=values.actor(actor),
            reason=None,
            caused_by=None,
            source_transaction=(
                None
                if source_transaction is None
                else values.source_transaction(source_transaction)
            ),
        )

    @classmethod
    def import_existing(
        cls,
        *,
        transfer_id: UUID,
        state: TransferState,
        source_updated_at: datetime | None,
        actor: str,
        source_transaction: str | None = None,
    ) -> Transfer:
        """A transfer brought over from the old mutable table, in `state`,
        whatever its status (`source_transaction`: the charge funding its
        payout, if not made yet)."""
        funded_by = source_transaction
        if funded_by is not None:
            funded_by = values.source_transaction(funded_by)
        amount = values.amount(state.amount)
        status = values.status(state.status)
        amount_reversed = values.non_negative_int(state.amount_reversed, "amount_reversed")
        reversal_amount = imported_reversal_amount(
            status=status,
            amount=amount,
            amount_reversed=amount_reversed,
            reversal_amount=state.reversal_amount,
        )
        reversal_request_ref = state.reversal_request_ref
        if reversal_request_ref is not None:
            reversal_request_ref = values.request_ref(reversal_request_ref, "reversal_request_ref")
        stripe_transfer_id = state.stripe_transfer_id
        if stripe_transfer_id is not None:
            stripe_transfer_id = values.stripe_id(stripe_transfer_id, "stripe_transfer_id")
        last_error = state.last_error
        return cls._create(
            cls.Imported,
            id=transfer_id,
            seller_account_id=values.seller_account_id(state.seller_account_id),
            order_ref=values.order_ref(state.order_ref, "order_ref"),
            amount=amount,
            currency=values.currency(state.currency),
            status=status,
            retry_count=values.non_negative_int(state.retry_count, "retry_count"),
            next_retry_at=state.next_retry_at,
            stripe_transfer_id=stripe_transfer_id,
            amount_reversed=amount_reversed,
            last_error=None if last_error is None else values.text(last_error, "last_error"),
            reversal_request_ref=reversal_request_ref,
            reversal_amount=reversal_amount,
            source_updated_at=source_updated_at,
            source_transaction=funded_by,
            actor=values.actor(actor),
            reason=None,
            caused_by=None,
        )

    # ----- payout (processSellerTransfers, TransferRetryWorker) --------------

    def record_payout_succeeded(
        self, *, stripe_transfer_id: str, actor: str, caused_by: str | None
    ) -> None:
        if self.status == Status.COMPLETED and self.stripe_transfer_id == stripe_transfer_id:
            return  # This outcome is already recorded: recording it again would duplicate it.
        self._change_status(
            self.PayoutSucceeded,
            Status.COMPLETED,
            applies_to=AWAITING_PAYOUT,
            actor=actor,
            caused_by=caused_by,
            stripe_transfer_id=values.stripe_id(stripe_transfer_id, "stripe transfer id"),
        )

    def record_payout_failed(
        self,
        *,
        error: str,
        next_retry_at: datetime | None,
        actor: str,
        caused_by: str | None,
    ) -> None:
        self._change_status(
            self.PayoutFailed,
            Status.FAILED,
            applies_to=AWAITING_PAYOUT,
            actor=actor,
            caused_by=caused_by,
            error=values.text(error, "error"),
            next_retry_at=next_retry_at,
        )

    def record_payout_waiting(self, *, error: str, actor: str, caused_by: str | None) -> None:
        """A same-status step (pending -> pending, failed -> failed): the
        payout waits; nothing is counted against it."""
        self._change_status(
            self.PayoutWaiting,
            self.status,
            applies_to=AWAITING_PAYOUT,
            actor=actor,
            caused_by=caused_by,
            error=values.text(error, "error"),
        )

    def record_payout_permanently_failed(
        self, *, error: str, actor: str, caused_by: str | None
    ) -> None:
        if self.status == Status.PERMANENTLY_FAILED:
            return
        self._change_status(
            self.PayoutPermanentlyFailed,
            Status.PERMANENTLY_FAILED,
            applies_to=AWAITING_PAYOUT,
            actor=actor,
            caused_by=caused_by,
            error=values.text(error, "error"),
        )

    # ----- refund accounting (reverseSellerAccounting) ------------------------

    def request_reversal(
        self,
        *,
        request_ref: str,
        amount: int | str | None,
        actor: str,
        reason: str | None,
        caused_by: str | None = None,
    ) -> bool:
        """Ask for (part of) the transfer back, after a refund. Returns False
        when this exact request was already recorded (nothing appended), True
        when recorded now. Refused for a transfer that records no Stripe
        transfer (set `completed` by hand, say): there is nothing to reverse at
        Stripe, and the refund must not vanish into a request nobody can carry
        out; the caller hears it now."""
        return self._request_reversal(
            request_ref=request_ref,
            amount=amount,
            actor=actor,
            reason=reason,
            caused_by=caused_by,
            stripe_transfer_required=True,
        )

    def _request_reversal(
        self,
        *,
        request_ref: str,
        amount: int | str | None,
        actor: str,
        reason: str | None,
        caused_by: str | None,
        stripe_transfer_required: bool,
    ) -> bool:
        request_ref = values.request_ref(request_ref)
        if amount is not None:
            amount = values.amount(amount)
        if reason is not None:
            reason = values.reason(reason)
        if self.reversal_request_ref == request_ref:
            # The same request again (a retried refund handler): nothing to do,
            # unless it now names another amount, which is a caller's bug.
            if amount is not None and amount != self.reversal_amount:
                raise IdempotencyConflict(
                    f"reversal request {request_ref!r} of transfer {self.id} was recorded"
                    f" for {self.reversal_amount}, not {amount}"
                )
            return False
        if request_ref in getattr(self, "reversal_request_refs", ()):
            return False  # an earlier refund, retried after a later one
        if self.status == Status.REVERSED:
            return self._request_further_reversal(
                request_ref=request_ref,
                amount=amount,
                actor=actor,
                reason=reason,
                caused_by=caused_by,
            )
        self._require_transition(Status.REVERSAL_PENDING)
        if stripe_transfer_required and self.stripe_transfer_id is None:
            raise TransitionRefused(
                self.id,
                self.status,
                Status.REVERSAL_PENDING,
                because=NO_STRIPE_TRANSFER_TO_REVERSE,
            )
        return self._record_reversal_request(
            Status.REVERSAL_PENDING,
            already_pending=self.status == Status.REVERSAL_PENDING,
            request_ref=request_ref,
            amount=amount,
            actor=actor,
            reason=reason,
            caused_by=caused_by,
        )

    def _request_further_reversal(
        self,
        *,
        request_ref: str,
        amount: int | None,
        actor: str,
        reason: str | None,
        caused_by: str | None,
    ) -> bool:
        """Another refund of a transfer reversed in part: its own request, its
        own Stripe reversal, within the seed's matrix. The transfer stays
        `reversed` (a same-status step); next_retry_at marks the request due
        until the reversal worker records its reversal."""
        if self.stripe_transfer_id is None:
            raise TransitionRefused(
                self.id, self.status, Status.REVERSED, because=NO_STRIPE_TRANSFER_TO_REVERSE
            )
        return self._record_reversal_request(
            Status.REVERSED,
            already_pending=self.next_retry_at is not None,
            request_ref=request_ref,
            amount=amount,
            actor=actor,
            reason=reason,
            caused_by=caused_by,
        )

    def _record_reversal_request(
        self,
        to_status: Status,
        *,
        already_pending: bool,
        request_ref: str,
        amount: int | None,
        actor: str,
        reason: str | None,
        caused_by: str | None,
    ) -> bool:
        """What a first and a further reversal request share: something left
        to reverse, no other request pending, at most what is left (default:
        all of it)."""
        outstanding = self.amount - self.amount_reversed
        if outstanding <= 0:
            raise InvalidInput(f"transfer {self.id} has nothing left to reverse")
        if already_pending:
            raise IdempotencyConflict(
                f"transfer {self.id} already has reversal request "
                f"{self.reversal_request_ref!r} pending"
            )
        if amount is None:
            amount = outstanding
        if amount > outstanding:
            raise InvalidInput(
                f"invalid amount {amount}: transfer {self.id} has only {outstanding} to reverse"
            )
        self._change_status(
            self.ReversalRequested,
            to_status,
            actor=actor,
            reason=reason,
            caused_by=caused_by,
            request_ref=request_ref,
            amount=amount,
        )
        return True

    @property
    def further_reversal_pending(self) -> bool:
        """A further refund of a reversed transfer waits for its reversal."""
        return self.status == Status.REVERSED and self.next_retry_at is not None

    # ----- reversal process manager (StripeReversalWorker) --------------------

    def record_reversal_attempt_failed(
        self, *, error: str, next_retry_at: datetime, actor: str, caused_by: str | None
    ) -> None:
        self._change_status(
            self.ReversalAttemptFailed,
            Status.REVERSED if self.further_reversal_pending else Status.REVERSAL_PENDING,
            applies_to=_AWAITING_REVERSAL | _REVERSED,
            actor=actor,
            caused_by=caused_by,
            error=values.text(error, "error"),
            next_retry_at=next_retry_at,
        )

    def record_reversed(
        self, *, stripe_reversal_id: str, amount_reversed: int, actor: str, caused_by: str | None
    ) -> None:
        if stripe_reversal_id in self.stripe_reversal_ids or (
            self.status == Status.REVERSED and not self.further_reversal_pending
        ):
            return  # Already recorded; a second Reversed would be a duplicate outcome.
        self._change_status(
            self.Reversed,
            Status.REVERSED,
            applies_to=_AWAITING_REVERSAL | _REVERSED,
            actor=actor,
            caused_by=caused_by,
            stripe_reversal_id=values.stripe_id(stripe_reversal_id, "stripe reversal id"),
            amount_reversed=values.non_negative_int(
                amount_reversed, "amount_reversed", maximum=self.amount
            ),
        )

    def record_reversal_permanently_failed(
        self, *, error: str, actor: str, caused_by: str | None
    ) -> None:
        if self.status == Status.PERMANENTLY_FAILED:
            return
        self._change_status(
            self.ReversalPermanentlyFailed,
            Status.PERMANENTLY_FAILED,
            applies_to=_AWAITING_REVERSAL,
            actor=actor,
            caused_by=caused_by,
            error=values.text(error, "error"),
        )

    # ----- Stripe webhooks: reversals made outside the ledger ------------------

    def record_external_reversal(
        self,
        *,
        stripe_reversal_id: str,
        amount: int,
        amount_reversed_at_stripe: int,
        made_at: datetime | None,
        actor: str,
        caused_by: str | None,
    ) -> bool:
        """A reversal someone made at Stripe behind the ledger's back (the
        Dashboard, another system), as Stripe reported it: `amount` is that
        reversal's, `amount_reversed_at_stripe` the transfer's total reversed
        at Stripe as the report shows it, `made_at` when Stripe made it.
        Returns True when recorded now, False when there is nothing to record:
        - this reversal is recorded already;
        - the ledger has the whole amount reversed: Stripe cannot have reversed
          more, so this reversal is already counted (the reversal process
          manager found the transfer fully reversed at Stripe and recorded one
          of the reversals that did it);
        - it was made before the transfer was imported: the imported
          amount_reversed counts it.

        What it records depends on the status, and the matrix decides:
        - completed: ReversalRequested (request_ref `stripe:<reversal id>`, this
          amount) then Reversed, both in one append: completed -> reversal_pending
          -> reversed is the matrix's only road to reversed. A partial reversal
          ends `reversed` too, with amount_reversed saying how much, exactly as
          when the ledger itself reverses part of a transfer.
        - reversed: one more Reversed, reversed -> reversed (the matrix allows a
          status to itself), so that amount_reversed keeps up with Stripe when a
          partially reversed transfer is reversed further.
        - reversal_pending: the ledger's own request is waiting or in flight.
          When Stripe has nothing left to reverse, that request cannot (or need
          not) be carried out: Reversed, with the whole amount, as the reversal
          process manager records a transfer it finds fully reversed at Stripe.
          A partial reversal is recorded as a Reversed that stays
          reversal_pending: amount_reversed says what Stripe did, and the
          request is still the ledger's to carry out, for its own amount (the
          reversal process manager asks for no more than Stripe has left). The
          deterministic simulation found the earlier rule (refuse it, and let
          `reconcile` report the difference) leaving the ledger behind Stripe.
        - pending, failed, permanently_failed: refused by the matrix (there is
          no road to reversed from there).
        """
        actor = values.actor(actor)
        stripe_reversal_id = values.stripe_id(stripe_reversal_id, "stripe reversal id")
        amount = values.amount(amount)
        at_stripe = values.non_negative_int(amount_reversed_at_stripe, "amount_reversed")
        if at_stripe < amount:
            raise InvalidInput(
                f"Stripe reports reversal {stripe_reversal_id} of {amount} but only"
                f" {at_stripe} reversed in all"
            )
        if stripe_reversal_id in self.stripe_reversal_ids:
            return False
        if self.amount_reversed >= self.amount:
            return False
        # Stripe's times are whole seconds: only a reversal from an earlier
        # second than the import is surely older than it.
        if (
            made_at is not None
            and self.imported_at is not None
            and made_at.timestamp() < int(self.imported_at.timestamp())
        ):
            return False
        outstanding = self.amount - self.amount_reversed
        if self.status == Status.REVERSAL_PENDING:
            if at_stripe < self.amount:
                if amount > outstanding:
                    raise InvalidInput(
                        f"Stripe reports reversal {stripe_reversal_id} of {amount}, but"
                        f" transfer {self.id} has only {outstanding} left to reverse"
                    )
                self._change_status(
                    self.Reversed,
                    Status.REVERSAL_PENDING,
                    applies_to=_AWAITING_REVERSAL,
                    actor=actor,
                    reason=EXTERNAL_REVERSAL_REASON,
                    caused_by=caused_by,
                    stripe_reversal_id=stripe_reversal_id,
                    amount_reversed=self.amount_reversed + amount,
                )
                return True
            self._change_status(
                self.Reversed,
                Status.REVERSED,
                applies_to=_AWAITING_REVERSAL,
                actor=actor,
                reason=EXTERNAL_REVERSAL_REASON,
                caused_by=caused_by,
                stripe_reversal_id=stripe_reversal_id,
                amount_reversed=self.amount,
            )
            return True
        if amount > outstanding and self.status in (Status.COMPLETED, Status.REVERSED):
            raise InvalidInput(
                f"Stripe reports reversal {stripe_reversal_id} of {amount}, but transfer"
                f" {self.id} has only {outstanding} left to reverse in the ledger"
            )
        if self.status != Status.REVERSED:
            # Refused here by the matrix unless the transfer is completed.
            self._change_status(
                self.ReversalRequested,
                Status.REVERSAL_PENDING,
                actor=actor,
                reason=EXTERNAL_REVERSAL_REASON,
                caused_by=caused_by,
                request_ref=EXTERNAL_REVERSAL_REF_PREFIX + stripe_reversal_id,
                amount=amount,
            )
        self._change_status(
            self.Reversed,
            Status.REVERSED,
            applies_to=_AWAITING_REVERSAL | _REVERSED,
            actor=actor,
            reason=EXTERNAL_REVERSAL_REASON,
            caused_by=caused_by,
            stripe_reversal_id=stripe_reversal_id,
            amount_reversed=self.amount_reversed + amount,
        )
        return True

    # ----- admin handler ------------------------------------------------------

    def set_status_by_admin(self, to_status: str, *, actor: str, reason: str) -> None:
        """Any matrix-legal change, by a named person with a reason.

        To `reversal_pending` it records a full-amount ReversalRequested, so the
        reversal process manager has the same work item as after a refund. A
        person may do that for a transfer that records no Stripe transfer too:
        the reversal process manager then parks the work for them, with why.
        """
        actor = values.actor(actor)
        reason = values.reason(reason)
        if not isinstance(to_status, str) or not to_status:
            raise InvalidInput("invalid status: must not be empty")
        self._require_transition(to_status)
        if to_status == Status.REVERSAL_PENDING and self.status != Status.REVERSAL_PENDING:
            self._request_reversal(
                request_ref=f"admin:{self.id}:{self.version + 1}",
                amount=None,
                actor=actor,
                reason=reason,
                caused_by=None,
                stripe_transfer_required=False,
            )
            return
        self._change_status(
            self.StatusSetByAdmin, to_status, actor=actor, reason=reason, caused_by=None
        )

    # ----- the one place a status changes ------------------------------------

    def _require_transition(self, to_status: str) -> None:
        if not can_transition(self.status, to_status):
            raise TransitionRefused(self.id, self.status, to_status)

    def _change_status(
        self,
        event_class: type[StatusChanged],
        to_status: str,
        *,
        actor: str,
        caused_by: str | None,
        reason: str | None = None,
        applies_to: frozenset[str] | None = None,
        **details: Any,
    ) -> None:
        # The matrix is checked before the event object exists: a refusal leaves
        # no pending event behind, so a later save cannot append it by accident.
        self._require_transition(to_status)
        # A process manager's outcome also belongs to one stage of the lifecycle:
        # "reversal attempt failed" on a completed transfer is legal for the
        # matrix (completed -> reversal_pending) but not a reversal outcome.
        if applies_to is not None and self.status not in applies_to:
            raise TransitionRefused(
                self.id,
                self.status,
                to_status,
                because=f"{event_class.__name__} applies only to"
                f" {' or '.join(sorted(applies_to))} transfers",
            )
        self.trigger_event(
            event_class,
            from_status=self.status,
            to_status=str(to_status),
            actor=values.actor(actor),
            reason=reason,
            caused_by=caused_by,
            **details,
        )
