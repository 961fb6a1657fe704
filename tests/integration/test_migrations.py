"""Migrations: the schema they produce, applied once, the same whether the
runner or a person with the plain SQL files applies them."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import psycopg
import pytest

from ledger.bootstrap import migrate_database
from ledger.config import DatabaseConfig
from ledger.errors import NotMigrated
from ledger.migrate import available_migrations
from tests.ledgers import Ledger
from tests.postgres_server import create_database

# What `ledger migrate` must leave behind, per dialect: (column, type, not null).
EXPECTED_COLUMNS = {
    "postgresql": [
        ("id", "uuid", True),
        ("seller_account_id", "text", True),
        ("order_ref", "text", True),
        ("amount", "bigint", True),
        ("currency", "text", True),
        ("status", "text", True),
        ("retry_count", "integer", True),
        ("next_retry_at", "timestamp with time zone", False),
        ("stripe_transfer_id", "text", False),
        ("amount_reversed", "bigint", True),
        ("last_error", "text", False),
        ("reversal_request_ref", "text", False),
        ("reversal_amount", "bigint", False),
        ("version", "integer", True),
        ("created_at", "timestamp with time zone", True),
        ("updated_at", "timestamp with time zone", True),
    ],
    "sqlite": [
        ("id", "TEXT", False),  # PRIMARY KEY; SQLite reports notnull only when declared
        ("seller_account_id", "TEXT", True),
        ("order_ref", "TEXT", True),
        ("amount", "INTEGER", True),
        ("currency", "TEXT", True),
        ("status", "TEXT", True),
        ("retry_count", "INTEGER", True),
        ("next_retry_at", "TEXT", False),
        ("stripe_transfer_id", "TEXT", False),
        ("amount_reversed", "INTEGER", True),
        ("last_error", "TEXT", False),
        ("reversal_request_ref", "TEXT", False),
        ("reversal_amount", "INTEGER", False),
        ("version", "INTEGER", True),
        ("created_at", "TEXT", True),
        ("updated_at", "TEXT", True),
    ],
}

# The partial indexes, names and predicates exactly as the seed has them.
EXPECTED_INDEXES = {
    "postgresql": {
        "idx_seller_transfers_retry": (
            "CREATE INDEX idx_seller_transfers_retry ON public.seller_transfers"
            " USING btree (status, next_retry_at)"
            " WHERE ((status = 'failed'::text) AND (next_retry_at IS NOT NULL))"
        ),
        "idx_seller_transfers_reversal_pending": (
            "CREATE INDEX idx_seller_transfers_reversal_pending ON public.seller_transfers"
            " USING btree (status, next_retry_at) WHERE (status = 'reversal_pending'::text)"
        ),
        "idx_seller_transfers_order_ref": (
            "CREATE INDEX idx_seller_transfers_order_ref ON public.seller_transfers"
            " USING btree (order_ref)"
        ),
        "idx_seller_transfers_pending": (
            "CREATE INDEX idx_seller_transfers_pending ON public.seller_transfers"
            " USING btree (created_at) WHERE (status = 'pending'::text)"
        ),
        "seller_transfers_pkey": (
            "CREATE UNIQUE INDEX seller_transfers_pkey ON public.seller_transfers USING btree (id)"
        ),
        "idx_seller_transfers_stripe_transfer_id": (
            "CREATE INDEX idx_seller_transfers_stripe_transfer_id ON public.seller_transfers"
            " USING btree (stripe_transfer_id) WHERE (stripe_transfer_id IS NOT NULL)"
        ),
        "idx_seller_transfers_further_reversal": (
            "CREATE INDEX idx_seller_transfers_further_reversal ON public.seller_transfers"
            " USING btree (next_retry_at)"
            " WHERE ((status = 'reversed'::text) AND (next_retry_at IS NOT NULL))"
        ),
    },
    "sqlite": {
        "idx_seller_transfers_retry": (
            "CREATE INDEX idx_seller_transfers_retry ON seller_transfers (status, next_retry_at)"
            " WHERE status = 'failed' AND next_retry_at IS NOT NULL"
        ),
        "idx_seller_transfers_reversal_pending": (
            "CREATE INDEX idx_seller_transfers_reversal_pending"
            " ON seller_transfers (status, next_retry_at) WHERE status = 'reversal_pending'"
        ),
        "idx_seller_transfers_order_ref": (
            "CREATE INDEX idx_seller_transfers_order_ref ON seller_transfers (order_ref)"
        ),
        "idx_seller_transfers_pending": (
            "CREATE INDEX idx_seller_transfers_pending ON seller_transfers (created_at)"
            " WHERE status = 'pending'"
        ),
        "idx_seller_transfers_stripe_transfer_id": (
            "CREATE INDEX idx_seller_transfers_stripe_transfer_id"
            " ON seller_transfers (stripe_transfer_id) WHERE stripe_transfer_id IS NOT NULL"
        ),
        "idx_seller_transfers_further_reversal": (
            "CREATE INDEX idx_seller_transfers_further_reversal"
            " ON seller_transfers (next_retry_at)"
            " WHERE status = 'reversed' AND next_retry_at IS NOT NULL"
        ),
    },
}


# Every migration, numbered 1, 2, 3... with no gap, the same on both dialects.
ALL_VERSIONS = list(range(1, len(available_migrations("sqlite")) + 1))
assert [m.version for m in available_migrations("sqlite")] == ALL_VERSIONS
assert [m.version for m in available_migrations("postgresql")] == ALL_VERSIONS


def _normalise(sql: str) -> str:
    return " ".join(sql.replace("IF NOT EXISTS ", "").split())


def describe(url: str) -> dict[str, Any]:
    """The read table's columns and indexes, as the database reports them."""
    config = DatabaseConfig.from_url(url)
    if config.kind == "sqlite":
        with sqlite3.connect(config.path) as conn:
            columns = [
                (name, type_, bool(notnull))
                for _, name, type_, notnull, _, _ in conn.execute(
                    "PRAGMA table_info(seller_transfers)"
                )
            ]
            indexes = {
                name: _normalise(sql)
                for name, sql in conn.execute(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
                    " AND tbl_name = 'seller_transfers' AND sql IS NOT NULL"
                )
            }
        return {"columns": columns, "indexes": indexes}
    with psycopg.connect(url) as pg:
        columns = [
            (name, type_, nullable == "NO")
            for name, type_, nullable in pg.execute(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
                " WHERE table_name = 'seller_transfers' ORDER BY ordinal_position"
            )
        ]
        indexes = {
            name: _normalise(sql)
            for name, sql in pg.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'seller_transfers'"
            )
        }
        invalid = pg.execute(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relname LIKE '%seller_transfers%' AND NOT i.indisvalid"
        ).fetchone()
        assert invalid == (0,), "an index was left INVALID"
    return {"columns": columns, "indexes": indexes}


