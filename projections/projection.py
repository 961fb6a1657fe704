"""The catch-up projection: the safety net under the inline one.

Every append writes its own rows (projections/inline.py). This projects what
was appended otherwise (an older version of the ledger, another writer) and
is a rebuild's engine. Exactly-once: each batch reads the events after this
projection's tracking position, upserts the rows they change, and moves the
position, all in ONE transaction. The tracking row is locked first, so
concurrent projectors take turns instead of double-applying. Each row carries
the aggregate version it reflects, and an upsert only replaces an older
version: replays and overlaps cannot move a row backwards.

A transfer whose events cannot be applied (a history that cannot be
replayed, a value the database cannot store) is set aside (migration 0013),
not allowed to stop the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

from eventsourcing.domain import CanMutateAggregate
from eventsourcing.persistence import StoredEvent

from ledger import values
from ledger.domain import Transfer
from ledger.errors import first_line
from ledger.projections.rows import (
    TABLE,
    TRACKING_NAME,
    ProjectionError,
    TransferRow,
    check_storable,
    on_conflict,
)
from ledger.storage import DATA_ERRORS, Cursor, Database
from ledger.views import COLUMNS

log = logging.getLogger("ledger.projection")

DEFAULT_BATCH_SIZE: Final = 5000


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
        self._on_conflict = on_conflict(table)

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
        return {values.as_uuid(row["transfer_id"]) for row in cursor.fetchall()}

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
            transfer_id=values.as_uuid(r["transfer_id"]),
            projection=str(r["name"]),
            position=int(r["position"]),
            version=int(r["version"]),
            problem=str(r["problem"]),
            quarantined_at=db.from_db_time(r["quarantined_at"]) or datetime.min,
        )
        for r in rows
    ]
