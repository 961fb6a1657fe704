"""What steers the ledger's database connections: the URL, all of it, and
nothing else. TLS and every other libpq parameter in LEDGER_DATABASE_URL are
honoured; the eventsourcing library's own variables in the process
environment are not; the ledger's statements inside an append report their
own errors; the pool lends the connection returned last."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.persistence import (
    IntegrityError,
    OperationalError,
    PersistenceError,
    StoredEvent,
)

from ledger.application import ConcurrentUpdate
from ledger.bootstrap import migrate_database
from ledger.errors import DatabaseUnavailable
from ledger.storage import FunctionAppendPostgresRecorder, LentConnection, is_version_conflict
from ledger.storage.recorders import _RecorderConnection
from tests.e2e.support import assert_one_line_error, run_script, script_result
from tests.ledgers import Ledger
from tests.system.world import World, ledger_matches_stripe, new_world, running_simulator


def _with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


def test_sslmode_require_against_a_server_without_tls_fails_as_psql_does(
    postgres_url: str, tmp_path: Path
) -> None:
    migrate_database(postgres_url)
    url = _with_query(postgres_url, "sslmode=require")
    # libpq's own words, whoever asks: the ledger connects as psql would.
    with pytest.raises(psycopg.OperationalError) as psql_like:
        psycopg.connect(url).close()
    assert "SSL" in str(psql_like.value)

    done = run_script(["transfer", "list", "--database-url", url], cwd=tmp_path)

    result = script_result(done)
    assert result.code == 1
    line = assert_one_line_error(result)
    assert "server does not support SSL, but SSL was required" in line
    with pytest.raises(DatabaseUnavailable, match="SSL was required"):
        Ledger.open(url)


def test_every_connection_the_ledger_opens_carries_the_urls_parameters(
    postgres_url: str,
) -> None:
    migrate_database(postgres_url)
    url = _with_query(postgres_url, "sslmode=disable&application_name=ledger-under-test")
    with Ledger.open(url) as ledger, ledger.db.transaction(write=False) as cursor:
        cursor.execute("SELECT current_setting('application_name') AS name")
        row = cursor.fetchone()
    assert row is not None and row["name"] == "ledger-under-test"


def _backend_pid(ledger: Ledger) -> int:
    with ledger.db.transaction(write=False) as cursor:
        cursor.execute("SELECT pg_backend_pid() AS pid")
        row = cursor.fetchone()
    assert row is not None
    return int(row["pid"])


def test_the_pool_lends_the_connection_returned_last(migrated_postgres_url: str) -> None:
    # psycopg_pool alone lends first in, first out: one thread's calls would
    # go round every connection, each meeting a server process gone cold.
    with Ledger.open(migrated_postgres_url, pool_size=4) as ledger:
        with ledger.db.transaction(write=False) as outer:
            outer.execute("SELECT pg_backend_pid() AS pid")
            row = outer.fetchone()
            assert row is not None
            held = int(row["pid"])
            nested = _backend_pid(ledger)  # another connection, returned first
        assert nested != held
        # `held` went back last: it is lent next, and again and again.
        assert [_backend_pid(ledger) for _ in range(6)] == [held] * 6


@pytest.mark.parametrize(
    "driver_error",
    [
        psycopg.InterfaceError,
        psycopg.OperationalError,
        psycopg.DataError,
        psycopg.errors.NumericValueOutOfRange,
        psycopg.IntegrityError,
        psycopg.errors.UniqueViolation,
        psycopg.InternalError,
        psycopg.ProgrammingError,
        psycopg.errors.UndefinedTable,
        psycopg.NotSupportedError,
        psycopg.DatabaseError,
        psycopg.errors.QueryCanceled,
        psycopg.Error,
    ],
)
def test_a_lent_connection_raises_the_library_s_error_classes_as_the_library_does(
    migrated_postgres_url: str, driver_error: type[psycopg.Error]
) -> None:
    """The ledger lends its connections itself (storage.failures.LentConnection),
    not through the library's `get_connection`, and maps psycopg's errors
    with `as_library_error`: the class the library's own lending raises for
    each, raised from the driver's error (is_version_conflict reads it)."""
    with Ledger.open(migrated_postgres_url) as ledger:
        recorder = ledger.transfers.recorder
        assert isinstance(recorder, FunctionAppendPostgresRecorder)
        with pytest.raises(PersistenceError) as library, recorder.datastore.get_connection():
            raise driver_error("refused")
        with pytest.raises(PersistenceError) as ours, LentConnection(recorder.datastore):
            raise driver_error("refused")
    assert type(ours.value) is type(library.value)
    assert str(ours.value) == str(library.value) == "refused"
    assert isinstance(ours.value.__cause__, driver_error)


