"""The one database the ledger keeps everything in, on SQLite or PostgreSQL:
cursors with one face (`cursors`), what failures mean (`failures`), the
database as the ledger's SQL sees it (`database`), and the event store's
recorders, whose appends are transactions of their own (`recorders`)."""

from __future__ import annotations

from ledger.storage.cursors import SQLITE_MAX_PARAMS, Cursor, Row, Statement
from ledger.storage.database import Database, Dialect
from ledger.storage.failures import (
    DATA_ERRORS,
    DATABASE_FAILURES,
    LentConnection,
    as_ledger_error,
    check_postgres_reachable,
    connection_lost,
    describe_database_error,
    is_version_conflict,
    use_sqlite_wal,
)
from ledger.storage.recorders import (
    Appended,
    AppendHook,
    FunctionAppendPostgresRecorder,
    LedgerPostgresFactory,
    PreparedAppend,
    PreparingRecorder,
    StatementsSQLiteRecorder,
)

__all__ = [
    "DATABASE_FAILURES",
    "DATA_ERRORS",
    "SQLITE_MAX_PARAMS",
    "AppendHook",
    "Appended",
    "Cursor",
    "Database",
    "Dialect",
    "FunctionAppendPostgresRecorder",
    "LedgerPostgresFactory",
    "LentConnection",
    "PreparedAppend",
    "PreparingRecorder",
    "Row",
    "Statement",
    "StatementsSQLiteRecorder",
    "as_ledger_error",
    "check_postgres_reachable",
    "connection_lost",
    "describe_database_error",
    "is_version_conflict",
    "use_sqlite_wal",
]
