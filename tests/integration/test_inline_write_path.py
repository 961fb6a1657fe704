"""One append, one transaction: the events, the read rows they change, the
projection's tracking position and one chain link per event commit together
or not at all — with eight writers at once, and when the process is killed
with SIGKILL in the middle of an append (both databases)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from ledger import failpoints
from ledger.application import Transfers
from ledger.audit.verify import verify
from ledger.config import DatabaseConfig
from ledger.domain import Transfer
from ledger.importing import parse_lines
from ledger.service import IMPORT_BATCH_SIZE
from tests.ledgers import Ledger
from tests.paying import pay_out

LEDGER_SCRIPT = Path(sys.executable).with_name("ledger")
THREADS = 8
PER_THREAD = 6


def _scalar(ledger: Ledger, sql: str) -> Any:
    with ledger.db.transaction(write=False) as cursor:
        cursor.execute(sql)
        row = cursor.fetchone()
    assert row is not None
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


@contextmanager
def _failpoints_hooked(hook: Callable[[str], None]) -> Iterator[None]:
    """`hook` called at every failpoint for the block's length."""
    failpoints.install_hook(hook)
    try:
        yield
    finally:
        failpoints.install_hook(None)


def _events_table(url: str) -> tuple[str, str]:
    if DatabaseConfig.from_url(url).kind == "sqlite":
        return "stored_events", "rowid"
    return "transfers_events", "notification_id"


def _assert_in_step(ledger: Ledger, url: str) -> None:
    """Every row equals its history, the chain verifies, and the tracking
    position is the newest event's."""
    report = verify(ledger.db, ledger.transfers.mapper.to_domain_event)
    assert report.findings == []
    table, position = _events_table(url)
    newest = _scalar(ledger, f"SELECT MAX({position}) AS newest FROM {table}")
    tracked = _scalar(
        ledger,
        "SELECT position FROM projection_tracking WHERE name = 'seller_transfers'",
    )
    assert int(tracked) == int(newest)
    events = _scalar(ledger, f"SELECT COUNT(*) AS n FROM {table}")
    links = _scalar(ledger, "SELECT COUNT(*) AS n FROM event_chain")
    assert int(links) == int(events)


def test_eight_threads_creating_and_reversing_leave_rows_position_and_chain_in_step(
    migrated_url: str,
) -> None:
    with Ledger.open(migrated_url, pool_size=THREADS) as ledger:

        def work(thread: int) -> list[UUID]:
            made = []
            for number in range(PER_THREAD):
                transfer_id, _ = ledger.create_transfer(
                    seller_account_id="acct_1Seller",
                    order_ref=f"order-{thread}-{number}",
                    amount=1_000 + number,
                    currency="usd",
                )
                pay_out(ledger, transfer_id)
                ledger.request_reversal(
                    transfer_id,
                    request_ref=f"refund-{thread}-{number}",
                    amount=500,
                    reason="refund",
                    actor="system:test",
                )
                made.append(transfer_id)
            return made

        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            made = [t for batch in pool.map(work, range(THREADS)) for t in batch]

        assert len(set(made)) == THREADS * PER_THREAD
        views = {v.id: v for v in ledger.list()}
        for transfer_id in made:
            history: list[Transfer.Event] = list(ledger.transfers.events.get(transfer_id))  # type: ignore[arg-type]
            assert [type(e).__name__ for e in history] == [
                "Created",
                "PayoutSucceeded",
                "ReversalRequested",
            ]
            view = views[transfer_id]
            assert (view.status, view.reversal_amount) == ("reversal_pending", 500)
        _assert_in_step(ledger, migrated_url)


