"""Fixtures for the end-to-end CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.support import Cli, LedgerCli


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
def cli(run_cli: Cli, migrated_url: str) -> LedgerCli:
    """The CLI bound to a migrated database of its own (SQLite or PostgreSQL): a copy
    of the session's template, migrated once by `migrate_database`, the function
    `ledger migrate` runs."""
    return LedgerCli(run_cli, migrated_url)
