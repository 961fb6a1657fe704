"""One order, one transfer: the `transfer_orders` reservations (migration 0010).

A transfer's order reference is reserved for it in the same transaction as its
first event, whether it was created or imported, so no order can ever have
two transfers (and be paid twice). This module owns the table's SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final
from uuid import UUID

from ledger.storage import SQLITE_MAX_PARAMS, Database, Statement

# Two parameters a reservation: stays under SQLite's bound-parameter limit.
_SQLITE_PAIRS_PER_STATEMENT: Final = SQLITE_MAX_PARAMS // 2


def reserve(db: Database, reservations: Sequence[tuple[str, UUID]]) -> list[Statement]:
    """Statements that reserve each (order ref, transfer id), to run inside the
    append of those transfers' first events: a reservation another transfer
    holds fails the whole append (an IntegrityError naming transfer_orders)."""
    if not reservations:
        return []
    if db.dialect == "postgresql":
        # Two array parameters, whatever the count; the ids as one text,
        # which psycopg sends without adapting each UUID in Python.
        return [
            (
                "INSERT INTO transfer_orders (order_ref, transfer_id)"
                " SELECT * FROM unnest(?::text[], string_to_array(?, ',')::uuid[])",
                ([ref for ref, _ in reservations], ",".join(str(t) for _, t in reservations)),
            )
        ]
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
        for start in range(0, len(refs), SQLITE_MAX_PARAMS):
            chunk = refs[start : start + SQLITE_MAX_PARAMS]
            cursor.execute(
                "SELECT order_ref, transfer_id FROM transfer_orders"
                f" WHERE order_ref IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            for row in cursor.fetchall():
                owner = row["transfer_id"]
                found[str(row["order_ref"])] = owner if isinstance(owner, UUID) else UUID(owner)
    return found
