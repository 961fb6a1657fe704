"""What a database URL opens: its configuration, the event store, the database
as the ledger's own SQL sees it, the catch-up projection, and the application
service over them. The composition root (`ledger.bootstrap.open_backend`)
builds one; the daemon, the webhook handler, reconcile and health take one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from ledger.application import Transfers
from ledger.config import DatabaseConfig
from ledger.projections.projection import SellerTransfersProjection
from ledger.service import LedgerService
from ledger.storage import Database


@dataclass
class Backend:
    config: DatabaseConfig
    # The event store (an eventsourcing application): load, change, save.
    transfers: Transfers
    db: Database
    # The read table's catch-up: the safety net under the appends' own rows.
    projection: SellerTransfersProjection
    # The one way in for commands, reads and imports.
    service: LedgerService

    def catch_up(self) -> int:
        """Project what was appended without its rows (by an older version, or
        another writer); returns how many events."""
        return self.projection.catch_up()

    def ensure_current(self) -> int:
        """`catch_up` when the table is behind the log: two cheap queries when
        it is not."""
        if self.projection.position() < (self.transfers.recorder.max_notification_id() or 0):
            return self.catch_up()
        return 0

    def close(self) -> None:
        self.transfers.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
