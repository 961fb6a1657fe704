"""`ledger rebuild`: the read table recomputed from the events and switched in
atomically, while writers and readers carry on (both databases)."""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from ledger.bootstrap import Ledger, migrate_database
from ledger.cli import run
from ledger.config import DatabaseConfig
from tests.e2e.support import LEDGER_SCRIPT
from tests.integration.test_migrations import describe


def ledger_with_transfers(url: str, count: int) -> list[UUID]:
    migrate_database(url)
    ids = []
    with Ledger.open(url) as ledger:
        for n in range(count):
            transfer_id, _ = ledger.create_transfer(
                seller_account_id="acct_1A", order_ref=f"o-{n}", amount=100 + n, currency="usd"
            )
            if n % 2:
                ledger.set_status(transfer_id, "completed", actor="alice", reason="by hand")
            ids.append(transfer_id)
    return ids


def table_rows(url: str) -> list[dict[str, Any]]:
    with Ledger.open(url) as ledger:
        return [v.as_json() for v in ledger.list()]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_rebuild_reproduces_the_table_and_its_indexes(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger_with_transfers(database_url, 30)
    before_rows, before_schema = table_rows(database_url), describe(database_url)
    code, out, _ = cli(capsys, "rebuild", "--database-url", database_url)
    assert code == 0 and "30 rows" in out
    assert table_rows(database_url) == before_rows
    assert describe(database_url) == before_schema
    assert cli(capsys, "audit", "verify", "--database-url", database_url)[0] == 0
    # Again, on top of a rebuilt table.
    assert cli(capsys, "rebuild", "--verify", "--database-url", database_url)[0] == 0
    assert table_rows(database_url) == before_rows


def test_rebuild_verify_refuses_to_switch_over_a_hand_edited_row(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = ledger_with_transfers(database_url, 5)
    config = DatabaseConfig.from_url(database_url)
    if config.kind == "sqlite":
        with sqlite3.connect(config.path) as conn:
            conn.execute("UPDATE seller_transfers SET amount = 1 WHERE id = ?", (str(ids[2]),))
    else:
        with psycopg.connect(database_url) as conn:
            conn.execute("UPDATE seller_transfers SET amount = 1 WHERE id = %s", (ids[2],))
    code, _, err = cli(capsys, "rebuild", "--verify", "--database-url", database_url)
    assert code == 1 and err.count("\n") == 1
    assert str(ids[2]) in err and "amount 1 live, 102 from the events" in err
    # Nothing switched: the edited row is still there for a person to look at.
    assert next(r for r in table_rows(database_url) if r["id"] == str(ids[2]))["amount"] == 1
    # Without --verify the rebuild replaces it with the truth.
    assert cli(capsys, "rebuild", "--database-url", database_url)[0] == 0
    assert next(r for r in table_rows(database_url) if r["id"] == str(ids[2]))["amount"] == 102


def test_writers_and_readers_carry_on_through_a_rebuild_and_nothing_is_lost(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger_with_transfers(database_url, 200)
    stop = threading.Event()
    created: list[UUID] = []
    seen: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        with Ledger.open(database_url) as ledger:
            n = 0
            while not stop.is_set():
                transfer_id, _ = ledger.create_transfer(
                    seller_account_id="acct_1B", order_ref=f"w-{n}", amount=5, currency="usd"
                )
                created.append(transfer_id)
                n += 1

    def read() -> None:
        with Ledger.open(database_url) as ledger:
            while not stop.is_set():
                seen.append(len(ledger.list()))

    def guarded(work: Any) -> Any:
        def body() -> None:
            try:
                work()
            except BaseException as error:
                errors.append(error)

        return body

    threads = [threading.Thread(target=guarded(f)) for f in (write, read)]
    for thread in threads:
        thread.start()
    try:
        code, _, err = cli(capsys, "rebuild", "--database-url", database_url)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert code == 0, err
    assert not errors, errors
    assert created, "the writer should have kept writing during the rebuild"
    # Readers never saw the table shrink (missing or half-built).
    assert seen and all(b >= a for a, b in itertools.pairwise(seen)), seen
    rows = table_rows(database_url)
    assert len(rows) == 200 + len(created)
    assert cli(capsys, "audit", "verify", "--database-url", database_url)[0] == 0


def test_an_interrupted_rebuild_leaves_the_live_table_working_and_can_be_rerun(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger_with_transfers(database_url, 20)
    before = table_rows(database_url)
    killed = subprocess.run(
        [str(LEDGER_SCRIPT), "rebuild", "--database-url", database_url],
        env={"LEDGER_FAILPOINTS": "rebuild_before_switch", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    assert table_rows(database_url) == before
    with Ledger.open(database_url) as ledger:
        ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="after-the-kill", amount=7, currency="usd"
        )
    assert cli(capsys, "rebuild", "--verify", "--database-url", database_url)[0] == 0
    assert len(table_rows(database_url)) == 21
    assert cli(capsys, "audit", "verify", "--database-url", database_url)[0] == 0