def test_a_lent_connection_ends_a_transaction_left_open_as_the_library_does(
    migrated_postgres_url: str,
) -> None:
    """Left open by a block that succeeded: committed; by one that failed:
    rolled back. The ledger never leaves one open (autocommit connections,
    `conn.transaction()` blocks), but lending must not change what would
    happen if it did."""
    with Ledger.open(migrated_postgres_url) as ledger:
        recorder = ledger.transfers.recorder
        assert isinstance(recorder, FunctionAppendPostgresRecorder)
        datastore = recorder.datastore
        with datastore.get_connection() as conn:
            conn.execute("CREATE TABLE lent_probe (lender text, outcome text)")
        lenders: dict[str, Callable[[], AbstractContextManager[psycopg.Connection[Any]]]] = {
            "library": datastore.get_connection,
            "ledger": lambda: LentConnection(datastore),
        }
        for lender, lend in lenders.items():
            with lend() as conn:
                conn.execute("BEGIN")
                conn.execute("INSERT INTO lent_probe VALUES (%s, 'kept')", (lender,))
            with pytest.raises(PersistenceError), lend() as conn:
                conn.execute("BEGIN")
                conn.execute("INSERT INTO lent_probe VALUES (%s, 'undone')", (lender,))
                raise psycopg.DataError("refused")
        with datastore.get_connection() as conn:
            rows = conn.execute("SELECT lender, outcome FROM lent_probe ORDER BY 1").fetchall()
    assert [(r["lender"], r["outcome"]) for r in rows] == [("ledger", "kept"), ("library", "kept")]


def test_a_closed_pool_is_the_library_s_operational_error(migrated_postgres_url: str) -> None:
    ledger = Ledger.open(migrated_postgres_url)
    recorder = ledger.transfers.recorder
    assert isinstance(recorder, FunctionAppendPostgresRecorder)
    ledger.close()
    with pytest.raises(OperationalError) as raised, LentConnection(recorder.datastore):
        pass
    assert isinstance(raised.value.__cause__, psycopg.OperationalError)


def test_the_recorder_reuses_a_cursor_per_statement_and_a_failed_append_spoils_none(
    migrated_postgres_url: str,
) -> None:
    """One connection (a pool of one): its cursor per statement is made once
    and used again (storage.recorders._RecorderConnection); an append that
    fails on the events' key leaves the next read and append right."""
    with Ledger.open(migrated_postgres_url, pool_size=1) as ledger:
        recorder = ledger.transfers.recorder
        assert isinstance(recorder, FunctionAppendPostgresRecorder)
        transfer_id = uuid4()
        recorder.insert_events([StoredEvent(transfer_id, 1, "topic", b"\x01")])
        assert [e.state for e in recorder.select_events(transfer_id)] == [b"\x01"]
        with LentConnection(recorder.datastore) as conn:
            assert isinstance(conn, _RecorderConnection)
            cursors = dict(conn._cursors or {})
        assert len(cursors) == 2  # the append's and the read's

        with pytest.raises(IntegrityError) as raised:
            recorder.insert_events([StoredEvent(transfer_id, 1, "topic", b"\x02")])
        assert is_version_conflict(raised.value)
        recorder.insert_events([StoredEvent(transfer_id, 2, "topic", b"\x03")])
        assert [e.state for e in recorder.select_events(transfer_id)] == [b"\x01", b"\x03"]
        with LentConnection(recorder.datastore) as conn:
            assert isinstance(conn, _RecorderConnection)
            assert conn._cursors == cursors


