"""The event store's recorders, as the ledger configures the library: one
append is one transaction holding the events, the ledger's own statements
(`also_execute`) and whatever its append hooks write (chain links, read rows)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable
from uuid import UUID

import psycopg
import psycopg.cursor
from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor
from eventsourcing.utils import Environment, retry
from psycopg import Connection
from psycopg.rows import DictRow, TupleRow, tuple_row

from ledger.failpoints import armed, failpoint
from ledger.storage.cursors import Cursor, Statement, _SQLiteCursor
from ledger.storage.encoding import dumps_document
from ledger.storage.failures import LentConnection


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
        # The library looks up its composite event type (a round trip, when the
        # recorder is made, and on every new connection after) for its own
        # insert statement; FunctionAppendPostgresRecorder sends JSON.
        self.datastore.register_type_adapters = _no_type_adapters  # type: ignore[method-assign]
        self.datastore.pool.connection_class = _RecorderConnection
        _lend_most_recent_first(self.datastore.pool)
        # Open the pool now, waiting for its first connections: a command asking
        # for a connection while they are still being made would have the pool
        # open one more for it (each a server process, and a login). Once, here:
        # the library's own waiting open runs on every get_connection, and with
        # every connection lent out (a nested one) it would wait for a full pool.
        # The ledger lends through failures.LentConnection, which opens nothing.
        timeout = float(self.env.get("POSTGRES_CONNECT_TIMEOUT") or 30)
        self.datastore.pool.open(wait=True, timeout=timeout)


class _RecorderConnection(Connection[DictRow]):
    """psycopg's connection, keeping a cursor of tuples per statement the
    recorder sends (its append, and each shape of its read). psycopg sets up
    a cursor's loaders (one per column type) for each new query text, and
    keeps them while the cursor runs the same text again: a cursor made per
    statement, as `conn.execute` makes one, paid for that every time (62.7
    against 47.2 µs of client CPU for a read of four columns, medians of
    seven runs of 2,000). A command reads and then appends on the same
    connection, so one cursor for both would set up again each time.

    The pool lends a connection to one thread at a time, and its cursors
    with it. Each cursor holds its last result until its next statement: at
    most one read of one transfer's history per read shape, per
    connection."""

    _cursors: dict[str, psycopg.cursor.Cursor[TupleRow]] | None = None

    def tuples(self, statement: str) -> psycopg.cursor.Cursor[TupleRow]:
        cursors = self._cursors
        if cursors is None:
            cursors = self._cursors = {}
        cursor = cursors.get(statement)
        if cursor is None or cursor.closed:
            cursor = cursors[statement] = self.cursor(row_factory=tuple_row)
        return cursor


def _executed(
    conn: Connection[DictRow], statement: str, params: Sequence[Any]
) -> psycopg.cursor.Cursor[TupleRow]:
    """`statement`, prepared, run on the connection's cursor of tuples for
    it."""
    assert isinstance(conn, _RecorderConnection)  # LedgerPostgresFactory's pool makes them
    return conn.tuples(statement).execute(statement, params, prepare=True)


def _no_type_adapters() -> None:
    pass


class _MostRecentFirst(deque[Any]):
    """A pool's idle connections, lent last in, first out."""

    def popleft(self) -> Any:
        return self.pop()


def _lend_most_recent_first(pool: object) -> None:
    """Have the pool lend the connection returned last, as PgBouncer does by
    default, where psycopg_pool lends the one returned first. First in, first
    out spreads one thread's calls over every connection: each call then meets
    a server process that has been idle the longest, its caches cold. One
    thread's `create_transfer` took 1.2 to 1.6 ms with four connections, about
    1.0 ms with one (scripts/bench --only api: 0.74-0.86 of the ceiling before,
    1.00-1.17 after). Last in, first out, the busy connections stay warm.

    What it costs: a connection at the bottom can sit idle for hours, and
    psycopg_pool checks a connection's age only when it comes back. If
    something between kills idle connections (a firewall, the server's
    idle_session_timeout), a burst that reaches that deep meets a dead one:
    the statement fails as after a server restart, the pool checks every idle
    connection (storage.failures.LentConnection) and the
    statement is tried again, as reads and appends are (the ledger does not
    ping a connection before lending it: a round trip a call, ledger.config).
    Against a firewall, TCP keepalives in the URL (`keepalives_idle=60`, which
    every connection honours) keep idle connections alive. The pool's shrink,
    which also takes from the left, closes the most recently used idle
    connection rather than the oldest; it only closes connections above the
    pool's size (the overflow).

    psycopg_pool keeps its idle connections in a private deque, `_pool`, taken
    from with popleft() and returned to with append(). A version that does
    otherwise keeps its own order, with a warning here, and
    test_the_pool_lends_the_connection_returned_last
    (tests/integration/test_database_settings.py) fails."""
    idle = getattr(pool, "_pool", None)
    if type(idle) is deque and not idle:  # before the pool opens
        pool._pool = _MostRecentFirst()  # type: ignore[attr-defined]
    else:
        logging.getLogger("ledger.storage").warning(
            "the connection pool keeps its own order (first in, first out): this"
            " psycopg_pool does not keep its idle connections as the ledger expects"
        )


