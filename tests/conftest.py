"""Shared fixtures: database URLs for SQLite and PostgreSQL.

PostgreSQL tests are never skipped for want of a server: ``postgres_server()`` starts one
(container or local binaries) and fails loudly if it cannot, because CI must run them.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres_server import create_database, drop_database, postgres_server

# Fixtures that need a PostgreSQL server; tests using them get the `postgres` marker.
_POSTGRES_FIXTURES = frozenset({"postgres_admin_url", "postgres_url"})


def pytest_configure(config: pytest.Config) -> None:
    # A run stopped with SIGTERM (a CI timeout, `timeout 60 pytest`) would die
    # without tearing down the session's fixtures and leave its throwaway
    # PostgreSQL cluster running. As an interrupt, it unwinds like Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Mark by fixture use too, so `-m "not postgres"` holds even if a test forgets the mark.
    for item in items:
        if _POSTGRES_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """Admin URL of the session's PostgreSQL server (may CREATE DATABASE)."""
    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """URL of a fresh, empty database for this test only; dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = create_database(postgres_admin_url, name)
    try:
        yield url
    finally:
        drop_database(postgres_admin_url, name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a not-yet-existing SQLite file; tmp_path is absolute, hence four slashes."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh database URL, once per backend, so storage tests run on both."""
    # getfixturevalue keeps the sqlite run from starting a PostgreSQL server.
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
    else:
        url = request.getfixturevalue("sqlite_url")
    return url


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One fresh database per backend shared by a whole test module, for
    modules whose tests build on one expensive world (a paid-out ledger)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('module') / 'ledger.db'}"
        return
    admin_url: str = request.getfixturevalue("postgres_admin_url")
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = create_database(admin_url, name)
    try:
        yield url
    finally:
        drop_database(admin_url, name)
