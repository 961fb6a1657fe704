"""The event store's recorders, as the ledger configures the library: one
append is one transaction holding the events, the ledger's own statements
(`also_execute`) and whatever its append hooks write (chain links, read rows)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore, PostgresFactory
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor
from eventsourcing.utils import Environment, retry
from psycopg import Connection
from psycopg import Cursor as PsycopgCursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from ledger.failpoints import armed, failpoint
from ledger.storage.cursors import Cursor, Statement, _PostgresCursor, _SQLiteCursor
from ledger.storage.failures import pool_checked_on_connection_loss


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
        # insert statement; ArrayInsertPostgresRecorder sends plain arrays.
        self.datastore.register_type_adapters = _no_type_adapters  # type: ignore[method-assign]
        # Open the pool now, waiting for its first connections: a command asking
        # for a connection while they are still being made would have the pool
        # open one more for it (each a server process, and a login). Once, here:
        # the library's own waiting open runs on every get_connection, and with
        # every connection lent out (a nested one) it would wait for a full pool.
        timeout = float(self.env.get("POSTGRES_CONNECT_TIMEOUT") or 30)
        self.datastore.pool.open(wait=True, timeout=timeout)


def _no_type_adapters() -> None:
    pass


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
        """One append, one transaction, every statement pipelined and sent in
        one round trip, the commit included: the ledger's statements
        (`also_execute`, e.g. a claim's release), the library's EXCLUSIVE lock
        and NOTIFY, the events, and the append hooks (chain links, read rows).
        The lock is so held only while the server works, never across a round
        trip to this process (whose thread may be waiting for the GIL behind
        seven others): appends from many threads follow each other at the
        server's pace.

        Written out here rather than through the library's method so that the
        first failing statement is the error raised, whichever it is (a
        constraint of the ledger's own statements included), and the
        transaction is rolled back whole. Retried, as the library's is, after
        a dropped connection: a retry of an append that did commit meets the
        events' primary key, and callers recognise that (see
        ledger.application.Transfers.change)."""
        if not stored_events and not also_execute:
            return []
        with (
            pool_checked_on_connection_loss(self.datastore),
            self.datastore.get_connection() as conn,
        ):
            try:
                inserted = self._append(conn, stored_events, also_execute, aggregates)
            except BaseException:
                # A statement failed: the server skipped the rest, the COMMIT
                # too, and left the transaction aborted. Roll it back here
                # rather than hand the pool a connection in that state.
                if not conn.closed:
                    conn.rollback()
                raise
            return [row["notification_id"] for row in inserted.fetchall()] if stored_events else []

    def _append(
        self,
        conn: Connection[DictRow],
        stored_events: Sequence[StoredEvent],
        also_execute: Sequence[Statement],
        aggregates: Sequence[Any],
    ) -> PsycopgCursor[DictRow]:
        inserted = conn.cursor()
        with conn.pipeline() as pipeline, conn.transaction(), conn.cursor() as statements:
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
                failpoint("mid_append")
                appended = Appended(stored_events, None, aggregates)
                for hook in self.append_hooks:
                    hook.after_insert(_PostgresCursor(statements), appended)
            if armed("append_before_commit"):
                # Only where a test stops here: run everything but the commit.
                pipeline.sync()
                failpoint("append_before_commit")
        # Leaving the pipeline sent the COMMIT with the rest, and raised the
        # first statement's error, if any.
        return inserted
