"""The application service: the one way into the ledger for commands, reads and
imports. The CLI, the Python API and the webhook handler all come through here.

Each method takes values as a caller has them (text from a command line, a
refund handler's ids), lets the aggregate validate and decide (the transition
matrix), saves through `Transfers.change` (the one load/save/retry place), and
returns the transfer as it now is. Every append writes its read-table rows in
its own transaction (the recorders' append hooks), so what a method returns is
also what the read table holds.

Reads go to the read model through `ReadModel`, which the read model
implements (ledger/projections/queries.py) and the composition root hands in:
the service stands below the read model in the layers and imports nothing of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Final, NamedTuple, Protocol, cast
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from ledger import orders, values
from ledger.application import Transfers, batched
from ledger.domain import Transfer
from ledger.errors import IdempotencyConflict, LedgerError, TransferNotFound
from ledger.import_records import ImportRecord, WithinFile
from ledger.matrix import AWAITING_PAYOUT
from ledger.storage import Database, PreparedAppend, Statement, is_version_conflict
from ledger.views import TransferView

IMPORT_BATCH_SIZE: Final = 2000


class ReadModel(Protocol):
    """What the service reads from the read table."""

    def get(self, transfer_id: UUID) -> TransferView | None: ...

    def list_transfers(self, status: str | None) -> list[TransferView]: ...

    def recording(self, stripe_transfer_ids: Iterable[str]) -> dict[str, list[TransferView]]:
        """The transfers recording each of these Stripe transfers as their payout."""
        ...


class Created(NamedTuple):
    transfer: TransferView
    # False when the order already had this transfer: nothing was appended.
    created: bool


class ReversalRequest(NamedTuple):
    """The outcome of `request_reversal`: `recorded` is False when this
    `request_ref` was already recorded (a retried refund handler), in which
    case nothing was appended."""

    recorded: bool
    transfer: TransferView


@dataclass(frozen=True)
class ImportResult:
    imported: int
    already_present: int


@dataclass(frozen=True)
class ReversalAtStripe:
    """A reversal of a Stripe transfer as Stripe reported it (a webhook)."""

    id: str
    amount: int
    created: datetime | None
    # Its metadata names the ledger's cause: the reversal manager made it.
    made_by_ledger: bool


class NothingNew(LedgerError):
    """Every reversal reported is known already: nothing was appended."""


class PayoutNotRecordedYet(LedgerError):
    """A reversal of the ledger's own payout, reported before the daemon has
    recorded that payout (its outcome was unknown, and no look-up has run
    yet): not a refusal, only early. Stripe delivers the webhook again later,
    by when the payout is recorded."""


class NotThisMoney(LedgerError):
    """The Stripe transfer reported is not the one the ledger transfer was paid
    out as (or it records none): nothing was appended."""


class LedgerService:
    def __init__(self, transfers: Transfers, db: Database, read_model: ReadModel) -> None:
        self.transfers = transfers
        self.db = db
        self.read_model = read_model

    # ----- commands -----------------------------------------------------------

    def create_transfer(
        self,
        *,
        seller: str,
        amount: int | str,
        currency: str,
        order_ref: str,
        actor: str,
        source_transaction: str | None = None,
    ) -> Created:
        """A new `pending` transfer of `amount` minor units to `seller`.
        `order_ref` is the idempotency key, whichever way the order's transfer
        arrived (created, or imported under an id of its own): the same order
        again with the same values returns its transfer and appends nothing;
        with other values it is refused (IdempotencyConflict)."""
        transfer = Transfer.create(
            seller_account_id=seller,
            order_ref=order_ref,
            amount=amount,
            currency=currency,
            actor=actor,
            source_transaction=source_transaction,
        )
        # The append reserves the order itself (orders.OrderReservations),
        # without looking first: a new order (the common case) costs no read,
        # and an order reserved already fails the reservation, and with it
        # the whole append.
        pending = list(transfer.pending_events)
        try:
            self.transfers.save(transfer)
        except IntegrityError as error:
            if is_version_conflict(error):
                # Created before reservations existed (migration 0010), and
                # not yet in the read table when those were made.
                owner = transfer.id
            else:
                # Reserved already, by a create of this order or an import.
                reserved = orders.owners(self.db, [transfer.order_ref]).get(transfer.order_ref)
                if reserved is None:
                    raise
                owner = reserved
        else:
            return Created(TransferView.of(transfer), created=True)
        if owner == transfer.id and self.transfers.stored_already(transfer.id, pending):
            # This very append committed, and only its answer was lost (the
            # library sends an append again after a dropped connection, and
            # the second meets the first's reservation): created, by this call.
            return Created(TransferView.of(transfer), created=True)
        existing = self.transfers.get(owner)
        _check_same_order(existing, transfer)
        return Created(TransferView.of(existing), created=False)

    def request_reversal(
        self,
        transfer_id: UUID | str,
        *,
        request_ref: str,
        reason: str | None = None,
        amount: int | str | None = None,
        actor: str,
    ) -> ReversalRequest:
        """After a refund: `completed -> reversal_pending`, recording a
        ReversalRequested for `amount` (default: all that is not reversed
        yet). `request_ref` (the refund's id) is the idempotency key."""
        # Bad input is refused before the transfer is loaded: whatever its state.
        transfer_id = values.transfer_id(transfer_id)
        request_ref = values.request_ref(request_ref)
        actor = values.actor(actor)
        if reason is not None:
            reason = values.reason(reason)
        if amount is not None:
            amount = values.amount(amount)

        def request(transfer: Transfer) -> tuple[bool, Transfer]:
            recorded = transfer.request_reversal(
                request_ref=request_ref, amount=amount, actor=actor, reason=reason
            )
            return recorded, transfer

        recorded, transfer = self.transfers.change(transfer_id, request)
        return ReversalRequest(recorded, TransferView.of(transfer))

    def set_status(
        self, transfer_id: UUID | str, status: str, *, actor: str, reason: str
    ) -> TransferView:
        """An administrator's change, through the matrix, with who and why.
        To `reversal_pending` it records a full-amount reversal request."""
        transfer_id = values.transfer_id(transfer_id)
        status = values.status(status)
        actor = values.actor(actor)
        reason = values.reason(reason)

        def set_it(transfer: Transfer) -> Transfer:
            transfer.set_status_by_admin(status, actor=actor, reason=reason)
            return transfer

        return TransferView.of(self.transfers.change(transfer_id, set_it))

    def record_reversals_made_at_stripe(
        self,
        transfer_id: UUID,
        *,
        stripe_transfer_id: str,
        reversals: Sequence[ReversalAtStripe],
        amount_reversed_at_stripe: int,
        actor: str,
        caused_by: str,
        also_execute: Sequence[Statement] = (),
    ) -> None:
        """Reversals someone made at Stripe behind the ledger's back (the
        Dashboard, another system), as a webhook reported them, recorded on
        the ledger transfer paid out as that Stripe transfer, whole or not at
        all, with `also_execute` in the same transaction. NothingNew when all
        of them are known; NotThisMoney when the transfer was paid out as
        another Stripe transfer, or records none; TransitionRefused when the
        matrix says no."""
        outside = [r for r in reversals if not r.made_by_ledger]

        def record(current: Transfer) -> None:
            if not reversals:
                raise NothingNew("the transfer shows no reversals")
            if not outside:
                raise NothingNew("every reversal is the ledger's own")
            # Checked here, on the aggregate `change()` has just loaded (and loads
            # again after a conflict), never on an earlier copy: the daemon may
            # record the payout between the two, and a reversal of another Stripe
            # transfer (a duplicate payout, say) must not be booked against it.
            # With no Stripe id recorded (an admin's `set-status completed`), the
            # ledger cannot tell it is the same money either.
            if current.stripe_transfer_id is None and current.status in AWAITING_PAYOUT:
                # The deterministic simulation found this: a daemon dies after
                # Stripe made the payout, someone reverses part of it at
                # Stripe, and the webhook comes before the payout is recorded.
                # Refused, it was never looked at again.
                raise PayoutNotRecordedYet(
                    f"transfer {current.id} is {current.status}: its payout"
                    f" {stripe_transfer_id} is not recorded yet; deliver again later"
                )
            if current.stripe_transfer_id != stripe_transfer_id:
                raise NotThisMoney(
                    f"transfer {current.id} ({current.status}) was paid out as"
                    f" {current.stripe_transfer_id}, not {stripe_transfer_id}"
                    if current.stripe_transfer_id is not None
                    else f"transfer {current.id} ({current.status}): the ledger records no"
                    f" Stripe transfer for it, and cannot tell that {stripe_transfer_id} is"
                    " its money"
                )
            # Oldest first: each one's amount_reversed adds to the one before. A
            # delivery is recorded whole or not at all: one refusal refuses it.
            recorded = [
                current.record_external_reversal(
                    stripe_reversal_id=r.id,
                    amount=r.amount,
                    amount_reversed_at_stripe=amount_reversed_at_stripe,
                    made_at=r.created,
                    actor=actor,
                    caused_by=caused_by,
                )
                for r in outside
            ]
            if not any(recorded):
                raise NothingNew("recorded before")

        self.transfers.change(transfer_id, record, also_execute=also_execute)

    # ----- import ---------------------------------------------------------------

    def import_transfers(
        self,
        records: Sequence[ImportRecord] | Callable[[], Iterable[ImportRecord]],
        *,
        actor: str,
    ) -> ImportResult:
        """Bring existing transfers into the ledger: `records`, or a function
        giving them (called twice: a file is read twice rather than held).

        The first pass checks everything before anything is saved, so that one
        bad record refuses the whole import: within the records, an order and
        a Stripe transfer belong to one transfer each; against the ledger, a
        transfer already present must have the same values (then it appends
        nothing, so an interrupted import can be run again), an order must not
        be another transfer's, a Stripe transfer must not be recorded by
        another transfer. The second pass saves, in batches of one append
        each, with the batch's order reservations and read-table rows."""
        actor = values.actor(actor)
        source = records if callable(records) else (lambda: records)
        within = WithinFile()
        for batch in batched(source(), IMPORT_BATCH_SIZE):
            for record in batch:
                within.add(record)
            self._check_against_ledger(batch)
        repeated = within.confirm(source)
        imported = present = 0
        # One append at a time, in a thread of its own that only sends: while
        # the database writes one batch, this thread reads the next and builds
        # all of its append (aggregates, stored events, the document), and the
        # append's wait for the server releases the GIL to it.
        appending: Future[int] | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="ledger-import-append") as appends:
            for batch in batched(source(), IMPORT_BATCH_SIZE):
                fresh = [r for r in batch if (r.transfer_id, r.line) not in repeated]
                with self.db.transaction(write=False) as cursor:
                    stored = self.db.first_stored_events(cursor, [r.transfer_id for r in fresh])
                new = [r for r in fresh if r.transfer_id not in stored]
                present += len(fresh) - len(new)
                if not new:
                    continue
                # Checked in the first pass; a writer that got there since makes
                # an append fail on its reservations, and the import stops there.
                try:
                    transfers = [
                        Transfer.import_existing(
                            transfer_id=r.transfer_id,
                            state=r,
                            source_updated_at=r.source_updated_at,
                            actor=actor,
                            source_transaction=r.source_transaction,
                        )
                        for r in new
                    ]
                    # Built while the batch before is still being appended.
                    prepared = self.transfers.prepare_new(transfers)
                except Exception:
                    # The batch before's own failure, if any, names an earlier
                    # line: it goes first.
                    if appending is not None:
                        appending.result()
                    raise
                if appending is not None:
                    # The batch before has committed, or its error stops the import.
                    imported += appending.result()
                # The append reserves their orders (orders.OrderReservations).
                appending = appends.submit(self._append_batch, prepared)
            if appending is not None:
                imported += appending.result()
        return ImportResult(imported=imported, already_present=present)

    def _append_batch(self, prepared: PreparedAppend) -> int:
        """Send one batch's append; returns how many transfers it saved.
        After a dropped connection the library sends an append again, and if
        the first one had committed (only its answer was lost) the second
        fails on what the first wrote (the orders' reservations, the events'
        keys). The batch is saved all the same when the log holds each of its
        events exactly as this import made it: the timestamps are its own."""
        try:
            return self.transfers.append_prepared(prepared)
        except IntegrityError:
            if not self._stored_as_made(prepared):
                raise
            return len(prepared.aggregates)

    def _stored_as_made(self, prepared: PreparedAppend) -> bool:
        # An import's transfers are new: each has its creation event alone.
        events = prepared.events
        if not events or any(e.originator_version != 1 for e in events):
            return False
        with self.db.transaction(write=False) as cursor:
            stored = self.db.first_stored_events(
                cursor, [cast(UUID, e.originator_id) for e in events]
            )
        return all(stored.get(cast(UUID, e.originator_id)) == e for e in events)

    def _check_against_ledger(self, batch: Sequence[ImportRecord]) -> None:
        """Refuse (IdempotencyConflict, naming the line) a record the ledger
        contradicts; see `import_transfers`."""
        with self.db.transaction(write=False) as cursor:
            existing = self.db.first_stored_events(cursor, [r.transfer_id for r in batch])
        for record in batch:
            stored = existing.get(record.transfer_id)
            if stored is not None:
                _check_reimport(record, self.transfers.mapper.to_domain_event(stored))
        reserved = orders.owners(self.db, (r.order_ref for r in batch))
        for record in batch:
            owner = reserved.get(record.order_ref)
            if owner is not None and owner != record.transfer_id:
                raise IdempotencyConflict(
                    f"line {record.line}: order {record.order_ref!r} already has transfer"
                    f" {owner}: one order, one transfer"
                )
        recorded = self.read_model.recording(
            r.stripe_transfer_id for r in batch if r.stripe_transfer_id
        )
        for record in batch:
            for other in recorded.get(record.stripe_transfer_id or "", []):
                if other.id != record.transfer_id:
                    raise IdempotencyConflict(
                        f"line {record.line}: Stripe transfer {record.stripe_transfer_id} is"
                        f" recorded by transfer {other.id} already"
                    )

    # ----- reads ----------------------------------------------------------------

    def get(self, transfer_id: UUID | str) -> TransferView:
        """The transfer's current state (its read-table row)."""
        transfer_id = values.transfer_id(transfer_id)
        view = self.read_model.get(transfer_id)
        if view is None:
            raise TransferNotFound(transfer_id)
        return view

    def list_transfers(self, status: str | None = None) -> list[TransferView]:
        """Rows of the read table, all or those in one status."""
        return self.read_model.list_transfers(values.status(status) if status is not None else None)


def _check_same_order(existing: Transfer, requested: Transfer) -> None:
    for name in ("seller_account_id", "amount", "currency"):
        if getattr(existing, name) != getattr(requested, name):
            raise IdempotencyConflict(
                f"order {requested.order_ref!r} already has transfer {existing.id} with"
                f" {name} {getattr(existing, name)!r}, not {getattr(requested, name)!r}"
            )


def _check_reimport(record: ImportRecord, first_event: object) -> None:
    if not (isinstance(first_event, Transfer.Imported) and record.same_as(first_event)):
        raise IdempotencyConflict(
            f"line {record.line}: transfer {record.transfer_id} is already in the"
            " ledger with other values"
        )
