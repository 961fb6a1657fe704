"""The inline projection: every append writes the rows it changes, and moves
the read table's tracking position, in its own transaction."""

from __future__ import annotations

from typing import Final

from ledger.projections.rows import (
    _COLUMN_VALUES,
    TABLE,
    TRACKING_NAME,
    check_storable,
    on_conflict,
    row_of,
)
from ledger.storage import Appended, Cursor, Database
from ledger.views import COLUMNS

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
        self._on_conflict = on_conflict(table)
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
