"""Benchmark: `ledger transfer import` against a raw executemany ceiling, same run.

Both sides load the same N transfers into the same PostgreSQL server (fsync on):
- ceiling: psycopg `executemany` of the rows into a plain table with the read
  table's columns (no keys, no indexes), one transaction;
- ledger: `ledger transfer import FILE` as a user runs it (a new process, JSON
  Lines parsed and validated, events appended, read table projected).

Machines differ, so the figure that matters is the ratio of the two rates.
Usage: scripts/bench [--count N] [--check]   (--check: exit 1 below the target)
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.postgres_server import create_database, postgres_server  # noqa: E402

TARGET_RATIO = 0.10
STATUS_WEIGHTS = {
    "pending": 55,
    "completed": 35,
    "failed": 5,
    "reversal_pending": 2,
    "reversed": 2,
    "permanently_failed": 1,
}


def make_rows(count: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    statuses = list(STATUS_WEIGHTS)
    weights = list(STATUS_WEIGHTS.values())
    now = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for i in range(count):
        status = rng.choices(statuses, weights)[0]
        amount = rng.randint(100, 500_000)
        row: dict[str, Any] = {
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "seller_account_id": f"acct_{rng.randint(1, 5000):06d}",
            "order_ref": f"order-{i:08d}",
            "amount": amount,
            "currency": "usd",
            "status": status,
            "retry_count": 0,
            "next_retry_at": None,
            "stripe_transfer_id": None,
            "amount_reversed": 0,
            "last_error": None,
            "updated_at": (now - timedelta(minutes=i)).isoformat(),
        }
        if status == "failed":
            row["retry_count"] = rng.randint(1, 5)
            row["next_retry_at"] = (now + timedelta(minutes=rng.randint(1, 600))).isoformat()
            row["last_error"] = "api_connection_error"
        if status in ("completed", "reversal_pending", "reversed"):
            row["stripe_transfer_id"] = f"tr_{i:010d}"
        if status == "reversed":
            row["amount_reversed"] = amount
        rows.append(row)
    return rows


def measure_ceiling(url: str, rows: list[dict[str, Any]]) -> float:
    """Rows/s of a raw psycopg executemany into a plain table, one transaction."""
    columns = list(rows[0])
    params = [
        (
            uuid.UUID(r["id"]),
            r["seller_account_id"],
            r["order_ref"],
            r["amount"],
            r["currency"],
            r["status"],
            r["retry_count"],
            None if r["next_retry_at"] is None else datetime.fromisoformat(r["next_retry_at"]),
            r["stripe_transfer_id"],
            r["amount_reversed"],
            r["last_error"],
            datetime.fromisoformat(r["updated_at"]),
        )
        for r in rows
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE plain_transfers (id uuid, seller_account_id text, order_ref text,"
            " amount bigint, currency text, status text, retry_count integer,"
            " next_retry_at timestamptz, stripe_transfer_id text, amount_reversed bigint,"
            " last_error text, updated_at timestamptz)"
        )
        insert = (
            f"INSERT INTO plain_transfers ({', '.join(columns)})"
            f" VALUES ({', '.join(['%s'] * len(columns))})"
        )
        started = time.perf_counter()
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(insert, params)
        elapsed = time.perf_counter() - started
    return len(rows) / elapsed


def measure_import(url: str, path: Path, count: int) -> float:
    """Transfers/s of `ledger transfer import`, end to end, read table included."""
    ledger = str(Path(sys.executable).with_name("ledger"))
    subprocess.run([ledger, "migrate", "--database-url", url], check=True, capture_output=True)
    started = time.perf_counter()
    subprocess.run(
        [ledger, "transfer", "import", str(path), "--database-url", url],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - started
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT COUNT(*) FROM seller_transfers").fetchone()
    if found is None or found[0] != count:
        raise SystemExit(f"bench: read table has {found} rows, expected {count}")
    return count / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--check", action="store_true", help="exit 1 below the target ratio")
    args = parser.parse_args()

    rows = make_rows(args.count)
    with tempfile.TemporaryDirectory() as tmp, postgres_server(fsync=True) as admin_url:
        path = Path(tmp) / "transfers.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        suffix = uuid.uuid4().hex[:8]
        ceiling_url = create_database(admin_url, f"bench_ceiling_{suffix}")
        ledger_url = create_database(admin_url, f"bench_ledger_{suffix}")
        ceiling = measure_ceiling(ceiling_url, rows)
        ledger = measure_import(ledger_url, path, len(rows))

    ratio = ledger / ceiling
    verdict = "meets" if ratio >= TARGET_RATIO else "BELOW"
    print(f"transfers:  {len(rows):,} into PostgreSQL (fsync on)")
    print(f"ceiling:    {ceiling:,.0f} rows/s  raw psycopg executemany, plain table, 1 transaction")
    print(f"ledger:     {ledger:,.0f} transfers/s  `ledger transfer import` (events + read table)")
    print(f"ratio:      {ratio:.3f}  ({verdict} the target of {TARGET_RATIO:.2f})")
    return 1 if args.check and ratio < TARGET_RATIO else 0


if __name__ == "__main__":
    raise SystemExit(main())
