"""What a database's failures mean to the ledger: a lost connection (try
again on a live one), a conflict on the events' primary key (another writer),
a value it refuses (deterministic), a full disk; and reaching a database at
all (PostgreSQL's server, SQLite's file in WAL mode)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Mapping
from contextlib import closing
from typing import Any, Final

import psycopg
from eventsourcing import persistence
from eventsourcing.persistence import InterfaceError, OperationalError, PersistenceError
from eventsourcing.postgres import PostgresDatastore
from psycopg import Connection
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow

from ledger.errors import DatabaseError, DatabaseUnavailable, LedgerError, first_line

# How long exclusive waits and SQLite's switch to WAL poll.
POLL_SECONDS: Final = 0.1

# What a database says of a value or a row it refuses (not of itself): a
# constraint, a value it cannot store. Deterministic: trying again changes nothing.
DATA_ERRORS: Final = (
    psycopg.DataError,
    psycopg.IntegrityError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
)


class LentConnection:
    """A connection from the datastore's pool for one statement or one
    transaction, as the library's `PostgresDatastore.get_connection` lends
    it, with the same error classes raised (`as_library_error`), at half its
    cost: 2.7 against 5 microseconds a lend on this machine, and a command
    lends twice. What that method does besides, none of which the ledger
    needs: it opens the pool (LedgerPostgresFactory opens it once) and
    registers composite types (the ledger registers none). Like it, a
    transaction left open is committed on the way out, rolled back after an
    error (the pool does that); the ledger's connections are in autocommit
    and its transactions are `conn.transaction()` blocks that end
    themselves, so neither happens in practice.

    A connection that turns out lost (the server restarted, a failover) has
    the pool check every idle connection before the error goes up: after a
    restart all of them are dead, and each caller would otherwise meet one
    in turn. The pool does not check a connection each time it lends it:
    that would cost a round trip on every command."""

    __slots__ = ("_conn", "_datastore")

    def __init__(self, datastore: PostgresDatastore) -> None:
        self._datastore = datastore

    def __enter__(self) -> Connection[DictRow]:
        try:
            self._conn: Connection[DictRow] = self._datastore.pool.getconn()
        except psycopg.Error as error:
            raise as_library_error(error, self._datastore) from error
        return self._conn

    def __exit__(self, kind: object, error: BaseException | None, _: object) -> None:
        conn = self._conn
        try:
            if error is None and conn.pgconn.transaction_status == TransactionStatus.INTRANS:
                # What the library's lend does with a transaction left open:
                # commit it. Never so in the ledger (autocommit connections).
                conn.commit()
        except psycopg.Error as failed:
            error = failed
        finally:
            self._datastore.pool.putconn(conn)
        if isinstance(error, psycopg.Error):
            raise as_library_error(error, self._datastore) from error
        if isinstance(error, InterfaceError | OperationalError):
            # The library's class already (a library call nested in the
            # block lent its own connection): lost all the same.
            _check_pool(self._datastore)


def as_library_error(error: psycopg.Error, datastore: PostgresDatastore) -> PersistenceError:
    """psycopg's error as the eventsourcing library's class for it, exactly
    as `PostgresDatastore.get_connection` maps them (its callers, the
    library's retry among them, catch those classes), raise it `from` the
    original (is_version_conflict reads the cause). On a lost connection the
    pool first checks its idle connections (LentConnection says why)."""
    if isinstance(error, psycopg.InterfaceError | psycopg.OperationalError):
        _check_pool(datastore)
    for driver_class, library_class in _LIBRARY_ERRORS:
        if isinstance(error, driver_class):
            return library_class(str(error))
    return PersistenceError(str(error))


def _check_pool(datastore: PostgresDatastore) -> None:
    with contextlib.suppress(Exception):
        datastore.pool.check()


# In the order PostgresDatastore.get_connection tries them.
_LIBRARY_ERRORS: Final[tuple[tuple[type[psycopg.Error], type[PersistenceError]], ...]] = (
    (psycopg.InterfaceError, InterfaceError),
    (psycopg.OperationalError, OperationalError),
    (psycopg.DataError, persistence.DataError),
    (psycopg.IntegrityError, persistence.IntegrityError),
    (psycopg.InternalError, persistence.InternalError),
    (psycopg.ProgrammingError, persistence.ProgrammingError),
    (psycopg.NotSupportedError, persistence.NotSupportedError),
    (psycopg.DatabaseError, persistence.DatabaseError),
)


def is_version_conflict(error: BaseException) -> bool:
    """Is this IntegrityError from an append a conflict on the events' primary
    key (another writer saved the same aggregate version first), rather than
    a constraint of one of the ledger's own statements in the append?"""
    cause = error.__cause__
    if isinstance(cause, psycopg.errors.UniqueViolation):
        return (cause.diag.table_name or "").endswith("_events") and (
            cause.diag.constraint_name or ""
        ).endswith("_pkey")
    # sqlite3: "UNIQUE constraint failed: stored_events.originator_id, ..."
    return "originator_version" in str(cause or error)


# Every failure a database (or the library over it) can raise.
DATABASE_FAILURES: Final = (PersistenceError, psycopg.Error, sqlite3.Error)


def as_ledger_error(error: BaseException) -> LedgerError:
    """A database's failure as the ledger's own error, one line: a lost or
    refused connection is DatabaseUnavailable, anything else DatabaseError."""
    message = describe_database_error(error)
    if connection_lost(error):
        return DatabaseUnavailable(message)
    return DatabaseError(message)


def connection_lost(error: BaseException) -> bool:
    """Did this failure happen because the connection was lost or could not
    be made (a server restart, a network blip), not because of a statement?"""
    cause = error.__cause__ or error
    return isinstance(error, InterfaceError | OperationalError | DatabaseUnavailable) or isinstance(
        cause, psycopg.OperationalError | psycopg.InterfaceError
    )


def describe_database_error(error: BaseException) -> str:
    """One line for a database's error, as the driver put it (never the
    password), with a full disk said plainly."""
    text = first_line(str(error))
    cause = error.__cause__ or error
    if isinstance(cause, psycopg.errors.DiskFull) or "disk is full" in text:
        return f"the database's disk is full: {text}"
    return f"database error: {text}"


def use_sqlite_wal(path: str, timeout_seconds: float = 30.0) -> None:
    """Put the SQLite file in WAL mode (readers never block the writer), once.

    The eventsourcing pool switches each new file itself, but switching needs
    the file to itself and SQLite answers "database is locked" at once instead
    of waiting: several processes migrating a new file at once would fail. Here
    the switch is retried until a deadline; once done, it lasts with the file.
    """
    deadline = time.monotonic() + timeout_seconds
    with closing(sqlite3.connect(path, timeout=timeout_seconds)) as conn:
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError:
                mode = None
            if mode == "wal":
                return
            if time.monotonic() > deadline:
                raise DatabaseUnavailable(f"cannot put {path} in WAL mode: it stays locked")
            time.sleep(POLL_SECONDS)


def check_postgres_reachable(params: Mapping[str, Any], timeout_seconds: int = 5) -> None:
    """Connect once, directly, so that an unreachable server or a wrong password
    is reported as the server said it, at once. (The pool would retry for its
    whole timeout and then say only that it got no connection.)"""
    try:
        psycopg.connect(**params, connect_timeout=timeout_seconds).close()
    except psycopg.OperationalError as error:
        # libpq's message names host, port and user, never the password.
        reason = " ".join(str(error).split())
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {reason}") from None
