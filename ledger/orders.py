"""One order, one transfer: the `transfer_orders` reservations (migration 0010).

A transfer's order reference is reserved for it in the same transaction as its
first event, whether it was created or imported, so no order can ever have
two transfers (and be paid twice): `OrderReservations`, an append hook, does
it in every append of a transfer's first event. This module owns the table's
SQL (on PostgreSQL, migration 0017's ledger_append runs the insert).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final
from uuid import UUID

from ledger.storage import SQLITE_MAX_PARAMS, Appended, Cursor, Database, Statement

# Two parameters a reservation: stays under SQLite's bound-parameter limit.
_SQLITE_PAIRS_PER_STATEMENT: Final = SQLITE_MAX_PARAMS // 2


class OrderReservations:
    """The append hook (ledger.storage.AppendHook) that reserves the order of
    every transfer whose first event the append holds, created or imported:
    an order another transfer holds fails the whole append (an
    IntegrityError naming transfer_orders), which the create and the import
    answer. An append of bare events reserves nothing."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def after_insert(self, cursor: Cursor, appended: Appended) -> None:
        for sql, params in _sqlite_reserve(_first_events_orders(appended)):
            cursor.execute(sql, params)

    def arguments(self, appended: Appended) -> dict[str, Any]:
        reservations = _first_events_orders(appended)
        if not reservations:
            return {}
        # A uuid as 32 hex digits, which PostgreSQL reads as well as the dashed
        # form, and Python writes in half the time.
        return {"orders": [[ref, transfer_id.hex] for ref, transfer_id in reservations]}


def _first_events_orders(appended: Appended) -> list[tuple[str, UUID]]:
    firsts = {e.originator_id for e in appended.events if e.originator_version == 1}
    return [(t.order_ref, t.id) for t in appended.aggregates if t.id in firsts]


def _sqlite_reserve(reservations: Sequence[tuple[str, UUID]]) -> list[Statement]:
    statements: list[Statement] = []
    for start in range(0, len(reservations), _SQLITE_PAIRS_PER_STATEMENT):
        chunk = reservations[start : start + _SQLITE_PAIRS_PER_STATEMENT]
        statements.append(
            (
                "INSERT INTO transfer_orders (order_ref, transfer_id) VALUES "
                + ", ".join(["(?, ?)"] * len(chunk)),
                [value for ref, transfer_id in chunk for value in (ref, str(transfer_id))],
            )
        )
    return statements


def owners(db: Database, order_refs: Iterable[str]) -> dict[str, UUID]:
    """The transfer each of these orders is reserved for, where one is."""
    refs = sorted(set(order_refs))
    found: dict[str, UUID] = {}
    with db.transaction(write=False) as cursor:
        for chunk, condition in db.any_of("order_ref", refs):
            cursor.execute(
                f"SELECT order_ref, transfer_id FROM transfer_orders WHERE {condition}", chunk
            )
            for row in cursor.fetchall():
                owner = row["transfer_id"]
                found[str(row["order_ref"])] = owner if isinstance(owner, UUID) else UUID(owner)
    return found
