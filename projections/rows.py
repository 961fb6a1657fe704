"""The read table's rows: what a transfer's events make of one row, and the
bulk forms of that (a rebuild folds whole histories; `audit verify` compares
them), all with the events' own `apply`, the method that evolves the
aggregate, so the read table and the aggregate cannot disagree about what an
event means."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from operator import attrgetter, itemgetter
from typing import Any, Final
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import resolve_topic

from ledger import values
from ledger.domain import STATE_FIELDS, Transfer
from ledger.storage import Database
from ledger.views import COLUMNS, TIME_COLUMNS

TABLE: Final = "seller_transfers"
TRACKING_NAME: Final = "seller_transfers"

_COLUMN_VALUES: Final = attrgetter(*COLUMNS)


class ProjectionError(Exception):
    """The event log and the read table disagree in a way replay cannot explain."""


def on_conflict(table: str) -> str:
    """The upsert's conflict clause for `table`, with the version guard."""
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


def check_storable(row: TransferRow) -> None:
    """Raise ProjectionError for a row the database cannot store: text with a
    NUL (PostgreSQL's text cannot hold it) or a lone surrogate (not UTF-8).
    Text is refused at the boundary now; an event written before that, or by
    another writer, may still carry such a value."""
    for name, value in row.__dict__.items():
        if isinstance(value, str) and ("\x00" in value or not _encodes(value)):
            raise _unstorable(row.id, name, value)


def _unstorable(transfer_id: UUID, name: str, value: str) -> ProjectionError:
    return ProjectionError(
        f"transfer {transfer_id}: {name} {values.printable(value)[:60]!r} cannot be stored"
    )


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# A transfer's row values in COLUMNS order, read straight from the aggregate
# (its created_on and modified_on are the row's created_at and updated_at).
_AGGREGATE_VALUES: Final = attrgetter("id", *STATE_FIELDS, "version", "created_on", "modified_on")


def row_of(transfer: Transfer) -> TransferRow:
    """The row of a transfer as it stands: what the projection's own
    replay of its events gives, straight from the aggregate."""
    return TransferRow(**dict(zip(COLUMNS, _AGGREGATE_VALUES(transfer), strict=True)))


def json_row_of(transfer: Transfer) -> list[Any]:
    """`row_of(transfer)`'s values in COLUMNS order as JSON takes them (the
    id as 32 hex digits, times in ISO 8601), refused as `check_storable`
    refuses a row: in one pass, for PostgreSQL's ledger_append, since an
    import makes 100,000s of them."""
    row = list(_AGGREGATE_VALUES(transfer))
    for name, value in zip(COLUMNS, row, strict=True):
        # check_storable's test, inline: it runs for every value of every row.
        if isinstance(value, str) and ("\x00" in value or not _encodes(value)):
            raise _unstorable(transfer.id, name, value)
    row[0] = row[0].hex
    for index in TIME_INDEXES:
        if row[index] is not None:
            row[index] = row[index].isoformat()
    return row


# ----- whole histories in bulk (rebuild, audit verify) ------------------------

# The JSON transcoder stores a datetime as
# {"_type_":"datetime_iso","_data_":"2026-11-26T12:00:00.000001+00:00"}; this
# finds any other encoded value (one regex scan: cheaper than counting both).
_ENCODED_OTHER_THAN_DATETIME: Final = re.compile(rb'"_type_"\s*:\s*"(?!datetime_iso")')
# Where the read table's datetime columns are in COLUMNS.
TIME_INDEXES: Final = tuple(COLUMNS.index(name) for name in TIME_COLUMNS)
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
    for index in TIME_INDEXES:
        value = values[index]
        if type(value) is dict:
            values[index] = value["_data_"]
    return values


def compared_values(row: TransferRow) -> tuple[Any, ...]:
    """The row's values in COLUMNS order as plain Python values to compare
    with a stored row: the id as canonical text, datetimes as datetimes."""
    values = list(_ROW_VALUES(row.__dict__))
    values[0] = str(values[0])
    for index in TIME_INDEXES:
        value = values[index]
        if type(value) is dict:
            values[index] = datetime.fromisoformat(value["_data_"])
    return tuple(values)