@pytest.mark.parametrize("point", ["mid_append", "append_before_commit"])
def test_a_process_killed_in_the_middle_of_an_append_leaves_nothing_half_written(
    migrated_url: str, point: str
) -> None:
    with Ledger.open(migrated_url) as ledger:
        ledger.create_transfer(
            seller_account_id="acct_1Seller", order_ref="before", amount=100, currency="usd"
        )

    killed = subprocess.run(
        [
            str(LEDGER_SCRIPT),
            "transfer",
            "create",
            "--seller",
            "acct_1Seller",
            "--order",
            "killed-mid-append",
            "--amount",
            "250",
            "--currency",
            "usd",
        ],
        env={**os.environ, "LEDGER_DATABASE_URL": migrated_url, "LEDGER_FAILPOINTS": point},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with Ledger.open(migrated_url) as ledger:
        assert [v.order_ref for v in ledger.list()] == ["before"]
        _assert_in_step(ledger, migrated_url)
        # The order is free again: the retried command makes it once.
        _, created = ledger.create_transfer(
            seller_account_id="acct_1Seller",
            order_ref="killed-mid-append",
            amount=250,
            currency="usd",
        )
        assert created
        assert sorted(v.order_ref for v in ledger.list()) == ["before", "killed-mid-append"]
        _assert_in_step(ledger, migrated_url)


class _AppendRefused(Exception):
    pass


def _import_lines(order_prefix: str, count: int) -> list[str]:
    """`count` pending transfers as `transfer import` lines."""
    return [
        json.dumps(
            {
                "id": str(uuid.UUID(int=n + 1)),
                "seller_account_id": "acct_1",
                "order_ref": f"{order_prefix}-{n}",
                "amount": 100 + n,
                "currency": "usd",
                "status": "pending",
            }
        )
        for n in range(count)
    ]


def test_an_import_whose_second_batch_fails_keeps_the_first_and_a_rerun_finishes_it(
    migrated_url: str,
) -> None:
    """The import appends one batch while it builds the next: an append that
    fails stops it there, the batches before it committed, none after it;
    running it again imports the rest."""
    lines = _import_lines("order-batch", IMPORT_BATCH_SIZE * 2 + 10)
    records = parse_lines(lines)
    appends: list[str] = []

    def refuse_the_second(name: str) -> None:
        if name == "mid_append":
            appends.append(name)
            if len(appends) == 2:
                raise _AppendRefused

    with Ledger.open(migrated_url) as ledger:
        with _failpoints_hooked(refuse_the_second), pytest.raises(_AppendRefused):
            ledger.import_transfers(records)
        assert len(ledger.list()) == IMPORT_BATCH_SIZE
        assert _scalar(ledger, "SELECT COUNT(*) FROM event_chain") == IMPORT_BATCH_SIZE

        result = ledger.import_transfers(records)
        assert (result.imported, result.already_present) == (
            len(lines) - IMPORT_BATCH_SIZE,
            IMPORT_BATCH_SIZE,
        )
        assert len(ledger.list()) == len(lines)
        _assert_in_step(ledger, migrated_url)


def test_when_an_append_and_the_next_batch_both_fail_the_append_s_error_is_the_one_raised(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next batch is built while the one before is appended: if building
    it fails too, the earlier batch's failure (an earlier line's) is raised."""
    lines = _import_lines("order-both", IMPORT_BATCH_SIZE + 10)
    records = parse_lines(lines)
    prepare_new = Transfers.prepare_new
    prepared: list[int] = []

    def refuse_the_second_batch(self: Transfers, transfers: Any) -> Any:
        prepared.append(len(transfers))
        if len(prepared) == 2:
            raise ValueError("the second batch could not be built")
        return prepare_new(self, transfers)

    def refuse_the_first_append(name: str) -> None:
        if name == "mid_append":
            raise _AppendRefused

    monkeypatch.setattr(Transfers, "prepare_new", refuse_the_second_batch)
    with Ledger.open(migrated_url) as ledger:
        with _failpoints_hooked(refuse_the_first_append), pytest.raises(_AppendRefused):
            ledger.import_transfers(records)
        assert prepared == [IMPORT_BATCH_SIZE, 10]
        assert ledger.list() == []
