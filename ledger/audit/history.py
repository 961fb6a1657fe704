"""A transfer's history, one entry per event, and its state at any version or time.

The state is replayed with each event's own `apply`, the method the aggregate
and the read-table projection use too, so the auditor's picture cannot differ
from theirs about what an event means.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from ledger import values
from ledger.domain import Transfer
from ledger.errors import TransferNotFound
from ledger.projections.rows import TransferRow
from ledger.views import COLUMNS, TransferView

# Fields every event has, shown in their own columns; the rest are "details".
_COMMON: Final = frozenset(
    {
        "originator_id",
        "originator_version",
        "originator_topic",
        "timestamp",
        "actor",
        "reason",
        "caused_by",
    }
)
_STATUS_FIELDS: Final = frozenset({"from_status", "to_status"})


@dataclass(frozen=True)
class HistoryEntry:
    version: int
    at: datetime
    type: str
    from_status: str | None
    to_status: str
    actor: str
    reason: str | None
    caused_by: str | None
    # What else the event records: Stripe ids, amounts, errors, retry times.
    details: dict[str, Any]

    @classmethod
    def of(cls, event: Any) -> HistoryEntry:
        fields = dict(vars(event))
        if isinstance(event, Transfer.Created):
            from_status, to_status = None, "pending"
        elif isinstance(event, Transfer.Imported):
            from_status, to_status = None, event.status
        else:
            from_status, to_status = event.from_status, event.to_status
        details = {
            name: value
            for name, value in fields.items()
            if name not in _COMMON and name not in _STATUS_FIELDS and not name.startswith("_")
        }
        if isinstance(event, Transfer.Imported):
            details.pop("status", None)
        return cls(
            version=event.originator_version,
            at=event.timestamp,
            type=type(event).__name__,
            from_status=from_status,
            to_status=to_status,
            actor=event.actor,
            reason=event.reason,
            caused_by=event.caused_by,
            details=details,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "type": self.type,
            "at": _json_value(self.at),
            "from_status": self.from_status,
            "to_status": self.to_status,
            "actor": self.actor,
            "reason": self.reason,
            "caused_by": self.caused_by,
            **{name: _json_value(value) for name, value in self.details.items()},
        }


@dataclass(frozen=True)
class Audit:
    """A transfer's events up to a point, and its state there."""

    transfer_id: UUID
    state: TransferView
    entries: Sequence[HistoryEntry]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": str(self.transfer_id),
            "state": self.state.as_json(),
            "events": [entry.as_json() for entry in self.entries],
        }


class TransferDidNotExist(TransferNotFound):
    """The transfer has events, but none at or before the point asked for."""

    def __init__(self, transfer_id: object, point: str) -> None:
        super().__init__(transfer_id)
        self.args = (f"transfer {transfer_id} did not exist {point}",)


def audit(
    events: Sequence[Any],
    transfer_id: UUID,
    *,
    version: int | None = None,
    at: datetime | None = None,
) -> Audit:
    """The history of `events` (one transfer's, in order) up to `version` or
    `at` (inclusive), or all of it, with the state it leads to."""
    if not events:
        raise TransferNotFound(transfer_id)
    chosen = list(events)
    if version is not None:
        if not 1 <= version <= len(events):
            raise TransferDidNotExist(
                transfer_id, f"at version {version} (it has versions 1 to {len(events)})"
            )
        chosen = chosen[:version]
    if at is not None:
        chosen = [e for e in chosen if e.timestamp <= at]
        if not chosen:
            raise TransferDidNotExist(transfer_id, f"at {_json_value(at)}")
    return Audit(transfer_id, replay(chosen), [HistoryEntry.of(e) for e in chosen])


def replay(events: Sequence[Any]) -> TransferView:
    """The read-table row these events lead to, as the projection builds it."""
    first = events[0]
    row = TransferRow(id=first.originator_id, created_at=first.timestamp)
    for event in events:
        event.apply(row)
        row.version = event.originator_version
        row.updated_at = event.timestamp
    return TransferView(**{name: getattr(row, name) for name in COLUMNS})


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return values.iso(value)
    if isinstance(value, UUID):
        return str(value)
    return value


def histories(events: Iterable[Any]) -> Iterator[list[Any]]:
    """Group a stream of events ordered by transfer and version into one list
    per transfer, holding one transfer's events at a time."""
    current: list[Any] = []
    for event in events:
        if current and event.originator_id != current[0].originator_id:
            yield current
            current = []
        current.append(event)
    if current:
        yield current


def export(
    events: Iterable[Any], *, since: datetime | None = None, status: str | None = None
) -> Iterator[Audit]:
    """Every transfer's full history (`audit ID --json` each), optionally only
    those changed at or after `since`, or whose status now is `status`."""
    for transfer_events in histories(events):
        if since is not None and transfer_events[-1].timestamp < since:
            continue
        result = audit(transfer_events, transfer_events[0].originator_id)
        if status is None or result.state.status == status:
            yield result
