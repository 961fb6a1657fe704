"""What the CLI, the service and the workers read from the read table: a
transfer, a list, the transfers recording a Stripe transfer, and the workers'
due queries (the seed's), each served by an index of migrations 0001-0004, 0011."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Final
from uuid import UUID

from ledger import values
from ledger.projections.rows import TABLE
from ledger.storage import Database
from ledger.views import COLUMNS, TransferView


def get_transfer(db: Database, transfer_id: UUID, table: str = TABLE) -> TransferView | None:
    with db.transaction(write=False) as cursor:
        cursor.execute(
            f"SELECT {', '.join(COLUMNS)} FROM {table} WHERE id = ?", (db.to_db_id(transfer_id),)
        )
        row = cursor.fetchone()
    return None if row is None else TransferView.from_row(row, db.from_db_time)


def list_transfers(
    db: Database, status: str | None = None, table: str = TABLE
) -> list[TransferView]:
    where, params = ("WHERE status = ?", [status]) if status else ("", [])
    with db.transaction(write=False) as cursor:
        cursor.execute(
            f"SELECT {', '.join(COLUMNS)} FROM {table} {where} ORDER BY created_at, id", params
        )
        rows = cursor.fetchall()
    return [TransferView.from_row(row, db.from_db_time) for row in rows]


def find_by_stripe_transfer_ids(
    db: Database, stripe_ids: Iterable[str], table: str = TABLE
) -> dict[str, list[TransferView]]:
    """The rows recording each of these Stripe transfers (usually one each;
    two means a person must look), found by idx_seller_transfers_stripe_transfer_id
    (migration 0011): one statement on PostgreSQL, SQLITE_MAX_PARAMS ids a
    statement on SQLite (Database.any_of)."""
    ids = sorted(set(stripe_ids))
    if not ids:
        return {}
    rows = []
    with db.transaction(write=False) as cursor:
        for chunk, condition in db.any_of("stripe_transfer_id", ids):
            cursor.execute(
                f"SELECT {', '.join(COLUMNS)} FROM {table} WHERE {condition} ORDER BY id", chunk
            )
            rows += cursor.fetchall()
    found: dict[str, list[TransferView]] = {}
    for row in rows:
        view = TransferView.from_row(row, db.from_db_time)
        assert view.stripe_transfer_id is not None
        found.setdefault(view.stripe_transfer_id, []).append(view)
    return found


# What makes each kind of work due, `?` being now: the workers' due queries
# below, and `ledger health`'s count of due work, share these conditions.
# `now` is a parameter so that one clock (the daemon's) decides what is due,
# on SQLite as on PostgreSQL, and tests can move it.
DUE_REVERSAL_WHERE: Final = (
    "status = 'reversal_pending' AND (next_retry_at IS NULL OR next_retry_at <= ?)"
)
DUE_PAYOUT_RETRY_WHERE: Final = (
    "status = 'failed' AND next_retry_at IS NOT NULL AND next_retry_at <= ?"
)
DUE_PAYOUT_WHERE: Final = "status = 'pending' AND created_at <= ?"
# A further refund of a reversed transfer (migration 0015): it stays
# `reversed`, and next_retry_at says it waits for its reversal.
DUE_FURTHER_REVERSAL_WHERE: Final = (
    "status = 'reversed' AND next_retry_at IS NOT NULL AND next_retry_at <= ?"
)

# The reversal worker's due query, as the seed wrote it.
# Served by idx_seller_transfers_reversal_pending.
DUE_REVERSALS_SQL: Final = (
    f"SELECT id FROM seller_transfers WHERE {DUE_REVERSAL_WHERE}"
    " ORDER BY next_retry_at NULLS FIRST LIMIT ?"
)

# Further refunds' due query. Served by idx_seller_transfers_further_reversal.
DUE_FURTHER_REVERSALS_SQL: Final = (
    f"SELECT id FROM seller_transfers WHERE {DUE_FURTHER_REVERSAL_WHERE}"
    " ORDER BY next_retry_at LIMIT ?"
)

# The payout retry worker's due query. Served by idx_seller_transfers_retry.
DUE_PAYOUT_RETRIES_SQL: Final = (
    f"SELECT id FROM seller_transfers WHERE {DUE_PAYOUT_RETRY_WHERE} ORDER BY next_retry_at LIMIT ?"
)

# The payout worker's first attempts: a pending transfer is due as soon as it
# exists, oldest first. Served by idx_seller_transfers_pending.
DUE_PAYOUTS_SQL: Final = (
    f"SELECT id FROM seller_transfers WHERE {DUE_PAYOUT_WHERE} ORDER BY created_at LIMIT ?"
)


def due_ids(db: Database, query: str, now: datetime, limit: int) -> list[UUID]:
    with db.transaction(write=False) as cursor:
        cursor.execute(query, (db.to_db_time(now), limit))
        rows = cursor.fetchall()
    return [values.as_uuid(r["id"]) for r in rows]


class SellerTransfers:
    """The read model as the application service reads it
    (ledger.service.ReadModel)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, transfer_id: UUID) -> TransferView | None:
        return get_transfer(self.db, transfer_id)

    def list_transfers(self, status: str | None) -> list[TransferView]:
        return list_transfers(self.db, status)

    def recording(self, stripe_transfer_ids: Iterable[str]) -> dict[str, list[TransferView]]:
        return find_by_stripe_transfer_ids(self.db, stripe_transfer_ids)
