"""The tamper-evidence chain: one link per event, in log order.

    link(position) = sha256(link(previous position) || position || transfer id
                            || version || topic || state)

with GENESIS (32 zero bytes) before the first. See migrations/*/0007 for why
links are sealed after the append rather than in it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from ledger.storage import Cursor, Database

GENESIS: Final = bytes(32)
SEAL_BATCH: Final = 2000


def link(previous: bytes, position: int, event: StoredEvent) -> bytes:
    """The link for `event` at `position`. Every variable-length part is
    length-prefixed, so no two different events can hash the same bytes."""
    topic = event.topic.encode()
    digest = hashlib.sha256(previous)
    digest.update(position.to_bytes(8, "big"))
    digest.update(UUID(str(event.originator_id)).bytes)
    digest.update(event.originator_version.to_bytes(8, "big"))
    digest.update(len(topic).to_bytes(4, "big") + topic)
    digest.update(len(event.state).to_bytes(8, "big") + event.state)
    return digest.digest()


@dataclass(frozen=True)
class Head:
    position: int
    link: bytes

    def as_json(self) -> dict[str, Any]:
        return {"position": self.position, "link": self.link.hex()}


def head(db: Database) -> Head | None:
    with db.transaction(write=False) as cursor:
        return _head(cursor)


def _head(cursor: Cursor) -> Head | None:
    cursor.execute("SELECT position, link FROM event_chain ORDER BY position DESC LIMIT 1")
    row = cursor.fetchone()
    return None if row is None else Head(int(row["position"]), bytes(row["link"]))


def seal(db: Database) -> int:
    """Link every event not linked yet; returns how many. Sealers take turns
    (a lock on the chain), and each batch commits on its own."""
    with db.transaction(write=False) as cursor:
        # Nothing new is the daemon's usual case: find out without a write lock.
        last = _head(cursor)
        cursor.execute(f"SELECT MAX({db.notification_id_column}) AS newest FROM {db.events_table}")
        row = cursor.fetchone()
    newest = int(row["newest"]) if row and row["newest"] is not None else 0
    if newest <= (last.position if last else 0):
        return 0
    total = 0
    while True:
        with db.transaction(write=True) as cursor:
            if db.dialect == "postgresql":
                # Blocks other sealers, not readers nor appends.
                cursor.execute("LOCK TABLE event_chain IN SHARE ROW EXCLUSIVE MODE")
            last = _head(cursor)
            after, previous = (last.position, last.link) if last else (0, GENESIS)
            batch = db.select_stored_events_after(cursor, after, SEAL_BATCH)
            rows = []
            for position, event in batch:
                previous = link(previous, position, event)
                rows.append(
                    (
                        position,
                        db.to_db_id(UUID(str(event.originator_id))),
                        event.originator_version,
                        previous,
                    )
                )
            # Through COPY on PostgreSQL when the batch is large (a first seal
            # after a bulk import).
            db.upsert(
                cursor, "event_chain", ("position", "transfer_id", "version", "link"), rows, ""
            )
        total += len(rows)
        if len(rows) < SEAL_BATCH:
            return total


@dataclass(frozen=True)
class ChainFinding:
    position: int
    transfer_id: str
    version: int
    problem: str

    def as_json(self) -> dict[str, Any]:
        return {
            "transfer_id": self.transfer_id,
            "check": "chain",
            "position": self.position,
            "version": self.version,
            "problem": self.problem,
        }


@dataclass
class ChainReport:
    findings: list[ChainFinding]
    sealed: int = 0
    unsealed: int = 0
    head: Head | None = None
    recorded_head_found: bool | None = None


def stream_links(db: Database, batch_size: int = 5000) -> Iterator[tuple[int, str, int, bytes]]:
    """The stored chain, in position order, a batch at a time."""
    after = 0
    while True:
        with db.transaction(write=False) as cursor:
            cursor.execute(
                "SELECT position, transfer_id, version, link FROM event_chain"
                " WHERE position > ? ORDER BY position LIMIT ?",
                (after, batch_size),
            )
            rows = cursor.fetchall()
        for row in rows:
            yield (
                int(row["position"]),
                str(row["transfer_id"]),
                int(row["version"]),
                bytes(row["link"]),
            )
        if len(rows) < batch_size:
            return
        after = int(rows[-1]["position"])


def verify_chain(
    events: Iterable[tuple[int, StoredEvent]],
    links: Iterable[tuple[int, str, int, bytes]],
    recorded_head: bytes | None = None,
) -> ChainReport:
    """Walk the events (in log order) and the stored links side by side. Each
    link is recomputed from the STORED previous link, so every tampered
    position shows on its own instead of everything after the first one."""
    report = ChainReport(findings=[])
    if recorded_head is not None:
        report.recorded_head_found = False
    previous = GENESIS
    pending_links = iter(links)
    next_link = next(pending_links, None)
    for position, event in events:
        transfer_id, version = str(event.originator_id), event.originator_version
        # Links whose events are gone: deleted.
        while next_link is not None and next_link[0] < position:
            gone = next_link
            report.findings.append(
                ChainFinding(gone[0], gone[1], gone[2], "event deleted: its link has no event")
            )
            previous, next_link = gone[3], next(pending_links, None)
        if next_link is None:
            report.unsealed += 1
            continue
        if next_link[0] > position:
            report.findings.append(
                ChainFinding(
                    position,
                    _canonical(transfer_id),
                    version,
                    "event inserted: no link at its position inside the sealed chain",
                )
            )
            continue
        stored = next_link[3]
        if link(previous, position, event) != stored:
            report.findings.append(
                ChainFinding(
                    position,
                    _canonical(transfer_id),
                    version,
                    "event edited or moved: it does not match its link",
                )
            )
        report.sealed += 1
        if recorded_head is not None and stored == recorded_head:
            report.recorded_head_found = True
        report.head = Head(position, stored)
        previous, next_link = stored, next(pending_links, None)
    while next_link is not None:
        report.findings.append(
            ChainFinding(
                next_link[0], next_link[1], next_link[2], "event deleted: its link has no event"
            )
        )
        next_link = next(pending_links, None)
    return report


def _canonical(transfer_id: str) -> str:
    return str(UUID(transfer_id))
