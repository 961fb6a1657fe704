"""Fixtures for the end-to-end CLI tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import Cli, LedgerCli, assert_ok
from tests.postgres_server import create_database, drop_database


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No URL from the caller's shell, no debug tracebacks, and a stray default
    # `sqlite:///ledger.db` would land in this test's own directory.
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)
    monkeypatch.delenv("LEDGER_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """`ledger.cli.run` in-process, returning exit code, stdout and stderr."""
    return Cli(capsys)


@pytest.fixture
def fresh_cli(run_cli: Cli, database_url: str) -> LedgerCli:
    """The CLI bound to a fresh, NOT yet migrated database (SQLite or PostgreSQL)."""
    return LedgerCli(run_cli, database_url)


@pytest.fixture
def cli(fresh_cli: LedgerCli) -> LedgerCli:
    """The CLI bound to a fresh database that `ledger migrate` has prepared."""
    assert_ok(fresh_cli.migrate())
    return fresh_cli


@pytest.fixture
def other_database_url(
    database_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    """A second fresh database on the same backend as `database_url`."""
    if database_url.startswith("sqlite:"):
        yield f"sqlite:///{tmp_path / 'other.db'}"
        return
    admin_url: str = request.getfixturevalue("postgres_admin_url")
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = create_database(admin_url, name)
    try:
        yield url
    finally:
        drop_database(admin_url, name)