def _id_text(originator_id: UUID | str) -> str:
    # A uuid as 32 hex digits: PostgreSQL reads it as well as the dashed form,
    # and Python writes it in half the time (an import writes 100,000s).
    return originator_id.hex if isinstance(originator_id, UUID) else originator_id


@dataclass(frozen=True)
class Appended:
    """What one append wrote, for the `AppendHook`s that write with it."""

    events: Sequence[StoredEvent]
    # Their positions in the log (SQLite, where Python knows them inside the
    # transaction). None on PostgreSQL, where the hooks give their
    # `arguments` before the function draws the positions.
    positions: Sequence[int] | None
    # The aggregates these events are of, in their state after them (empty
    # for an append of bare events).
    aggregates: Sequence[Any]


@dataclass(frozen=True)
class PreparedAppend:
    """An append built ahead of sending it (an import builds the next batch
    while the database writes this one): its events as the mapper stored them,
    their aggregates, and on PostgreSQL the document `ledger_append` takes.
    The recorder's `append_prepared` sends it."""

    events: Sequence[StoredEvent]
    aggregates: Sequence[Any]
    document: str | None = None


@runtime_checkable
class PreparingRecorder(Protocol):
    """A recorder that can build an append ahead of sending it (both of the
    ledger's): an import builds the next batch while this one is written."""

    def prepare(
        self, stored_events: Sequence[StoredEvent], aggregates: Sequence[Any]
    ) -> PreparedAppend: ...

    def append_prepared(self, prepared: PreparedAppend) -> Sequence[int] | None: ...


class AppendHook(Protocol):
    """Something every append writes in its own transaction, after its events
    and under the events table's lock (so in commit order): the order
    reservations (ledger/orders.py), the chain's links (ledger/audit/chain.py),
    the read table's rows and position (the inline projection). The
    composition root gives the recorder its hooks; this module knows none of
    them.

    On SQLite the recorder calls `after_insert`, which runs the hook's
    statements in the append's transaction. On PostgreSQL an append is one
    call of `ledger_append` (migrations 0017 to 0019), which does it all in SQL:
    the recorder asks each hook for its part of the function's document
    (`arguments`: str, int, bool and None, in lists and dicts), or raises what
    the hook raises (a row that cannot be stored) before anything is sent."""

    def after_insert(self, cursor: Cursor, appended: Appended) -> None: ...

    def arguments(self, appended: Appended) -> dict[str, Any]: ...


class StatementsSQLiteRecorder(SQLiteApplicationRecorder):
    """The library's SQLite application recorder, which also runs, in the
    append's transaction, the ledger's own statements (`save(...,
    also_execute=[(sql, params), ...])`: the process managers release their
    claim this way, in the same commit as the outcome they record) and its
    append hooks. SQLite's single write lock serialises appends."""

    append_hooks: Sequence[AppendHook] = ()

    def prepare(
        self, stored_events: Sequence[StoredEvent], aggregates: Sequence[Any]
    ) -> PreparedAppend:
        # Nothing to build ahead here: the hooks write in the transaction.
        return PreparedAppend(stored_events, aggregates)

    def append_prepared(self, prepared: PreparedAppend) -> Sequence[int] | None:
        return self.insert_events(prepared.events, aggregates=prepared.aggregates)

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
        failpoint("mid_append")
        if stored_events and self.append_hooks:
            appended = Appended(stored_events, list(notification_ids or ()), aggregates)
            cursor = _SQLiteCursor(c.sqlite_cursor)
            for hook in self.append_hooks:
                hook.after_insert(cursor, appended)
        for sql, params in also_execute:
            c.execute(sql, params)
        failpoint("append_before_commit")
        return notification_ids


