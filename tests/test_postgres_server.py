"""The PostgreSQL test harness itself: server, per-test databases, cleanup."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.postgres_server import (
    create_database,
    drop_database,
    find_pg_bin,
    local_cluster,
    scratch_database,
    seal_template,
)

pytestmark = pytest.mark.postgres


def _unique_name() -> str:
    return f"test_{uuid.uuid4().hex[:16]}"


def _exists(admin_url: str, name: str) -> bool:
    with psycopg.connect(admin_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
    assert row is not None
    return bool(row[0])


def _user_tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    return sorted(str(r[0]) for r in rows)


def test_admin_url_answers_select_1(postgres_admin_url: str) -> None:
    with psycopg.connect(postgres_admin_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_admin_url_has_user_password_host_port_db(postgres_admin_url: str) -> None:
    # The application only accepts the full user:pass@host:port/db form.
    parts = urlsplit(postgres_admin_url)
    assert parts.scheme in {"postgresql", "postgres"}
    assert parts.username
    assert parts.password
    assert parts.hostname
    assert parts.port
    assert parts.path.strip("/")


def test_create_database_is_empty_and_separate(postgres_admin_url: str) -> None:
    a, b = _unique_name(), _unique_name()
    url_a = create_database(postgres_admin_url, a)
    try:
        url_b = create_database(postgres_admin_url, b)
        try:
            assert urlsplit(url_a).path == f"/{a}"
            assert _user_tables(url_a) == []
            with psycopg.connect(url_a) as conn:
                conn.execute("CREATE TABLE only_in_a (id int)")
                conn.execute("INSERT INTO only_in_a VALUES (1)")
                assert conn.execute("SELECT current_database()").fetchone() == (a,)
            assert _user_tables(url_a) == ["only_in_a"]
            assert _user_tables(url_b) == []
        finally:
            drop_database(postgres_admin_url, b)
    finally:
        drop_database(postgres_admin_url, a)


def test_drop_database_removes_it_even_with_open_connection(postgres_admin_url: str) -> None:
    name = _unique_name()
    url = create_database(postgres_admin_url, name)
    assert _exists(postgres_admin_url, name)
    # A test that leaks a connection must not make cleanup fail.
    lingering = psycopg.connect(url)
    try:
        drop_database(postgres_admin_url, name)
    finally:
        lingering.close()
    assert not _exists(postgres_admin_url, name)
    drop_database(postgres_admin_url, name)  # dropping again is harmless


def test_create_database_rejects_odd_names(postgres_admin_url: str) -> None:
    with pytest.raises(ValueError, match="unsuitable database name"):
        create_database(postgres_admin_url, 'x"; DROP DATABASE postgres; --')


def test_a_sealed_template_is_copied_whole_and_can_still_be_dropped(
    postgres_admin_url: str,
) -> None:
    name = _unique_name()
    url = create_database(postgres_admin_url, name)
    try:
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE in_template (id int)")
            conn.execute("INSERT INTO in_template VALUES (1)")
        seal_template(postgres_admin_url, name)
        with scratch_database(postgres_admin_url, template=name) as copy:
            with psycopg.connect(copy) as conn:
                assert conn.execute("SELECT id FROM in_template").fetchall() == [(1,)]
                conn.execute("INSERT INTO in_template VALUES (2)")
            copy_name = urlsplit(copy).path.lstrip("/")
        assert not _exists(postgres_admin_url, copy_name)
        with pytest.raises(psycopg.OperationalError, match="not currently accepting"):
            psycopg.connect(url, connect_timeout=5).close()
    finally:
        drop_database(postgres_admin_url, name)
    assert not _exists(postgres_admin_url, name)


def test_postgres_url_fixture_gives_fresh_database(
    postgres_admin_url: str, postgres_url: str
) -> None:
    name = urlsplit(postgres_url).path.lstrip("/")
    assert name.startswith("test_")
    assert _exists(postgres_admin_url, name)
    assert _user_tables(postgres_url) == []


def test_database_url_fixture(database_url: str) -> None:
    if database_url.startswith("sqlite:"):
        # Absolute path: sqlite:////tmp/.../ledger.db
        assert database_url.startswith("sqlite:////")
        assert database_url.endswith("/ledger.db")
    else:
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.skipif(find_pg_bin() is None, reason="tests the local-binaries path only")
def test_local_cluster_is_stopped_and_removed_on_exit() -> None:
    with local_cluster() as cluster:
        with psycopg.connect(cluster.url) as conn:
            row = conn.execute("SHOW max_connections").fetchone()
            assert row == ("200",)
        assert cluster.root.is_dir()
    assert not cluster.root.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.url, connect_timeout=2).close()
