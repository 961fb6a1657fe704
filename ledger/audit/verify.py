"""`ledger audit verify`: does the ledger still tell the truth about itself?

1. Every history replays: it starts with a Created or Imported event,
   versions run 1, 2, 3..., each event's from_status is the previous
   to_status, and the transition matrix allows each change.
2. The read table equals the state replayed from each history, column by
   column (`updated_at` included); no row lacks events, no history lacks a row.
3. The hash chain holds (ledger/audit/chain.py), and, given an operator's
   recorded head, contains it.

Everything is streamed: memory holds one batch of histories and the set of
transfer ids, however long the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from uuid import UUID

from ledger.audit.chain import ChainReport, stream_links, verify_chain
from ledger.audit.history import histories, replay
from ledger.domain import Transfer
from ledger.matrix import can_transition
from ledger.storage import Database
from projections.seller_transfers import COLUMNS, TABLE, TransferView

ROWS_PER_BATCH: Final = 500


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
            "head": chain.head.as_json() if chain and chain.head else None,
            "findings": self.findings,
        }


def verify(db: Database, decode: Any, recorded_head: bytes | None = None) -> VerifyReport:
    report = VerifyReport()
    seen: set[UUID] = set()
    batch: list[tuple[UUID, TransferView]] = []
    for events in histories(_readable(db, decode, report)):
        transfer_id = events[0].originator_id
        seen.add(transfer_id)
        report.transfers += 1
        report.events += len(events)
        report.findings += [f.as_json() for f in check_history(events)]
        batch.append((transfer_id, replay(events)))
        if len(batch) == ROWS_PER_BATCH:
            report.findings += [f.as_json() for f in _compare_rows(db, batch)]
            batch = []
    report.findings += [f.as_json() for f in _compare_rows(db, batch)]
    report.findings += [
        Finding(str(row_id), "read table", "a row without events").as_json()
        for row_id in _row_ids(db)
        if row_id not in seen
    ]
    report.chain = verify_chain(
        db.stream_stored_events(order="log"), stream_links(db), recorded_head
    )
    report.findings += [f.as_json() for f in report.chain.findings]
    if report.chain.recorded_head_found is False:
        report.findings.append(
            Finding(
                None,
                "chain",
                "the recorded head is not in the chain: history up to it was rewritten",
            ).as_json()
        )
    return report


def _readable(db: Database, decode: Any, report: VerifyReport) -> Iterator[Any]:
    """Decoded events by transfer and version; one that cannot be decoded is a
    finding (an edited event's bytes), not a crash."""
    for position, stored in db.stream_stored_events(order="transfer"):
        try:
            yield decode(stored)
        except Exception as error:
            report.findings.append(
                Finding(
                    str(UUID(str(stored.originator_id))),
                    "history",
                    f"version {stored.originator_version} (position {position}) cannot be"
                    f" read: {type(error).__name__}",
                ).as_json()
            )


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


def _compare_rows(db: Database, batch: Sequence[tuple[UUID, TransferView]]) -> Iterable[Finding]:
    if not batch:
        return []
    ids = [transfer_id for transfer_id, _ in batch]
    with db.transaction(write=False) as cursor:
        cursor.execute(
            f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE id IN ({', '.join('?' * len(ids))})",
            [db.to_db_id(i) for i in ids],
        )
        rows = {
            view.id: view for view in (TransferView.from_row(db, row) for row in cursor.fetchall())
        }
    findings = []
    for transfer_id, expected in batch:
        actual = rows.get(transfer_id)
        if actual is None:
            findings.append(Finding(str(transfer_id), "read table", "events without a row"))
            continue
        want, have = expected.as_json(), actual.as_json()
        for column in COLUMNS:
            if want[column] != have[column]:
                findings.append(
                    Finding(
                        str(transfer_id),
                        "read table",
                        f"{column} is {have[column]!r} in the table, {want[column]!r} by the"
                        " events",
                    )
                )
    return findings


def _row_ids(db: Database, page: int = 5000) -> Iterator[UUID]:
    """Every read-table id, a page at a time along the primary key."""
    after = UUID(int=0)
    while True:
        with db.transaction(write=False) as cursor:
            cursor.execute(
                f"SELECT id FROM {TABLE} WHERE id > ? ORDER BY id LIMIT ?",
                (db.to_db_id(after), page),
            )
            ids = [
                r["id"] if isinstance(r["id"], UUID) else UUID(r["id"]) for r in cursor.fetchall()
            ]
        yield from ids
        if len(ids) < page:
            return
        after = ids[-1]
