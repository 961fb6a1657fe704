"""`ledger reconcile`: does Stripe agree with the ledger?

Streamed in passes, so that memory holds one page of Stripe transfers, one
batch of read-table rows, and the ids of the Stripe transfers already compared
(about 80 bytes each: 100,000 transfers are a few MB), however large both are:

1. Every Stripe transfer (made at or after --since), page by page. One that
   names a ledger transfer (metadata `ledger_transfer_id`, or a transfer_group
   that is a transfer id: the payout manager sets both) is looked up in the
   read table, a page at a time, and compared: amount, currency, destination,
   amount reversed and the reversals. One that names a transfer the ledger does
   not have, or has under another Stripe id or none, is a difference of its
   own; a second Stripe transfer for a transfer already paid is money moved
   twice, and is reported first. One that names none (an imported transfer's
   payout carries no ledger metadata) is looked up by its Stripe id, the
   page's unnamed ones in one query, and compared with the row recording it;
   only one that no row records is the platform's other business.
2. Every ledger transfer with a Stripe id (changed at or after --since) that
   pass 1 did not meet is retrieved on its own: Stripe made it before --since,
   or after the listing began, or does not have it at all. In the same read,
   every ledger transfer whose status says money moved (completed,
   reversal_pending, reversed) but that records no Stripe transfer (an admin's
   `set-status`, an import without one) is a difference, unless pass 1 already
   reported the Stripe transfer that names it.
3. Webhook deliveries the ledger refused or could not match
   (`stripe_webhook_events`), which need a person.
4. A difference that may be in flight (the ledger still `pending` or
   `reversal_pending` while Stripe has the ledger's own object: a daemon's call
   or its recording is under way) is checked once more at the end. If it
   persists, it is reported with what the daemons' work table says of it.

A transfer's events are read only when it has reversals on either side: they
name the Stripe reversals the ledger recorded. Nothing here speaks HTTP:
Stripe is read through `StripeSide` (`ledger.stripe.listing.StripeReader`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TextIO
from uuid import UUID

from ledger import values
from ledger.backend import Backend
from ledger.matrix import AWAITING_PAYOUT, Status
from ledger.processing.work import WorkStore
from ledger.progress import Progress
from ledger.projections.queries import find_by_stripe_transfer_ids
from ledger.projections.rows import TABLE
from ledger.reconcile.report import Checked, Difference, Report, describe, summary
from ledger.storage import Database
from ledger.stripe.listing import ListedReversal, ListedTransfer
from ledger.views import COLUMNS, TransferView

EXIT_AGREE: Final = 0
EXIT_DIFFERENCES: Final = 1
LEDGER_ROWS_PER_BATCH: Final = 1000
WEBHOOK_TABLE: Final = "stripe_webhook_events"
# Webhook outcomes that need a person (migration 0008).
WEBHOOK_ATTENTION: Final = ("refused", "unknown_transfer")

# Statuses that say Stripe paid the transfer: such a row should record a Stripe id.
_MONEY_MOVED: Final = (Status.COMPLETED.value, Status.REVERSAL_PENDING.value, Status.REVERSED.value)
_MOVED_TWICE: Final = "MONEY MOVED TWICE"
_AGAIN: Final = "run reconcile again: it clears once the daemon has recorded Stripe's answer"


class StripeSide(Protocol):
    """What reconcile reads of Stripe (ledger.stripe.listing.StripeReader)."""

    rate_limited: int

    def transfers(self, *, created_gte: int | None = None) -> Iterator[list[ListedTransfer]]: ...

    def transfer(self, transfer_id: str) -> ListedTransfer | None: ...

    def transfers_changed(self, *, created_gte: int) -> set[str]: ...

    def reversals(self, transfer_id: str) -> tuple[ListedReversal, ...]: ...


class Reconciliation:
    def __init__(
        self,
        backend: Backend,
        stripe: StripeSide,
        *,
        since: datetime | None = None,
        progress_out: TextIO | None = None,
    ) -> None:
        self.backend = backend
        self.db: Database = backend.db
        self.stripe = stripe
        self.since = since
        self.progress_out = progress_out
        self.report = Report(since=since)
        # The Stripe transfers compared with the ledger row that records them.
        self._compared: set[str] = set()
        # Stripe transfers that pay a ledger transfer recording none, in the
        # order met: the first is the payout the ledger would record, each
        # later one is money moved twice. Rare, so small.
        self._unrecorded: dict[UUID, dict[str, None]] = {}
        # (ledger transfer, Stripe transfer) already reported as money moved
        # twice: meeting a pair again (the recheck) must not list it twice.
        self._moved_twice: set[tuple[str, str]] = set()
        # (ledger transfer, Stripe transfer) pairs to check again at the end.
        self._in_flight: dict[tuple[str, str], None] = {}
        self._progress: Progress | None = None
        self._done = 0

    @property
    def checked(self) -> Checked:
        return self.report.checked

    def run(self) -> Report:
        if self.progress_out is not None:
            self._progress = Progress(
                self.progress_out, self._count_ledger_rows(), label="reconcile", unit="transfers"
            )
        self._stripe_pass()
        self._events_pass()
        self._ledger_pass()
        self._webhook_pass()
        self._recheck_in_flight()
        self.checked.rate_limited = self.stripe.rate_limited
        self.report.differences.sort(key=Difference.rank)
        if self._progress is not None:
            self._progress.finish(
                f"{self.checked.ledger_transfers:,} ledger transfers and"
                f" {self.checked.stripe_transfers:,} Stripe transfers checked in"
                f" {self._progress.elapsed():.1f} s"
            )
        return self.report

    # ----- pass 1: Stripe's transfers ------------------------------------------

    def _stripe_pass(self) -> None:
        # Stripe's `created` is in whole seconds: round down, never miss one.
        created_gte = math.floor(self.since.timestamp()) if self.since else None
        for page in self.stripe.transfers(created_gte=created_gte):
            named = [(transfer, transfer.ledger_transfer_id()) for transfer in page]
            rows = self._rows({ledger_id for _, ledger_id in named if ledger_id is not None})
            recording = find_by_stripe_transfer_ids(
                self.db, {transfer.id for transfer, ledger_id in named if ledger_id is None}
            )
            for transfer, ledger_id in named:
                self.checked.stripe_transfers += 1
                if ledger_id is not None:
                    self._check_named(transfer, ledger_id, rows.get(ledger_id))
                elif transfer.id in recording:
                    # An imported transfer's payout: no metadata, but the row
                    # records it, so it is compared here and not fetched again
                    # in pass 2.
                    for row in recording[transfer.id]:
                        self._count_compared(row, transfer)
                        self._compare(row, transfer)
                else:
                    self.checked.other_stripe_transfers += 1
            self._show_progress()

    def _check_named(
        self, transfer: ListedTransfer, ledger_id: UUID, row: TransferView | None
    ) -> None:
        """A Stripe transfer that names ledger transfer `ledger_id`."""
        if row is None:
            self._add(
                Difference(
                    str(ledger_id),
                    transfer.id,
                    "transfer",
                    None,
                    summary(transfer),
                    "money moved without a ledger record: Stripe paid under a ledger transfer"
                    " id the ledger does not have",
                )
            )
        elif row.stripe_transfer_id == transfer.id:
            self._count_compared(row, transfer)
            self._compare(row, transfer)
        else:
            self._other_payout(row, transfer)

    def _other_payout(self, row: TransferView, transfer: ListedTransfer) -> None:
        """A Stripe transfer for a ledger transfer that records another, or none."""
        ledger_id = str(row.id)
        if row.stripe_transfer_id is not None:
            if transfer.amount_reversed >= transfer.amount:
                self.checked.extra_payouts_reversed += 1
                return
            self._add(
                Difference(
                    ledger_id,
                    transfer.id,
                    "stripe_transfer_id",
                    row.stripe_transfer_id,
                    transfer.id,
                    f"{_MOVED_TWICE}: Stripe paid this ledger transfer again"
                    f" ({describe(transfer)}) besides {row.stripe_transfer_id}, the payout the"
                    f" ledger records; reverse {transfer.id} at Stripe",
                    money_moved_twice=True,
                )
            )
            return
        paying = self._unrecorded.setdefault(row.id, {})
        paying[transfer.id] = None
        # Met again (the recheck), the first one is still not the extra: only
        # the later ones are money moved twice, each listed once.
        if next(iter(paying)) != transfer.id:
            self._add(
                Difference(
                    ledger_id,
                    transfer.id,
                    "stripe_transfer_id",
                    None,
                    transfer.id,
                    f"{_MOVED_TWICE}: Stripe has {len(paying)} transfers for this ledger"
                    f" transfer ({', '.join(sorted(paying))}) and the ledger ({row.status})"
                    " records none",
                    money_moved_twice=True,
                )
            )
            return
        in_flight = row.status in AWAITING_PAYOUT and transfer.ledger_cause is not None
        if in_flight:
            note = (
                f"may be in flight: the ledger's payout manager made this Stripe transfer"
                f" ({describe(transfer)}) and the ledger ({row.status}) has not recorded it yet"
            )
        elif row.status in AWAITING_PAYOUT:
            note = (
                f"Stripe has a transfer for this {row.status} ledger transfer that the ledger"
                f" did not make ({describe(transfer)}): the daemon's next attempt would pay"
                " it again"
            )
        elif row.status == Status.PERMANENTLY_FAILED:
            note = (
                f"money moved that the ledger says did not: Stripe paid ({describe(transfer)})"
                " a transfer the ledger gave up on"
            )
        else:
            note = (
                f"Stripe paid this transfer ({describe(transfer)}); the ledger ({row.status})"
                " records no Stripe transfer for it"
            )
        self._add(
            Difference(
                ledger_id, transfer.id, "stripe_transfer_id", None, transfer.id, note, in_flight
            )
        )

    # ----- comparing one transfer -------------------------------------------------

    def _compare(self, row: TransferView, transfer: ListedTransfer) -> None:
        """A ledger transfer and the Stripe transfer it records."""
        ledger_id = str(row.id)
        for name, in_ledger, at_stripe in (
            ("amount", row.amount, transfer.amount),
            ("currency", row.currency, transfer.currency),
            ("destination", row.seller_account_id, transfer.destination),
        ):
            if in_ledger != at_stripe:
                self._add(Difference(ledger_id, transfer.id, name, in_ledger, at_stripe))
        named = transfer.ledger_transfer_id()
        if named is not None and named != row.id:
            self._add(
                Difference(
                    ledger_id,
                    transfer.id,
                    "transfer_group",
                    ledger_id,
                    str(named),
                    "the Stripe transfer the ledger records names another ledger transfer",
                )
            )
        if row.amount_reversed or transfer.amount_reversed:
            self._compare_reversals(row, transfer)

    def _compare_reversals(self, row: TransferView, transfer: ListedTransfer) -> None:
        ledger_id = str(row.id)
        at_stripe = transfer.reversals
        if at_stripe is None:
            at_stripe = self.stripe.reversals(transfer.id)
        self.checked.reversals += len(at_stripe)
        by_id = {reversal.id: reversal for reversal in at_stripe}
        recorded = self._recorded_reversals(row.id)
        found: list[Difference] = [
            Difference(
                ledger_id,
                transfer.id,
                "reversal",
                reversal_id,
                None,
                "the ledger recorded this reversal; Stripe has no such reversal of this transfer",
            )
            for reversal_id in recorded
            if reversal_id not in by_id
        ]
        # The ledger's amount_reversed may count reversals it names by no id:
        # what an imported transfer had reversed before, or Stripe's total that
        # the reversal manager recorded, under one id, for a transfer it found
        # fully reversed already. Unnamed Stripe reversals, oldest first, are
        # accounted for as long as that amount lasts.
        unnamed = row.amount_reversed - sum(by_id[r].amount for r in recorded if r in by_id)
        ours_unrecorded = False
        for reversal in at_stripe:
            if reversal.id in recorded:
                continue
            if reversal.amount <= unnamed:
                unnamed -= reversal.amount
                continue
            in_flight = row.status == Status.REVERSAL_PENDING and reversal.ledger_cause is not None
            ours_unrecorded |= in_flight
            if in_flight:
                note = (
                    "may be in flight: the ledger's reversal manager made this reversal and the"
                    " ledger (reversal_pending) has not recorded it yet"
                )
            elif reversal.ledger_cause is not None:
                note = "the ledger made this reversal (its metadata says so) but never recorded it"
            else:
                note = "a reversal made outside the ledger (the Dashboard, another system)"
            found.append(
                Difference(
                    ledger_id,
                    transfer.id,
                    "reversal",
                    None,
                    {"id": reversal.id, "amount": reversal.amount},
                    note,
                    in_flight,
                )
            )
        if row.amount_reversed != transfer.amount_reversed:
            in_flight = ours_unrecorded and transfer.amount_reversed > row.amount_reversed
            self._add(
                Difference(
                    ledger_id,
                    transfer.id,
                    "amount_reversed",
                    row.amount_reversed,
                    transfer.amount_reversed,
                    "may be in flight: see the reversal below" if in_flight else "",
                    in_flight,
                )
            )
        for difference in found:
            self._add(difference)

    def _recorded_reversals(self, transfer_id: UUID) -> dict[str, None]:
        """The Stripe reversal ids the ledger's events name, in order."""
        recorded: dict[str, None] = {}
        for event in self.backend.transfers.events.get(transfer_id):
            reversal_id = getattr(event, "stripe_reversal_id", None)
            if reversal_id:
                recorded[reversal_id] = None
        return recorded

    # ----- pass 1b: older transfers Stripe's events say changed since ---------

    def _events_pass(self) -> None:
        """With --since: a transfer made before it may have been reversed
        after it (a refund of an old order, in the Dashboard). Stripe's events
        (`/v1/events`, 30 days) name it; it is retrieved and compared with the
        row recording it, whatever the row's own time says."""
        if self.since is None:
            return
        changed = self.stripe.transfers_changed(created_gte=math.floor(self.since.timestamp()))
        fresh = sorted(changed - self._compared)
        for start in range(0, len(fresh), LEDGER_ROWS_PER_BATCH):
            ids = fresh[start : start + LEDGER_ROWS_PER_BATCH]
            recording = find_by_stripe_transfer_ids(self.db, set(ids))
            for stripe_id in ids:
                rows = recording.get(stripe_id)
                if not rows:
                    continue  # the platform's other business, or pass 1 judged it
                transfer = self.stripe.transfer(stripe_id)
                if transfer is None:
                    continue  # pass 2 reports a recorded transfer Stripe does not have
                self.checked.retrieved += 1
                for row in rows:
                    self._count_compared(row, transfer)
                    self._compare(row, transfer)

    # ----- pass 2: ledger transfers pass 1 did not meet -----------------------

    def _ledger_pass(self) -> None:
        for batch in self._ledger_rows():
            for row in batch:
                stripe_id = row.stripe_transfer_id
                if stripe_id is None:
                    self._check_unrecorded_payout(row)
                    continue
                if stripe_id in self._compared:
                    continue
                self.checked.retrieved += 1
                transfer = self.stripe.transfer(stripe_id)
                if transfer is None:
                    self.checked.ledger_transfers += 1
                    self._done += 1
                    self._add(
                        Difference(
                            str(row.id),
                            stripe_id,
                            "transfer",
                            stripe_id,
                            None,
                            "the ledger records this Stripe transfer; Stripe has no such transfer",
                        )
                    )
                    continue
                self._count_compared(row, transfer)
                self._compare(row, transfer)
            self._show_progress()

    def _check_unrecorded_payout(self, row: TransferView) -> None:
        """A ledger transfer whose status says Stripe paid it, recording no
        Stripe transfer."""
        self.checked.ledger_transfers += 1
        self._done += 1
        if row.id in self._unrecorded:
            return  # Pass 1 met a Stripe transfer naming it and reported that one.
        listed = "no Stripe transfer names it"
        if self.since is not None:
            listed += (
                f" among those made since {values.iso(self.since)} (a full run, without --since,"
                " looks at all of them)"
            )
        self._add(
            Difference(
                str(row.id),
                None,
                "stripe_transfer_id",
                f"none (status {row.status})",
                None,
                f"the ledger says money moved ({row.status}) but records no Stripe transfer"
                f" (an admin status change or an import without one); {listed}",
            )
        )

    def _ledger_rows(self) -> Iterator[list[TransferView]]:
        """Ledger transfers with a Stripe id, or whose status says money moved
        (changed at or after --since), by id, a batch at a time (keyset
        paging: each batch is one short read)."""
        after: UUID | None = None
        while True:
            where, params = self._ledger_filter()
            if after is not None:
                where += " AND id > ?"
                params.append(self.db.to_db_id(after))
            with self.db.transaction(write=False) as cursor:
                cursor.execute(
                    f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE {where} ORDER BY id LIMIT ?",
                    [*params, LEDGER_ROWS_PER_BATCH],
                )
                batch = [
                    TransferView.from_row(row, self.db.from_db_time) for row in cursor.fetchall()
                ]
            if not batch:
                return
            yield batch
            after = batch[-1].id

    def _ledger_filter(self) -> tuple[str, list[Any]]:
        # One read for both kinds of row: those recording a Stripe transfer,
        # and those that should (what pass 2 checks of them needs no call).
        where = (
            f"(stripe_transfer_id IS NOT NULL OR status IN ({', '.join('?' * len(_MONEY_MOVED))}))"
        )
        params: list[Any] = list(_MONEY_MOVED)
        if self.since is not None:
            where += " AND updated_at >= ?"
            params.append(self.db.to_db_time(self.since))
        return where, params

    def _count_ledger_rows(self) -> int:
        where, params = self._ledger_filter()
        with self.db.transaction(write=False) as cursor:
            cursor.execute(f"SELECT COUNT(*) AS n FROM {TABLE} WHERE {where}", params)
            found = cursor.fetchone()
        return int(found["n"]) if found else 0

    def _rows(self, ids: set[UUID]) -> dict[UUID, TransferView]:
        if not ids:
            return {}
        with self.db.transaction(write=False) as cursor:
            cursor.execute(
                f"SELECT {', '.join(COLUMNS)} FROM {TABLE}"
                f" WHERE id IN ({', '.join('?' * len(ids))})",
                [self.db.to_db_id(i) for i in ids],
            )
            rows = [TransferView.from_row(row, self.db.from_db_time) for row in cursor.fetchall()]
        return {row.id: row for row in rows}

    # ----- pass 3: webhook deliveries that need a person ----------------------

    def _webhook_pass(self) -> None:
        sql = (
            "SELECT stripe_event_id, event_type, stripe_transfer_id, transfer_id, outcome,"
            f" detail, received_at FROM {WEBHOOK_TABLE}"
            f" WHERE outcome IN ({', '.join('?' * len(WEBHOOK_ATTENTION))})"
        )
        params: list[Any] = list(WEBHOOK_ATTENTION)
        if self.since is not None:
            sql += " AND received_at >= ?"
            params.append(self.db.to_db_time(self.since))
        with self.db.transaction(write=False) as cursor:
            if not self.db.table_exists(cursor, WEBHOOK_TABLE):
                return  # A database from before webhooks: nothing received.
            cursor.execute(f"{sql} ORDER BY received_at, stripe_event_id", params)
            rows = cursor.fetchall()
        self.checked.webhook_events = len(rows)
        for row in rows:
            received = self.db.from_db_time(row["received_at"])
            event = f"Stripe event {row['stripe_event_id']} ({row['event_type']})"
            if row["outcome"] == "refused":
                note = f"{event} was refused by the ledger's transition matrix"
            else:
                note = f"{event} names no ledger transfer"
            if row["detail"]:
                note += f": {row['detail']}"
            self._add(
                Difference(
                    row["transfer_id"],
                    row["stripe_transfer_id"],
                    "webhook",
                    row["outcome"],
                    row["event_type"],
                    note,
                    extra={
                        "stripe_event_id": row["stripe_event_id"],
                        "received_at": values.iso(received) if received else None,
                    },
                )
            )

    # ----- pass 4: what may have been in flight -------------------------------

    def _recheck_in_flight(self) -> None:
        """Compare each pair that may have been in flight once more, now: a
        daemon is usually done with it. What still differs is annotated with
        what the daemons' work table says, so the operator knows whether to
        wait or to act."""
        pairs = list(self._in_flight)
        if not pairs:
            return
        again = set(pairs)
        self.report.differences = [
            d
            for d in self.report.differences
            if (d.transfer_id or "", d.stripe_transfer_id or "") not in again
        ]
        # What is dropped here is found again below, if it still holds.
        self._moved_twice -= again
        self._in_flight.clear()
        for ledger_id, stripe_id in pairs:
            self.checked.rechecked += 1
            before = len(self.report.differences)
            transfer_id = UUID(ledger_id)
            transfer = self.stripe.transfer(stripe_id)
            if transfer is not None:
                self._check_named(transfer, transfer_id, self._rows({transfer_id}).get(transfer_id))
            if len(self.report.differences) == before:
                self.checked.settled += 1
        self.report.differences = [
            self._with_work_state(d) if d.in_flight else d for d in self.report.differences
        ]

    def _with_work_state(self, difference: Difference) -> Difference:
        kind = "payout" if difference.field == "stripe_transfer_id" else "reversal"
        assert difference.transfer_id is not None
        # No claims are taken: the owner and claim length are never used.
        work = WorkStore(self.db, "reconcile", 0.0).state(UUID(difference.transfer_id), kind)
        if work is None:
            state = f"no daemon has started the {kind} yet"
        elif work.parked_at is not None:
            state = f"the daemon parked the {kind}: see `ledger parked list`"
        elif work.claimed_by is not None:
            expires = work.claim_expires_at
            until = f" until {values.iso(expires)}" if expires else ""
            state = f"daemon {work.claimed_by} holds the {kind}{until}"
        elif work.not_before is not None and work.not_before > datetime.now(UTC):
            why = f" ({work.last_failure})" if work.last_failure else ""
            state = f"the {kind} is due again at {values.iso(work.not_before)}{why}"
        elif work.outcome_unknown:
            state = (
                f"the last {kind} call's outcome is unknown and no daemon holds it:"
                " is `ledger daemon` running?"
            )
        else:
            state = f"no daemon holds the {kind}: is `ledger daemon` running?"
        return replace(
            difference, note=f"{difference.note}; still so when checked again: {state}; {_AGAIN}"
        )

    # ----- bookkeeping ---------------------------------------------------------------

    def _add(self, difference: Difference) -> None:
        if difference.money_moved_twice:
            key = (difference.transfer_id or "", difference.stripe_transfer_id or "")
            if key in self._moved_twice:
                return
            self._moved_twice.add(key)
        self.report.differences.append(difference)
        if difference.in_flight and difference.transfer_id and difference.stripe_transfer_id:
            self._in_flight[(difference.transfer_id, difference.stripe_transfer_id)] = None

    def _count_compared(self, row: TransferView, transfer: ListedTransfer) -> None:
        if transfer.id in self._compared:
            return  # Checked again at the end: counted once.
        self._compared.add(transfer.id)
        self.checked.ledger_transfers += 1
        if self.since is None or row.updated_at >= self.since:
            self._done += 1

    def _show_progress(self) -> None:
        if self._progress is not None:
            self._progress.show(self._done)


def reconcile(
    backend: Backend,
    stripe: StripeSide,
    *,
    since: datetime | None = None,
    progress_out: TextIO | None = None,
) -> Report:
    return Reconciliation(backend, stripe, since=since, progress_out=progress_out).run()
