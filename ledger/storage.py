"""One small interface over the two databases the ledger runs on.

The event store is the eventsourcing library's recorder; this module lends its
connection pool to the ledger's own SQL (read table, tracking positions,
migrations) so that everything lives in one database and a projection can
write its rows and its tracking position in one transaction.

SQL in the ledger is written once with `?` placeholders and rewritten to
`%s` for psycopg; the few real dialect differences (time values, the events
table's shape, how a writer takes its lock) are methods here.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol, cast
from uuid import UUID

import psycopg
from eventsourcing.persistence import (
    InterfaceError,
    OperationalError,
    PersistenceError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore, PostgresFactory
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteDatastore
from eventsourcing.utils import Environment, retry
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from ledger.errors import DatabaseError, DatabaseUnavailable, LedgerError, first_line

Row = dict[str, Any]
# A statement (with `?` placeholders) and its parameters.
Statement = tuple[str, Sequence[Any]]
# From this many rows on, PostgreSQL upserts go through COPY (see Database.upsert).
COPY_THRESHOLD = 64
# How long exclusive_session waits for another holder, and how often it asks.
EXCLUSIVE_WAIT_SECONDS = 600.0
EXCLUSIVE_POLL_SECONDS = 0.1
# Stay under old SQLite builds' limit of 999 bound parameters per statement.
SQLITE_MAX_PARAMS = 900
# Rows per chunk when streaming a whole table (Database.stream_rows).
STREAM_CHUNK_ROWS = 1000
# libpq 17 brought chunked results (many rows per fetch, one statement); older
# libpq streams row by row, which is slower but as flat in memory.
_LIBPQ_CHUNKED_ROWS = 170000
Dialect = Literal["sqlite", "postgresql"]


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def fetchone(self) -> Row | None: ...
    def fetchall(self) -> list[Row]: ...


class _SQLiteCursor:
    """A Cursor over sqlite3: `?` placeholders, rows as dicts."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def _sql(self, sql: str) -> str:
        return sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(self._sql(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cursor.executemany(self._sql(sql), rows)

    def fetchone(self) -> Row | None:
        row = self._cursor.fetchone()
        return None if row is None else dict(row)

    def fetchall(self) -> list[Row]:
        return [dict(row) for row in self._cursor.fetchall()]


class _PostgresCursor(_SQLiteCursor):
    """The same over psycopg, whose placeholders are `%s`."""

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        # None, not (): psycopg then leaves a literal % in the SQL alone.
        self._cursor.execute(self._sql(sql), params or None)

    def copy_rows(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)


# What a database says of a value or a row it refuses (not of itself): a
# constraint, a value it cannot store. Deterministic: trying again changes nothing.
DATA_ERRORS: Final = (
    psycopg.DataError,
    psycopg.IntegrityError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
)


@contextmanager
def pool_checked_on_connection_loss(datastore: PostgresDatastore) -> Iterator[None]:
    """On a lost connection, have the pool check (and replace) every idle
    connection before the error goes up: after a restart all of them are
    dead, and each caller would otherwise meet one in turn."""
    try:
        yield
    except (InterfaceError, OperationalError, psycopg.OperationalError, psycopg.InterfaceError):
        with contextlib.suppress(Exception):
            datastore.pool.check()
        raise


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
            time.sleep(EXCLUSIVE_POLL_SECONDS)


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


class Database:
    """The ledger's view of its one database: transactions, time values, events table."""

    def __init__(self, recorder: object) -> None:
        self._recorder = recorder
        if isinstance(recorder, SQLiteApplicationRecorder):
            self.dialect: Dialect = "sqlite"
            self._sqlite: SQLiteDatastore = recorder.datastore
            # The SQLite recorder stores the notification id in the rowid.
            self.events_table = recorder.events_table_name
            self.notification_id_column = "rowid"
        elif isinstance(recorder, PostgresApplicationRecorder):
            self.dialect = "postgresql"
            self._postgres: PostgresDatastore = recorder.datastore
            self.events_table = recorder.events_table_name
            self.notification_id_column = "notification_id"
        else:  # pragma: no cover - only the two recorders are configured
            raise TypeError(f"unsupported recorder {type(recorder).__name__}")

    # ----- transactions -----------------------------------------------------

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Cursor]:
        """A transaction that commits on success and rolls back on any error.

        On SQLite a writing transaction starts with BEGIN IMMEDIATE: it takes the
        write lock up front, so two processes never both read and then fail to
        upgrade to writing (SQLITE_BUSY in the middle of a projection batch).
        """
        if self.dialect == "sqlite":
            with self._sqlite.get_connection(commit=write) as conn:
                raw = conn.cursor()
                raw.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield _SQLiteCursor(raw.sqlite_cursor)
                except BaseException:
                    conn.rollback()
                    raise
                if write:
                    conn.commit()
                else:
                    conn.rollback()
        else:
            with (
                self._postgres_connection() as pg_conn,
                pg_conn.transaction(force_rollback=not write),
                pg_conn.cursor() as cursor,
            ):
                yield _PostgresCursor(cursor)

    @contextmanager
    def _postgres_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection. One that turns out lost (the server restarted,
        a failover) has the pool check every connection it holds before the
        error goes up, so that whoever tries again (the Python API once, the
        daemon's next turn, Stripe's next delivery) gets a live one at once.
        The pool does not check a connection each time it lends it: that
        would cost a round trip on every command, and psycopg's pool waits
        seconds between failed checks."""
        with (
            pool_checked_on_connection_loss(self._postgres),
            self._postgres.get_connection() as conn,
        ):
            yield conn

    def stream_stored_events(
        self, *, order: Literal["transfer", "log"] = "transfer", batch_size: int = 2000
    ) -> Iterator[tuple[int, StoredEvent]]:
        """Every stored event with its position in the log, by transfer then
        version (the primary key's order) or in log order, fetched `batch_size`
        rows at a time: memory stays flat however long the log is. PostgreSQL
        reads through a server-side cursor."""
        position = self.notification_id_column
        order_by = "originator_id, originator_version" if order == "transfer" else position
        sql = (
            f"SELECT {position} AS notification_id, originator_id, originator_version,"
            f" topic, state FROM {self.events_table} ORDER BY {order_by}"
        )
        if self.dialect == "sqlite":
            with self._sqlite.get_connection(commit=False) as conn:
                raw = conn.cursor().sqlite_cursor
                raw.execute("BEGIN")
                try:
                    raw.execute(sql)
                    while rows := raw.fetchmany(batch_size):
                        for row in rows:
                            yield int(row["notification_id"]), _stored_event(dict(row))
                finally:
                    conn.rollback()
            return
        with (
            self._postgres_connection() as pg_conn,
            pg_conn.transaction(force_rollback=True),
            pg_conn.cursor(name=f"ledger_stream_events_{order}") as cursor,
        ):
            cursor.itersize = batch_size
            cursor.execute(sql)
            for row in cursor:
                yield int(row["notification_id"]), _stored_event(row)

    def execute_alone(
        self, sql: str, params: Sequence[Any] = (), *, returning: bool = False
    ) -> list[Row]:
        """One writing statement as its own transaction; returns its RETURNING rows.

        On PostgreSQL this is one round trip (the statement's implicit
        transaction) instead of BEGIN, statement, COMMIT: it matters for the
        daemon's per-transfer bookkeeping, several times per Stripe call.
        """
        if self.dialect == "sqlite":
            with self.transaction(write=True) as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall() if returning else []
        with self.autocommit() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if returning else []

    @contextmanager
    def autocommit(self) -> Iterator[Cursor]:
        """Statements that must run outside a transaction (CREATE INDEX CONCURRENTLY)."""
        if self.dialect == "sqlite":
            with self._sqlite.get_connection(commit=True) as conn:
                yield _SQLiteCursor(conn.cursor().sqlite_cursor)
        else:
            with self._postgres_connection() as pg_conn, pg_conn.cursor() as cursor:
                yield _PostgresCursor(cursor)

    @contextmanager
    def exclusive_session(self, key: int) -> Iterator[None]:
        """Let one process at a time through (migrations), across processes.

        PostgreSQL: a session advisory lock held on a connection of its own, so
        that it spans statements that must run outside any transaction. SQLite:
        nothing to do; every writing transaction holds its single write lock.
        """
        if self.dialect == "sqlite":
            yield
            return
        with self._postgres_connection() as conn, conn.cursor() as cursor:
            # Try, don't block: a session blocked in pg_advisory_lock() is inside a
            # statement, and CREATE INDEX CONCURRENTLY in the holder's migration
            # waits for every such statement to end: a deadlock nobody detects.
            deadline = time.monotonic() + EXCLUSIVE_WAIT_SECONDS
            while True:
                cursor.execute("SELECT pg_try_advisory_lock(%s) AS locked", (key,))
                row = cursor.fetchone()
                if row is not None and row["locked"]:
                    break
                if time.monotonic() > deadline:
                    raise DatabaseUnavailable(
                        f"another process held lock {key} for {EXCLUSIVE_WAIT_SECONDS:.0f} s;"
                        " is a `ledger migrate` stuck?"
                    )
                time.sleep(EXCLUSIVE_POLL_SECONDS)
            try:
                yield
            finally:
                cursor.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def create_event_store_tables(self) -> None:
        """The event store's own tables, as the library defines them (its recorder
        owns their shape). Callers serialise this: on PostgreSQL two concurrent
        CREATE TABLE IF NOT EXISTS of one table can both try, and one fails."""
        if isinstance(self._recorder, SQLiteApplicationRecorder):
            with self.transaction(write=True) as cursor:
                for statement in self._recorder.create_table_statements:
                    cursor.execute(statement)
        elif isinstance(self._recorder, PostgresApplicationRecorder):
            self._recorder.create_table()

    def table_exists(self, cursor: Cursor, name: str) -> bool:
        if self.dialect == "sqlite":
            cursor.execute(
                "SELECT 1 AS found FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
            )
        else:
            cursor.execute("SELECT 1 AS found WHERE to_regclass(?) IS NOT NULL", (name,))
        return cursor.fetchone() is not None

    def upsert(
        self,
        cursor: Cursor,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        on_conflict: str,
    ) -> None:
        """INSERT rows (unique by their first column) ... ON CONFLICT `on_conflict`.

        Many rows on PostgreSQL go through COPY into a session-local staging
        table and one INSERT ... SELECT: about twice as fast as executemany,
        which matters for bulk imports. Few rows, and SQLite, use executemany.
        """
        names = ", ".join(columns)
        if self.dialect == "postgresql" and len(rows) >= COPY_THRESHOLD:
            assert isinstance(cursor, _PostgresCursor)
            staging = f"{table}_incoming"
            cursor.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table}) ON COMMIT DELETE ROWS"
            )
            cursor.copy_rows(f"COPY {staging} ({names}) FROM STDIN", rows)
            cursor.execute(
                f"INSERT INTO {table} ({names}) SELECT {names} FROM {staging} {on_conflict}"
            )
        else:
            cursor.executemany(
                f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"
                f" {on_conflict}",
                rows,
            )

    # ----- values -----------------------------------------------------------

    def to_db_time(self, value: datetime | None) -> Any:
        if value is None or self.dialect == "postgresql":
            return value
        # Fixed-width UTC ISO text: compares correctly as a string in SQLite.
        return value.astimezone(UTC).isoformat(timespec="microseconds")

    def from_db_time(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            return value.astimezone(UTC)
        return datetime.fromisoformat(str(value)).astimezone(UTC)

    def to_db_id(self, value: UUID) -> Any:
        return value if self.dialect == "postgresql" else str(value)

    # ----- bulk reads and writes (rebuild, audit verify) ----------------------

    def uuid_as_text(self, column: str, alias: str) -> str:
        """SQL for a UUID column as text named `alias`: canonical on PostgreSQL
        (which orders uuids as it would that text); as stored on SQLite. The
        alias must differ from the column's name, or an ORDER BY on the column
        would sort this text instead, without the column's index."""
        text = f"{column}::text" if self.dialect == "postgresql" else column
        return f"{text} AS {alias}"

    def stream_rows(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        chunk: int = STREAM_CHUNK_ROWS,
        index_order: bool = False,
    ) -> Iterator[tuple[Any, ...]]:
        """The rows of one query as plain tuples, in a read-only transaction of
        their own, `chunk` rows at a time: memory stays flat however many rows,
        and no dict is built per row. PostgreSQL sends results in binary (bytea
        as bytes, times as datetimes) through libpq's chunked mode: one
        statement, no server-side cursor round trips. Nothing may be written on
        the connection meanwhile, so a caller that writes uses another one.

        `index_order` (PostgreSQL), for a whole table read in the order of one
        of its indexes by a consumer slower than the scan: plan it without a
        sort. Left to itself the planner sorts the table (in parallel workers,
        spilling to disk), which costs more CPU and sends nothing until done."""
        if self.dialect == "sqlite":
            with self._sqlite.get_connection(commit=False) as conn:
                raw = conn.cursor().sqlite_cursor
                raw.row_factory = None  # plain tuples
                raw.execute("BEGIN")
                try:
                    raw.execute(sql, params)
                    while rows := raw.fetchmany(chunk):
                        yield from rows
                finally:
                    conn.rollback()
            return
        size = chunk if psycopg.pq.version() >= _LIBPQ_CHUNKED_ROWS else 1
        with (
            self._bulk_connection() as pg_conn,
            pg_conn.transaction(force_rollback=True),
            pg_conn.cursor(row_factory=tuple_row, binary=True) as cursor,
        ):
            if index_order:
                cursor.execute("SET LOCAL enable_sort = off")
            yield from cursor.stream(sql.replace("?", "%s"), params or None, size=size)

    def copy_rows_into(
        self,
        table: str,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        then: Callable[[Cursor], None] | None = None,
    ) -> int:
        """PostgreSQL only: COPY `rows` into `table` in one transaction, then run
        `then(cursor)` in that same transaction; returns how many rows. The rows
        may come from a generator: they are sent as they come, a buffer at a
        time. Values go in COPY's text form, so a timestamptz column also
        takes an ISO 8601 string."""
        if self.dialect != "postgresql":
            raise TypeError("copy_rows_into needs PostgreSQL")
        count = 0
        with (
            self._bulk_connection() as pg_conn,
            pg_conn.transaction(),
            pg_conn.cursor() as cursor,
        ):
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                write_row = copy.write_row
                for row in rows:
                    write_row(row)
                    count += 1
            if then is not None:
                then(_PostgresCursor(cursor))
        return count

    def for_forked_child(self) -> Database:
        """This database as a forked child process may use it (PostgreSQL: a
        parallel rebuild's workers). The parent's pool, its sockets and its
        threads do not survive a fork; the copy opens a connection of its own
        for each `stream_rows` and `copy_rows_into`, and must use nothing else."""
        return _ForkedChildDatabase(self)

    @contextmanager
    def _bulk_connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._postgres_connection() as pg_conn:
            yield pg_conn

    # ----- the event log ----------------------------------------------------

    def select_stored_events_after(
        self, cursor: Cursor, position: int, limit: int
    ) -> list[tuple[int, StoredEvent]]:
        """Stored events with notification id > position, in order, read in the
        caller's transaction (so what is read and what is written agree)."""
        cursor.execute(
            f"SELECT {self.notification_id_column} AS notification_id, originator_id,"
            f" originator_version, topic, state FROM {self.events_table}"
            f" WHERE {self.notification_id_column} > ?"
            f" ORDER BY {self.notification_id_column} LIMIT ?",
            (position, limit),
        )
        return [(int(row["notification_id"]), _stored_event(row)) for row in cursor.fetchall()]

    def count_events_between(self, cursor: Cursor, after: int, upto: int) -> int:
        """How many events have notification ids in (after, upto]."""
        cursor.execute(
            f"SELECT COUNT(*) AS n FROM {self.events_table}"
            f" WHERE {self.notification_id_column} > ? AND {self.notification_id_column} <= ?",
            (after, upto),
        )
        row = cursor.fetchone()
        return 0 if row is None else int(row["n"])

    def first_stored_events(self, cursor: Cursor, ids: Sequence[UUID]) -> dict[UUID, StoredEvent]:
        """The first event of each of these aggregates that has one (for
        idempotent imports: present already, and with the same values?)."""
        columns = "originator_id, originator_version, topic, state"
        found: dict[UUID, StoredEvent] = {}
        if self.dialect == "postgresql":
            # One text parameter: psycopg adapts a list of UUIDs element by
            # element in Python, which dominated bulk imports.
            cursor.execute(
                f"SELECT {columns} FROM {self.events_table}"
                " WHERE originator_id = ANY(string_to_array(?, ',')::uuid[])"
                " AND originator_version = 1",
                (",".join(str(i) for i in ids),),
            )
            rows = cursor.fetchall()
        else:
            rows = []
            for start in range(0, len(ids), SQLITE_MAX_PARAMS):
                chunk = ids[start : start + SQLITE_MAX_PARAMS]
                cursor.execute(
                    f"SELECT {columns} FROM {self.events_table}"
                    f" WHERE originator_id IN ({','.join('?' * len(chunk))})"
                    " AND originator_version = 1",
                    [i.hex for i in chunk],
                )
                rows += cursor.fetchall()
        for row in rows:
            event = _stored_event(row)
            found[cast(UUID, event.originator_id)] = event  # _stored_event makes it a UUID
        return found


class _ForkedChildDatabase(Database):
    """See Database.for_forked_child."""

    def __init__(self, parent: Database) -> None:
        super().__init__(parent._recorder)
        # The pool's own connection settings: host, port, user, password, dbname.
        settings = parent._postgres.pool.kwargs
        self._params: dict[str, Any] = dict(settings() if callable(settings) else settings or {})

    @contextmanager
    def _bulk_connection(self) -> Iterator[psycopg.Connection[Any]]:
        # Autocommit, as the pool's connections are: transactions are explicit.
        with psycopg.connect(**self._params, autocommit=True) as pg_conn:
            yield pg_conn


def _stored_event(row: Row) -> StoredEvent:
    originator_id = row["originator_id"]
    return StoredEvent(
        originator_id=originator_id if isinstance(originator_id, UUID) else UUID(originator_id),
        originator_version=int(row["originator_version"]),
        topic=row["topic"],
        state=bytes(row["state"]),
    )


class LedgerPostgresFactory(PostgresFactory):
    """The library's PostgreSQL factory, whose pool also passes every libpq
    parameter of the ledger's URL (sslmode, sslrootcert, application_name,
    ...) to each connection it opens. The library knows only host, port,
    user, password and dbname; its pool opens when the recorder is made, so
    the parameters go in here, before that."""

    LIBPQ_OPTIONS = "LEDGER_LIBPQ_OPTIONS"

    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        options = json.loads(self.env.get(self.LIBPQ_OPTIONS) or "{}")
        kwargs = self.datastore.pool.kwargs
        assert isinstance(kwargs, dict)  # the library gives its pool a dict
        kwargs.update(options)


@dataclass(frozen=True)
class Appended:
    """What one append wrote, for the `AppendHook`s that write with it."""

    events: Sequence[StoredEvent]
    # Their positions in the log, where Python knows them inside the
    # transaction (SQLite). On PostgreSQL the append's own INSERT drew them
    # from the events' sequence, so SQL finds them: the last is its currval,
    # the first len(events) - 1 before it (nobody else draws under the lock).
    positions: Sequence[int] | None
    # The aggregates these events are of, in their state after them (empty
    # for an append of bare events).
    aggregates: Sequence[Any]


class AppendHook(Protocol):
    """Something every append writes in its own transaction, after its events
    and under the events table's lock (so in commit order): the chain's links
    (ledger/audit/chain.py), the read table's rows and position (the inline
    projection). The composition root gives the recorder its hooks; this
    module knows none of them."""

    def after_insert(self, cursor: Cursor, appended: Appended) -> None: ...


class StatementsSQLiteRecorder(SQLiteApplicationRecorder):
    """The library's SQLite application recorder, which also runs, in the
    append's transaction, the ledger's own statements (`save(...,
    also_execute=[(sql, params), ...])`: the process managers release their
    claim this way, in the same commit as the outcome they record) and its
    append hooks. SQLite's single write lock serialises appends."""

    append_hooks: Sequence[AppendHook] = ()

    def _insert_events(
        self,
        c: SQLiteCursor,
        stored_events: Sequence[StoredEvent],
        *,
        also_execute: Sequence[Statement] = (),
        aggregates: Sequence[Any] = (),
        **kwargs: Any,
    ) -> Sequence[int] | None:
        notification_ids = super()._insert_events(c, stored_events, **kwargs)
        if stored_events and self.append_hooks:
            appended = Appended(stored_events, list(notification_ids or ()), aggregates)
            cursor = _SQLiteCursor(c.sqlite_cursor)
            for hook in self.append_hooks:
                hook.after_insert(cursor, appended)
        for sql, params in also_execute:
            c.execute(sql, params)
        return notification_ids


class ArrayInsertPostgresRecorder(PostgresApplicationRecorder):
    """The library's PostgreSQL application recorder, appending with four
    parallel arrays instead of one array of a composite type.

    Everything that makes an append safe is the library's own and unchanged:
    the EXCLUSIVE table lock (insert order = commit order), the NOTIFY, the
    RETURNING of notification ids, the transaction and the pipeline. Only the
    statement differs: psycopg adapts a composite array row by row in Python,
    escaping every `state` as text, which made it the slowest step of a bulk
    import; plain arrays go over in binary.
    """

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self._insert_arrays_statement = SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state)"
            " SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::bytea[])"
            " RETURNING notification_id"
        ).format(schema=Identifier(datastore.schema), table=Identifier(events_table_name))

    append_hooks: Sequence[AppendHook] = ()

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        also_execute: Sequence[Statement] = (),
        aggregates: Sequence[Any] = (),
        **_: Any,
    ) -> Sequence[int] | None:
        """One append, one transaction, every statement pipelined (two round
        trips in all: the sync, and the commit): the ledger's statements
        (`also_execute`, e.g. a claim's release), the library's EXCLUSIVE
        lock and NOTIFY, the events, and the append hooks (chain links, read
        rows). Written out here rather than through the library's method so
        that the first failing statement is the error raised, whichever it
        is (a constraint of the ledger's own statements included), and the
        transaction is rolled back whole. Retried, as the library's is, after
        a dropped connection: a retry of an append that did commit meets the
        events' primary key, and callers recognise that (see
        ledger.application.Transfers.change)."""
        if not stored_events and not also_execute:
            return []
        with (
            pool_checked_on_connection_loss(self.datastore),
            self.datastore.get_connection() as conn,
            conn.pipeline() as pipeline,
            conn.transaction(),
            conn.cursor() as statements,
            conn.cursor() as inserted,
        ):
            for sql, params in also_execute:
                # None, not (): psycopg then leaves a literal % in the SQL alone.
                statements.execute(sql.replace("?", "%s"), params or None)
            if stored_events:
                self._lock_table(statements)
                self._notify_channel(statements)
                inserted.execute(
                    self._insert_arrays_statement,
                    (
                        [e.originator_id for e in stored_events],
                        [e.originator_version for e in stored_events],
                        [e.topic for e in stored_events],
                        [e.state for e in stored_events],
                    ),
                    binary=True,
                )
                appended = Appended(stored_events, None, aggregates)
                for hook in self.append_hooks:
                    hook.after_insert(_PostgresCursor(statements), appended)
            pipeline.sync()
            return [row["notification_id"] for row in inserted.fetchall()] if stored_events else []
