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


def check_chain(db: Database, recorded_head: bytes | None = None) -> ChainReport:
    """The whole chain checked, with the same findings `verify_chain` makes:
    on PostgreSQL by the database itself (`_CHECK_IN_POSTGRESQL`), which
    neither sends every event's bytes over nor hashes them one by one in
    Python; on SQLite, which has no sha256(), by `verify_chain`."""
    if db.dialect != "postgresql":
        return verify_chain(db.stream_stored_events(order="log"), stream_links(db), recorded_head)
    report = ChainReport(findings=[])
    if recorded_head is not None:
        report.recorded_head_found = False
    sql = _CHECK_IN_POSTGRESQL.format(events=db.events_table)
    for row in db.stream_rows(sql, (GENESIS, recorded_head)):
        kind, position, transfer_id, version, stored, sealed, unsealed, found, head_at = row
        report.sealed, report.unsealed = int(sealed), int(unsealed)
        if recorded_head is not None:
            report.recorded_head_found = bool(found)
        if kind in _SEALED and position == head_at:
            report.head = Head(int(position), bytes(stored))
        if kind in _PROBLEMS:
            report.findings.append(
                ChainFinding(int(position), str(transfer_id), int(version), _PROBLEMS[kind])
            )
    return report


# What verify_chain says of each kind of position, in the same words.
_PROBLEMS: Final = {
    "deleted": "event deleted: its link has no event",
    "inserted": "event inserted: no link at its position inside the sealed chain",
    "edited": "event edited or moved: it does not match its link",
}
_SEALED: Final = ("sealed", "edited")

# verify_chain in one statement. Each link is recomputed from the STORED link
# before it (lag), exactly as verify_chain does, so no recursion is needed and
# every tampered position shows on its own. `link` below is chain.link() in SQL:
# int8send/int4send are the big-endian integers, uuid_send the id's 16 bytes.
# Every position is one of: sealed (its link holds), edited (it does not),
# deleted (a link without its event), inserted (an event without a link, before
# the last link) or unsealed (an event after the last link). `checked` is
# materialized: narrow rows, each hashed once. Only the problems come back, plus
# the head's and the last position's rows, each with the counts.
_CHECK_IN_POSTGRESQL: Final = """
WITH links AS (
    SELECT position, transfer_id, version, link,
           coalesce(lag(link) OVER (ORDER BY position), ?) AS previous
    FROM event_chain
), checked AS MATERIALIZED (
    SELECT coalesce(e.notification_id, l.position) AS position,
           coalesce(e.originator_id, l.transfer_id)::text AS transfer_id,
           coalesce(e.originator_version, l.version) AS version,
           l.link,
           CASE
               WHEN e.notification_id IS NULL THEN 'deleted'
               WHEN l.position IS NULL THEN
                   CASE WHEN e.notification_id < (SELECT max(position) FROM event_chain)
                        THEN 'inserted' ELSE 'unsealed' END
               WHEN l.link = sha256(
                   l.previous || int8send(e.notification_id) || uuid_send(e.originator_id)
                   || int8send(e.originator_version)
                   || int4send(octet_length(convert_to(e.topic, 'UTF8')))
                   || convert_to(e.topic, 'UTF8') || int8send(octet_length(e.state)::bigint)
                   || e.state
               ) THEN 'sealed'
               ELSE 'edited'
           END AS kind
    FROM links l FULL JOIN {events} e ON e.notification_id = l.position
), summary AS (
    SELECT count(*) FILTER (WHERE kind IN ('sealed', 'edited')) AS sealed,
           count(*) FILTER (WHERE kind = 'unsealed') AS unsealed,
           bool_or(kind IN ('sealed', 'edited') AND link = ?) AS recorded_found,
           max(position) FILTER (WHERE kind IN ('sealed', 'edited')) AS head_at,
           max(position) AS last_at
    FROM checked
)
SELECT c.kind, c.position, c.transfer_id, c.version, c.link,
       s.sealed, s.unsealed, s.recorded_found, s.head_at
FROM checked c CROSS JOIN summary s
WHERE c.kind IN ('deleted', 'inserted', 'edited') OR c.position IN (s.head_at, s.last_at)
ORDER BY c.position
"""
