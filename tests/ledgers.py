"""The tests' handle on a ledger database: a `Backend` (the event store, the
database, the projection) with the service's commands in the short form most
tests want: the CLI's actor by default, a create answering `(id, created)`.

Everything goes through `LedgerService`, the one way in that the CLI, the
Python API and the webhook handler share: this adds spelling, not behaviour.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from uuid import UUID

from ledger.backend import Backend
from ledger.bootstrap import open_backend
from ledger.cli.parser import CLI_ACTOR
from ledger.importing import ImportRecord
from ledger.service import ImportResult
from ledger.views import TransferView


class Ledger(Backend):
    @classmethod
    def open(cls, url: str, *, pool_size: int = 1, migrated: bool = True) -> Ledger:
        backend = open_backend(url, pool_size=pool_size, migrated=migrated)
        return cls(**{f.name: getattr(backend, f.name) for f in dataclasses.fields(backend)})

    def create_transfer(
        self,
        *,
        seller_account_id: str,
        order_ref: str,
        amount: int,
        currency: str,
        actor: str = CLI_ACTOR,
    ) -> tuple[UUID, bool]:
        created = self.service.create_transfer(
            seller=seller_account_id,
            order_ref=order_ref,
            amount=amount,
            currency=currency,
            actor=actor,
        )
        return created.transfer.id, created.created

    def request_reversal(
        self,
        transfer_id: UUID,
        *,
        request_ref: str,
        amount: int | None = None,
        reason: str | None = None,
        actor: str = CLI_ACTOR,
    ) -> bool:
        return self.service.request_reversal(
            transfer_id, request_ref=request_ref, amount=amount, reason=reason, actor=actor
        ).recorded

    def set_status(self, transfer_id: UUID, to_status: str, *, actor: str, reason: str) -> None:
        self.service.set_status(transfer_id, to_status, actor=actor, reason=reason)

    def import_transfers(
        self,
        records: Sequence[ImportRecord] | Callable[[], Iterable[ImportRecord]],
        actor: str = CLI_ACTOR,
    ) -> ImportResult:
        return self.service.import_transfers(records, actor=actor)

    def show(self, transfer_id: UUID) -> TransferView:
        return self.service.get(transfer_id)

    def list(self, status: str | None = None) -> list[TransferView]:
        return self.service.list_transfers(status)
