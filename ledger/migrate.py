"""Applies the numbered SQL files in `migrations/`, each once, in order.

What was applied is recorded in `ledger_migrations`, so running again is safe.
Concurrent runs (several daemons starting at once) take turns: on PostgreSQL
through an advisory lock, on SQLite through its single write lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

from ledger.errors import NotMigrated
from ledger.storage import Cursor, Database

NO_TRANSACTION_MARKER: Final = "-- ledger:no-transaction"
# An arbitrary constant: the key of the advisory lock migrations take.
MIGRATION_LOCK_KEY: Final = 7_342_019_001
_FILE_RE: Final = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def in_transaction(self) -> bool:
        return not self.sql.startswith(NO_TRANSACTION_MARKER)

    def statements(self) -> list[str]:
        """Split on `;` at the end of a line, except inside a $$-quoted body
        (a function's); comment lines outside such bodies are dropped."""
        statements: list[str] = []
        current: list[str] = []
        quoted = False
        for line in self.sql.splitlines():
            if not quoted and line.strip().startswith("--"):
                continue
            current.append(line)
            quoted ^= line.count("$$") % 2 == 1
            if not quoted and line.rstrip().endswith(";"):
                statements.append("\n".join(current).strip().rstrip(";"))
                current = []
        if "\n".join(current).strip():
            statements.append("\n".join(current).strip())
        return statements


def available_migrations(dialect: str) -> list[Migration]:
    folder = resources.files("ledger.migrations").joinpath(dialect)
    found = []
    for entry in folder.iterdir():
        match = _FILE_RE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers in migrations/{dialect}")
    return found


def _ensure_bookkeeping(cursor: Cursor) -> None:
    cursor.execute(
        "CREATE TABLE IF NOT EXISTS ledger_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )


def _applied(cursor: Cursor) -> set[int]:
    cursor.execute("SELECT version FROM ledger_migrations")
    return {int(row["version"]) for row in cursor.fetchall()}


def _record(cursor: Cursor, migration: Migration) -> None:
    cursor.execute(
        "INSERT INTO ledger_migrations (version, name, applied_at)"
        " VALUES (?, ?, CAST(CURRENT_TIMESTAMP AS TEXT))",
        (migration.version, migration.name),
    )


def apply_migrations(db: Database) -> list[Migration]:
    """Apply what is pending; returns the migrations applied by this call."""
    applied_now: list[Migration] = []
    with db.exclusive_session(MIGRATION_LOCK_KEY):
        db.create_event_store_tables()
        with db.transaction(write=True) as cursor:
            _ensure_bookkeeping(cursor)
        for migration in available_migrations(db.dialect):
            if migration.in_transaction:
                with db.transaction(write=True) as cursor:
                    # Checked inside the transaction: on SQLite, two runners
                    # serialise on the write lock and the second sees the record.
                    if migration.version in _applied(cursor):
                        continue
                    for statement in migration.statements():
                        cursor.execute(statement)
                    _record(cursor, migration)
            else:
                # CREATE INDEX CONCURRENTLY cannot run inside a transaction; the
                # session lock above keeps other runners out meanwhile. If this
                # process dies before recording, the file runs again next time,
                # and its drop-then-create repairs a half-built index.
                with db.transaction(write=False) as cursor:
                    if migration.version in _applied(cursor):
                        continue
                with db.autocommit() as cursor:
                    for statement in migration.statements():
                        cursor.execute(statement)
                with db.transaction(write=True) as cursor:
                    _record(cursor, migration)
            applied_now.append(migration)
    return applied_now


def pending_migrations(db: Database) -> list[Migration]:
    with db.transaction(write=False) as cursor:
        applied = _applied(cursor) if db.table_exists(cursor, "ledger_migrations") else set()
    return [m for m in available_migrations(db.dialect) if m.version not in applied]


def require_migrated(db: Database) -> None:
    pending = pending_migrations(db)
    if pending:
        raise NotMigrated(
            f"database is not migrated ({len(pending)} pending, first"
            f" {pending[0].version:04d}_{pending[0].name}): run `ledger migrate`"
        )
