"""The seller_transfers projection: written with every append, exactly in step
with the events, once each, never backwards; the catch-up all-or-nothing per
batch, and a transfer it cannot apply set aside; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent

from ledger.domain import STATE_FIELDS, Transfer
from ledger.projections.projection import SellerTransfersProjection, quarantined
from ledger.projections.queries import list_transfers
from tests.ledgers import Ledger
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


def append_without_rows(ledger: Ledger, *transfers: Transfer) -> None:
    """Append these transfers' events the way a writer that does not write
    their rows leaves them (an older version of the ledger, another writer):
    bare events, linked into the chain but not projected."""
    ledger.transfers.events.put([e for t in transfers for e in t.collect_events()])


def new_transfer(order: str, amount: int = 5) -> Transfer:
    return Transfer.create(
        seller_account_id="acct_9", order_ref=order, amount=amount, currency="usd", actor="t"
    )


def test_a_batch_that_fails_midway_writes_neither_rows_nor_position(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure that is not the events' own (the connection, a lock timeout)
    leaves the batch as if never tried: it is tried again whole."""
    make_history(ledger, count=2)
    position = ledger.projection.position()
    rows_before = table(ledger)
    append_without_rows(ledger, *(new_transfer(f"late-{i}") for i in range(4)))
    broken = SellerTransfersProjection(ledger.db, ledger.transfers.mapper.to_domain_event)

    def lose_the_connection(*_: object) -> None:
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(broken, "_apply", lose_the_connection)
    with pytest.raises(Exception, match="server closed the connection"):
        broken.catch_up()
    assert ledger.projection.position() == position
    assert table(ledger) == rows_before
    assert quarantined(ledger.db) == []
    # The healthy projection then applies all four, once.
    assert ledger.catch_up() == 4
    assert len(table(ledger)) == len(rows_before) + 4


def test_an_event_that_cannot_be_read_sets_its_transfer_aside_and_the_rest_goes_on(
    ledger: Ledger,
) -> None:
    """Red-team F2: one event the projection cannot apply wedged the read side
    for good. Now that transfer is quarantined, reported, and passed over."""
    make_history(ledger, count=2)
    late = [new_transfer(f"late-{i}") for i in range(4)]
    append_without_rows(ledger, *late)
    decode = ledger.transfers.mapper.to_domain_event

    def decode_but_not_the_third(stored: StoredEvent) -> Any:
        if stored.originator_id == late[2].id:
            raise ValueError("garbled bytes")
        return decode(stored)

    assert SellerTransfersProjection(ledger.db, decode_but_not_the_third).catch_up() == 4
    assert ledger.projection.position() == max_notification_id(ledger)
    assert set(table(ledger)) >= {late[0].id, late[1].id, late[3].id}
    assert late[2].id not in table(ledger)
    [aside] = quarantined(ledger.db)
    assert (aside.transfer_id, aside.version) == (late[2].id, 1)
    assert "cannot be read: ValueError" in aside.problem


def test_a_row_the_database_cannot_store_sets_its_transfer_aside(ledger: Ledger) -> None:
    poisoned = new_transfer("poisoned")
    [created] = poisoned.collect_events()
    object.__setattr__(created, "order_ref", "order\x00with a NUL")  # written past the validators
    ledger.transfers.events.put([created])
    healthy = new_transfer("healthy")
    append_without_rows(ledger, healthy)

    assert ledger.catch_up() == 2

    assert list(table(ledger)) == [healthy.id]
    [aside] = quarantined(ledger.db)
    assert aside.transfer_id == poisoned.id and "cannot be stored" in aside.problem
    # Every command and read still works.
    ledger.create_transfer(seller_account_id="acct_1", order_ref="after", amount=1, currency="usd")
    assert len(ledger.list()) == 2


def test_an_event_for_a_transfer_without_a_row_is_quarantined_not_silently_skipped(
    ledger: Ledger,
) -> None:
    transfer_id, _ = ledger.create_transfer(
        seller_account_id="acct_1", order_ref="o-1", amount=10, currency="usd"
    )
    with ledger.db.transaction(write=True) as cursor:
        cursor.execute("DELETE FROM seller_transfers")
    transfer = ledger.transfers.get(transfer_id)
    transfer.set_status_by_admin("failed", actor="alice", reason="bounced")
    append_without_rows(ledger, transfer)

    assert ledger.catch_up() == 1

    [aside] = quarantined(ledger.db)
    assert aside.transfer_id == transfer_id and "has no row" in aside.problem


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
            append_without_rows(writer, transfer)
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


def test_an_append_writes_its_rows_and_moves_the_position_in_its_own_transaction(
    ledger: Ledger,
) -> None:
    ledger.create_transfer(seller_account_id="acct_1", order_ref="o-1", amount=10, currency="usd")
    assert ledger.projection.position() == max_notification_id(ledger)
    # Someone else's event, written without its row...
    someone_elses = new_transfer("o-2", amount=20)
    append_without_rows(ledger, someone_elses)
    # ...so an append after it writes its own row, but leaves the position
    # where it is: the event before it is not projected yet.
    before = ledger.projection.position()
    mine, _ = ledger.create_transfer(
        seller_account_id="acct_3", order_ref="o-3", amount=30, currency="usd"
    )
    assert ledger.show(mine).amount == 30
    assert ledger.projection.position() == before
    # The catch-up projects the other one, and passes over mine (version guard).
    assert ledger.catch_up() == 2
    assert ledger.show(someone_elses.id).amount == 20
    assert ledger.projection.position() == max_notification_id(ledger)
    # Now nothing lags: the next append moves the position itself.
    again, _ = ledger.create_transfer(
        seller_account_id="acct_4", order_ref="o-4", amount=40, currency="usd"
    )
    assert ledger.projection.position() == max_notification_id(ledger)
    assert ledger.show(again).amount == 40


def test_reads_never_write_and_the_catch_up_projects_what_another_writer_left(
    ledger: Ledger,
) -> None:
    append_without_rows(ledger, new_transfer("o-5", amount=50))
    assert ledger.list() == []
    assert ledger.ensure_current() == 1
    assert [view.order_ref for view in ledger.list()] == ["o-5"]
    assert ledger.projection.position() == max_notification_id(ledger)