def test_migrated_schema_is_the_expected_one(database_url: str) -> None:
    migrate_database(database_url)
    dialect = DatabaseConfig.from_url(database_url).kind
    schema = describe(database_url)
    assert schema["columns"] == EXPECTED_COLUMNS[dialect]
    assert schema["indexes"] == {
        name: _normalise(sql) for name, sql in EXPECTED_INDEXES[dialect].items()
    }


# The webhook deliveries table (0008), a contract `ledger reconcile` reads too.
EXPECTED_WEBHOOK_COLUMNS = {
    "postgresql": [
        ("stripe_event_id", "text", True),
        ("event_type", "text", True),
        ("stripe_transfer_id", "text", False),
        ("transfer_id", "text", False),
        ("outcome", "text", True),
        ("detail", "text", False),
        ("received_at", "timestamp with time zone", True),
    ],
    "sqlite": [
        ("stripe_event_id", "TEXT", False),  # PRIMARY KEY; see seller_transfers.id
        ("event_type", "TEXT", True),
        ("stripe_transfer_id", "TEXT", False),
        ("transfer_id", "TEXT", False),
        ("outcome", "TEXT", True),
        ("detail", "TEXT", False),
        ("received_at", "TEXT", True),
    ],
}


def test_webhook_deliveries_table_has_the_agreed_columns(database_url: str) -> None:
    migrate_database(database_url)
    config = DatabaseConfig.from_url(database_url)
    if config.kind == "sqlite":
        with sqlite3.connect(config.path) as conn:
            columns = [
                (name, type_, bool(notnull))
                for _, name, type_, notnull, _, _ in conn.execute(
                    "PRAGMA table_info(stripe_webhook_events)"
                )
            ]
    else:
        with psycopg.connect(database_url) as pg:
            columns = [
                (name, type_, nullable == "NO")
                for name, type_, nullable in pg.execute(
                    "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
                    " WHERE table_name = 'stripe_webhook_events' ORDER BY ordinal_position"
                )
            ]
    assert columns == EXPECTED_WEBHOOK_COLUMNS[config.kind]


