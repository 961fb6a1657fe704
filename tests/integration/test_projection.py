"""The seller_transfers projection: exactly in step with the events, once each,
never backwards, all-or-nothing per batch, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import StoredEvent

from ledger.bootstrap import Ledger
from ledger.domain import STATE_FIELDS, Transfer
from projections.seller_transfers import (
    ProjectionError,
    SellerTransfersProjection,
    list_transfers,
)
from tests.paying import pay_out


@pytest.fixture
def ledger(migrated_url: str) -> Iterator[Ledger]:
    with Ledger.open(migrated_url) as opened:
        yield opened


def make_history(ledger: Ledger, count: int = 12) -> list[UUID]:
    """Transfers in a spread of states, through the ledger's own commands."""
    ids = []
    for i in range(count):
        transfer_id, _ = ledger.create_transfer(
            seller_account_id=f"acct_{i}", order_ref=f"order-{i}", amount=1000 + i, currency="eur"
        )
        ids.append(transfer_id)
        if i % 3 == 1:
            ledger.set_status(transfer_id, "completed", actor="alice", reason="paid by hand")
        if i % 3 == 2:
            pay_out(ledger, transfer_id)
        if i % 3 == 2:
            ledger.request_reversal(
                transfer_id, request_ref=f"refund-{i}", amount=500, reason="customer refund"
            )
    return ids


def table(ledger: Ledger) -> dict[UUID, dict[str, Any]]:
    """The read table as it is (Ledger.list would first catch up)."""
    return {view.id: view.as_json() for view in list_transfers(ledger.db)}


def max_notification_id(ledger: Ledger) -> int:
    return int(ledger.transfers.recorder.max_notification_id() or 0)


def test_every_row_equals_its_aggregate_replayed_from_the_events(ledger: Ledger) -> None:
    ids = make_history(ledger)
    for transfer_id in ids:
        transfer = ledger.transfers.get(transfer_id)
        row = ledger.show(transfer_id)
        for field in STATE_FIELDS:
            assert getattr(row, field) == getattr(transfer, field), field
        assert row.version == transfer.version
        assert row.updated_at == transfer.modified_on
        assert row.created_at == transfer.created_on


def test_the_tracking_position_is_the_last_event_after_every_command(ledger: Ledger) -> None:
    make_history(ledger, count=3)
    assert ledger.projection.position() == max_notification_id(ledger)
    assert ledger.catch_up() == 0


def test_replaying_the_whole_log_again_changes_no_row(ledger: Ledger) -> None:
    make_history(ledger)
    before = table(ledger)
    # Rewind the tracking position: every event is offered again, and the
    # version guard must leave each row as it is.
    with ledger.db.transaction(write=True) as cursor:
        cursor.execute(
            "UPDATE projection_tracking SET position = 0 WHERE name = 'seller_transfers'"
        )
    assert ledger.catch_up() == max_notification_id(ledger)
    assert table(ledger) == before


def test_a_batch_that_fails_midway_writes_neither_rows_nor_position(ledger: Ledger) -> None:
    make_history(ledger, count=2)
    position = ledger.projection.position()
    rows_before = table(ledger)
    # Four more events, not yet projected: save without the Ledger's catch-up.
    for i in range(4):
        ledger.transfers.save(
            Transfer.create(
                seller_account_id="acct_9",
                order_ref=f"late-{i}",
                amount=5,
                currency="usd",
                actor="system:test",
            )
        )

    decoded = 0

    def decode_then_fail(stored: StoredEvent) -> Any:
        nonlocal decoded
        decoded += 1
        if decoded == 3:
            raise RuntimeError("disk on fire")
        return ledger.transfers.mapper.to_domain_event(stored)

    broken = SellerTransfersProjection(ledger.db, decode_then_fail)
    with pytest.raises(RuntimeError, match="disk on fire"):
        broken.catch_up()
    assert ledger.projection.position() == position
    assert table(ledger) == rows_before
    # The healthy projection then applies all four, once.
    assert ledger.catch_up() == 4
    assert len(table(ledger)) == len(rows_before) + 4


