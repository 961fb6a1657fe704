"""The tamper-evidence chain: one link per event, in log order, made in the
same transaction as the event (since migration 0012; on PostgreSQL by
`ledger_append` itself, migrations 0018 and 0019).

    link(position) = sha256(link(previous position) || position || transfer id
                            || version || topic || state)

with GENESIS (32 zero bytes) before the first, and each link numbered (`seq`,
1, 2, 3...) so that a link deleted from the middle, or a chain cut short,
shows on its own. `InlineLinks` links every append's events inside the
append; `seal` links what a database written before that holds (`ledger
migrate` runs it once). From then on an event without a link is a finding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from ledger import values
from ledger.storage import Appended, Cursor, Database

GENESIS: Final = bytes(32)
SEAL_BATCH: Final = 2000


def link(previous: bytes, position: int, event: StoredEvent) -> bytes:
    """The link for `event` at `position`. Every variable-length part is
    length-prefixed, so no two different events can hash the same bytes."""
    topic = event.topic.encode()
    digest = hashlib.sha256(previous)
    digest.update(position.to_bytes(8, "big"))
    digest.update(values.as_uuid(event.originator_id).bytes)
    digest.update(event.originator_version.to_bytes(8, "big"))
    digest.update(len(topic).to_bytes(4, "big") + topic)
    digest.update(len(event.state).to_bytes(8, "big") + event.state)
    return digest.digest()


@dataclass(frozen=True)
class Head:
    position: int
    link: bytes
    seq: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"position": self.position, "link": self.link.hex(), "links": self.seq}


def head(db: Database) -> Head | None:
    """The newest link: what `ledger audit head` prints for an operator to
    keep outside the database."""
    with db.transaction(write=False) as cursor:
        return _head(cursor)


def _head(cursor: Cursor) -> Head | None:
    cursor.execute("SELECT position, link, seq FROM event_chain ORDER BY seq DESC LIMIT 1")
    row = cursor.fetchone()
    if row is None:
        return None
    return Head(int(row["position"]), bytes(row["link"]), int(row["seq"]))


class InlineLinks:
    """The append hook that links each append's events in its own transaction
    (ledger.storage.AppendHook). Under the events table's lock, so links are
    made in commit order and the newest link is the previous one."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def after_insert(self, cursor: Cursor, appended: Appended) -> None:
        assert appended.positions is not None  # SQLite knows them
        _link_after_head(cursor, self.db, zip(appended.positions, appended.events, strict=True))

    def arguments(self, appended: Appended) -> dict[str, Any]:
        # PostgreSQL links in SQL (ledger_append, as migrations 0018 and 0019 define
        # it), where the events' positions are.
        return {"link": True}


