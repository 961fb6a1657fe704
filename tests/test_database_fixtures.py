"""The database fixtures themselves: a migrated database is a copy of a template that
was migrated once per session, so it must be exactly what migrating gives, and a
test's writes must reach neither the template nor any other test's copy."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ledger.bootstrap import migrate_database
from ledger.config import DatabaseConfig
from tests.ledgers import Ledger
from tests.postgres_server import database_url as url_on_server
from tests.postgres_server import scratch_database


def everything(url: str) -> dict[str, Any]:
    """Every schema object (tables, columns, indexes, triggers, functions), the
    migrations recorded and every table's row count, as the database reports them."""
    config = DatabaseConfig.from_url(url)
    if config.kind == "sqlite":
        with closing(sqlite3.connect(config.path)) as conn:
            objects = conn.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
            ).fetchall()
            tables = [name for kind, name, _, _ in objects if kind == "table"]
            counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone() for t in tables}
            applied = conn.execute("SELECT version, name FROM ledger_migrations").fetchall()
        return {"objects": objects, "counts": counts, "applied": sorted(applied)}
    with psycopg.connect(url) as pg:
        columns = pg.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = 'public'"
            " ORDER BY table_name, ordinal_position"
        ).fetchall()
        indexes = pg.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            " ORDER BY indexname"
        ).fetchall()
        triggers = pg.execute(
            "SELECT tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t"
            " WHERE NOT tgisinternal ORDER BY tgname"
        ).fetchall()
        functions = pg.execute(
            "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'public' ORDER BY p.proname"
        ).fetchall()
        tables = sorted({table for table, *_ in columns})
        counts = {t: pg.execute(f'SELECT count(*) FROM "{t}"').fetchone() for t in tables}
        applied = pg.execute("SELECT version, name FROM ledger_migrations").fetchall()
    return {
        "columns": columns,
        "indexes": indexes,
        "triggers": triggers,
        "functions": functions,
        "counts": counts,
        "applied": sorted(applied),
    }


@contextmanager
def another_copy(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One more copy of the session's template, as the next test would get it."""
    if backend == "sqlite":
        path = tmp_path / "another.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    with scratch_database(
        request.getfixturevalue("postgres_admin_url"),
        template=request.getfixturevalue("postgres_template"),
    ) as url:
        yield url


def test_a_migrated_database_is_what_migrating_a_fresh_one_gives(
    migrated_url: str, database_url: str
) -> None:
    assert migrate_database(migrated_url) == []  # nothing pending
    migrate_database(database_url)
    copied, migrated = everything(migrated_url), everything(database_url)
    assert copied == migrated
    assert copied["applied"], "the template has no migrations recorded"


def test_a_tests_writes_reach_neither_the_template_nor_other_copies(
    backend: str,
    migrated_url: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    with Ledger.open(migrated_url) as ledger:
        ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="o-1", amount=100, currency="usd"
        )
        assert len(ledger.list()) == 1
    with another_copy(backend, request, tmp_path) as other, Ledger.open(other) as ledger:
        assert ledger.list() == []


def test_a_sqlite_copy_is_complete_and_in_wal_mode(
    sqlite_template: Path, migrated_sqlite_url: str
) -> None:
    # A -wal file beside the template would hold pages that a copy of the file misses.
    assert not sqlite_template.with_name(sqlite_template.name + "-wal").exists()
    path = DatabaseConfig.from_url(migrated_sqlite_url).path
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.postgres
def test_the_postgres_template_refuses_connections(
    postgres_admin_url: str, postgres_template: str
) -> None:
    # A test handed the template's URL by mistake must fail, not hold a connection
    # that would make every later copy fail.
    url = url_on_server(postgres_admin_url, postgres_template)
    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        psycopg.connect(url, connect_timeout=5).close()
