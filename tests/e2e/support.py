"""Helpers for driving the `ledger` CLI end to end, in-process and as a real process."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from ledger.cli import run
from ledger.config import DatabaseConfig
from tests.design_matrix import LEGAL
from tests.ledgers import Ledger
from tests.paying import pay_out

# The console script installed next to the interpreter running the tests.
LEDGER_SCRIPT = Path(sys.executable).with_name("ledger")

# The fields `transfer show --json` must return (DESIGN section 8).
CONTRACT_FIELDS = (
    "id",
    "status",
    "seller_account_id",
    "order_ref",
    "amount",
    "currency",
    "retry_count",
    "next_retry_at",
    "stripe_transfer_id",
    "amount_reversed",
    "version",
)

# Legal admin steps from a fresh (pending) transfer to each status.
PATH_TO = {
    "pending": [],
    "completed": ["completed"],
    "failed": ["failed"],
    "reversal_pending": ["completed", "reversal_pending"],
    "reversed": ["completed", "reversal_pending", "reversed"],
    "permanently_failed": ["failed", "permanently_failed"],
}

# The event store's table, as the eventsourcing library names it on each database.
EVENTS_TABLE = {"sqlite": "stored_events", "postgresql": "transfers_events"}

UNKNOWN_ID = "6f1c2b9e-3d4a-4b5c-8d6e-7f8091a2b3c4"


def is_legal(from_status: str, to_status: str) -> bool:
    return (from_status, to_status) in LEGAL


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def assert_one_line_error(result: CliResult) -> str:
    """stderr is exactly one non-empty line without a traceback; returns it."""
    assert result.err.endswith("\n"), result.err
    assert result.err.count("\n") == 1, result.err
    line = result.err.strip()
    assert line, "stderr is empty"
    assert "Traceback" not in result.err
    return line


def assert_ok(result: CliResult) -> CliResult:
    assert result.code == 0, (result.code, result.err)
    assert result.err == "", result.err
    return result


class Cli:
    """Runs `ledger.cli.run` in this process and captures what it printed."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def __call__(self, *argv: str) -> CliResult:
        self._capsys.readouterr()  # forget anything printed before
        code = run(list(argv))
        captured = self._capsys.readouterr()
        return CliResult(code, captured.out, captured.err)


class LedgerCli:
    """The CLI bound to one database: `--database-url` goes after the subcommand."""

    def __init__(self, cli: Cli, url: str) -> None:
        self.cli = cli
        self.url = url

    def migrate(self) -> CliResult:
        return self.cli("migrate", "--database-url", self.url)

    def transfer(self, command: str, *args: str) -> CliResult:
        return self.cli("transfer", command, "--database-url", self.url, *args)

    def create(
        self,
        order: str,
        *,
        seller: str = "acct_1A2b3C",
        amount: int | str = 1250,
        currency: str = "usd",
    ) -> str:
        result = assert_ok(
            self.transfer(
                "create",
                "--seller",
                seller,
                "--amount",
                str(amount),
                "--currency",
                currency,
                "--order",
                order,
            )
        )
        return result.out.strip()

    def show(self, transfer_id: str) -> dict[str, Any]:
        data = assert_ok(self.transfer("show", transfer_id, "--json")).json()
        assert isinstance(data, dict)
        return data

    def list_json(self, *args: str) -> list[dict[str, Any]]:
        data = assert_ok(self.transfer("list", "--json", *args)).json()
        assert isinstance(data, list)
        return data

    def set_status(
        self, transfer_id: str, status: str, *, actor: str = "alice", reason: str = "ops ticket 7"
    ) -> CliResult:
        return self.transfer(
            "set-status", transfer_id, status, "--actor", actor, "--reason", reason
        )

    def import_file(self, path: Path, *args: str) -> CliResult:
        return self.transfer("import", str(path), *args)

    def pay_out(self, transfer_id: str) -> str:
        """Record the transfer as paid out at Stripe, as the daemon does (the
        CLI alone cannot: only a Stripe transfer can be reversed); returns
        the Stripe id."""
        with Ledger.open(self.url) as ledger:
            return pay_out(ledger, UUID(transfer_id))

    def events(self) -> int:
        return stored_event_count(self.url)

    def rows(self) -> int:
        return read_table_count(self.url)


def _count(url: str, table: str | None) -> int:
    # One plain connection, not a whole ledger: tests count after every command.
    config = DatabaseConfig.from_url(url)
    sql = f"SELECT COUNT(*) FROM {table or EVENTS_TABLE[config.kind]}"
    if config.kind == "sqlite":
        with closing(sqlite3.connect(config.path)) as conn:
            row = conn.execute(sql).fetchone()
    else:
        with psycopg.connect(**config.libpq_params()) as conn:
            row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def stored_event_count(url: str) -> int:
    """How many events the database holds (all transfers)."""
    return _count(url, None)


def read_table_count(url: str) -> int:
    """How many rows the seller_transfers read table holds."""
    return _count(url, "seller_transfers")


def sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(url[len(prefix) :]) if url.startswith(prefix) else None


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, value
    return parsed


def write_jsonl(path: Path, lines: Sequence[dict[str, Any] | str]) -> Path:
    """One line per item: dicts as JSON, strings as given (for bad lines)."""
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    path.write_text(text, encoding="utf-8")
    return path


def run_script(
    args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real `ledger` console script; LEDGER_* from the caller's environment is dropped."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    environ.update(env or {})
    return subprocess.run(
        [str(LEDGER_SCRIPT), *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def script_result(process: subprocess.CompletedProcess[str]) -> CliResult:
    return CliResult(process.returncode, process.stdout, process.stderr)
