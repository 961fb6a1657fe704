"""A transfer as the world outside the aggregate sees it: the read table's row,
`ledger transfer show --json`, what the Python API returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from ledger import values
from ledger.domain import STATE_FIELDS, Transfer, TransferState

# The read table's columns, and the fields of `transfer show --json`, in order.
COLUMNS: Final = ("id", *STATE_FIELDS, "version", "created_at", "updated_at")
# The columns holding times (the database's type for them differs by dialect).
TIME_COLUMNS: Final = ("next_retry_at", "created_at", "updated_at")


@dataclass(frozen=True)
class TransferView(TransferState):
    """One transfer: its state, its id, the version of the last event it
    reflects, and the times of its first and last events."""

    id: UUID
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, transfer: Transfer) -> TransferView:
        """The view of an aggregate as it stands: exactly the row its events
        lead to (the projection applies the very same events)."""
        return cls(
            id=transfer.id,
            **{name: getattr(transfer, name) for name in STATE_FIELDS},
            version=transfer.version,
            created_at=transfer.created_on,
            updated_at=transfer.modified_on,
        )

    @classmethod
    def from_row(
        cls, row: Mapping[str, Any], from_db_time: Callable[[Any], datetime | None]
    ) -> TransferView:
        """A row as a database cursor gives it (times as the dialect stores them)."""
        fields = {name: row[name] for name in COLUMNS}
        fields["id"] = values.as_uuid(row["id"])
        for name in TIME_COLUMNS:
            fields[name] = from_db_time(row[name])
        return cls(**fields)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in COLUMNS:
            value = getattr(self, name)
            if isinstance(value, UUID):
                value = str(value)
            elif isinstance(value, datetime):
                value = values.iso(value)
            out[name] = value
        return out
