"""Writers racing on one transfer: the matrix decides again on the newer state,
and nothing is appended twice."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import IntegrityError

from ledger.domain import Transfer
from ledger.errors import IdempotencyConflict, TransitionRefused
from ledger.importing import parse_lines
from tests.ledgers import Ledger
from tests.paying import pay_out


@pytest.fixture
def two_ledgers(migrated_url: str) -> Iterator[tuple[Ledger, Ledger]]:
    with Ledger.open(migrated_url) as first, Ledger.open(migrated_url) as second:
        yield first, second


def event_types(ledger: Ledger, transfer_id: object) -> list[str]:
    return [type(e).__name__ for e in ledger.transfers.events.get(transfer_id)]  # type: ignore[arg-type]


def test_a_command_that_lost_a_race_is_rerun_against_the_winners_state(
    two_ledgers: tuple[Ledger, Ledger],
) -> None:
    first, second = two_ledgers
    transfer_id, _ = first.create_transfer(
        seller_account_id="acct_1", order_ref="o-1", amount=100, currency="usd"
    )
    pay_out(first, transfer_id)
    raced = False

    def reverse_after_a_rival_does(transfer: Transfer) -> bool:
        nonlocal raced
        if not raced:
            raced = True
            # A rival process records a refund after we loaded the transfer...
            second.request_reversal(
                transfer_id, request_ref="refund-A", amount=None, reason="refund"
            )
        # ...so our save conflicts, and on the re-run the same request is
        # recognised as already recorded.
        return transfer.request_reversal(
            request_ref="refund-A", amount=None, actor="system:test", reason="refund"
        )

    recorded = first.transfers.change(transfer_id, reverse_after_a_rival_does)
    assert recorded is False
    assert event_types(first, transfer_id).count("ReversalRequested") == 1


def test_a_raced_change_that_becomes_illegal_is_refused_and_appends_nothing(
    two_ledgers: tuple[Ledger, Ledger],
) -> None:
    first, second = two_ledgers
    transfer_id, _ = first.create_transfer(
        seller_account_id="acct_1", order_ref="o-1", amount=100, currency="usd"
    )
    raced = False

    def fail_after_a_rival_completes(transfer: Transfer) -> None:
        nonlocal raced
        if not raced:
            raced = True
            second.set_status(transfer_id, "completed", actor="bob", reason="paid")
        transfer.set_status_by_admin("failed", actor="alice", reason="bounced")

    with pytest.raises(TransitionRefused, match="completed -> failed"):
        first.transfers.change(transfer_id, fail_after_a_rival_completes)
    assert event_types(first, transfer_id) == ["Created", "StatusSetByAdmin"]


def test_the_same_order_created_at_once_by_several_processes_is_one_transfer(
    migrated_url: str,
) -> None:
    ids: list[object] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def create() -> None:
        try:
            with Ledger.open(migrated_url) as ledger:
                barrier.wait(timeout=30)
                ids.append(
                    ledger.create_transfer(
                        seller_account_id="acct_1", order_ref="o-1", amount=100, currency="usd"
                    )[0]
                )
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert len(set(ids)) == 1 and len(ids) == 4
    with Ledger.open(migrated_url) as ledger:
        assert event_types(ledger, ids[0]) == ["Created"]
        assert len(ledger.list()) == 1


def test_an_import_and_a_create_racing_for_one_order_leave_one_transfer(
    migrated_url: str,
) -> None:
    """Red-team F3, raced: whichever of the two commits first reserves the
    order; the other is refused or finds the winner. Never two transfers."""
    imported_id = uuid4()
    outcomes: list[object] = []
    barrier = threading.Barrier(2)

    def import_it() -> None:
        with Ledger.open(migrated_url) as ledger:
            record = parse_lines(
                [
                    json.dumps(
                        {
                            "id": str(imported_id),
                            "seller_account_id": "acct_1",
                            "order_ref": "o-raced",
                            "amount": 100,
                            "currency": "usd",
                            "status": "pending",
                        }
                    )
                ]
            )
            barrier.wait(timeout=30)
            try:
                outcomes.append(ledger.import_transfers(record))
            except (IdempotencyConflict, IntegrityError) as refused:
                outcomes.append(refused)

    def create_it() -> None:
        with Ledger.open(migrated_url) as ledger:
            barrier.wait(timeout=30)
            outcomes.append(
                ledger.create_transfer(
                    seller_account_id="acct_1", order_ref="o-raced", amount=100, currency="usd"
                )[0]
            )

    for _ in range(5):
        threads = [threading.Thread(target=import_it), threading.Thread(target=create_it)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    with Ledger.open(migrated_url) as ledger:
        rows = [v for v in ledger.list() if v.order_ref == "o-raced"]
    assert len(rows) == 1, rows
    assert len(outcomes) == 10


def _import_lines(count: int, prefix: str) -> list[str]:
    return [
        json.dumps(
            {
                "id": str(uuid4()),
                "seller_account_id": "acct_1",
                "order_ref": f"{prefix}-{n}",
                "amount": 100 + n,
                "currency": "usd",
                "status": "pending",
            }
        )
        for n in range(count)
    ]


def test_an_import_whose_commit_answer_was_lost_is_imported_once(migrated_url: str) -> None:
    """After a dropped connection the library sends an append again; when the
    first had committed, the second fails on what it wrote (the orders'
    reservations, the events' keys). The import finds its own batch in the
    log, event for event, and goes on: imported, not an error, and nothing
    twice. Another writer's events for the same transfers (another import's:
    other timestamps) are still the conflict they are."""
    records = parse_lines(_import_lines(3, "o-lost-answer"))
    with Ledger.open(migrated_url) as ledger:
        recorder: Any = ledger.transfers.recorder
        append_prepared = recorder.append_prepared
        sent: list[object] = []

        def committed_then_sent_again(prepared: Any) -> Any:
            sent.append(append_prepared(prepared))  # commits; its answer is lost
            return append_prepared(prepared)

        recorder.append_prepared = committed_then_sent_again
        try:
            result = ledger.import_transfers(records)
        finally:
            del recorder.append_prepared

        assert len(sent) == 1
        assert (result.imported, result.already_present) == (3, 0)
        assert len(ledger.list()) == 3
        for record in records:
            assert event_types(ledger, record.transfer_id) == ["Imported"]

    others = parse_lines(_import_lines(2, "o-raced-import"))
    with Ledger.open(migrated_url) as ledger, Ledger.open(migrated_url) as rival:
        recorder = ledger.transfers.recorder
        append_prepared = recorder.append_prepared

        def beaten_to_it(prepared: Any) -> Any:
            rival.import_transfers(others)  # the same transfers, first
            return append_prepared(prepared)

        recorder.append_prepared = beaten_to_it
        try:
            with pytest.raises(IntegrityError):
                ledger.import_transfers(others)
        finally:
            del recorder.append_prepared


def test_a_create_whose_commit_answer_was_lost_says_it_created_the_transfer(
    migrated_url: str,
) -> None:
    """The same lost answer for a create: the second send meets the first's
    order reservation. The transfer is this call's, so it says created, and
    the order has one transfer with one event; a create of the same order
    afterwards says it was there already."""
    with Ledger.open(migrated_url) as ledger:
        recorder: Any = ledger.transfers.recorder
        insert_events = recorder.insert_events
        sent: list[object] = []

        def committed_then_sent_again(stored_events: Any, **kwargs: Any) -> Any:
            sent.append(insert_events(stored_events, **kwargs))  # commits; its answer is lost
            return insert_events(stored_events, **kwargs)

        recorder.insert_events = committed_then_sent_again
        try:
            transfer_id, created = ledger.create_transfer(
                seller_account_id="acct_1", order_ref="o-create-lost", amount=100, currency="usd"
            )
        finally:
            del recorder.insert_events

        assert len(sent) == 1
        assert created is True
        assert event_types(ledger, transfer_id) == ["Created"]
        again_id, again = ledger.create_transfer(
            seller_account_id="acct_1", order_ref="o-create-lost", amount=100, currency="usd"
        )
        assert (again_id, again) == (transfer_id, False)
