"""`ledger rebuild`: recompute seller_transfers from the events and switch over.

1. Project every event into a new table, `seller_transfers_rebuild` (made
   with migration 0001's own statement), under a tracking name of its own, in
   batches: memory stays flat, and readers and the daemon go on using the live
   table meanwhile.
2. Build the workers' partial indexes on it after the bulk load (PostgreSQL;
   SQLite builds them in the switch, where it can name them).
3. Catch up with the events that arrived meanwhile.
4. Switch in ONE transaction that holds the live projection's tracking row:
   a last catch-up, the `--verify` comparison, then the old table dropped and
   the new one renamed into its place with its indexes, and the live tracking
   position set to the rebuild's. Readers wait for that transaction at most;
   none sees a missing or half-built table.

An interrupted rebuild has only touched its own table: the live one is intact
and a rerun starts over.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TextIO

from ledger.errors import LedgerError
from ledger.migrate import available_migrations
from ledger.processing.failpoints import failpoint
from ledger.progress import Progress
from ledger.storage import Cursor, Database
from projections.seller_transfers import COLUMNS, TABLE, TRACKING_NAME, SellerTransfersProjection

NEW_TABLE: Final = f"{TABLE}_rebuild"
REBUILD_LOCK_KEY: Final = 7_342_019_002
BATCH: Final = 5000
MAX_DIFFERENCES_SHOWN: Final = 20


class RebuildDiffers(LedgerError):
    """`--verify`: the rebuilt table differs from the live one; nothing switched."""


@dataclass(frozen=True)
class RebuildResult:
    rows: int
    events: int
    seconds: float


def _table_statements(db: Database) -> tuple[str, list[str]]:
    """(CREATE TABLE, CREATE INDEX...) for seller_transfers, from the migrations."""
    create_table = ""
    indexes = []
    for migration in available_migrations(db.dialect):
        for statement in migration.statements():
            flat = " ".join(statement.split())
            if flat.startswith(f"CREATE TABLE IF NOT EXISTS {TABLE} ("):
                create_table = flat
            elif flat.startswith("CREATE INDEX") and f" ON {TABLE} " in flat + " ":
                indexes.append(flat)
    if not create_table:
        raise LedgerError("no CREATE TABLE for seller_transfers in the migrations")
    return create_table, indexes


def _index_name(statement: str) -> str:
    found = re.search(r"INDEX (?:CONCURRENTLY )?(?:IF NOT EXISTS )?(idx_\w+)", statement)
    if found is None:
        raise LedgerError(f"cannot find the index name in: {statement}")
    return found[1]


def _on_new_table(statement: str, *, rename_index: bool) -> str:
    statement = statement.replace(" CONCURRENTLY", "").replace(" IF NOT EXISTS", "")
    statement = re.sub(rf"\b{TABLE} \(", f"{NEW_TABLE} (", statement, count=1)
    statement = statement.replace(f" ON {TABLE} ", f" ON {NEW_TABLE} ")
    if rename_index:
        statement = re.sub(r"INDEX (idx_\w+)", r"INDEX \1_rebuild", statement, count=1)
    return statement


def rebuild(
    db: Database,
    decode: Callable[[Any], Any],
    *,
    verify: bool = False,
    progress: TextIO = sys.stderr,
) -> RebuildResult:
    started = time.monotonic()
    create_table, indexes = _table_statements(db)
    with db.exclusive_session(REBUILD_LOCK_KEY):
        with db.transaction(write=True) as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {NEW_TABLE}")  # an interrupted run's
            cursor.execute(_on_new_table(create_table, rename_index=False))
            cursor.execute("DELETE FROM projection_tracking WHERE name = ?", (NEW_TABLE,))
        new = SellerTransfersProjection(db, decode, table=NEW_TABLE, tracking_name=NEW_TABLE)
        live = SellerTransfersProjection(db, decode)
        total = _log_length(db)
        report = Progress(progress, total, label="rebuild", unit="events")
        events = 0
        while processed := new.process_batch(BATCH):
            events += processed
            report.show(events)
        report.finish(
            f"{events:,} events projected in {report.elapsed():.1f} s;"
            " building indexes and switching over"
        )
        if db.dialect == "postgresql":
            for statement in indexes:
                with db.transaction(write=True) as cursor:
                    cursor.execute(_on_new_table(statement, rename_index=True))
        events += new.catch_up()
        failpoint("rebuild_before_switch")
        with db.transaction(write=True) as cursor:
            # The live projection's lock: no one projects into the old table now.
            while live.process_batch_in(cursor, BATCH):
                pass
            while processed := new.process_batch_in(cursor, BATCH):
                events += processed
            if verify:
                differences = _differences(cursor)
                if differences:
                    raise RebuildDiffers(
                        "the rebuilt table differs from the live one, not switched: "
                        + "; ".join(differences)
                    )
            rows = _switch(db, cursor, indexes)
    return RebuildResult(rows=rows, events=events, seconds=time.monotonic() - started)


def _switch(db: Database, cursor: Cursor, indexes: list[str]) -> int:
    cursor.execute(f"DROP TABLE {TABLE}")
    cursor.execute(f"ALTER TABLE {NEW_TABLE} RENAME TO {TABLE}")
    if db.dialect == "postgresql":
        for statement in indexes:
            name = _index_name(statement)
            cursor.execute(f"ALTER INDEX {name}_rebuild RENAME TO {name}")
        cursor.execute("SELECT conname FROM pg_constraint WHERE conrelid = ?::regclass", (TABLE,))
        for row in cursor.fetchall():
            old_name = str(row["conname"])
            if old_name.startswith(f"{NEW_TABLE}_"):
                canonical = TABLE + old_name[len(NEW_TABLE) :]
                cursor.execute(f"ALTER TABLE {TABLE} RENAME CONSTRAINT {old_name} TO {canonical}")
    else:
        for statement in indexes:
            cursor.execute(statement)
    cursor.execute(
        "UPDATE projection_tracking SET position ="
        " (SELECT position FROM projection_tracking WHERE name = ?) WHERE name = ?",
        (NEW_TABLE, TRACKING_NAME),
    )
    cursor.execute("DELETE FROM projection_tracking WHERE name = ?", (NEW_TABLE,))
    cursor.execute(f"SELECT COUNT(*) AS n FROM {TABLE}")
    count = cursor.fetchone()
    return 0 if count is None else int(count["n"])


def _differences(cursor: Cursor) -> list[str]:
    """Rows that differ between the live and the rebuilt table, named by id
    and column (both tables are at the same position here)."""
    columns = ", ".join(COLUMNS)
    cursor.execute(
        f"SELECT id FROM (SELECT {columns} FROM {TABLE} EXCEPT SELECT {columns} FROM {NEW_TABLE})"
        f" AS changed UNION SELECT id FROM (SELECT {columns} FROM {NEW_TABLE}"
        f" EXCEPT SELECT {columns} FROM {TABLE}) AS added"
    )
    ids = [row["id"] for row in cursor.fetchall()]
    found = []
    for row_id in ids[:MAX_DIFFERENCES_SHOWN]:
        cursor.execute(f"SELECT {columns} FROM {TABLE} WHERE id = ?", (row_id,))
        live = cursor.fetchone()
        cursor.execute(f"SELECT {columns} FROM {NEW_TABLE} WHERE id = ?", (row_id,))
        rebuilt = cursor.fetchone()
        if live is None or rebuilt is None:
            where = "live" if rebuilt is None else "rebuilt"
            found.append(f"transfer {row_id} is only in the {where} table")
            continue
        changed = [c for c in COLUMNS if live[c] != rebuilt[c]]
        found.append(
            f"transfer {row_id}: "
            + ", ".join(f"{c} {live[c]!r} live, {rebuilt[c]!r} from the events" for c in changed)
        )
    if len(ids) > MAX_DIFFERENCES_SHOWN:
        found.append(f"and {len(ids) - MAX_DIFFERENCES_SHOWN} more")
    return found


def _log_length(db: Database) -> int:
    with db.transaction(write=False) as cursor:
        cursor.execute(f"SELECT COUNT(*) AS n FROM {db.events_table}")
        row = cursor.fetchone()
    return 0 if row is None else int(row["n"])