def test_an_event_for_a_transfer_without_a_row_is_an_error_not_a_silent_skip(
    ledger: Ledger,
) -> None:
    transfer_id, _ = ledger.create_transfer(
        seller_account_id="acct_1", order_ref="o-1", amount=10, currency="usd"
    )
    with ledger.db.transaction(write=True) as cursor:
        cursor.execute("DELETE FROM seller_transfers")
    ledger.transfers.set_status(transfer_id, "failed", actor="alice", reason="bounced")
    with pytest.raises(ProjectionError, match="has no row"):
        ledger.catch_up()


def test_concurrent_projectors_apply_each_event_exactly_once(migrated_url: str) -> None:
    with Ledger.open(migrated_url) as writer:
        ids = []
        for i in range(60):
            transfer = Transfer.create(
                seller_account_id="acct_7",
                order_ref=f"o-{i}",
                amount=100,
                currency="usd",
                actor="system:test",
            )
            transfer.set_status_by_admin("failed", actor="alice", reason="bounced")
            transfer.set_status_by_admin("completed", actor="alice", reason="paid by hand")
            writer.transfers.save(transfer)
            ids.append(transfer.id)
        expected_position = max_notification_id(writer)

    processed: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def project() -> None:
        try:
            with Ledger.open(migrated_url) as ledger:
                barrier.wait(timeout=30)
                processed.append(ledger.projection.catch_up(batch_size=7))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=project) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    # Between them they processed every event once: no double application.
    assert sum(processed) == expected_position
    with Ledger.open(migrated_url) as ledger:
        rows = table(ledger)
        assert ledger.projection.position() == expected_position
    assert set(rows) == set(ids)
    assert {row["status"] for row in rows.values()} == {"completed"}
    assert {row["version"] for row in rows.values()} == {3}


def test_events_recorded_here_are_projected_from_memory_only_when_nothing_came_between(
    ledger: Ledger,
) -> None:
    ledger.create_transfer(seller_account_id="acct_1", order_ref="o-1", amount=10, currency="usd")
    # Someone else's event, not yet projected...
    ledger.transfers.save(
        Transfer.create(
            seller_account_id="acct_2",
            order_ref="o-2",
            amount=20,
            currency="usd",
            actor="system:test",
        )
    )
    mine = Transfer.create(
        seller_account_id="acct_3",
        order_ref="o-3",
        amount=30,
        currency="usd",
        actor="system:test",
    )
    recordings = ledger.transfers.save(mine)
    recorded = [(r.notification.id, r.domain_event) for r in recordings]
    # ...so projecting mine from memory would skip it: refused, nothing written.
    assert ledger.projection.process_recorded(recorded) is False
    assert len(table(ledger)) == 1
    assert ledger.catch_up() == 2
    # Now mine are next in line: projected from memory.
    again = Transfer.create(
        seller_account_id="acct_4",
        order_ref="o-4",
        amount=40,
        currency="usd",
        actor="system:test",
    )
    recordings = ledger.transfers.save(again)
    assert ledger.projection.process_recorded(
        [(r.notification.id, r.domain_event) for r in recordings]
    )
    assert ledger.projection.position() == max_notification_id(ledger)
    assert ledger.show(again.id).amount == 40


def test_reads_first_project_what_an_interrupted_writer_left_behind(ledger: Ledger) -> None:
    # Appended, but the writer died before projecting it.
    ledger.transfers.save(
        Transfer.create(
            seller_account_id="acct_5",
            order_ref="o-5",
            amount=50,
            currency="usd",
            actor="system:test",
        )
    )
    assert [view.order_ref for view in ledger.list()] == ["o-5"]
    assert ledger.projection.position() == max_notification_id(ledger)