def _link_after_head(
    cursor: Cursor, db: Database, events: Iterable[tuple[int, StoredEvent]]
) -> int:
    """Link `events` (in log order) after the chain's newest link; returns how many."""
    last = _head(cursor)
    previous, count = (last.link, last.seq) if last else (GENESIS, 0)
    rows = []
    for position, event in events:
        previous = link(previous, position, event)
        count += 1
        rows.append(
            (
                position,
                db.to_db_id(values.as_uuid(event.originator_id)),
                event.originator_version,
                previous,
                count,
            )
        )
    cursor.executemany(
        "INSERT INTO event_chain (position, transfer_id, version, link, seq)"
        " VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    return len(rows)


def seal(db: Database) -> int:
    """Link every event after the newest link that has none: what a database
    written before links were made in the append holds (`ledger migrate` runs
    this right after migration 0012). Returns how many. Never run while
    anything else appends: every append links its own events now, and an
    event this finds unlinked later is a finding, not work."""
    total = 0
    while True:
        with db.transaction(write=True) as cursor:
            if db.dialect == "postgresql":
                # Appends take this lock too: nothing is linked meanwhile.
                cursor.execute(f"LOCK TABLE {db.events_table} IN EXCLUSIVE MODE")
            last = _head(cursor)
            batch = db.select_stored_events_after(cursor, last.position if last else 0, SEAL_BATCH)
            linked = _link_after_head(cursor, db, batch)
        total += linked
        if linked < SEAL_BATCH:
            return total


# ----- verifying the chain -----------------------------------------------------------


@dataclass(frozen=True)
class ChainFinding:
    position: int
    transfer_id: str | None
    version: int | None
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
    # Events whose link holds or was edited, and events without a link.
    sealed: int = 0
    unsealed: int = 0
    head: Head | None = None
    recorded_head_found: bool | None = None


# What verify says of each kind of trouble, on SQLite (`verify_chain`) and
# PostgreSQL (`check_chain`) in the same words.
DELETED: Final = "event deleted: its link has no event"
UNLINKED: Final = (
    "event without a link: inserted past the ledger (appended by hand, or by an older"
    " version), or its link was deleted"
)
EDITED: Final = "event edited or moved: it does not match its link"


def _gap(previous_seq: int, seq: int, previous_position: int | None, position: int) -> str:
    missing = (
        f"link {previous_seq + 1}"
        if seq == previous_seq + 2
        else (f"links {previous_seq + 1} to {seq - 1}")
    )
    where = (
        f"between positions {previous_position} and {position}"
        if previous_position is not None
        else f"before position {position}"
    )
    return (
        f"{missing} of the chain missing {where}: deleted, with their events or alone"
        " (this link follows the gap and cannot be checked)"
    )


def stream_links(
    db: Database, batch_size: int = 5000
) -> Iterator[tuple[int, str, int, bytes, int]]:
    """The stored chain, in position order, a batch at a time."""
    after = 0
    while True:
        with db.transaction(write=False) as cursor:
            cursor.execute(
                "SELECT position, transfer_id, version, link, seq FROM event_chain"
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
                int(row["seq"]),
            )
        if len(rows) < batch_size:
            return
        after = int(rows[-1]["position"])


def verify_chain(
    events: Iterable[tuple[int, StoredEvent]],
    links: Iterable[tuple[int, str, int, bytes, int]],
    recorded_head: bytes | None = None,
) -> ChainReport:
    """Walk the events (in log order) and the stored links side by side. Each
    link is recomputed from the STORED link before it, so every tampered
    position shows on its own instead of everything after the first one; a
    link whose number does not follow the one before it marks a gap, and is
    not blamed for it."""
    report = ChainReport(findings=[])
    if recorded_head is not None:
        report.recorded_head_found = False
    previous: tuple[int, bytes, int] | None = None  # position, link, seq
    pending = iter(links)
    next_link = next(pending, None)

    def take(link_row: tuple[int, str, int, bytes, int], event: StoredEvent | None) -> None:
        nonlocal previous
        position, transfer_id, version, stored, seq = link_row
        previous_seq = previous[2] if previous else 0
        if event is None:
            report.findings.append(ChainFinding(position, transfer_id, version, DELETED))
        elif seq != previous_seq + 1:
            report.findings.append(
                ChainFinding(
                    position,
                    None,
                    None,
                    _gap(previous_seq, seq, previous[0] if previous else None, position),
                )
            )
            report.sealed += 1
        else:
            if link(previous[1] if previous else GENESIS, position, event) != stored:
                report.findings.append(
                    ChainFinding(position, _canonical(transfer_id), version, EDITED)
                )
            report.sealed += 1
        if recorded_head is not None and stored == recorded_head:
            report.recorded_head_found = True
        if event is not None:
            report.head = Head(position, stored, seq)
        previous = (position, stored, seq)

    for position, event in events:
        while next_link is not None and next_link[0] < position:
            take(next_link, None)
            next_link = next(pending, None)
        if next_link is None or next_link[0] > position:
            report.unsealed += 1
            report.findings.append(
                ChainFinding(
                    position,
                    _canonical(str(event.originator_id)),
                    event.originator_version,
                    UNLINKED,
                )
            )
            continue
        take(next_link, event)
        next_link = next(pending, None)
    while next_link is not None:
        take(next_link, None)
        next_link = next(pending, None)
    report.findings.sort(key=lambda f: f.position)
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
        (kind, position, transfer_id, version, stored, seq, previous_seq, previous_position) = row[
            :8
        ]
        sealed, unsealed, found, head_at = row[8:]
        report.sealed, report.unsealed = int(sealed), int(unsealed)
        if recorded_head is not None:
            report.recorded_head_found = bool(found)
        if kind in _LINKED and position == head_at:
            report.head = Head(int(position), bytes(stored), int(seq))
        if kind == "deleted":
            report.findings.append(
                ChainFinding(int(position), str(transfer_id), int(version), DELETED)
            )
        elif kind == "unlinked":
            report.findings.append(
                ChainFinding(int(position), str(transfer_id), int(version), UNLINKED)
            )
        elif kind == "edited":
            report.findings.append(
                ChainFinding(int(position), str(transfer_id), int(version), EDITED)
            )
        elif kind == "after_gap":
            report.findings.append(
                ChainFinding(
                    int(position),
                    None,
                    None,
                    _gap(
                        int(previous_seq or 0),
                        int(seq),
                        None if previous_position is None else int(previous_position),
                        int(position),
                    ),
                )
            )
    return report


_LINKED: Final = ("linked", "edited", "after_gap")

# verify_chain in one statement. Each link is recomputed from the STORED link
# before it (lag), exactly as verify_chain does, so no recursion is needed and
# every tampered position shows on its own. The hash is chain.link() in SQL,
# as ledger_append (migrations 0018 and 0019) makes it. Every position is one of: linked (its
# link holds), edited (it does not), after_gap (its link's number does not
# follow the one before: links are missing there), deleted (a link without
# its event) or unlinked (an event without a link). `checked` is materialized:
# narrow rows, each hashed once. Only the problems come back, plus the head's
# and the last position's rows, each with the counts.
_CHECK_IN_POSTGRESQL: Final = """
WITH links AS (
    SELECT position, transfer_id, version, link, seq,
           coalesce(lag(link) OVER (ORDER BY position), ?) AS previous,
           lag(seq) OVER (ORDER BY position) AS previous_seq,
           lag(position) OVER (ORDER BY position) AS previous_position
    FROM event_chain
), checked AS MATERIALIZED (
    SELECT coalesce(e.notification_id, l.position) AS position,
           coalesce(e.originator_id, l.transfer_id)::text AS transfer_id,
           coalesce(e.originator_version, l.version) AS version,
           l.link, l.seq, l.previous_seq, l.previous_position,
           CASE
               WHEN e.notification_id IS NULL THEN 'deleted'
               WHEN l.position IS NULL THEN 'unlinked'
               WHEN l.seq <> coalesce(l.previous_seq, 0) + 1 THEN 'after_gap'
               WHEN l.link = sha256(
                   l.previous || int8send(e.notification_id) || uuid_send(e.originator_id)
                   || int8send(e.originator_version)
                   || int4send(octet_length(convert_to(e.topic, 'UTF8')))
                   || convert_to(e.topic, 'UTF8') || int8send(octet_length(e.state)::bigint)
                   || e.state
               ) THEN 'linked'
               ELSE 'edited'
           END AS kind
    FROM links l FULL JOIN {events} e ON e.notification_id = l.position
), summary AS (
    SELECT count(*) FILTER (WHERE kind IN ('linked', 'edited', 'after_gap')) AS sealed,
           count(*) FILTER (WHERE kind = 'unlinked') AS unsealed,
           bool_or(kind IN ('linked', 'edited', 'after_gap', 'deleted') AND link = ?)
               AS recorded_found,
           max(position) FILTER (WHERE kind IN ('linked', 'edited', 'after_gap')) AS head_at,
           max(position) AS last_at
    FROM checked
)
SELECT c.kind, c.position, c.transfer_id, c.version, c.link, c.seq, c.previous_seq,
       c.previous_position, s.sealed, s.unsealed, s.recorded_found, s.head_at
FROM checked c CROSS JOIN summary s
WHERE c.kind IN ('deleted', 'unlinked', 'edited', 'after_gap')
   OR c.position IN (s.head_at, s.last_at)
ORDER BY c.position
"""
