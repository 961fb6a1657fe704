"""The event store the ledger configures: what goes in comes out, in order."""

from __future__ import annotations

from uuid import uuid4

from eventsourcing.persistence import StoredEvent

from ledger.storage import FunctionAppendPostgresRecorder
from tests.ledgers import Ledger


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
