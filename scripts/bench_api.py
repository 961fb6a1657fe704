"""The Python API's hot path against a raw ceiling measured in the same run
(scripts/bench --only api).

ledger     `create_transfer`, then `request_reversal` of transfers paid out
           beforehand (setup), through `ledger.api.open_ledger` on
           PostgreSQL (fsync on): each call one append that writes the
           events, the read row, the tracking position and the chain link in
           one transaction.
ceiling    the same work without the ledger: per operation one transaction
           that takes `LOCK TABLE ... IN EXCLUSIVE MODE` on an events table
           (as the event store's recorder does), inserts one event
           `RETURNING` its position, and upserts one row; one connection per
           thread.

Both with 8 threads and with 1, ops/s; the ratios are ledger / ceiling in
the same round. Rounds are repeated (default 3): the median ratio and the
spread (lowest, highest) are reported, never the best. Targets: 8 threads
>= 0.6, 1 thread >= 0.8. p50 and p95 latency of the ledger's calls beside.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import psycopg

from ledger.api import TransferLedger, open_ledger
from ledger.domain import payout_cause
from tests.postgres_server import create_database

THREADS: Final = (8, 1)
TARGETS: Final = {8: 0.6, 1: 0.8}
STATE: Final = json.dumps({"amount": 1250, "currency": "usd", "seller": "acct_1Bench"}).encode()


@dataclass
class Run:
    ops_per_second: float
    latencies: list[float]

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def _timed(threads: int, per_thread: int, op: Callable[[int, int], None]) -> Run:
    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(threads + 1)

    def worker(number: int) -> None:
        mine = []
        start.wait()
        for i in range(per_thread):
            began = time.perf_counter()
            op(number, i)
            mine.append(time.perf_counter() - began)
        with lock:
            latencies.extend(mine)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(worker, n) for n in range(threads)]
        start.wait()
        began = time.perf_counter()
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - began
    return Run(threads * per_thread / elapsed, latencies)


def _raw_ceiling(url: str, threads: int, per_thread: int) -> Run:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS raw_events (position bigserial PRIMARY KEY,"
            " originator_id uuid NOT NULL, version integer NOT NULL, topic text NOT NULL,"
            " state bytea NOT NULL)"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS raw_rows (id uuid PRIMARY KEY, status text NOT NULL,"
            " version integer NOT NULL, position bigint NOT NULL)"
        )
    connections = [psycopg.connect(url, autocommit=True) for _ in range(threads)]

    def op(number: int, _: int) -> None:
        conn = connections[number]
        transfer_id = uuid.uuid4()
        with conn.transaction():
            conn.execute("LOCK TABLE raw_events IN EXCLUSIVE MODE")
            position = conn.execute(
                "INSERT INTO raw_events (originator_id, version, topic, state)"
                " VALUES (%s, 1, 'ledger.domain:Transfer.Created', %s) RETURNING position",
                (transfer_id, STATE),
            ).fetchone()
            assert position is not None
            conn.execute(
                "INSERT INTO raw_rows (id, status, version, position) VALUES (%s, 'pending', 1, %s)"
                " ON CONFLICT (id) DO UPDATE SET status = excluded.status,"
                " version = excluded.version, position = excluded.position",
                (transfer_id, position[0]),
            )

    try:
        return _timed(threads, per_thread, op)
    finally:
        for conn in connections:
            conn.close()


def _paid_transfers(ledger: TransferLedger, count: int, tag: str) -> list[uuid.UUID]:
    """Setup: transfers paid out (as the payout manager records it)."""
    made = []
    for i in range(count):
        created = ledger.create_transfer(
            seller="acct_1Bench", order_ref=f"{tag}-{i}", amount=1250, currency="usd"
        )
        transfer_id = created.id
        ledger.backend.transfers.change(  # setup, as tests/paying.py does
            transfer_id,
            lambda t, tid=transfer_id: t.record_payout_succeeded(
                stripe_transfer_id=f"tr_{tid.hex[:16]}",
                actor="system:payout-manager",
                caused_by=payout_cause(tid),
            ),
        )
        made.append(transfer_id)
    return made


def bench_api(admin_url: str, rounds: int, per_thread: int) -> list[tuple[str, bool, str]]:
    results: dict[tuple[str, int], list[tuple[float, Run, Run]]] = {}
    for round_number in range(1, rounds + 1):
        url = create_database(admin_url, f"bench_api_{uuid.uuid4().hex[:8]}")
        os.environ.pop("LEDGER_DATABASE_URL", None)
        from ledger.bootstrap import migrate_database  # noqa: PLC0415

        migrate_database(url)
        with open_ledger(url, pool_size=max(THREADS) + 2) as ledger:
            for threads in THREADS:
                tag = f"r{round_number}t{threads}"
                ceiling = _raw_ceiling(url, threads, per_thread)
                created = _timed(
                    threads,
                    per_thread,
                    lambda n, i, tag=tag: ledger.create_transfer(  # type: ignore[misc]
                        seller="acct_1Bench",
                        order_ref=f"{tag}-create-{n}-{i}",
                        amount=1250,
                        currency="usd",
                    ),
                )
                paid = _paid_transfers(ledger, threads * per_thread, f"{tag}-paid")

                def reverse(n: int, i: int, paid: list[uuid.UUID] = paid) -> None:
                    ledger.request_reversal(
                        paid[n * per_thread + i],
                        request_ref=f"refund-{n}-{i}",
                        amount=None,
                        actor="refund-handler",
                        reason="order refunded",
                    )

                reversed_ = _timed(threads, per_thread, reverse)
                for name, run in (("create_transfer", created), ("request_reversal", reversed_)):
                    ratio = run.ops_per_second / ceiling.ops_per_second
                    results.setdefault((name, threads), []).append((ratio, run, ceiling))
                    print(
                        f"round {round_number}, {threads} thread(s), {name}:"
                        f" {run.ops_per_second:,.0f}/s against a ceiling of"
                        f" {ceiling.ops_per_second:,.0f}/s = {ratio:.2f};"
                        f" p50 {run.percentile(0.5):.1f} ms, p95 {run.percentile(0.95):.1f} ms"
                    )
    verdicts = []
    for (name, threads), measured in sorted(results.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        ratios = [ratio for ratio, _, _ in measured]
        median = statistics.median(ratios)
        p50 = statistics.median(run.percentile(0.5) for _, run, _ in measured)
        p95 = statistics.median(run.percentile(0.95) for _, run, _ in measured)
        target = TARGETS[threads]
        text = (
            f"{name}, {threads} thread(s): ratio median {median:.2f} (spread"
            f" {min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} rounds), p50 {p50:.1f} ms,"
            f" p95 {p95:.1f} ms; target >= {target:.1f}"
        )
        print(text)
        verdicts.append((f"api {name} x{threads}", median >= target, text))
    return verdicts
