"""The inline projection: every append writes the rows it changes, and moves
the read table's tracking position, in its own transaction."""

from __future__ import annotations

from typing import Any

from ledger.domain import Transfer
from ledger.projections.rows import (
    TABLE,
    TRACKING_NAME,
    check_storable,
    json_row_of,
    on_conflict,
    row_of,
)
from ledger.storage import Appended, Cursor, Database
from ledger.views import COLUMNS


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

    def __init__(self, db: Database, *, tracking_name: str = TRACKING_NAME):
        self.db = db
        self.tracking_name = tracking_name
        self._sqlite_upsert = (
            f"INSERT INTO {TABLE} ({', '.join(COLUMNS)})"
            f" VALUES ({', '.join('?' * len(COLUMNS))}) {on_conflict(TABLE)}"
        )
        # The tracking row is taken first, whether the position moves or not:
        # a rebuild's switch holds it while it replaces the table, and an
        # append that wrote rows first would wait for it holding the table: a
        # deadlock. (The async projection takes it first too; so does
        # PostgreSQL's ledger_append, migration 0017.)
        position = db.notification_id_column
        self._track = (
            "UPDATE projection_tracking SET position = CASE WHEN position >="
            f" coalesce((SELECT max({position}) FROM {db.events_table} WHERE {position} < ?), 0)"
            " THEN ? ELSE position END WHERE name = ?"
        )

    def _transfers(self, appended: Appended) -> list[Transfer] | None:
        ids = {e.originator_id for e in appended.events}
        transfers = [a for a in appended.aggregates if a.id in ids]
        if {t.id for t in transfers} != ids:
            return None  # bare events: the asynchronous projection's
        return transfers

    def after_insert(self, cursor: Cursor, appended: Appended) -> None:
        transfers = self._transfers(appended)
        if transfers is None:
            return
        rows = [row_of(t) for t in transfers]
        for row in rows:
            check_storable(row)
        assert appended.positions is not None  # SQLite knows them
        cursor.execute(
            self._track,
            (appended.positions[0], appended.positions[-1], self.tracking_name),
        )
        cursor.executemany(self._sqlite_upsert, [row.as_params(self.db) for row in rows])

    def arguments(self, appended: Appended) -> dict[str, Any]:
        """PostgreSQL: the rows, as JSON arrays of their values in COLUMNS
        order, for ledger_append (migration 0017), which moves the position
        and upserts them in SQL."""
        transfers = self._transfers(appended)
        if transfers is None:
            return {}
        return {
            "rows": [json_row_of(t) for t in transfers],
            "tracking": self.tracking_name,
        }
