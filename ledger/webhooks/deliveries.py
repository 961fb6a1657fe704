"""The `stripe_webhook_events` table: one row per Stripe event id, saying what
became of its delivery (see migrations/*/0008_stripe_webhook_events.sql).

The primary key is the deduplication. A delivery that records events saves its
row in the same transaction as those events (`save_statement`, run by the
event store's append); any other delivery saves its row alone (`save_alone`).
The SQL is written once with `?` placeholders, which the PostgreSQL cursor and
recorder rewrite to `%s`; times go through `Database.to_db_time` (a
timestamptz on PostgreSQL, fixed-width UTC ISO text on SQLite).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

from ledger.storage import Database, Statement


class Outcome(StrEnum):
    """What became of a delivery: the `outcome` column's values."""

    # Events were appended on the transfer.
    RECORDED = "recorded"
    # The ledger had it already: its own reversal, or one recorded before (or
    # the transfer shows no reversal at all).
    ALREADY_KNOWN = "already_known"
    # An event type (or an update) the ledger does not act on, or a Stripe
    # transfer naming no ledger transfer (one of the platform's others).
    IGNORED = "ignored"
    # The matrix (or the transfer's state) refused the change, or the ledger
    # transfer was not paid out as this Stripe transfer (or records no Stripe
    # transfer): nothing appended; `ledger reconcile` lists it for a person.
    REFUSED = "refused"
    # The Stripe transfer names a ledger transfer the ledger does not have (or
    # several ledger transfers record it): listed too.
    UNKNOWN_TRANSFER = "unknown_transfer"


# A delivery whose row says one of these is looked at again when Stripe sends it
# again (an operator's "resend" from the Dashboard once the cause is fixed): the
# transfer may have moved on to where the change is legal. Every other outcome
# is final, and a redelivery appends nothing.
RECONSIDERED: Final = frozenset({Outcome.REFUSED, Outcome.UNKNOWN_TRANSFER})
MAX_DETAIL_CHARS: Final = 500

_COLUMNS: Final = (
    "stripe_event_id",
    "event_type",
    "stripe_transfer_id",
    "transfer_id",
    "outcome",
    "detail",
    "received_at",
)
_RECONSIDERED_SQL: Final = ", ".join(f"'{o.value}'" for o in sorted(RECONSIDERED))
# An upsert that only ever replaces a row still open to reconsideration: a
# final outcome stays as first saved, whoever races to save it again.
_SAVE_SQL: Final = (
    f"INSERT INTO stripe_webhook_events ({', '.join(_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(_COLUMNS))})"
    " ON CONFLICT (stripe_event_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
    + f" WHERE stripe_webhook_events.outcome IN ({_RECONSIDERED_SQL})"
)


@dataclass(frozen=True)
class Delivery:
    """One received Stripe event and what became of it."""

    stripe_event_id: str
    event_type: str
    outcome: Outcome
    received_at: datetime
    stripe_transfer_id: str | None = None
    transfer_id: UUID | None = None
    detail: str | None = None

    def params(self, db: Database) -> Sequence[Any]:
        detail = self.detail
        if detail is not None and len(detail) > MAX_DETAIL_CHARS:
            detail = detail[: MAX_DETAIL_CHARS - 3] + "..."
        return (
            self.stripe_event_id,
            self.event_type,
            self.stripe_transfer_id,
            None if self.transfer_id is None else str(self.transfer_id),
            self.outcome.value,
            detail,
            db.to_db_time(self.received_at),
        )


def previous(db: Database, stripe_event_id: str) -> Delivery | None:
    """What became of this event when it was delivered before; None if never."""
    with db.transaction(write=False) as cursor:
        cursor.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM stripe_webhook_events WHERE stripe_event_id = ?",
            (stripe_event_id,),
        )
        row = cursor.fetchone()
    if row is None:
        return None
    received_at = db.from_db_time(row["received_at"])
    assert received_at is not None  # NOT NULL
    return Delivery(
        stripe_event_id=row["stripe_event_id"],
        event_type=row["event_type"],
        outcome=Outcome(row["outcome"]),
        received_at=received_at,
        stripe_transfer_id=row["stripe_transfer_id"],
        transfer_id=None if row["transfer_id"] is None else UUID(row["transfer_id"]),
        detail=row["detail"],
    )


def save_statement(db: Database, delivery: Delivery) -> Statement:
    """The row, for the append's own transaction (`Transfers.change(also_execute=...)`)."""
    return (_SAVE_SQL, delivery.params(db))


def save_alone(db: Database, delivery: Delivery) -> bool:
    """Save the row of a delivery that appends nothing, in its own transaction.
    False when another delivery of the same event saved a final outcome first."""
    rows = db.execute_alone(
        _SAVE_SQL + " RETURNING stripe_event_id", delivery.params(db), returning=True
    )
    return bool(rows)
