"""The ledger's view of its one database, shared by the event store and the
ledger's own SQL (read table, tracking positions, migrations), on SQLite or
PostgreSQL: the event store is the eventsourcing library's recorder, and this
lends its connection pool to the rest, so that everything lives in one
database and a projection writes its rows and its position in one
transaction. The few real dialect differences (time values, the events
table's shape, how a writer takes its lock) are methods here."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final, Literal, cast
from uuid import UUID

import psycopg
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore
from psycopg.rows import tuple_row

from ledger.errors import DatabaseUnavailable
from ledger.storage.cursors import (
    SQLITE_MAX_PARAMS,
    Cursor,
    Row,
    _PostgresCursor,
    _SQLiteCursor,
)
from ledger.storage.failures import POLL_SECONDS, LentConnection

# From this many rows on, PostgreSQL upserts go through COPY (see Database.upsert).
COPY_THRESHOLD: Final = 64
# How long exclusive_session waits for another holder.
EXCLUSIVE_WAIT_SECONDS: Final = 600.0
# Rows per chunk when streaming a whole table (Database.stream_rows).
STREAM_CHUNK_ROWS: Final = 1000
# libpq 17 brought chunked results (many rows per fetch, one statement); older
# libpq streams row by row, which is slower but as flat in memory.
_LIBPQ_CHUNKED_ROWS: Final = 170000
Dialect = Literal["sqlite", "postgresql"]


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

    def _postgres_connection(self) -> LentConnection:
        """A pooled connection, as the event store's recorder lends them
        (failures.LentConnection: the library's error classes, and the pool
        checked when a connection turns out lost, so that whoever tries again
        (the Python API once, the daemon's next turn, Stripe's next delivery)
        gets a live one at once)."""
        return LentConnection(self._postgres)

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
                time.sleep(POLL_SECONDS)
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

    def connection_params(self) -> dict[str, Any]:
        """PostgreSQL: the pool's own connection settings (host, port, user,
        password, dbname, sslmode), for a connection of one's own."""
        settings = self._postgres.pool.kwargs
        return dict(settings() if callable(settings) else settings or {})

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

    def any_of(self, column: str, texts: Sequence[str]) -> Iterator[tuple[list[Any], str]]:
        """A condition "`column` is one of `texts`" and its parameters, as
        statements to run one after another: on PostgreSQL one statement with
        an array (thousands of `?` cost the server more to parse and plan
        than to look the values up); on SQLite, SQLITE_MAX_PARAMS at a time."""
        if self.dialect == "postgresql":
            yield [list(texts)], f"{column} = ANY(?::text[])"
            return
        for start in range(0, len(texts), SQLITE_MAX_PARAMS):
            chunk = list(texts[start : start + SQLITE_MAX_PARAMS])
            yield chunk, f"{column} IN ({', '.join('?' * len(chunk))})"

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
                (",".join(i.hex for i in ids),),
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
        self._params: dict[str, Any] = parent.connection_params()

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
