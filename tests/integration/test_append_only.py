"""The event log is append-only at the database level: UPDATE, DELETE and (on
PostgreSQL) TRUNCATE are refused by triggers, with an error naming the rule,
even for someone who goes around the ledger with a plain database client."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
import pytest

from ledger.config import DatabaseConfig
from tests.ledgers import Ledger

RULE = "the event log is append-only"


def ledger_with_one_transfer(url: str) -> str:
    with Ledger.open(url) as ledger:
        ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="o-1", amount=100, currency="usd"
        )
        return ledger.db.events_table


def raw_statement(url: str, sql: str) -> None:
    """Run `sql` with a plain client, as a DBA would, committing if it succeeds."""
    config = DatabaseConfig.from_url(url)
    if config.kind == "sqlite":
        with sqlite3.connect(config.path) as conn:
            conn.execute(sql)
        return
    with psycopg.connect(url) as conn:
        conn.execute(sql.encode())


def stored_rows(url: str, table: str) -> list[Any]:
    with Ledger.open(url) as ledger, ledger.db.transaction(write=False) as cursor:
        cursor.execute(f"SELECT originator_id, originator_version, topic, state FROM {table}")
        return [tuple(row.values()) for row in cursor.fetchall()]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE {table} SET topic = 'forged'",
        "UPDATE {table} SET originator_version = originator_version + 1",
        "DELETE FROM {table}",
        "DELETE FROM {table} WHERE originator_version = 1",
    ],
)
def test_editing_or_deleting_an_event_is_refused_and_changes_nothing(
    migrated_url: str, statement: str
) -> None:
    table = ledger_with_one_transfer(migrated_url)
    before = stored_rows(migrated_url, table)
    with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match=RULE):
        raw_statement(migrated_url, statement.format(table=table))
    assert stored_rows(migrated_url, table) == before


@pytest.mark.postgres
def test_truncating_the_events_table_is_refused_on_postgresql(migrated_postgres_url: str) -> None:
    table = ledger_with_one_transfer(migrated_postgres_url)
    with pytest.raises(psycopg.Error, match=RULE):
        raw_statement(migrated_postgres_url, f"TRUNCATE {table}")
    assert len(stored_rows(migrated_postgres_url, table)) == 1


def test_appending_still_works(migrated_url: str) -> None:
    ledger_with_one_transfer(migrated_url)
    with Ledger.open(migrated_url) as ledger:
        ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="o-2", amount=200, currency="usd"
        )
        assert len(ledger.list()) == 2
