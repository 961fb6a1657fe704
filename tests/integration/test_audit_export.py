"""`ledger audit export`: every history as JSON Lines, streamed in constant
memory, with --since and --status filters (both databases)."""

from __future__ import annotations

import json
import tracemalloc
import uuid
from datetime import UTC, datetime

import pytest

from ledger.audit.history import export
from ledger.cli import run
from ledger.importing import parse_lines
from tests.ledgers import Ledger


def import_pending(ledger: Ledger, count: int, prefix: str) -> None:
    lines = [
        json.dumps(
            {
                "id": str(uuid.uuid4()),
                "seller_account_id": "acct_1A",
                "order_ref": f"{prefix}-{n}",
                "amount": 100 + n,
                "currency": "usd",
                "status": "pending",
            }
        )
        for n in range(count)
    ]
    ledger.import_transfers(parse_lines(lines))


def run_json_lines(
    capsys: pytest.CaptureFixture[str], url: str, *args: str
) -> tuple[int, list[dict[str, object]]]:
    capsys.readouterr()
    code = run(["audit", "export", "--database-url", url, *args])
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines()]


def test_export_is_every_transfers_audit_one_per_line(
    migrated_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Ledger.open(migrated_url) as ledger:
        paid, _ = ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="o-paid", amount=500, currency="usd"
        )
        ledger.set_status(paid, "completed", actor="alice", reason="by hand")
        waiting, _ = ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="o-wait", amount=700, currency="usd"
        )
        import_pending(ledger, 3, "legacy")
        ids = {str(v.id) for v in ledger.list()}
    code, lines = run_json_lines(capsys, migrated_url)
    assert code == 0
    assert {line["id"] for line in lines} == ids
    for line in lines:
        capsys.readouterr()
        assert run(["audit", str(line["id"]), "--json", "--database-url", migrated_url]) == 0
        assert json.loads(capsys.readouterr().out) == line

    code, completed = run_json_lines(capsys, migrated_url, "--status", "completed")
    assert code == 0 and [line["id"] for line in completed] == [str(paid)]
    future = datetime(2999, 1, 1, tzinfo=UTC).isoformat()
    assert run_json_lines(capsys, migrated_url, "--since", future) == (0, [])
    assert str(waiting) in ids


@pytest.mark.parametrize(
    "args",
    [("--since", "last week"), ("--status", "done"), ("--version", "1"), ("--at", "2026-01-01")],
)
def test_export_refuses_bad_filters_with_exit_2(
    migrated_url: str, capsys: pytest.CaptureFixture[str], args: tuple[str, str]
) -> None:
    code = run(["audit", "export", "--database-url", migrated_url, *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err


def peak_memory_exporting(url: str) -> int:
    with Ledger.open(url) as ledger:
        decode = ledger.transfers.mapper.to_domain_event
        tracemalloc.start()
        try:
            # Batches smaller than either log, so both runs stream several.
            stored = ledger.db.stream_stored_events(batch_size=200)
            exported = sum(1 for _ in export(decode(e) for _, e in stored))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert exported > 0
    return peak


def test_export_memory_stays_flat_as_the_log_grows(migrated_url: str) -> None:
    with Ledger.open(migrated_url) as ledger:
        import_pending(ledger, 500, "small")
    small = peak_memory_exporting(migrated_url)
    with Ledger.open(migrated_url) as ledger:
        import_pending(ledger, 3500, "more")
    large = peak_memory_exporting(migrated_url)
    # Eight times the transfers; a streaming export holds one batch of rows and
    # one transfer at a time, so its peak barely moves.
    assert large < small * 1.5 + 256 * 1024, (small, large)
