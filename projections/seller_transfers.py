"""The `seller_transfers` read table, projected from the ledger's events.

Exactly-once: each batch reads the events after this projection's tracking
position, upserts the rows they change, and moves the position, all in ONE
transaction. The tracking row is locked first, so concurrent projectors (CLI
commands, daemons) take turns instead of double-applying.

Each row also carries the aggregate version it reflects, and an upsert only
replaces an older version: replays and overlaps cannot move a row backwards.

The row's state comes from running each event's own `apply` (the same method
that evolves the aggregate) against a plain row object, so the read table and
the aggregate cannot disagree about what an event means.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter, itemgetter
from typing import Any, Final
from uuid import UUID

from eventsourcing.domain import CanMutateAggregate
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import resolve_topic

from ledger.domain import STATE_FIELDS, Transfer
from ledger.storage import Cursor, Database, Row

TABLE: Final = "seller_transfers"
TRACKING_NAME: Final = "seller_transfers"
DEFAULT_BATCH_SIZE: Final = 5000

# The read table's columns, and the fields of `transfer show --json`.
COLUMNS: Final = ("id", *STATE_FIELDS, "version", "created_at", "updated_at")

_COLUMN_VALUES: Final = attrgetter(*COLUMNS)


class ProjectionError(Exception):
    """The event log and the read table disagree in a way replay cannot explain."""


class TransferRow:
    """A read-table row as a mutable object that events can `apply` to."""

    id: UUID
    version: int
    created_at: datetime
    updated_at: datetime

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def as_params(self, db: Database) -> Sequence[Any]:
        values = _COLUMN_VALUES(self)
        if db.dialect == "postgresql":
            return values  # psycopg adapts UUIDs and datetimes itself.
        return [
            str(v) if isinstance(v, UUID) else db.to_db_time(v) if isinstance(v, datetime) else v
            for v in values
        ]


@dataclass(frozen=True)
class TransferView:
    """A row of the read table as the CLI and workers see it."""

    id: UUID
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
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, db: Database, row: Row) -> TransferView:
        fields = {name: row[name] for name in COLUMNS}
        fields["id"] = row["id"] if isinstance(row["id"], UUID) else UUID(row["id"])
        for name in ("next_retry_at", "created_at", "updated_at"):
            fields[name] = db.from_db_time(row[name])
        return cls(**fields)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in COLUMNS:
            value = getattr(self, name)
            if isinstance(value, UUID):
                value = str(value)
            elif isinstance(value, datetime):
                value = value.isoformat().replace("+00:00", "Z")
            out[name] = value
        return out


class SellerTransfersProjection:
    """Keeps a seller_transfers table in step with the event log.

    `table` and `tracking_name` are parameters so that a rebuild can project
    the same events into a fresh table with a tracking position of its own.
    """

    def __init__(
        self,
        db: Database,
        decode: Callable[[StoredEvent], Any],
        *,
        table: str = TABLE,
        tracking_name: str = TRACKING_NAME,
    ) -> None:
        self.db = db
        self.decode = decode
        self.table = table
        self.tracking_name = tracking_name
        assignments = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "id")
        self._on_conflict = (
            f"ON CONFLICT (id) DO UPDATE SET {assignments}"
            # The version guard: never replace a row with an older picture of it.
            f" WHERE {table}.version < excluded.version"
        )

    # ----- driving the projection ------------------------------------------

    def catch_up(self, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        """Project every event recorded so far; returns how many were processed."""
        total = 0
        while True:
            processed = self.process_batch(batch_size)
            total += processed
            if processed < batch_size:
                return total

    def process_batch(self, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        with self.db.transaction(write=True) as cursor:
            return self.process_batch_in(cursor, batch_size)

    def process_batch_in(self, cursor: Cursor, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        """One batch in the caller's transaction (a rebuild's switch-over
        catches up inside the transaction that switches the tables)."""
        position = self._lock_position(cursor)
        batch = self.db.select_stored_events_after(cursor, position, batch_size)
        if not batch:
            return 0
        events = [(nid, self.decode(stored)) for nid, stored in batch]
        self._apply(cursor, [e for _, e in events])
        self._set_position(cursor, events[-1][0])
        return len(events)

    def _set_position(self, cursor: Cursor, position: int) -> None:
        cursor.execute(
            "UPDATE projection_tracking SET position = ? WHERE name = ?",
            (position, self.tracking_name),
        )

    def process_recorded(self, recorded: Sequence[tuple[int, Any]]) -> bool:
        """Project events this process has just recorded, without reading them back.

        Only when they are exactly the next events after the tracking position
        (nobody else wrote in between); returns False otherwise, and the caller
        falls back to `catch_up`, which reads the log. Bulk imports take this
        path: decoding events back from the store would cost as much as the
        rest of the import.
        """
        if not recorded:
            return True
        with self.db.transaction(write=True) as cursor:
            position = self._lock_position(cursor)
            first, last = recorded[0][0], recorded[-1][0]
            if first <= position or self.db.count_events_between(cursor, position, last) != len(
                recorded
            ):
                return False
            self._apply(cursor, [event for _, event in recorded])
            self._set_position(cursor, last)
            return True

    def position(self) -> int:
        with self.db.transaction(write=False) as cursor:
            cursor.execute(
                "SELECT position FROM projection_tracking WHERE name = ?", (self.tracking_name,)
            )
            row = cursor.fetchone()
            return 0 if row is None else int(row["position"])

    def _lock_position(self, cursor: Cursor) -> int:
        suffix = " FOR UPDATE" if self.db.dialect == "postgresql" else ""
        cursor.execute(
            f"SELECT position FROM projection_tracking WHERE name = ?{suffix}",
            (self.tracking_name,),
        )
        row = cursor.fetchone()
        if row is None:
            cursor.execute(
                "INSERT INTO projection_tracking (name, position) VALUES (?, 0)",
                (self.tracking_name,),
            )
            return 0
        return int(row["position"])

    # ----- events to rows ---------------------------------------------------

    def _apply(self, cursor: Cursor, events: Sequence[CanMutateAggregate[UUID]]) -> None:
        rows: dict[UUID, TransferRow] = {}
        needed = {
            e.originator_id
            for e in events
            if not isinstance(e, (Transfer.Created, Transfer.Imported))
        }
        rows.update(self._load_rows(cursor, needed))
        for event in events:
            row = rows.get(event.originator_id)
            if row is not None and row.version >= event.originator_version:
                continue  # Already reflected (the version guard, on the read side).
            if row is None:
                if not isinstance(event, (Transfer.Created, Transfer.Imported)):
                    raise ProjectionError(
                        f"{type(event).__qualname__} v{event.originator_version} of"
                        f" transfer {event.originator_id} has no row to apply to"
                    )
                row = TransferRow(id=event.originator_id, created_at=event.timestamp)
                rows[event.originator_id] = row
            elif row.version != event.originator_version - 1:
                raise ProjectionError(
                    f"transfer {event.originator_id}: row is at v{row.version},"
                    f" next event is v{event.originator_version}"
                )
            event.apply(row)
            row.version = event.originator_version
            row.updated_at = event.timestamp
        self.db.upsert(
            cursor,
            self.table,
            COLUMNS,
            [row.as_params(self.db) for row in rows.values()],
            self._on_conflict,
        )

    def _load_rows(self, cursor: Cursor, ids: set[UUID]) -> dict[UUID, TransferRow]:
        loaded: dict[UUID, TransferRow] = {}
        id_list = list(ids)
        for start in range(0, len(id_list), 500):
            chunk = id_list[start : start + 500]
            placeholders = ", ".join("?" * len(chunk))
            cursor.execute(
                f"SELECT {', '.join(COLUMNS)} FROM {self.table} WHERE id IN ({placeholders})",
                [self.db.to_db_id(i) for i in chunk],
            )
            for raw in cursor.fetchall():
                row = TransferRow(**raw)
                row.id = raw["id"] if isinstance(raw["id"], UUID) else UUID(raw["id"])
                row.__dict__["next_retry_at"] = self.db.from_db_time(raw["next_retry_at"])
                row.created_at = self.db.from_db_time(raw["created_at"]) or row.created_at
                row.updated_at = self.db.from_db_time(raw["updated_at"]) or row.updated_at
                loaded[row.id] = row
        return loaded


# ----- whole histories in bulk (rebuild, audit verify) ------------------------

# The JSON transcoder stores a datetime as
# {"_type_":"datetime_iso","_data_":"2026-11-26T12:00:00.000001+00:00"}; this
# finds any other encoded value (one regex scan: cheaper than counting both).
_ENCODED_OTHER_THAN_DATETIME: Final = re.compile(rb'"_type_"\s*:\s*"(?!datetime_iso")')
# Where the read table's datetime columns are in COLUMNS.
_DATETIME_COLUMNS: Final = tuple(
    COLUMNS.index(name) for name in ("next_retry_at", "created_at", "updated_at")
)
# A TransferRow's values in COLUMNS order, read from its __dict__: a little
# cheaper than _COLUMN_VALUES's attribute lookups, once per row of a rebuild.
_ROW_VALUES: Final = itemgetter(*COLUMNS)


class HistoryDecoder:
    """Stored events to event objects, for replaying every history at once.

    About twice as fast as the mapper's decode, which dominated rebuild and
    verify: the state is parsed as plain JSON (the mapper calls a Python hook
    for every JSON object in it), the transfer id stays text, and a datetime
    stays as stored, {"_type_": "datetime_iso", "_data_": ISO text}.
    That is enough because the events' apply methods only move values into the
    row, never compute with them: an encoded datetime lands in its column as
    it is, and `copy_values` / `compared_values` decode it there. Anything
    else goes through the full decode: a state holding another encoded type
    (a UUID, a Decimal), one that is not a JSON object, an event class with a
    class_version to upcast, a topic that does not resolve (the mapper then
    raises its own error).
    """

    def __init__(self, decode: Callable[[StoredEvent], Any]) -> None:
        self._decode = decode
        # Per topic, the event class, or None: decode in full.
        self._classes: dict[str, type | None] = {}
        self._parse = json.JSONDecoder().raw_decode

    def __call__(self, transfer_id: str, version: int, topic: str, state: bytes) -> Any:
        try:
            cls = self._classes[topic]
        except KeyError:
            cls = self._classes[topic] = _plain_event_class(topic)
        if cls is not None and _ENCODED_OTHER_THAN_DATETIME.search(state) is None:
            try:
                # raw_decode: json.loads without its per-call wrappers (encoding
                # detection, a regex for trailing space), measurably cheaper here.
                text = state.decode()
                fields, end = self._parse(text)
            except ValueError:
                fields, end = None, 0  # the full decode names the problem
            if type(fields) is dict and end == len(text):
                fields.pop("class_version", None)
                fields["originator_id"] = transfer_id
                fields["originator_version"] = version
                # What the mapper does too: no __init__, the fields as they are.
                event: Any = object.__new__(cls)
                object.__setattr__(event, "__dict__", fields)
                return event
        return self._decode(StoredEvent(UUID(transfer_id), version, topic, state))


def _plain_event_class(topic: str) -> type | None:
    try:
        cls = resolve_topic(topic)
    except Exception:
        return None
    if not isinstance(cls, type) or getattr(cls, "class_version", 1) != 1:
        return None
    return cls


def replay_history(events: Sequence[Any], *, strict: bool) -> TransferRow:
    """The row one transfer's events (in version order) lead to, built as
    `_apply` builds it. `strict` (a rebuild): a history that does not start
    with Created or Imported, or skips a version, raises ProjectionError as
    the live projection would. Not strict (an audit, which reports such
    histories itself): every event is applied in turn."""
    first = events[0]
    if strict and not isinstance(first, (Transfer.Created, Transfer.Imported)):
        raise ProjectionError(
            f"{type(first).__qualname__} v{first.originator_version} of"
            f" transfer {first.originator_id} has no row to apply to"
        )
    row = TransferRow(
        id=first.originator_id,
        created_at=first.timestamp,
        version=first.originator_version - 1,
    )
    for event in events:
        if strict and event.originator_version != row.version + 1:
            raise ProjectionError(
                f"transfer {event.originator_id}: row is at v{row.version},"
                f" next event is v{event.originator_version}"
            )
        event.apply(row)
        row.version = event.originator_version
        row.updated_at = event.timestamp
    return row


def copy_values(row: TransferRow) -> list[Any]:
    """The row's values in COLUMNS order for COPY's text form, where an
    encoded datetime goes as its ISO text: PostgreSQL reads the same
    timestamptz from it that psycopg would send for the datetime."""
    values = list(_ROW_VALUES(row.__dict__))
    for index in _DATETIME_COLUMNS:
        value = values[index]
        if type(value) is dict:
            values[index] = value["_data_"]
    return values


def compared_values(row: TransferRow) -> tuple[Any, ...]:
    """The row's values in COLUMNS order as plain Python values to compare
    with a stored row: the id as canonical text, datetimes as datetimes."""
    values = list(_ROW_VALUES(row.__dict__))
    values[0] = str(values[0])
    for index in _DATETIME_COLUMNS:
        value = values[index]
        if type(value) is dict:
            values[index] = datetime.fromisoformat(value["_data_"])
    return tuple(values)


# ----- queries the CLI and the workers use ------------------------------------


def get_transfer(db: Database, transfer_id: UUID, table: str = TABLE) -> TransferView | None:
    with db.transaction(write=False) as cursor:
        cursor.execute(
            f"SELECT {', '.join(COLUMNS)} FROM {table} WHERE id = ?", (db.to_db_id(transfer_id),)
        )
        row = cursor.fetchone()
    return None if row is None else TransferView.from_row(db, row)


def list_transfers(
    db: Database, status: str | None = None, table: str = TABLE
) -> list[TransferView]:
    where, params = ("WHERE status = ?", [status]) if status else ("", [])
    with db.transaction(write=False) as cursor:
        cursor.execute(
            f"SELECT {', '.join(COLUMNS)} FROM {table} {where} ORDER BY created_at, id", params
        )
        rows = cursor.fetchall()
    return [TransferView.from_row(db, row) for row in rows]


def find_by_order_ref(db: Database, order_ref: str, table: str = TABLE) -> list[TransferView]:
    with db.transaction(write=False) as cursor:
        cursor.execute(
            f"SELECT {', '.join(COLUMNS)} FROM {table} WHERE order_ref = ?", (order_ref,)
        )
        rows = cursor.fetchall()
    return [TransferView.from_row(db, row) for row in rows]


def find_by_stripe_transfer_ids(
    db: Database, stripe_ids: Iterable[str], table: str = TABLE
) -> dict[str, list[TransferView]]:
    """The rows recording each of these Stripe transfers (usually one each;
    two means a person must look). There is no index on stripe_transfer_id,
    since it would slow `ledger transfer import`: this scans the table, about
    11 ms for 100,000 rows on PostgreSQL and 17 ms on SQLite, so callers ask
    for many ids at once and only when the Stripe object names no ledger id."""
    ids = sorted(set(stripe_ids))
    if not ids:
        return {}
    with db.transaction(write=False) as cursor:
        cursor.execute(
            f"SELECT {', '.join(COLUMNS)} FROM {table}"
            f" WHERE stripe_transfer_id IN ({', '.join('?' * len(ids))}) ORDER BY id",
            ids,
        )
        rows = cursor.fetchall()
    found: dict[str, list[TransferView]] = {}
    for row in rows:
        view = TransferView.from_row(db, row)
        assert view.stripe_transfer_id is not None
        found.setdefault(view.stripe_transfer_id, []).append(view)
    return found


# What makes each kind of work due, `?` being now: the workers' due queries
# below, and `ledger health`'s count of due work, share these conditions.
# `now` is a parameter so that one clock (the daemon's) decides what is due,
# on SQLite as on PostgreSQL, and tests can move it.
DUE_REVERSAL_WHERE: Final = (
    "status = 'reversal_pending' AND (next_retry_at IS NULL OR next_retry_at <= ?)"
)
DUE_PAYOUT_RETRY_WHERE: Final = (
    "status = 'failed' AND next_retry_at IS NOT NULL AND next_retry_at <= ?"
)
DUE_PAYOUT_WHERE: Final = "status = 'pending' AND created_at <= ?"

# The reversal worker's due query, as the seed wrote it.
# Served by idx_seller_transfers_reversal_pending.
DUE_REVERSALS_SQL: Final = (
    f"SELECT id FROM seller_transfers WHERE {DUE_REVERSAL_WHERE}"
    " ORDER BY next_retry_at NULLS FIRST LIMIT ?"
)

# The payout retry worker's due query. Served by idx_seller_transfers_retry.
DUE_PAYOUT_RETRIES_SQL: Final = (
    f"SELECT id FROM seller_transfers WHERE {DUE_PAYOUT_RETRY_WHERE} ORDER BY next_retry_at LIMIT ?"
)

# The payout worker's first attempts: a pending transfer is due as soon as it
# exists, oldest first. Served by idx_seller_transfers_pending.
DUE_PAYOUTS_SQL: Final = (
    f"SELECT id FROM seller_transfers WHERE {DUE_PAYOUT_WHERE} ORDER BY created_at LIMIT ?"
)


def due_ids(db: Database, query: str, now: datetime, limit: int) -> list[UUID]:
    with db.transaction(write=False) as cursor:
        cursor.execute(query, (db.to_db_time(now), limit))
        rows = cursor.fetchall()
    return [r["id"] if isinstance(r["id"], UUID) else UUID(r["id"]) for r in rows]