def test_an_append_that_meets_another_writer_s_version_is_a_version_conflict(
    database_url: str,
) -> None:
    world = _migrated_world(database_url)
    transfer_id = world.create("order-conflict")
    with world.ledger() as ledger:
        stale = ledger.transfers.get(transfer_id)
        ledger.transfers.change(
            transfer_id, lambda t: t.set_status_by_admin("failed", actor="alice", reason="r")
        )
        stale.set_status_by_admin("failed", actor="bob", reason="r")
        with pytest.raises(IntegrityError) as raised:
            ledger.transfers.save(stale)
        assert is_version_conflict(raised.value)
        assert ledger.transfers.get(transfer_id).version == stale.version


def test_verify_full_with_a_missing_root_certificate_is_refused(
    postgres_url: str, tmp_path: Path
) -> None:
    url = _with_query(postgres_url, f"sslmode=verify-full&sslrootcert={tmp_path / 'none.crt'}")
    with pytest.raises(DatabaseUnavailable):
        Ledger.open(url)


def test_the_librarys_variables_in_the_environment_do_not_steer_the_money_path(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With POSTGRES_ENABLE_DB_FUNCTIONS=y the library would append through a
    database function and skip the ledger's statements in the append (the
    claim's release with the outcome). Every library variable is pinned."""
    for name, value in {
        "POSTGRES_ENABLE_DB_FUNCTIONS": "y",
        "POSTGRES_SCHEMA": "elsewhere",
        "POSTGRES_LOCK_TIMEOUT": "0",
        "PERSISTENCE_MODULE": "eventsourcing.popo",
        "SQLITE_DBNAME": "/nonexistent/other.db",
        "COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor",
        "IS_SNAPSHOTTING_ENABLED": "y",
    }.items():
        monkeypatch.setenv(name, value)
    with running_simulator(api_key=None) as sim:
        world = new_world(migrated_url, sim)
        transfer_id = world.create("order-env")
        world.run_daemon_once()

        assert world.show(transfer_id).status == "completed"
        assert ledger_matches_stripe(world, [transfer_id]) == []
        with world.ledger() as ledger, ledger.db.transaction(write=False) as cursor:
            cursor.execute("SELECT claimed_by, outcome_unknown FROM stripe_work")
            rows = cursor.fetchall()
    assert [(r["claimed_by"], bool(r["outcome_unknown"])) for r in rows] == [(None, False)]


def _migrated_world(migrated_url: str) -> World:
    migrate_database(migrated_url)
    return World(url=migrated_url, sim=None)  # type: ignore[arg-type]


def test_a_failing_statement_inside_an_append_is_reported_as_itself(database_url: str) -> None:
    world = _migrated_world(database_url)
    transfer_id = world.create("order-statement")
    duplicate = (
        "INSERT INTO ledger_migrations (version, name, applied_at) VALUES (1, 'again', 'now')",
        (),
    )
    with world.ledger() as ledger:
        before = ledger.transfers.get(transfer_id).version
        with pytest.raises(IntegrityError) as raised:
            ledger.transfers.change(
                transfer_id,
                lambda t: t.set_status_by_admin("failed", actor="alice", reason="r"),
                also_execute=[duplicate],
            )
        assert not isinstance(raised.value, ConcurrentUpdate)
        assert "ledger_migrations" in str(raised.value) or "UNIQUE" in str(raised.value)
        assert ledger.transfers.get(transfer_id).version == before


def test_a_statement_inside_an_append_may_hold_a_literal_percent_sign(database_url: str) -> None:
    world = _migrated_world(database_url)
    transfer_id: UUID = world.create("order-percent")
    with world.ledger() as ledger:
        ledger.transfers.change(
            transfer_id,
            lambda t: t.set_status_by_admin("failed", actor="alice", reason="r"),
            also_execute=[
                (
                    "INSERT INTO daemon_heartbeats (daemon_id, host, pid, concurrency,"
                    " started_at, seen_at) VALUES ('100% sure', 'h', 1, 1,"
                    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
                    (),
                )
            ],
        )
        with ledger.db.transaction(write=False) as cursor:
            cursor.execute("SELECT daemon_id FROM daemon_heartbeats")
            assert [r["daemon_id"] for r in cursor.fetchall()] == ["100% sure"]
    assert world.show(transfer_id).status == "failed"
