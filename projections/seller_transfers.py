"""The `seller_transfers` read table, projected from the ledger's events.

Inline: every append writes the rows it changes and moves the tracking
position in its own transaction (`InlineProjection`, an append hook), so a
command's effect is in the table when its events are, and never without them.

The asynchronous projection (`SellerTransfersProjection`) stays as the safety
net for events written any other way (an older version, another writer) and
as the rebuild's engine. Exactly-once: each batch reads the events after this
projection's tracking position, upserts the rows they change, and moves the
position, all in ONE transaction. The tracking row is locked first, so
concurrent projectors take turns instead of double-applying. A transfer whose
events it cannot apply is quarantined (migration 0013), not allowed to stop
the rest.

Each row also carries the aggregate version it reflects, and an upsert only
replaces an older version: replays and overlaps cannot move a row backwards.

The row's state comes from running each event's own `apply` (the same method
that evolves the aggregate) against a plain row object, or from the aggregate
itself, so the read table and the aggregate cannot disagree about what an
event means.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter, itemgetter
from typing import Any, Final
from uuid import UUID

from eventsourcing.domain import CanMutateAggregate
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import resolve_topic

from ledger import values
from ledger.domain import STATE_FIELDS, Transfer
from ledger.errors import first_line
from ledger.storage import DATA_ERRORS, Appended, Cursor, Database, Row

log = logging.getLogger("ledger.projection")

TABLE: Final = "seller_transfers"
TRACKING_NAME: Final = "seller_transfers"
DEFAULT_BATCH_SIZE: Final = 5000

# The read table's columns, and the fields of `transfer show --json`.
COLUMNS: Final = ("id", *STATE_FIELDS, "version", "created_at", "updated_at")

_COLUMN_VALUES: Final = attrgetter(*COLUMNS)


class ProjectionError(Exception):
    """The event log and the read table disagree in a way replay cannot explain."""


# PostgreSQL's type of each column, for the inline projection's arrays.
_PG_TYPES: Final = {
    "id": "uuid",
    "status": "text",
    "seller_account_id": "text",
    "order_ref": "text",
    "amount": "bigint",
    "currency": "text",
    "retry_count": "integer",
    "next_retry_at": "timestamptz",
    "stripe_transfer_id": "text",
    "amount_reversed": "bigint",
    "last_error": "text",
    "reversal_request_ref": "text",
    "reversal_amount": "bigint",
    "version": "integer",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
}


def _on_conflict(table: str) -> str:
    assignments = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "id")
    return (
        f"ON CONFLICT (id) DO UPDATE SET {assignments}"
        # The version guard: never replace a row with an older picture of it.
        f" WHERE {table}.version < excluded.version"
    )


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
        self._on_conflict = _on_conflict(table)

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
        set_aside = self._quarantined_ids(cursor)
        histories: dict[UUID, list[Any]] = {}
        for at, stored in batch:
            transfer_id = UUID(str(stored.originator_id))
            if transfer_id in set_aside:
                continue
            try:
                event = self.decode(stored)
            except Exception as error:
                problem = f"v{stored.originator_version} cannot be read: {type(error).__name__}"
                self._quarantine(cursor, transfer_id, at, stored.originator_version, problem)
                set_aside.add(transfer_id)
                histories.pop(transfer_id, None)
                continue
            histories.setdefault(transfer_id, []).append((at, event))
        if self._apply_or_undo(cursor, [e for h in histories.values() for _, e in h]) is not None:
            # One of them cannot be applied: find which, transfer by transfer,
            # and set it aside so that every other transfer goes on.
            for transfer_id, history in histories.items():
                failure = self._apply_or_undo(cursor, [e for _, e in history])
                if failure is not None:
                    at, event = history[0]
                    problem = f"{type(failure).__name__}: {first_line(str(failure))}"
                    self._quarantine(cursor, transfer_id, at, event.originator_version, problem)
        self._set_position(cursor, batch[-1][0])
        return len(batch)

    def _apply_or_undo(self, cursor: Cursor, events: Sequence[Any]) -> Exception | None:
        """Apply `events`, or leave no trace of trying (a savepoint) and say
        why not, when the failure is the events' own: a history that cannot be
        replayed, a row the database refuses. Any other failure (a lost
        connection, a lock timeout) is raised: the batch is tried again whole."""
        if not events:
            return None
        cursor.execute("SAVEPOINT projecting")
        try:
            self._apply(cursor, events)
        except (ProjectionError, *DATA_ERRORS) as error:
            cursor.execute("ROLLBACK TO SAVEPOINT projecting")
            return error
        cursor.execute("RELEASE SAVEPOINT projecting")
        return None

    def _quarantined_ids(self, cursor: Cursor) -> set[UUID]:
        cursor.execute(
            "SELECT transfer_id FROM projection_quarantine WHERE name = ?", (self.tracking_name,)
        )
        return {_uuid(row["transfer_id"]) for row in cursor.fetchall()}

    def _quarantine(
        self, cursor: Cursor, transfer_id: UUID, position: int, version: int, problem: str
    ) -> None:
        set_aside(
            self.db,
            cursor,
            projection=self.tracking_name,
            transfer_id=transfer_id,
            position=position,
            version=version,
            problem=problem,
        )

    def _set_position(self, cursor: Cursor, position: int) -> None:
        cursor.execute(
            "UPDATE projection_tracking SET position = ? WHERE name = ?",
            (position, self.tracking_name),
        )

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
        for row in rows.values():
            check_storable(row)
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


def set_aside(
    db: Database,
    cursor: Cursor,
    *,
    projection: str,
    transfer_id: UUID,
    position: int,
    version: int,
    problem: str,
) -> None:
    """Quarantine a transfer for a projection (the live one, a rebuild's): its
    events from here on are passed over. Logged once, here; reported by
    `ledger health` and `ledger audit verify` for as long as it stays."""
    problem = values.clipped(problem)
    cursor.execute(
        "INSERT INTO projection_quarantine"
        " (name, transfer_id, position, version, problem, quarantined_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name, transfer_id) DO NOTHING",
        (
            projection,
            db.to_db_id(transfer_id),
            position,
            version,
            problem,
            db.to_db_time(datetime.now(UTC)),
        ),
    )
    log.error(
        "transfer %s set aside by the %s projection at v%d (position %d): %s;"
        " every other transfer goes on (see `ledger audit verify`)",
        transfer_id,
        projection,
        version,
        position,
        problem,
    )


def check_storable(row: TransferRow) -> None:
    """Raise ProjectionError for a row the database cannot store: text with a
    NUL (PostgreSQL's text cannot hold it) or a lone surrogate (not UTF-8).
    Text is refused at the boundary now; an event written before that, or by
    another writer, may still carry such a value."""
    for name, value in row.__dict__.items():
        if isinstance(value, str) and ("\x00" in value or not _encodes(value)):
            raise ProjectionError(
                f"transfer {row.id}: {name} {values.printable(value)[:60]!r} cannot be stored"
            )


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


# ----- inline: written by every append, in its transaction ----------------------------


def row_of(transfer: Transfer) -> TransferRow:
    """The row of a transfer as it stands: what the projection's own
    replay of its events gives, straight from the aggregate."""
    fields = {name: getattr(transfer, name) for name in STATE_FIELDS}
    return TransferRow(
        id=transfer.id,
        **fields,
        version=transfer.version,
        created_at=transfer.created_on,
        updated_at=transfer.modified_on,
    )


class InlineProjection:
    """The append hook (ledger.storage.AppendHook) that writes, in the append's
    own transaction and under the events table's lock, the rows of the
    transfers it appends to and the projection's new tracking position.

    The rows come from the aggregates saved (their state is exactly what the
    events lead to). The position moves to the append's last event only when
    nothing before the append is left unprojected (a writer that did not
    write its rows: an older version); otherwise it stays, and the
    asynchronous projection catches up over both, its version guard passing
    over the rows written here. An append of bare events, without their
    aggregates, writes nothing here: the asynchronous projection has it."""

    def __init__(self, db: Database, *, table: str = TABLE, tracking_name: str = TRACKING_NAME):
        self.db = db
        self.table = table
        self.tracking_name = tracking_name
        self._on_conflict = _on_conflict(table)
        names = ", ".join(COLUMNS)
        arrays = ", ".join(f"?::{_PG_TYPES[c]}[]" for c in COLUMNS)
        self._pg_upsert = (
            f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) {self._on_conflict}"
        )
        self._sqlite_upsert = (
            f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(COLUMNS))})"
            f" {self._on_conflict}"
        )
        events = db.events_table
        position = db.notification_id_column
        # The tracking row is taken first, whether the position moves or not:
        # a rebuild's switch holds it while it replaces the table, and an
        # append that wrote rows first would wait for it holding the table: a
        # deadlock. (The async projection takes it first too.)
        if db.dialect == "postgresql":
            appended = f"currval(pg_get_serial_sequence('{events}', '{position}'))"
            self._track = (
                f"UPDATE projection_tracking SET position = CASE WHEN position >="
                f" coalesce((SELECT max(e.notification_id) FROM {events} e"
                f" WHERE e.notification_id <= {appended} - ?), 0)"
                f" THEN {appended} ELSE position END WHERE name = ?"
            )
        else:
            self._track = (
                "UPDATE projection_tracking SET position = CASE WHEN position >="
                f" coalesce((SELECT max({position}) FROM {events} WHERE {position} < ?), 0)"
                " THEN ? ELSE position END WHERE name = ?"
            )

    def after_insert(self, cursor: Cursor, appended: Appended) -> None:
        ids = {e.originator_id for e in appended.events}
        transfers = [a for a in appended.aggregates if a.id in ids]
        if {t.id for t in transfers} != ids:
            return  # bare events: the asynchronous projection's
        rows = [row_of(t) for t in transfers]
        for row in rows:
            check_storable(row)
        if self.db.dialect == "postgresql":
            cursor.execute(self._track, (len(appended.events), self.tracking_name))
            columns = list(zip(*(_COLUMN_VALUES(row) for row in rows), strict=True))
            # Ids as text: psycopg adapts a list of UUIDs one by one in Python.
            columns[0] = tuple(str(i) for i in columns[0])
            cursor.execute(self._pg_upsert, [list(c) for c in columns])
            return
        assert appended.positions is not None  # SQLite knows them
        cursor.execute(
            self._track,
            (appended.positions[0], appended.positions[-1], self.tracking_name),
        )
        cursor.executemany(self._sqlite_upsert, [row.as_params(self.db) for row in rows])


@dataclass(frozen=True)
class Quarantined:
    """A transfer the projection set aside (migration 0013)."""

    transfer_id: UUID
    projection: str
    position: int
    version: int
    problem: str
    quarantined_at: datetime


def quarantined(db: Database, tracking_name: str = TRACKING_NAME) -> list[Quarantined]:
    with db.transaction(write=False) as cursor:
        cursor.execute(
            "SELECT transfer_id, name, position, version, problem, quarantined_at"
            " FROM projection_quarantine WHERE name = ? ORDER BY position",
            (tracking_name,),
        )
        rows = cursor.fetchall()
    return [
        Quarantined(
            transfer_id=_uuid(r["transfer_id"]),
            projection=str(r["name"]),
            position=int(r["position"]),
            version=int(r["version"]),
            problem=str(r["problem"]),
            quarantined_at=db.from_db_time(r["quarantined_at"]) or datetime.min,
        )
        for r in rows
    ]


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
