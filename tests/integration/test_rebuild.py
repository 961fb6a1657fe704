"""`ledger rebuild`: the read table recomputed from the events and switched in
atomically, while writers and readers carry on (both databases)."""

from __future__ import annotations

import io
import itertools
import json
import sqlite3
import subprocess
import threading
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent

from ledger.audit.verify import verify
from ledger.cli import run
from ledger.config import DatabaseConfig
from ledger.domain import Transfer, TransferState
from ledger.importing import ImportRecord
from ledger.projections import rebuild as rebuild_module
from ledger.projections.projection import quarantined
from ledger.projections.rebuild import rebuild
from ledger.projections.rows import HistoryDecoder, compared_values, replay_history
from tests.e2e.support import LEDGER_SCRIPT
from tests.integration.test_audit_export import import_pending
from tests.integration.test_migrations import describe
from tests.ledgers import Ledger
from tests.waiting import wait_for


def ledger_with_transfers(url: str, count: int) -> list[UUID]:
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
    migrated_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger_with_transfers(migrated_url, 30)
    before_rows, before_schema = table_rows(migrated_url), describe(migrated_url)
    code, out, _ = cli(capsys, "rebuild", "--database-url", migrated_url)
    assert code == 0 and "30 rows" in out
    assert table_rows(migrated_url) == before_rows
    assert describe(migrated_url) == before_schema
    assert cli(capsys, "audit", "verify", "--database-url", migrated_url)[0] == 0
    # Again, on top of a rebuilt table.
    assert cli(capsys, "rebuild", "--verify", "--database-url", migrated_url)[0] == 0
    assert table_rows(migrated_url) == before_rows


