"""What an import brings, once its lines are read and validated: `ImportRecord`,
one existing transfer; and `WithinFile`, the checks that need the whole file
(an id, an order, a Stripe transfer belong to one transfer each). Reading the
file itself (JSON lines, pydantic) is `ledger.importing`'s; kept apart so that
the application service, which every command loads, does not load pydantic."""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from ledger.domain import STATE_FIELDS, TransferState
from ledger.errors import InvalidInput


@dataclass(frozen=True)
class ImportRecord(TransferState):
    """One existing transfer to bring into the ledger: its state as the old
    table had it, with its id and the line it came from (validated)."""

    line: int
    transfer_id: UUID
    source_updated_at: datetime | None
    source_transaction: str | None = None

    def same_as(self, event: Any) -> bool:
        """Does this line record what an Imported event recorded?"""
        return self.as_tuple() == tuple(getattr(event, name) for name in STATE_FIELDS)


class WithinFile:
    """What must be unique among the lines of one import: a transfer id (the
    same transfer twice with the same values counts once), an order reference
    (one order, one transfer) and a Stripe transfer id (one Stripe transfer
    paid one ledger transfer).

    Only 64-bit hashes are kept while the file is read, eight bytes a line and
    key, so that a file of millions of lines fits in memory. Equal hashes are
    suspects, not verdicts: `confirm` reads the records again and compares the
    suspects' values themselves."""

    def __init__(self) -> None:
        self._hashes: dict[str, array[int]] = {
            "id": array("q"),
            "order": array("q"),
            "stripe": array("q"),
        }

    def add(self, record: ImportRecord) -> None:
        hashes = self._hashes
        hashes["id"].append(hash(record.transfer_id))
        hashes["order"].append(hash(record.order_ref))
        if record.stripe_transfer_id is not None:
            hashes["stripe"].append(hash(record.stripe_transfer_id))

    def confirm(self, records: Callable[[], Iterable[ImportRecord]]) -> set[tuple[UUID, int]]:
        """Raise InvalidInput for the first line that repeats an order or a
        Stripe transfer of another transfer, or a transfer with other values;
        return the (id, line) of lines that repeat a transfer identically (to
        be skipped). Reads `records()` again only when some hashes are equal."""
        suspects = {kind: _repeated(hashes) for kind, hashes in self._hashes.items()}
        if not any(suspects.values()):
            return set()
        by_id: dict[UUID, ImportRecord] = {}
        by_order: dict[str, ImportRecord] = {}
        by_stripe: dict[str, ImportRecord] = {}
        repeated: set[tuple[UUID, int]] = set()
        for record in records():
            if hash(record.transfer_id) in suspects["id"]:
                earlier = by_id.setdefault(record.transfer_id, record)
                if earlier is not record:
                    if (earlier.as_tuple(), earlier.source_updated_at) != (
                        record.as_tuple(),
                        record.source_updated_at,
                    ):
                        raise InvalidInput(
                            f"line {record.line}: transfer {record.transfer_id} already appears"
                            f" on line {earlier.line} with other values"
                        )
                    repeated.add((record.transfer_id, record.line))
                    continue
            if hash(record.order_ref) in suspects["order"]:
                earlier = by_order.setdefault(record.order_ref, record)
                if earlier.transfer_id != record.transfer_id:
                    raise InvalidInput(
                        f"line {record.line}: order {record.order_ref!r} is transfer"
                        f" {earlier.transfer_id}'s already (line {earlier.line}): one order,"
                        " one transfer"
                    )
            stripe_id = record.stripe_transfer_id
            if stripe_id is not None and hash(stripe_id) in suspects["stripe"]:
                earlier = by_stripe.setdefault(stripe_id, record)
                if earlier.transfer_id != record.transfer_id:
                    raise InvalidInput(
                        f"line {record.line}: Stripe transfer {stripe_id} is recorded by"
                        f" transfer {earlier.transfer_id} already (line {earlier.line})"
                    )
        return repeated


def _repeated(hashes: array[int]) -> set[int]:
    ordered = sorted(hashes)
    return {a for a, b in itertools.pairwise(ordered) if a == b}
