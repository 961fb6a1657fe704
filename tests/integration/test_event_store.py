"""The event store the ledger configures: what goes in comes out, in order."""

from __future__ import annotations

from uuid import uuid4

import pytest
from eventsourcing.application import Application
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder

from ledger.storage import FunctionAppendPostgresRecorder
from tests.ledgers import Ledger
from tests.unit.builders import a_new_transfer


def test_a_batch_append_reads_back_byte_for_byte_in_notification_order(
    migrated_url: str,
) -> None:
    with Ledger.open(migrated_url) as ledger:
        if ledger.db.dialect == "postgresql":
            assert isinstance(ledger.transfers.recorder, FunctionAppendPostgresRecorder)
        # Bytes that text escaping would mangle: NUL, backslashes, quotes, non-UTF-8.
        batch = [
            StoredEvent(uuid4(), version, f"topic.{i}", bytes([0, 92, 39, 34, 255, i]))
            for i in range(50)
            for version in (1, 2)
        ]
        ids = ledger.transfers.recorder.insert_events(batch)
        assert ids is not None and list(ids) == sorted(ids) and len(set(ids)) == len(batch)
        notifications = ledger.transfers.recorder.select_notifications(ids[0], len(batch))
    assert [n.id for n in notifications] == list(ids)
    assert [(n.originator_id, n.originator_version, n.topic, n.state) for n in notifications] == [
        (e.originator_id, e.originator_version, e.topic, e.state) for e in batch
    ]


def test_reading_one_transfer_gives_what_the_library_s_own_read_gives(migrated_url: str) -> None:
    """The PostgreSQL recorder composes its read statements once: every
    combination of bounds, order and limit reads what the library's read does."""
    with Ledger.open(migrated_url) as ledger:
        recorder = ledger.transfers.recorder
        transfer_id = uuid4()
        recorder.insert_events(
            [StoredEvent(transfer_id, v, "topic", bytes([v, 0, 255])) for v in range(1, 8)]
            + [StoredEvent(uuid4(), 1, "other", b"x")]
        )
        # The library's own read, past the ledger's override.
        library = (
            PostgresApplicationRecorder.select_events.__get__(recorder)
            if isinstance(recorder, FunctionAppendPostgresRecorder)
            else None
        )
        for gt in (None, 0, 3):
            for lte in (None, 5, 7):
                for desc in (False, True):
                    for limit in (None, 2):
                        read = recorder.select_events(
                            transfer_id, gt=gt, lte=lte, desc=desc, limit=limit
                        )
                        versions = [
                            v
                            for v in range(1, 8)
                            if (gt is None or v > gt) and (lte is None or v <= lte)
                        ]
                        versions = versions[::-1] if desc else versions
                        versions = versions[:limit] if limit else versions
                        assert [(e.originator_version, e.state) for e in read] == [
                            (v, bytes([v, 0, 255])) for v in versions
                        ]
                        if library is not None:
                            assert read == library(
                                transfer_id, gt=gt, lte=lte, desc=desc, limit=limit
                            )


def test_saving_transfers_records_what_the_library_s_own_save_records(
    migrated_url: str,
) -> None:
    """Transfers.save collects the events itself (the library's save asks two
    runtime-checked Protocols of every object): two transfers saved at once
    are recorded as Application.save records two others (their events in the
    same order, with notification ids in log order), and each is stored and
    has its row."""
    with Ledger.open(migrated_url) as ledger:
        ours = [a_new_transfer(order_ref=f"ours-{i}") for i in range(2)]
        theirs = [a_new_transfer(order_ref=f"theirs-{i}") for i in range(2)]
        for transfer in ours + theirs:
            transfer.record_payout_succeeded(
                stripe_transfer_id=f"tr_{transfer.id.hex[:12]}",
                actor="system:payout-manager",
                caused_by=None,
            )
        saved = ledger.transfers.save(*ours)
        library = Application.save(ledger.transfers, *theirs, aggregates=theirs)

        for recordings, transfers in ((saved, ours), (library, theirs)):
            assert [
                (r.domain_event.originator_id, r.domain_event.originator_version)
                for r in recordings
            ] == [(t.id, v) for t in transfers for v in (1, 2)]
            ids = [r.notification.id for r in recordings]
            assert ids == sorted(ids) and len(set(ids)) == 4
        for transfer in ours + theirs:
            assert not transfer.pending_events
            assert ledger.transfers.get(transfer.id) == transfer
            row = ledger.service.get(transfer.id)
            assert (row.status, row.version) == ("completed", 2)

        refused = a_new_transfer(order_ref="refused")
        with pytest.raises(TypeError, match="saves transfers"):
            ledger.transfers.save(refused, object())
        assert len(refused.pending_events) == 1
        assert list(ledger.transfers.events.get(refused.id)) == []