def test_rebuild_verify_refuses_to_switch_over_a_hand_edited_row(
    migrated_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = ledger_with_transfers(migrated_url, 5)
    config = DatabaseConfig.from_url(migrated_url)
    if config.kind == "sqlite":
        with sqlite3.connect(config.path) as conn:
            conn.execute("UPDATE seller_transfers SET amount = 1 WHERE id = ?", (str(ids[2]),))
    else:
        with psycopg.connect(migrated_url) as conn:
            conn.execute("UPDATE seller_transfers SET amount = 1 WHERE id = %s", (ids[2],))
    code, _, err = cli(capsys, "rebuild", "--verify", "--database-url", migrated_url)
    assert code == 1 and err.count("\n") == 1
    assert str(ids[2]) in err and "amount 1 live, 102 from the events" in err
    # Nothing switched: the edited row is still there for a person to look at.
    assert next(r for r in table_rows(migrated_url) if r["id"] == str(ids[2]))["amount"] == 1
    # Without --verify the rebuild replaces it with the truth.
    assert cli(capsys, "rebuild", "--database-url", migrated_url)[0] == 0
    assert next(r for r in table_rows(migrated_url) if r["id"] == str(ids[2]))["amount"] == 102


def test_writers_and_readers_carry_on_through_a_rebuild_and_nothing_is_lost(
    migrated_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger_with_transfers(migrated_url, 200)
    stop = threading.Event()
    created: list[UUID] = []
    seen: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        with Ledger.open(migrated_url) as ledger:
            n = 0
            while not stop.is_set():
                transfer_id, _ = ledger.create_transfer(
                    seller_account_id="acct_1B", order_ref=f"w-{n}", amount=5, currency="usd"
                )
                created.append(transfer_id)
                n += 1

    def read() -> None:
        with Ledger.open(migrated_url) as ledger:
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
        code, _, err = cli(capsys, "rebuild", "--database-url", migrated_url)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert code == 0, err
    assert not errors, errors
    assert created, "the writer should have kept writing during the rebuild"
    # Readers never saw the table shrink (missing or half-built).
    assert seen and all(b >= a for a, b in itertools.pairwise(seen)), seen
    rows = table_rows(migrated_url)
    assert len(rows) == 200 + len(created)
    assert cli(capsys, "audit", "verify", "--database-url", migrated_url)[0] == 0


def test_an_interrupted_rebuild_leaves_the_live_table_working_and_can_be_rerun(
    migrated_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger_with_transfers(migrated_url, 20)
    before = table_rows(migrated_url)
    killed = subprocess.run(
        [str(LEDGER_SCRIPT), "rebuild", "--database-url", migrated_url],
        env={"LEDGER_FAILPOINTS": "rebuild_before_switch", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    assert table_rows(migrated_url) == before
    with Ledger.open(migrated_url) as ledger:
        ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="after-the-kill", amount=7, currency="usd"
        )
    assert cli(capsys, "rebuild", "--verify", "--database-url", migrated_url)[0] == 0
    assert len(table_rows(migrated_url)) == 21
    assert cli(capsys, "audit", "verify", "--database-url", migrated_url)[0] == 0


# ----- every kind of event, the fast paths, the worker processes ---------------------------

# Whole seconds in another offset: stored as "2026-03-01T09:30:00+02:00", a
# different text than the microsecond UTC times the ledger writes itself.
PARIS_SPRING = datetime(2026, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))
SYSTEM = "system:test"


def ledger_with_every_kind_of_event(url: str) -> None:
    """Transfers whose histories hold every event the domain has, datetimes in
    several forms included, projected by the live projection."""
    with Ledger.open(url) as ledger:
        ledger.import_transfers(
            [
                ImportRecord(
                    line=1,
                    transfer_id=uuid4(),
                    seller_account_id="acct_1Imp",
                    order_ref="imported-failed",
                    amount=700,
                    currency="eur",
                    status="failed",
                    retry_count=2,
                    next_retry_at=PARIS_SPRING,
                    stripe_transfer_id=None,
                    amount_reversed=0,
                    last_error="balance_insufficient: \\ back\\slash, 'quotes' and \"more\"",
                    reversal_request_ref=None,
                    reversal_amount=None,
                    source_updated_at=PARIS_SPRING,
                ),
                ImportRecord(
                    line=2,
                    transfer_id=uuid4(),
                    seller_account_id="acct_1Imp",
                    order_ref="imported-reversing",
                    amount=900,
                    currency="usd",
                    status="reversal_pending",
                    retry_count=0,
                    next_retry_at=None,
                    stripe_transfer_id="tr_old",
                    amount_reversed=100,
                    last_error=None,
                    reversal_request_ref="old-refund",
                    reversal_amount=None,
                    source_updated_at=None,
                ),
            ]
        )

        def create(order: str) -> UUID:
            transfer_id, _ = ledger.create_transfer(
                seller_account_id="acct_1A", order_ref=order, amount=5000, currency="usd"
            )
            return transfer_id

        def change(transfer_id: UUID, command: Any) -> None:
            ledger.transfers.change(transfer_id, command)

        reversed_one = create("reversed")
        change(
            reversed_one,
            lambda t: t.record_payout_failed(
                error="429", next_retry_at=PARIS_SPRING, actor=SYSTEM, caused_by=None
            ),
        )
        change(
            reversed_one,
            lambda t: t.record_payout_succeeded(
                stripe_transfer_id="tr_1", actor=SYSTEM, caused_by=None
            ),
        )
        ledger.request_reversal(
            reversed_one, request_ref="refund-1", amount=2000, reason="refund", actor="bob"
        )
        change(
            reversed_one,
            lambda t: t.record_reversal_attempt_failed(
                error="429",
                next_retry_at=datetime.now(UTC) + timedelta(minutes=5),
                actor=SYSTEM,
                caused_by=None,
            ),
        )
        change(
            reversed_one,
            lambda t: t.record_reversed(
                stripe_reversal_id="trr_1", amount_reversed=2000, actor=SYSTEM, caused_by=None
            ),
        )
        refused = create("refused")
        change(
            refused,
            lambda t: t.record_payout_failed(
                error="no such destination", next_retry_at=None, actor=SYSTEM, caused_by=None
            ),
        )
        change(
            refused,
            lambda t: t.record_payout_permanently_failed(
                error="no such destination", actor=SYSTEM, caused_by=None
            ),
        )
        unreversable = create("unreversable")
        change(
            unreversable,
            lambda t: t.record_payout_succeeded(
                stripe_transfer_id="tr_2", actor=SYSTEM, caused_by=None
            ),
        )
        ledger.request_reversal(
            unreversable, request_ref="refund-2", amount=None, reason="refund", actor="bob"
        )
        change(
            unreversable,
            lambda t: t.record_reversal_permanently_failed(
                error="insufficient funds", actor=SYSTEM, caused_by=None
            ),
        )
        ledger.set_status(create("by-hand"), "completed", actor="alice", reason="paid by hand")
        create("pending")
        legacy_event_with_control_characters(ledger)
        ledger.catch_up()


def legacy_event_with_control_characters(ledger: Ledger) -> None:
    """An event an older version of the ledger could write, before text with
    control characters was refused at the boundary: a rebuild carries it as
    the live projection does (COPY escapes the tab and the newline)."""
    transfer = Transfer.import_existing(
        transfer_id=uuid4(),
        state=TransferState(
            status="failed",
            seller_account_id="acct_1Old",
            order_ref="imported-by-an-older-version",
            amount=800,
            currency="usd",
            retry_count=1,
            next_retry_at=None,
            stripe_transfer_id=None,
            amount_reversed=0,
            last_error="written later",
            reversal_request_ref=None,
            reversal_amount=None,
        ),
        source_updated_at=PARIS_SPRING,
        actor=SYSTEM,
    )
    [event] = transfer.collect_events()
    object.__setattr__(event, "last_error", "balance_insufficient\ttab and\nnewline")
    ledger.transfers.events.put([event])


def test_a_rebuild_through_every_kind_of_event_equals_the_live_projection(
    migrated_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger_with_every_kind_of_event(migrated_url)
    before = table_rows(migrated_url)
    assert len(before) == 8
    assert cli(capsys, "rebuild", "--verify", "--database-url", migrated_url)[0] == 0
    assert table_rows(migrated_url) == before
    if migrated_url.startswith("postgresql"):
        # The same shared between worker processes, one per range of ids.
        with Ledger.open(migrated_url) as ledger:
            decode = ledger.transfers.mapper.to_domain_event
            result = rebuild(ledger.db, decode, workers=3, verify=True, progress=io.StringIO())
        assert (result.rows, result.events) == (8, 19)
        assert table_rows(migrated_url) == before
    assert cli(capsys, "audit", "verify", "--database-url", migrated_url)[0] == 0


def test_a_rebuild_shared_between_worker_processes_loses_nothing_written_meanwhile(
    migrated_postgres_url: str,
) -> None:
    ledger_with_transfers(migrated_postgres_url, 300)
    stop = threading.Event()
    created: list[UUID] = []

    def write() -> None:
        with Ledger.open(migrated_postgres_url) as ledger:
            while not stop.is_set():
                transfer_id, _ = ledger.create_transfer(
                    seller_account_id="acct_1B",
                    order_ref=f"w-{len(created)}",
                    amount=5,
                    currency="usd",
                )
                created.append(transfer_id)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_for(lambda: len(created) >= 3, what="the writer to be writing")
        with Ledger.open(migrated_postgres_url) as ledger:
            progress = io.StringIO()
            rebuild(
                ledger.db, ledger.transfers.mapper.to_domain_event, workers=3, progress=progress
            )
    finally:
        stop.set()
        writer.join(timeout=60)
    assert "rebuild:" in progress.getvalue()
    assert len(table_rows(migrated_postgres_url)) == 300 + len(created)
    with Ledger.open(migrated_postgres_url) as ledger:
        assert verify(ledger.db, ledger.transfers.mapper.to_domain_event).ok


def test_a_worker_that_fails_fails_the_rebuild_and_leaves_the_live_table(
    migrated_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger_with_transfers(migrated_postgres_url, 30)
    with psycopg.connect(migrated_postgres_url) as conn:
        before = conn.execute("SELECT * FROM seller_transfers ORDER BY id").fetchall()
    last_range = UUID("ffffffff-0000-4000-8000-000000000000")
    real_copy_values = rebuild_module.copy_values  # type: ignore[attr-defined]

    def fail_in_the_last_range(row: Any) -> list[Any]:
        # A failure that is nobody's history's fault (the worker's memory, its
        # connection), in the last worker's range of ids (inherited by the fork).
        if UUID(str(row.id)) >= last_range:
            raise RuntimeError("the worker ran out of memory")
        return real_copy_values(row)

    monkeypatch.setattr(rebuild_module, "copy_values", fail_in_the_last_range)
    with Ledger.open(migrated_postgres_url) as ledger:
        # A transfer in the last worker's range of ids (written as bare events,
        # so the live table stays as it was).
        transfer = Transfer.create(
            seller_account_id="acct_1A", order_ref="x", amount=1, currency="usd", actor="t"
        )
        [created] = transfer.collect_events()
        object.__setattr__(created, "originator_id", UUID("ffffffff-0000-4000-8000-000000000001"))
        ledger.transfers.events.put([created])
        with pytest.raises(RuntimeError, match="ran out of memory"):
            rebuild(
                ledger.db,
                ledger.transfers.mapper.to_domain_event,
                workers=3,
                progress=io.StringIO(),
            )
    with psycopg.connect(migrated_postgres_url) as conn:
        assert conn.execute("SELECT * FROM seller_transfers ORDER BY id").fetchall() == before
        # The next run starts over from a fresh table.
        assert conn.execute("SELECT to_regclass('seller_transfers_rebuild')").fetchone() != (None,)


def test_a_rebuild_sets_aside_a_history_it_cannot_apply_and_switches_over(
    migrated_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Red-team F2: one event the projection cannot apply failed every rebuild.
    Now that transfer is set aside, the rebuild switches, and verify says so."""
    ids = ledger_with_transfers(migrated_url, 12)
    orphan_id = UUID("ffffffff-0000-4000-8000-000000000000")
    with Ledger.open(migrated_url) as ledger:
        # A history that starts with a status change: no row to apply it to.
        orphan = Transfer.StatusSetByAdmin(  # type: ignore[call-arg]
            originator_id=orphan_id,
            originator_version=1,
            timestamp=datetime.now(UTC),
            from_status="pending",
            to_status="completed",
            actor="mallory",
            reason="no transfer to change",
            caused_by=None,
        )
        ledger.transfers.events.put([orphan])
        ledger.catch_up()
    assert cli(capsys, "rebuild", "--database-url", migrated_url)[0] == 0
    assert sorted(UUID(r["id"]) for r in table_rows(migrated_url)) == sorted(ids)
    with Ledger.open(migrated_url) as ledger:
        [aside] = quarantined(ledger.db)
    assert aside.transfer_id == orphan_id and "has no row to apply to" in aside.problem
    code, report, _ = cli(capsys, "audit", "verify", "--json", "--database-url", migrated_url)
    assert code == 1
    findings = json.loads(report)["findings"]
    assert [f["transfer_id"] for f in findings if f["check"] == "projection"] == [str(orphan_id)]


def test_the_bulk_decoder_reads_states_as_the_mapper_does_and_leaves_it_the_rest(
    migrated_sqlite_url: str,
) -> None:
    with Ledger.open(migrated_sqlite_url) as ledger:
        mapper = ledger.transfers.mapper
        transfer_id, _ = ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="o-1", amount=100, currency="usd"
        )
        change = Transfer.PayoutFailed(  # type: ignore[call-arg]
            originator_id=transfer_id,
            originator_version=2,
            timestamp=datetime.now(UTC),
            from_status="pending",
            to_status="failed",
            error="429",
            next_retry_at=PARIS_SPRING,
            actor=SYSTEM,
            reason=None,
            caused_by=None,
        )
        [created] = ledger.transfers.events.get(transfer_id)
        stored = [mapper.to_stored_event(e) for e in (created, change)]
    decoder = HistoryDecoder(mapper.to_domain_event)

    def fast(event: StoredEvent) -> Any:
        return decoder(str(transfer_id), event.originator_version, event.topic, event.state)

    light = [fast(e) for e in stored]
    assert [type(e) for e in light] == [Transfer.Created, Transfer.PayoutFailed]
    assert isinstance(light[1].next_retry_at, dict)  # still encoded: decoded in the row
    full = [mapper.to_domain_event(e) for e in stored]
    assert compared_values(replay_history(light, strict=True)) == compared_values(
        replay_history(full, strict=True)
    )
    # Another encoded type, or bytes that are not a JSON object: the mapper's own decode.
    other = StoredEvent(
        stored[1].originator_id,
        2,
        stored[1].topic,
        stored[1].state[:-1] + b',"extra":{"_type_":"uuid_hex","_data_":"' + b"0" * 32 + b'"}}',
    )
    assert fast(other).extra == UUID(int=0)
    for broken in (b"[1, 2]", b"{not json"):
        with pytest.raises(Exception) as raised:
            mapper.to_domain_event(StoredEvent(stored[1].originator_id, 2, stored[1].topic, broken))
        with pytest.raises(type(raised.value)):
            fast(StoredEvent(stored[1].originator_id, 2, stored[1].topic, broken))


def peak_memory_rebuilding(url: str) -> int:
    with Ledger.open(url) as ledger:
        decode = ledger.transfers.mapper.to_domain_event
        tracemalloc.start()
        try:
            rebuild(ledger.db, decode, workers=1, progress=io.StringIO())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return peak


def test_rebuild_memory_stays_flat_as_the_log_grows(migrated_postgres_url: str) -> None:
    """PostgreSQL's bulk load. (SQLite projects batch after batch, as the live
    projection does: its peak is one batch's.)"""
    with Ledger.open(migrated_postgres_url) as ledger:
        import_pending(ledger, 1500, "small")
    small = peak_memory_rebuilding(migrated_postgres_url)
    with Ledger.open(migrated_postgres_url) as ledger:
        import_pending(ledger, 10500, "more")
    large = peak_memory_rebuilding(migrated_postgres_url)
    # Eight times the transfers; the rebuild holds one chunk of events and one
    # history at a time, so its peak barely moves.
    assert large < small * 1.5 + 256 * 1024, (small, large)
