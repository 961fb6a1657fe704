"""The workers' due queries: right rows, and on PostgreSQL served by the partial
indexes, on a realistically skewed table (most transfers long since settled)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from ledger.projections.queries import (
    DUE_FURTHER_REVERSALS_SQL,
    DUE_PAYOUT_RETRIES_SQL,
    DUE_PAYOUTS_SQL,
    DUE_REVERSALS_SQL,
    due_ids,
)
from ledger.views import COLUMNS
from tests.ledgers import Ledger

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def skewed_rows(count: int, seed: int = 3) -> list[dict[str, Any]]:
    """~1% reversal_pending (half due now with NULL next_retry_at), ~2% failed
    with a retry time, the rest completed, reversed or pending."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        roll = rng.random()
        next_retry_at = None
        if roll < 0.01:
            status = "reversal_pending"
            if rng.random() < 0.5:
                next_retry_at = NOW + timedelta(minutes=rng.randint(-600, 600))
        elif roll < 0.03:
            status = "failed"
            next_retry_at = NOW + timedelta(minutes=rng.randint(-600, 600))
        elif roll < 0.04:
            status = "failed"  # no retry scheduled
        else:
            status = rng.choice(["completed"] * 8 + ["reversed", "pending"])
            if status == "reversed" and rng.random() < 0.02:
                # A further refund waiting for its reversal (migration 0015).
                next_retry_at = NOW + timedelta(minutes=rng.randint(-600, 600))
        rows.append(
            {
                "id": uuid.uuid4(),
                "seller_account_id": f"acct_{i % 1000}",
                "order_ref": f"order-{i}",
                "amount": 1000 + i,
                "currency": "usd",
                "status": status,
                "retry_count": 1 if next_retry_at else 0,
                "next_retry_at": next_retry_at,
                "stripe_transfer_id": None,
                "amount_reversed": 0,
                "last_error": None,
                "reversal_request_ref": None,
                "reversal_amount": None,
                "version": 1,
                "created_at": NOW - timedelta(days=30),
                "updated_at": NOW - timedelta(days=1),
            }
        )
    return rows


def load_rows(ledger: Ledger, rows: list[dict[str, Any]]) -> None:
    # The read table is filled directly here: the subject is the query plan,
    # not the projection (tested elsewhere).
    with ledger.db.transaction(write=True) as cursor:
        cursor.executemany(
            f"INSERT INTO seller_transfers ({', '.join(COLUMNS)})"
            f" VALUES ({', '.join('?' * len(COLUMNS))})",
            [
                [
                    ledger.db.to_db_id(r[c])
                    if c == "id"
                    else ledger.db.to_db_time(r[c])
                    if isinstance(r[c], datetime)
                    else r[c]
                    for c in COLUMNS
                ]
                for r in rows
            ],
        )


def expected_due_reversals(rows: list[dict[str, Any]], limit: int) -> list[uuid.UUID]:
    due = [
        r
        for r in rows
        if r["status"] == "reversal_pending"
        and (r["next_retry_at"] is None or r["next_retry_at"] <= NOW)
    ]
    # NULLS FIRST: first-pass rows before retries; ties broken arbitrarily by the
    # database, so compare the set within each group.
    due.sort(key=lambda r: (r["next_retry_at"] is not None, r["next_retry_at"] or NOW))
    return [r["id"] for r in due[:limit]]


def test_due_reversals_are_first_pass_rows_then_retries_that_came_due(migrated_url: str) -> None:
    rows = skewed_rows(3000)
    with Ledger.open(migrated_url) as ledger:
        load_rows(ledger, rows)
        found = due_ids(ledger.db, DUE_REVERSALS_SQL, NOW, limit=10_000)
    expected = expected_due_reversals(rows, 10_000)
    assert set(found) == set(expected)
    first_pass = {
        r["id"] for r in rows if r["status"] == "reversal_pending" and not r["next_retry_at"]
    }
    # Every first-pass row comes before every retry row.
    positions = [i for i, f in enumerate(found) if f in first_pass]
    assert positions == list(range(len(first_pass)))


def test_due_payout_retries_are_failed_rows_whose_retry_time_passed(migrated_url: str) -> None:
    rows = skewed_rows(3000)
    with Ledger.open(migrated_url) as ledger:
        load_rows(ledger, rows)
        found = due_ids(ledger.db, DUE_PAYOUT_RETRIES_SQL, NOW, limit=10_000)
    expected = {
        r["id"]
        for r in rows
        if r["status"] == "failed" and r["next_retry_at"] and r["next_retry_at"] <= NOW
    }
    assert set(found) == expected and len(found) == len(expected)


def _index_names(plan: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(plan, dict):
        if "Index Name" in plan:
            names.add(plan["Index Name"])
        for value in plan.values():
            names |= _index_names(value)
    elif isinstance(plan, list):
        for item in plan:
            names |= _index_names(item)
    return names


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("query", "index"),
    [
        (DUE_REVERSALS_SQL, "idx_seller_transfers_reversal_pending"),
        (DUE_FURTHER_REVERSALS_SQL, "idx_seller_transfers_further_reversal"),
        (DUE_PAYOUT_RETRIES_SQL, "idx_seller_transfers_retry"),
        (DUE_PAYOUTS_SQL, "idx_seller_transfers_pending"),
    ],
    ids=["reversal worker", "further refunds", "payout retry worker", "payout worker"],
)
def test_postgresql_serves_the_due_queries_from_their_partial_indexes(
    migrated_postgres_url: str, query: str, index: str
) -> None:
    with Ledger.open(migrated_postgres_url) as ledger:
        load_rows(ledger, skewed_rows(50_000))
    with psycopg.connect(migrated_postgres_url, autocommit=True) as pg:
        pg.execute("ANALYZE seller_transfers")
        plan = pg.execute("EXPLAIN (FORMAT JSON) " + query.replace("?", "%s"), (NOW, 20)).fetchone()
    assert plan is not None
    assert index in _index_names(plan[0]), plan[0]


@pytest.mark.postgres
def test_the_seeds_literal_query_with_now_also_uses_the_reversal_index(
    migrated_postgres_url: str,
) -> None:
    with Ledger.open(migrated_postgres_url) as ledger:
        load_rows(ledger, skewed_rows(50_000))
    seed_query = (
        "SELECT * FROM seller_transfers WHERE status = 'reversal_pending'"
        " AND (next_retry_at IS NULL OR next_retry_at <= NOW())"
        " ORDER BY next_retry_at NULLS FIRST LIMIT 20"
    )
    with psycopg.connect(migrated_postgres_url, autocommit=True) as pg:
        pg.execute("ANALYZE seller_transfers")
        plan = pg.execute("EXPLAIN (FORMAT JSON) " + seed_query).fetchone()
    assert plan is not None
    assert "idx_seller_transfers_reversal_pending" in _index_names(plan[0]), plan[0]
