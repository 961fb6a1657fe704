"""`ledger audit verify`: does the ledger still tell the truth about itself?

1. Every history replays: it starts with a Created or Imported event,
   versions run 1, 2, 3..., each event's from_status is the previous
   to_status, and the transition matrix allows each change.
2. The read table equals the state replayed from each history, column by
   column (`updated_at` included); no row lacks events, no history lacks a row.
3. The hash chain holds (ledger/audit/chain.py), and, given an operator's
   recorded head, contains it.

One pass does 1 and 2: the events, streamed by transfer and version, merged
with the read table, streamed by id (PostgreSQL orders both by the uuid; on
SQLite both are text that sorts the same way: lowercase hex, the table's with
dashes at fixed places). Meanwhile, on PostgreSQL, the database checks the
chain on a connection of its own (chain.check_chain). Memory holds one
history and one row at a time, however long the log.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from ledger import values
from ledger.audit.chain import ChainReport, check_chain
from ledger.domain import Transfer
from ledger.matrix import can_transition
from ledger.projections.projection import Quarantined, quarantined
from ledger.projections.rows import (
    TABLE,
    TIME_INDEXES,
    TRACKING_NAME,
    HistoryDecoder,
    compared_values,
    replay_history,
)
from ledger.storage import Database
from ledger.views import COLUMNS


@dataclass(frozen=True)
class Finding:
    transfer_id: str | None
    check: str
    problem: str

    def as_json(self) -> dict[str, Any]:
        return {"transfer_id": self.transfer_id, "check": self.check, "problem": self.problem}


@dataclass
class VerifyReport:
    findings: list[dict[str, Any]] = field(default_factory=list)
    transfers: int = 0
    events: int = 0
    # Events after the read table's position (written without their rows, by
    # another writer): checked against the matrix, compared with the table
    # once the projection has them.
    unprojected: int = 0
    chain: ChainReport | None = None

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_json(self) -> dict[str, Any]:
        chain = self.chain
        return {
            "ok": self.ok,
            "transfers": self.transfers,
            "events": self.events,
            "sealed": chain.sealed if chain else 0,
            "unsealed": chain.unsealed if chain else 0,
            "unprojected": self.unprojected,
            "head": chain.head.as_json() if chain and chain.head else None,
            "findings": self.findings,
        }


def verify(db: Database, decode: Any, recorded_head: bytes | None = None) -> VerifyReport:
    report = VerifyReport()
    if db.dialect == "postgresql":
        # The chain is the database's work: it runs while this thread replays.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-chain") as pool:
            chain = pool.submit(check_chain, db, recorded_head)
            _check_histories_and_rows(db, decode, report)
            report.chain = chain.result()
    else:
        _check_histories_and_rows(db, decode, report)
        report.chain = check_chain(db, recorded_head)
    report.findings += [f.as_json() for f in report.chain.findings]
    if report.chain.recorded_head_found is False:
        report.findings.append(
            Finding(
                None,
                "chain",
                "the recorded head is not in the chain: the chain was rewritten or cut short"
                " at or before it",
            ).as_json()
        )
    return report


def _check_histories_and_rows(db: Database, decode: Any, report: VerifyReport) -> None:
    """Checks 1 and 2, transfer by transfer, in id order."""
    set_aside = {str(q.transfer_id): q for q in quarantined(db)}
    with closing(_table_rows(db)) as rows:
        # The read table's tracking position comes with its first row, read in
        # the same snapshot: the table is compared with the events up to there,
        # so a transfer that changes while verify runs is compared as the table
        # has it, not flagged. Every event is checked against the matrix.
        first = next(rows, None)
        upto = None if first is None else first[0]
        row = None if first is None else first[1]
        with closing(_histories(db, decode, report)) as histories:
            for transfer_id, events, positions in histories:
                while row is not None and row[0] < transfer_id:
                    _row_without_events(report, row[0])
                    row = next(rows, (None, None))[1]
                report.transfers += 1
                report.events += len(events)
                _check_history(report, transfer_id, events)
                projected = [
                    e for e, at in zip(events, positions, strict=True) if upto is None or at <= upto
                ]
                report.unprojected += len(events) - len(projected)
                aside = set_aside.pop(transfer_id, None)
                if aside is not None:
                    report.findings.append(_quarantine_finding(aside))
                    if row is not None and row[0] == transfer_id:
                        row = next(rows, (None, None))[1]
                    continue
                expected = _replayed(report, transfer_id, projected) if projected else None
                if row is None or row[0] != transfer_id:
                    if projected:
                        report.findings.append(
                            Finding(transfer_id, "read table", "events without a row").as_json()
                        )
                    continue
                if expected is not None and expected != row:
                    report.findings += [
                        f.as_json() for f in _differences(transfer_id, expected, row)
                    ]
                row = next(rows, (None, None))[1]
        while row is not None:
            _row_without_events(report, row[0])
            row = next(rows, (None, None))[1]
    report.findings += [_quarantine_finding(q) for q in set_aside.values()]


def _quarantine_finding(aside: Quarantined) -> dict[str, Any]:
    return Finding(
        str(aside.transfer_id),
        "projection",
        f"set aside by the projection at v{aside.version} (position {aside.position})"
        f" since {_shown(aside.quarantined_at)}: {aside.problem}",
    ).as_json()


def _check_history(report: VerifyReport, transfer_id: str, events: list[Any]) -> None:
    """Check 1 for one history."""
    try:
        for finding in check_history(events):
            report.findings.append(finding.as_json())
    except Exception as error:  # an event whose fields were edited away
        report.findings.append(
            Finding(transfer_id, "history", f"cannot be checked: {type(error).__name__}").as_json()
        )


def _replayed(report: VerifyReport, transfer_id: str, events: list[Any]) -> tuple[Any, ...] | None:
    """The row `events` lead to (None: they cannot be replayed, which is a
    finding of its own)."""
    try:
        return compared_values(replay_history(events, strict=False))
    except Exception as error:  # an event whose fields were edited away
        report.findings.append(
            Finding(transfer_id, "history", f"cannot be replayed: {type(error).__name__}").as_json()
        )
        return None


def _row_without_events(report: VerifyReport, transfer_id: str) -> None:
    report.findings.append(Finding(transfer_id, "read table", "a row without events").as_json())


def _table_rows(db: Database) -> Generator[tuple[int | None, tuple[Any, ...]], None, None]:
    """(the table's tracking position, a row as compared_values gives it), by id."""
    others = ", ".join(COLUMNS[1:])
    query = db.stream_rows(
        "SELECT (SELECT position FROM projection_tracking WHERE name = ?),"
        f" {db.uuid_as_text('id', 'transfer_id')}, {others} FROM {TABLE} ORDER BY id",
        (TRACKING_NAME,),
        index_order=True,
    )
    if db.dialect == "postgresql":
        for upto, *values in query:
            yield upto, tuple(values)
        return
    for upto, *values in query:
        for index in TIME_INDEXES:
            values[index] = db.from_db_time(values[index])
        yield upto, tuple(values)


def _histories(
    db: Database, decode: Any, report: VerifyReport
) -> Generator[tuple[str, list[Any], list[int]], None, None]:
    """(canonical transfer id, its decoded events in version order, their
    positions), by id. An event that cannot be decoded (an edited event's
    bytes) is a finding, not a crash, and its history goes on without it."""
    position = db.notification_id_column
    stored = db.stream_rows(
        f"SELECT {position}, {db.uuid_as_text('originator_id', 'transfer_id')},"
        f" originator_version, topic, state FROM {db.events_table}"
        " ORDER BY originator_id, originator_version",
        (),
        index_order=True,
    )
    decoder = HistoryDecoder(decode)
    # SQLite stores the ids as bare hex; PostgreSQL's text is canonical already.
    canonical = db.dialect != "postgresql"
    current = ""
    events: list[Any] = []
    positions: list[int] = []
    for at, stored_id, version, topic, state in stored:
        transfer_id = str(UUID(stored_id)) if canonical else stored_id
        if transfer_id != current:
            if events:
                yield current, events, positions
            current, events, positions = transfer_id, [], []
        try:
            events.append(decoder(transfer_id, version, topic, state))
            positions.append(int(at))
        except Exception as error:
            report.findings.append(
                Finding(
                    transfer_id,
                    "history",
                    f"version {version} (position {at}) cannot be read: {type(error).__name__}",
                ).as_json()
            )
    if events:
        yield current, events, positions


def check_history(events: Sequence[Any]) -> Iterator[Finding]:
    transfer_id = str(events[0].originator_id)
    if not isinstance(events[0], Transfer.Created | Transfer.Imported):
        yield Finding(transfer_id, "history", "does not start with Created or Imported")
    status: str | None = None
    for expected, event in enumerate(events, start=1):
        if event.originator_version != expected:
            yield Finding(
                transfer_id,
                "history",
                f"versions are not contiguous from 1: v{event.originator_version}"
                f" where v{expected} was due",
            )
        if isinstance(event, Transfer.Created):
            status = "pending"
            continue
        if isinstance(event, Transfer.Imported):
            status = event.status
            continue
        from_status, to_status = event.from_status, event.to_status
        if status is not None and from_status != status:
            yield Finding(
                transfer_id,
                "history",
                f"v{event.originator_version} starts from {from_status}, but the transfer"
                f" was {status}",
            )
        if not can_transition(from_status, to_status):
            yield Finding(
                transfer_id,
                "matrix",
                f"v{event.originator_version} {type(event).__name__}: {from_status} ->"
                f" {to_status} is refused by the transition matrix",
            )
        status = to_status


def _differences(
    transfer_id: str, expected: tuple[Any, ...], actual: tuple[Any, ...]
) -> Iterator[Finding]:
    for column, want, have in zip(COLUMNS, expected, actual, strict=True):
        if want != have:
            yield Finding(
                transfer_id,
                "read table",
                f"{column} is {_shown(have)!r} in the table, {_shown(want)!r} by the events",
            )


def _shown(value: Any) -> Any:
    """A value as `transfer show --json` shows it."""
    if isinstance(value, datetime):
        return values.iso(value)
    return value