def test_migrate_applies_each_migration_once_and_records_it(database_url: str) -> None:
    first = migrate_database(database_url)
    second = migrate_database(database_url)
    assert [m.version for m in first] == ALL_VERSIONS
    assert second == []
    with Ledger.open(database_url) as ledger, ledger.db.transaction(write=False) as cursor:
        cursor.execute("SELECT version, name FROM ledger_migrations ORDER BY version")
        recorded = [(row["version"], row["name"]) for row in cursor.fetchall()]
    assert recorded == [
        (1, "seller_transfers"),
        (2, "idx_seller_transfers_retry"),
        (3, "idx_seller_transfers_reversal_pending"),
        (4, "idx_seller_transfers_pending"),
        (5, "stripe_work"),
        (6, "events_append_only"),
        (7, "event_chain"),
        (8, "stripe_webhook_events"),
        (9, "daemon_heartbeats"),
        (10, "transfer_orders"),
        (11, "idx_seller_transfers_stripe_transfer_id"),
        (12, "event_chain_in_the_append"),
        (13, "projection_quarantine"),
        (14, "stripe_work_waiting"),
        (15, "idx_seller_transfers_further_reversal"),
        (16, "daemon_heartbeats_rate_limited"),
        (17, "append_in_one_statement"),
        (18, "link_in_the_append"),
        (19, "links_in_one_insert"),
    ]


def test_index_migrations_on_postgresql_build_concurrently_outside_a_transaction() -> None:
    """An index on a table that already holds rows (seller_transfers, after 0001
    made it) must not block writes while it builds."""
    live_table_indexes = 0
    for migration in available_migrations("postgresql"):
        if migration.version == 1:
            continue
        creates = [
            s
            for s in migration.statements()
            if s.startswith("CREATE INDEX") and "ON seller_transfers" in " ".join(s.split())
        ]
        for statement in creates:
            live_table_indexes += 1
            assert not migration.in_transaction, migration.name
            assert "CONCURRENTLY" in statement, statement
    assert live_table_indexes >= 3


@pytest.mark.postgres
def test_plain_sql_files_applied_by_hand_give_the_same_schema_as_the_runner(
    postgres_admin_url: str, postgres_url: str
) -> None:
    """A DBA applying the files with psql, in order, gets what `ledger migrate` builds."""
    migrate_database(postgres_url)
    by_hand = create_database(postgres_admin_url, "by_hand_" + postgres_url.rsplit("_", 1)[-1])
    # The events table is the eventsourcing library's: `ledger migrate` has its
    # recorder create it before the files run, and so does a DBA.
    with Ledger.open(by_hand, migrated=False) as ledger:
        ledger.db.create_event_store_tables()
    with psycopg.connect(by_hand, autocommit=True) as pg:
        for migration in available_migrations("postgresql"):
            if migration.in_transaction:
                with pg.transaction():
                    pg.execute(migration.sql.encode())
            else:
                for statement in migration.statements():
                    pg.execute(statement.encode())
    assert describe(by_hand) == describe(postgres_url)


def test_commands_refuse_a_database_that_is_not_migrated(database_url: str) -> None:
    config = DatabaseConfig.from_url(database_url)
    if config.kind == "sqlite":
        # Creating the event store's table alone is not enough.
        with Ledger.open(database_url, migrated=False) as ledger:
            ledger.db.create_event_store_tables()
    with pytest.raises(NotMigrated, match="ledger migrate"):
        Ledger.open(database_url)


def test_daemons_migrating_at_once_apply_each_migration_exactly_once(database_url: str) -> None:
    applied: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def migrate() -> None:
        try:
            barrier.wait(timeout=30)
            applied.append([m.version for m in migrate_database(database_url)])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert sorted(v for versions in applied for v in versions) == ALL_VERSIONS
    dialect = DatabaseConfig.from_url(database_url).kind
    assert describe(database_url)["indexes"] == {
        name: _normalise(sql) for name, sql in EXPECTED_INDEXES[dialect].items()
    }