class FunctionAppendPostgresRecorder(PostgresApplicationRecorder):
    """The library's PostgreSQL application recorder, appending through one
    call of `ledger_append` (migrations 0017 to 0019) instead of the library's
    statements.

    Everything that makes an append safe is kept, in the function: the
    EXCLUSIVE table lock (insert order = commit order) with the library's
    lock timeout, the NOTIFY, the positions returned, one transaction. What
    changes is the work on this side: one JSON document (orjson, ledger.storage.encoding)
    instead of about nine statements whose parameters psycopg adapts in
    Python, which was most of an API call's time and, with several threads,
    queued on the GIL. And with nothing else to run in the transaction the
    call is the transaction: the lock is taken and released inside the
    server, never held across a round trip to this process.
    """

    append_hooks: Sequence[AppendHook] = ()

    _APPEND: Final = "SELECT ledger_append(%s::jsonb) AS positions"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._select_statements: dict[tuple[bool, bool, bool, bool], str] = {}

    def insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        also_execute: Sequence[Statement] = (),
        aggregates: Sequence[Any] = (),
        **_: Any,
    ) -> Sequence[int] | None:
        """One append, one transaction, one round trip: the ledger's
        statements (`also_execute`, e.g. a claim's release) and the append,
        pipelined with their COMMIT. Any statement's error is the error
        raised, and the transaction is rolled back whole."""
        document = self._document(stored_events, aggregates) if stored_events else None
        positions: Sequence[int] | None = self._send(document, also_execute)  # retry() is untyped
        return positions

    def append_prepared(self, prepared: PreparedAppend) -> Sequence[int] | None:
        """Send the append `prepare` built."""
        positions: Sequence[int] | None = self._send(prepared.document, ())
        return positions

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _send(
        self, document: str | None, also_execute: Sequence[Statement]
    ) -> Sequence[int] | None:
        """Retried, as the library's append is, after a dropped connection: a
        retry of an append that did commit meets the events' primary key, and
        callers recognise that (see ledger.application.Transfers.change)."""
        if document is None and not also_execute:
            return []
        failpoint("mid_append")
        with LentConnection(self.datastore) as conn:
            if document is not None and not also_execute and not armed("append_before_commit"):
                # Autocommit: the one statement is the whole transaction.
                row = _executed(conn, self._APPEND, (document,)).fetchone()
                assert row is not None
                return list(row[0])
            try:
                return self._in_transaction(conn, document, also_execute)
            except BaseException:
                # A statement failed: the server skipped the rest, the COMMIT
                # too, and left the transaction aborted. Roll it back here
                # rather than hand the pool a connection in that state; if the
                # connection itself is gone, the pool drops it, and the error
                # raised stays the statement's.
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
                raise

    def prepare(
        self, stored_events: Sequence[StoredEvent], aggregates: Sequence[Any]
    ) -> PreparedAppend:
        """Build the append's document now, to send it later."""
        return PreparedAppend(stored_events, aggregates, self._document(stored_events, aggregates))

    # Retried after a lost connection, as the library's read is: a read is safe to repeat.
    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """The library's read of one transfer's events, with each shape of the
        statement composed once: the library composes it (psycopg.sql) on every
        call, which cost more than the query's round trip (0.24 ms a read,
        against 0.15 with the text ready). Same rows, same order."""
        shape = (gt is not None, lte is not None, desc, limit is not None)
        statement = self._select_statements.get(shape)
        if statement is None:
            statement = self._select_statement(*shape)
            self._select_statements[shape] = statement
        params = [p for p in (originator_id, gt, lte, limit) if p is not None]
        with LentConnection(self.datastore) as conn:
            rows = _executed(conn, statement, params)
            return [
                StoredEvent(
                    originator_id=originator_id_,
                    originator_version=originator_version,
                    topic=topic,
                    state=bytes(state),
                )
                for originator_id_, originator_version, topic, state in rows.fetchall()
            ]

    def _select_statement(self, gt: bool, lte: bool, desc: bool, limit: bool) -> str:
        table = f'"{self.datastore.schema}"."{self.events_table_name}"'
        assert '"' not in self.datastore.schema + self.events_table_name  # quoted as is
        return (
            "SELECT originator_id, originator_version, topic, state"
            f" FROM {table} WHERE originator_id = %s"
            + (" AND originator_version > %s" if gt else "")
            + (" AND originator_version <= %s" if lte else "")
            + (" ORDER BY originator_version DESC" if desc else " ORDER BY originator_version ASC")
            + (" LIMIT %s" if limit else "")
        )

    def _in_transaction(
        self, conn: Connection[DictRow], document: str | None, also_execute: Sequence[Statement]
    ) -> list[int]:
        with conn.cursor(row_factory=tuple_row) as appended:
            with conn.pipeline() as pipeline, conn.transaction(), conn.cursor() as statements:
                for sql, params in also_execute:
                    # None, not (): psycopg then leaves a literal % in the SQL alone.
                    statements.execute(sql.replace("?", "%s"), params or None)
                if document is not None:
                    appended.execute(self._APPEND, (document,))
                if armed("append_before_commit"):
                    # Only where a test stops here: run everything but the commit.
                    pipeline.sync()
                    failpoint("append_before_commit")
            # Leaving the pipeline sent the COMMIT with the rest (one round
            # trip), and raised the first statement's error, if any.
            if document is None:
                return []
            row = appended.fetchone()
            assert row is not None
            return list(row[0])

    def _document(self, stored_events: Sequence[StoredEvent], aggregates: Sequence[Any]) -> str:
        appended = Appended(stored_events, None, aggregates)
        document: dict[str, Any] = {
            "events": [
                [_id_text(e.originator_id), e.originator_version, e.topic, e.state.hex()]
                for e in stored_events
            ],
            "lock_timeout": f"{self.datastore.lock_timeout}s",
        }
        for hook in self.append_hooks:
            document.update(hook.arguments(appended))
        return dumps_document(document)
