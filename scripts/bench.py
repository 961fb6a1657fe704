"""Benchmarks of the import, reversals, wake-up latency, rebuild and audit, with targets.

Each rate is set against a ceiling measured in the same run or a fixed bound.

import     `ledger transfer import` of N transfers against a raw executemany ceiling, both
           into the same PostgreSQL server (fsync on):
           - ceiling: psycopg `executemany` of the rows into a plain table with the read
             table's columns (no keys, no indexes), one transaction;
           - ledger: `ledger transfer import FILE` as a user runs it (a new process, JSON
             Lines parsed and validated, events appended, read table projected).
           Target: ratio >= 0.20.
reversals  300 transfers, paid out, then all put into reversal_pending at once; a fresh
           `ledger daemon --concurrency N` reverses them against `ledger stripe-sim
           --latency-ms 100` (separate processes), PostgreSQL fsync on. Elapsed time runs
           from the first reversal request arriving at the simulator (so process start-up
           and the first query are not counted) to the moment all of them read `reversed`
           in the read table. The bound is N / latency: N = 16, 160 reversals/s, target
           ratio >= 0.85; N = 64, 640 reversals/s, reported only.
latency    With a daemon idle and the simulator answering at once, reversals are requested
           one at a time through the Python API; each one's wake-up latency runs from the
           return of the command's save (the commit; the read-table catch-up that
           `Ledger.request_reversal` does next is still run, as a caller's would be) to its
           POST reaching the simulator. PostgreSQL (LISTEN/NOTIFY): target p50 < 20 ms.
           SQLite (polls every 100 ms): reported only.
rebuild    `ledger rebuild` of a database of N imported transfers (one event each),
           timed as a whole process (start-up included), against a raw psycopg COPY of
           the same N read-table rows (all 16 columns, seller_transfers' column types;
           no keys, no indexes) into a plain table, one transaction, same server. Both
           best of 3 (each rebuild after the first rebuilds the table the one before
           switched in: the same work); the first run's ratio is shown too. Rate = rows
           / elapsed. Target: ratio >= 0.30. Also N transfers with three events each
           (Imported, PayoutSucceeded, ReversalRequested), one run: reported.
verify     `ledger audit verify --head` (a whole process) of the same N-transfer
           database, sealed first, against a raw SELECT of its events (client-side
           cursor, in the transfer-and-version order verify replays them in) plus
           `json.loads` of each state; both best of 3, events/s both. Target: ratio
           >= 0.25.
           The eventsourcing mapper's decoding in place of json.loads is shown too.
history    `ledger audit ID` of one transfer of that database, a whole command
           (start-up included), run 10 times. Target: median < 0.3 s.

The databases of rebuild, verify and history are built once per run (setup, not timed),
vacuumed and checkpointed; rebuild works on a copy, so the three can run in any combination.
Machines differ, so the figures that matter are ratios to a ceiling or bound.
api        The Python API's create_transfer and request_reversal, 8 threads and 1, against
           a raw ceiling in the same round (see scripts/bench_api.py). Median of --rounds
           (3) and the spread. Targets: 8 threads >= 0.6, 1 thread >= 0.8.

rate       Two daemons, 300 due payouts, the simulator at Stripe's test-mode limits (25/s):
           with the rate budget at 20/s, sustained >= 0.9 of it with <= 1% of requests
           answered 429; with the budget at 40/s (above the limit), every payout made,
           none permanently_failed or parked. Median of --rounds (3) and the spread.

Usage: scripts/bench [--only api,import,reversals,rate,latency,rebuild,verify,history] [--count N]
                     [--reversals N] [--latency-samples N] [--history-runs N] [--check]
                     (--check: exit 1 below any target)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eventsourcing.application import project_aggregate  # noqa: E402
from eventsourcing.persistence import StoredEvent  # noqa: E402

from ledger.domain import Transfer  # noqa: E402
from scripts.bench_api import __doc__ as bench_api_doc  # noqa: E402
from scripts.bench_api import bench_api  # noqa: E402
from tests.ledgers import Ledger  # noqa: E402
from tests.postgres_server import (  # noqa: E402
    create_database,
    database_url,
    drop_database,
    postgres_server,
)

LEDGER: Final = str(Path(sys.executable).with_name("ledger"))
BENCHMARKS: Final = (
    "api",
    "import",
    "reversals",
    "rate",
    "latency",
    "rebuild",
    "verify",
    "history",
)

IMPORT_TARGET_RATIO: Final = 0.20
STATUS_WEIGHTS: Final = {
    "pending": 55,
    "completed": 35,
    "failed": 5,
    "reversal_pending": 2,
    "reversed": 2,
    "permanently_failed": 1,
}

REVERSAL_SIM_LATENCY_MS: Final = 100
# (daemon --concurrency, target ratio or None for "report only")
REVERSAL_RUNS: Final[tuple[tuple[int, float | None], ...]] = ((16, 0.85), (64, None))
# The payouts before the measured part are setup; this only makes them quicker.
SETUP_CONCURRENCY: Final = 16

WAKEUP_TARGET_P50_MS: Final = 20.0
# Requests are spaced so that each finds the daemon idle: a queue would measure
# waiting for a free worker, not waking up.
WAKEUP_SPACING_SECONDS: Final = (0.05, 0.1)
# Long enough for the payouts' last outcomes to be projected and the daemon to
# settle into waiting before the first measured request.
WAKEUP_SETTLE_SECONDS: Final = 1.0

REBUILD_TARGET_RATIO: Final = 0.30
VERIFY_TARGET_RATIO: Final = 0.25
HISTORY_TARGET_SECONDS: Final = 0.3
# seller_transfers' columns and types (migration 0001), for the rebuild's ceiling.
READ_TABLE_COLUMNS: Final = (
    ("id", "uuid"),
    ("seller_account_id", "text"),
    ("order_ref", "text"),
    ("amount", "bigint"),
    ("currency", "text"),
    ("status", "text"),
    ("retry_count", "integer"),
    ("next_retry_at", "timestamptz"),
    ("stripe_transfer_id", "text"),
    ("amount_reversed", "bigint"),
    ("last_error", "text"),
    ("reversal_request_ref", "text"),
    ("reversal_amount", "bigint"),
    ("version", "integer"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
)
# The rebuild's and verify's ceilings take well under a second, where one run's
# noise is tens of percent: the best of a few is what the machine can do.
CEILING_TRIES: Final = 3
# The ledger's side of those ratios takes about a second, and its noise is as large
# (other processes on a 2-core machine): measured as the ceilings are.
LEDGER_TRIES: Final = 3
# Transfers loaded, changed and saved per append in the three-event setup.
SETUP_BATCH: Final = 2000

PROCESS_START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 15.0
SIM_LISTENING: Final = re.compile(r"stripe-sim listening on (http://\S+)")
API_KEY: Final = "sk_test_ledgerBenchKey0000"
# The daemon's rate budget out of the way where the daemon's own speed is
# measured against a simulator without rate limits.
BENCH_BUDGET: Final = {"LEDGER_STRIPE_RATE": "10000", "LEDGER_STRIPE_RATE_TOTAL": "10000"}
RATE_PAYOUTS: Final = 300
RATE_CONFIGURED: Final = 20.0
RATE_ABOVE_LIMIT: Final = 40.0
RATE_TARGET_RATIO: Final = 0.9
RATE_MAX_LIMITED: Final = 0.01


@dataclass(frozen=True)
class Target:
    """One line of the final verdict: what was asked, and whether it was met."""

    name: str
    met: bool
    text: str


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


# ----- import ------------------------------------------------------------------------------


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


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


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


def ledger_migrate(url: str) -> None:
    subprocess.run([LEDGER, "migrate", "--database-url", url], check=True, capture_output=True)


def ledger_import(url: str, path: Path) -> None:
    subprocess.run(
        [LEDGER, "transfer", "import", str(path), "--database-url", url],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def measure_import(url: str, path: Path, count: int) -> float:
    """Transfers/s of `ledger transfer import`, end to end, read table included."""
    ledger_migrate(url)
    checkpoint(url)
    started = time.perf_counter()
    ledger_import(url, path)
    elapsed = time.perf_counter() - started
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT COUNT(*) FROM seller_transfers").fetchone()
    if found is None or found[0] != count:
        raise SystemExit(f"bench: read table has {found} rows, expected {count}")
    return count / elapsed


def spread_text(ratios: list[float]) -> str:
    """The median of `ratios` and their spread: never the best one alone."""
    return (
        f"ratio median {statistics.median(ratios):.3f} (spread {min(ratios):.3f}-"
        f"{max(ratios):.3f} over {len(ratios)} rounds)"
    )


def bench_import(admin_url: str, tmp: Path, count: int, rounds: int) -> list[Target]:
    section("import")
    rows = make_rows(count)
    path = write_jsonl(tmp / "transfers.jsonl", rows)
    print(f"transfers:  {len(rows):,} into PostgreSQL (fsync on); each round fresh databases")
    ratios = []
    for round_number in range(1, rounds + 1):
        suffix = uuid.uuid4().hex[:8]
        names = (f"bench_ceiling_{suffix}", f"bench_ledger_{suffix}")
        ceiling_url, ledger_url = (create_database(admin_url, name) for name in names)
        try:
            # Each side starts with nothing of the round before left to flush.
            checkpoint(ceiling_url)
            ceiling = measure_ceiling(ceiling_url, rows)
            ledger = measure_import(ledger_url, path, len(rows))
        finally:
            for name in names:
                drop_database(admin_url, name)
        ratios.append(ledger / ceiling)
        print(
            f"round {round_number}: ceiling {ceiling:,.0f} rows/s (raw psycopg executemany,"
            f" plain table, 1 transaction); ledger {ledger:,.0f} transfers/s (`ledger"
            f" transfer import`, events + read table); ratio {ledger / ceiling:.3f}",
            flush=True,
        )
    median = statistics.median(ratios)
    text = f"{spread_text(ratios)}, target >= {IMPORT_TARGET_RATIO:.2f}"
    print(text)
    return [Target("import", median >= IMPORT_TARGET_RATIO, text)]


# ----- processes: the simulator and the daemon ----------------------------------------------


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the daemon finishes in-flight calls), then SIGKILL if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@contextlib.contextmanager
def stripe_sim(latency_ms: int, log_path: Path, rate_limit: str = "off") -> Iterator[str]:
    """`ledger stripe-sim --port 0` as its own process; yields its base URL.
    Rate limiting off unless asked: the reversals and latency benches measure
    the daemon's own speed (with its rate budget out of the way, BENCH_BUDGET)."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                LEDGER,
                "stripe-sim",
                "--port",
                "0",
                "--latency-ms",
                str(latency_ms),
                "--rate-limit",
                rate_limit,
            ],
            stdout=subprocess.PIPE,
            stderr=log,  # one access-log line per request: kept out of our report
        )
    try:
        yield read_startup_line(process, log_path)
    finally:
        stop_process(process)
        if process.stdout is not None:
            process.stdout.close()


def read_startup_line(process: subprocess.Popen[bytes], log_path: Path) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + PROCESS_START_TIMEOUT
    # The startup line is all the simulator writes to stdout; select keeps a
    # simulator that never starts from hanging the benchmark.
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            line = process.stdout.readline().decode(errors="replace")
            match = SIM_LISTENING.search(line)
            if match:
                return match.group(1)
            if not line:
                break
        elif process.poll() is not None:
            break
    raise SystemExit(f"bench: stripe-sim did not start:\n{tail(log_path)}")


def daemon_env(url: str, base_url: str, budget: dict[str, str] | None = None) -> dict[str, str]:
    # Only what the bench sets: a LEDGER_/STRIPE_ variable of the caller's
    # (a real key, a shortened policy) must not change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "STRIPE_"))}
    env.update(LEDGER_DATABASE_URL=url, STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=base_url)
    env.update(BENCH_BUDGET if budget is None else budget)
    return env


def start_daemon(
    url: str,
    base_url: str,
    concurrency: int,
    log_path: Path,
    *,
    once: bool = False,
    budget: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [LEDGER, "daemon", "--concurrency", str(concurrency), *(["--once"] if once else [])],
            env=daemon_env(url, base_url, budget),
            stdout=log,
            stderr=log,
        )


@contextlib.contextmanager
def running_daemon(
    url: str, base_url: str, concurrency: int, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    process = start_daemon(url, base_url, concurrency, log_path)
    try:
        yield process
    finally:
        stop_process(process)


def pay_out(url: str, base_url: str, count: int, log_path: Path) -> list[Any]:
    """Setup, not measured: `ledger daemon --once` pays every pending transfer;
    returns the read-table rows, all `completed` with a Stripe transfer id."""
    process = start_daemon(url, base_url, SETUP_CONCURRENCY, log_path, once=True)
    try:
        process.wait(timeout=max(120.0, count * 0.5))
    except subprocess.TimeoutExpired:
        stop_process(process)
        raise SystemExit(f"bench: the payout daemon did not finish:\n{tail(log_path)}") from None
    with Ledger.open(url) as ledger:
        completed = ledger.list("completed")
    if process.returncode != 0 or len(completed) != count:
        raise SystemExit(
            f"bench: payouts left {len(completed)} of {count} completed"
            f" (daemon exit {process.returncode}):\n{tail(log_path)}"
        )
    return completed


def pending_rows(count: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat()
    return [
        {
            "id": str(uuid.uuid4()),
            "seller_account_id": f"acct_bench{i % 50:03d}",
            "order_ref": f"bench-{uuid.uuid4().hex[:12]}",
            "amount": 5000,
            "currency": "usd",
            "status": "pending",
            "retry_count": 0,
            "next_retry_at": None,
            "stripe_transfer_id": None,
            "amount_reversed": 0,
            "last_error": None,
            "updated_at": now,
        }
        for i in range(count)
    ]


def prepare_paid_transfers(url: str, tmp: Path, count: int, base_url: str, name: str) -> list[Any]:
    ledger_migrate(url)
    ledger_import(url, write_jsonl(tmp / f"{name}.jsonl", pending_rows(count)))
    return pay_out(url, base_url, count, tmp / f"{name}-payouts.log")


def sim_requests(base_url: str) -> list[dict[str, Any]]:
    # The URL is our own simulator on 127.0.0.1, never input.
    with urllib.request.urlopen(f"{base_url}/_sim/state", timeout=30) as answer:  # noqa: S310
        state: dict[str, Any] = json.load(answer)
    requests: list[dict[str, Any]] = state["requests"]
    return requests


def reversal_posts(base_url: str) -> dict[str, float]:
    """Stripe transfer id -> arrival time (time.time()) of its first reversal POST."""
    first: dict[str, float] = {}
    for request in sim_requests(base_url):
        path = request["path"]
        if request["method"] == "POST" and path.endswith("/reversals"):
            stripe_id = path.split("/")[3]  # /v1/transfers/<tr>/reversals
            first[stripe_id] = min(first.get(stripe_id, request["at"]), request["at"])
    return first


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


# ----- reversal throughput -----------------------------------------------------------------


def measure_reversals(admin_url: str, tmp: Path, count: int, concurrency: int) -> float:
    """Reversals/s of one fresh daemon with `concurrency` workers; prints the details."""
    name = f"bench_rev{concurrency}_{uuid.uuid4().hex[:8]}"
    url = create_database(admin_url, name)
    with stripe_sim(REVERSAL_SIM_LATENCY_MS, tmp / f"{name}-sim.log") as base_url:
        paid = prepare_paid_transfers(url, tmp, count, base_url, name)
        # All at once, before any daemon runs: the daemon finds every one due on
        # its first turn, as after an outage or a bulk refund.
        with Ledger.open(url) as ledger:
            for number, row in enumerate(paid):
                ledger.service.request_reversal(
                    row.id,
                    request_ref=f"bench-refund-{number}",
                    amount=None,
                    actor="bench",
                    reason="benchmark",
                )
            ledger.catch_up()
            due = len(ledger.list("reversal_pending"))
        if due != count:
            raise SystemExit(f"bench: {due} of {count} transfers are reversal_pending")

        log_path = tmp / f"{name}-daemon.log"
        with (
            psycopg.connect(url, autocommit=True) as conn,
            running_daemon(url, base_url, concurrency, log_path) as daemon,
        ):
            started = time.time()
            # Plain reads, no locks: polling must not slow the daemon's projection.
            # Finely near the end only, where the polling interval is the error.
            # Ten times the ideal time, plus a minute for a loaded machine.
            ideal = count / concurrency * REVERSAL_SIM_LATENCY_MS / 1000
            deadline = time.monotonic() + 60.0 + 10 * ideal
            while True:
                row = conn.execute(
                    "SELECT COUNT(*) FROM seller_transfers WHERE status = 'reversed'"
                ).fetchone()
                done = row[0] if row else 0
                if done >= count:
                    finished = time.time()
                    break
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"bench: {done} of {count} reversed when the daemon stopped or the"
                        f" wait ran out:\n{tail(log_path)}"
                    )
                time.sleep(0.005 if count - done <= concurrency else 0.05)
        posts = reversal_posts(base_url)

    if len(posts) != count:
        raise SystemExit(f"bench: {len(posts)} transfers got a reversal POST, expected {count}")
    first, last = min(posts.values()), max(posts.values())
    elapsed = finished - first
    rate = count / elapsed
    bound = concurrency / (REVERSAL_SIM_LATENCY_MS / 1000)
    print(
        f"--concurrency {concurrency}: {rate:,.1f} reversals/s  bound {bound:,.0f}/s"
        f"  ratio {rate / bound:.3f}"
    )
    print(
        f"    first request {first - started:.2f} s after daemon start (not counted);"
        f" first request -> all reversed {elapsed:.2f} s; requests span {last - first:.2f} s"
    )
    return rate


def measure_rate(admin_url: str, tmp: Path, configured: float) -> tuple[float, float, int, int]:
    """Two daemons (--concurrency 16), RATE_PAYOUTS due payouts, the simulator
    at Stripe's test-mode limits (25/s per endpoint and in total), the budget
    at `configured`/s (per endpoint and in total). Returns (payouts/s from the
    first POST to the last, share of requests answered 429, how many ended
    permanently_failed, how many are parked)."""
    name = f"bench_rate_{uuid.uuid4().hex[:8]}"
    url = create_database(admin_url, name)
    budget = {
        "LEDGER_STRIPE_RATE": f"{configured:g}",
        "LEDGER_STRIPE_RATE_TOTAL": f"{configured:g}",
    }
    with stripe_sim(20, tmp / f"{name}-sim.log", rate_limit="test") as base_url:
        ledger_migrate(url)
        ledger_import(url, write_jsonl(tmp / f"{name}.jsonl", pending_rows(RATE_PAYOUTS)))
        logs = [tmp / f"{name}-{n}.log" for n in ("a", "b")]
        daemons = [start_daemon(url, base_url, 16, log, budget=budget) for log in logs]
        try:
            with psycopg.connect(url, autocommit=True) as conn:

                def settled() -> bool:
                    row = conn.execute(
                        "SELECT COUNT(*) FROM seller_transfers"
                        " WHERE status IN ('completed', 'permanently_failed')"
                    ).fetchone()
                    return bool(row and row[0] >= RATE_PAYOUTS)

                wait_until(settled, 300, "every payout to settle")
                failed_row = conn.execute(
                    "SELECT COUNT(*) FROM seller_transfers WHERE status = 'permanently_failed'"
                ).fetchone()
                parked_row = conn.execute(
                    "SELECT COUNT(*) FROM stripe_work WHERE parked_at IS NOT NULL"
                ).fetchone()
        finally:
            for daemon in daemons:
                stop_process(daemon)
        requests = sim_requests(base_url)
    made = sorted(
        r["at"]
        for r in requests
        if r["method"] == "POST" and r["path"] == "/v1/transfers" and r["status"] == 200
    )
    limited = sum(1 for r in requests if r["status"] == 429)
    rate = (len(made) - 1) / (made[-1] - made[0]) if len(made) > 1 else 0.0
    return (
        rate,
        limited / max(1, len(requests)),
        int(failed_row[0]) if failed_row else -1,
        int(parked_row[0]) if parked_row else -1,
    )


def bench_rate(admin_url: str, tmp: Path, rounds: int) -> list[Target]:
    section("rate")
    print(
        f"two daemons, {RATE_PAYOUTS} due payouts, `ledger stripe-sim --rate-limit test`"
        " (25/s per endpoint and in total)"
    )
    targets = []
    for configured in (RATE_CONFIGURED, RATE_ABOVE_LIMIT):
        runs = [measure_rate(admin_url, tmp, configured) for _ in range(rounds)]
        for number, (rate, limited, failed, parked) in enumerate(runs, start=1):
            print(
                f"budget {configured:g}/s, run {number}: {rate:,.1f} payouts/s,"
                f" {limited:.1%} of requests 429, {failed} permanently_failed, {parked} parked"
            )
        ratios = [rate / configured for rate, _, _, _ in runs]
        limited_share = statistics.median(limited for _, limited, _, _ in runs)
        lost = sum(failed + parked for _, _, failed, parked in runs)
        if configured == RATE_CONFIGURED:
            median = statistics.median(ratios)
            met = median >= RATE_TARGET_RATIO and limited_share <= RATE_MAX_LIMITED and lost == 0
            text = (
                f"budget {configured:g}/s: sustained {median:.2f} of it (spread"
                f" {min(ratios):.2f}-{max(ratios):.2f}), {limited_share:.1%} of requests 429,"
                f" {lost} failed or parked; target >= {RATE_TARGET_RATIO:.1f} with <="
                f" {RATE_MAX_LIMITED:.0%} 429s"
            )
        else:
            met = lost == 0
            text = (
                f"budget {configured:g}/s, above the simulator's 25/s: {lost} failed or parked,"
                f" {limited_share:.1%} of requests 429; target: none failed or parked"
            )
        print(text)
        targets.append(Target(f"rate {configured:g}/s", met, text))
    return targets


def bench_reversals(admin_url: str, tmp: Path, count: int, rounds: int) -> list[Target]:
    section("reversals")
    print(
        f"{count} transfers due for reversal at once; stripe-sim --latency-ms"
        f" {REVERSAL_SIM_LATENCY_MS}; PostgreSQL (fsync on); one fresh `ledger daemon`."
    )
    print(
        "rate = N / (first reversal request arriving at the simulator -> all N"
        " `reversed` in the read table); bound = concurrency / latency"
    )
    targets = []
    for concurrency, target in REVERSAL_RUNS:
        bound = concurrency / (REVERSAL_SIM_LATENCY_MS / 1000)
        # The bound's reported runs once: only the target's is repeated.
        runs = rounds if target is not None else 1
        ratios = [
            measure_reversals(admin_url, tmp, count, concurrency) / bound for _ in range(runs)
        ]
        if target is not None:
            median = statistics.median(ratios)
            text = f"{spread_text(ratios)}, target >= {target:.2f}"
            print(f"--concurrency {concurrency}: {text}")
            targets.append(Target(f"reversals, concurrency {concurrency}", median >= target, text))
    return targets


# ----- wake-up latency ---------------------------------------------------------------------


def measure_wakeup(url: str, tmp: Path, samples: int, name: str) -> list[float]:
    """Milliseconds from each ReversalRequested commit to its POST at the simulator."""
    committed: dict[str, float] = {}  # Stripe transfer id -> commit time
    rng = random.Random(11)  # noqa: S311 - spacing, not secrets
    with stripe_sim(0, tmp / f"{name}-sim.log") as base_url:
        paid = prepare_paid_transfers(url, tmp, samples, base_url, name)
        log_path = tmp / f"{name}-daemon.log"
        with running_daemon(url, base_url, 4, log_path) as daemon, Ledger.open(url) as ledger:
            time.sleep(WAKEUP_SETTLE_SECONDS)
            for number, row in enumerate(paid):
                time.sleep(rng.uniform(*WAKEUP_SPACING_SECONDS))
                # What Ledger.request_reversal does, with the clock read between
                # its two steps: the save's return is the commit.
                ledger.service.request_reversal(
                    row.id,
                    request_ref=f"bench-refund-{number}",
                    amount=None,
                    actor="bench",
                    reason="benchmark",
                )
                committed[row.stripe_transfer_id] = time.time()
                ledger.catch_up()
            wait_until(
                lambda: daemon.poll() is not None or len(reversal_posts(base_url)) >= samples,
                timeout=30.0,
                what="every reversal to reach the simulator",
            )
        arrived = reversal_posts(base_url)
    missing = set(committed) - set(arrived)
    if missing:
        raise SystemExit(f"bench: {len(missing)} reversals never reached the simulator")
    return [(arrived[tr] - at) * 1000 for tr, at in committed.items()]


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that was actually measured."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def bench_latency(admin_url: str, tmp: Path, samples: int) -> list[Target]:
    section("latency")
    print(
        f"{samples} reversals requested one at a time (every"
        f" {WAKEUP_SPACING_SECONDS[0] * 1000:.0f}-{WAKEUP_SPACING_SECONDS[1] * 1000:.0f} ms)"
        " to an idle `ledger daemon`; stripe-sim --latency-ms 0."
    )
    print("latency = the command's save returning (commit) -> its POST arriving at stripe-sim")
    targets = []
    name = f"bench_wake_{uuid.uuid4().hex[:8]}"
    runs: list[tuple[str, str, float | None]] = [
        ("PostgreSQL", create_database(admin_url, name), WAKEUP_TARGET_P50_MS),
        ("SQLite", f"sqlite:///{tmp / (name + '.db')}", None),
    ]
    for label, url, target in runs:
        latencies = measure_wakeup(url, tmp, samples, f"{name}_{label.lower()}")
        p50, p95 = percentile(latencies, 0.50), percentile(latencies, 0.95)
        line = (
            f"{label + ':':<12}p50 {p50:6.1f} ms  p95 {p95:6.1f} ms"
            f"  (min {min(latencies):.1f}, max {max(latencies):.1f}, mean"
            f" {statistics.fmean(latencies):.1f})"
        )
        if target is None:
            print(f"{line}  no target")
        else:
            verdict = "meets" if p50 < target else "ABOVE"
            print(f"{line}  p50 {verdict} the target of < {target:.0f} ms")
            targets.append(
                Target(
                    f"wake-up latency, {label}",
                    p50 < target,
                    f"p50 {p50:.1f} ms, target < {target:.0f} ms",
                )
            )
    return targets


# ----- rebuild, verify, history: the audit tools on a large ledger --------------------------


class AuditDatabases:
    """The databases the rebuild, verify and history benchmarks start from, built once
    per run (setup, not timed): `count` transfers imported with one event each, and the
    same number with three events each (for the rebuild's report only)."""

    def __init__(self, admin_url: str, tmp: Path, count: int) -> None:
        self.admin_url = admin_url
        self.tmp = tmp
        self.count = count
        self.suffix = uuid.uuid4().hex[:8]
        self._one_event: str | None = None
        self._three_events: str | None = None

    def one_event(self) -> str:
        """`ledger transfer import` of make_rows(count), sealed and vacuumed."""
        if self._one_event is None:
            name = f"bench_audit_{self.suffix}"
            url = create_database(self.admin_url, name)
            ledger_migrate(url)
            ledger_import(url, write_jsonl(self.tmp / f"{name}.jsonl", make_rows(self.count)))
            # Sealed here so that each copy is; `audit head` is what seals from the CLI.
            audit_head(url)
            at_rest(url)
            self._one_event = url
        return self._one_event

    def copy_of_one_event(self, name: str) -> str:
        """A copy of one_event() to change (rebuild switches its read table): verify and
        history then see the database as the import left it, whatever ran before."""
        source = urlsplit(self.one_event()).path.lstrip("/")
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(source)
                )
            )
        url = database_url(self.admin_url, name)
        checkpoint(url)
        return url

    def three_events(self) -> str:
        if self._three_events is None:
            name = f"bench_audit3_{self.suffix}"
            url = create_database(self.admin_url, name)
            ledger_migrate(url)
            ledger_import(url, write_jsonl(self.tmp / f"{name}.jsonl", pending_rows(self.count)))
            append_payout_and_reversal(url)
            at_rest(url)
            self._three_events = url
        return self._three_events


def audit_head(url: str) -> str:
    """`ledger audit head` (seals what is not sealed yet); returns the head's link."""
    answer = subprocess.run(
        [LEDGER, "audit", "head", "--json", "--database-url", url],
        check=True,
        capture_output=True,
    )
    link: str = json.loads(answer.stdout)["link"]
    return link


def at_rest(url: str) -> None:
    # The first reads of freshly written rows set their hint bits, writing pages:
    # whichever measurement came first, ceiling or ledger, would pay for it.
    # VACUUM pays it in setup and leaves statistics, as autovacuum would have
    # by the time anyone rebuilds or audits a ledger this size.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
    checkpoint(url)


def checkpoint(url: str) -> None:
    # Setup writes hundreds of megabytes (imports, VACUUM, a database copy): flushed
    # now, not by a checkpoint falling inside the next measurement, which with fsync
    # on would slow whichever process it overlapped. CHECKPOINT wants a superuser or
    # pg_checkpoint; on a server given without either, that protection is lost only.
    with (
        psycopg.connect(url, autocommit=True) as conn,
        contextlib.suppress(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("CHECKPOINT")


def append_payout_and_reversal(url: str) -> None:
    """Two more events for every (pending, just imported) transfer: PayoutSucceeded,
    then ReversalRequested. Setup, so through the Python API in one process and in
    batches: each batch's aggregates come from their Imported events (one query) and
    are saved together (one append), then the read table catches up once."""
    with Ledger.open(url) as ledger:
        decode = ledger.transfers.mapper.to_domain_event
        ids = [view.id for view in ledger.list("pending")]
        for start in range(0, len(ids), SETUP_BATCH):
            batch = ids[start : start + SETUP_BATCH]
            with ledger.db.transaction(write=False) as cursor:
                first_events = ledger.db.first_stored_events(cursor, batch)
            transfers: list[Transfer] = []
            for number, stored in enumerate(first_events.values(), start=start):
                transfer = project_aggregate(None, [decode(stored)])
                assert isinstance(transfer, Transfer)
                transfer.record_payout_succeeded(
                    stripe_transfer_id=f"tr_bench{number:010d}", actor="bench", caused_by=None
                )
                transfer.request_reversal(
                    request_ref=f"bench-refund-{number}",
                    amount=None,
                    actor="bench",
                    reason="benchmark",
                )
                transfers.append(transfer)
            ledger.transfers.save(*transfers)
        ledger.catch_up()
        due = len(ledger.list("reversal_pending"))
    if due != len(ids):
        raise SystemExit(f"bench: {due} of {len(ids)} transfers are reversal_pending")


def timed_ledger(*argv: str) -> tuple[float, dict[str, Any]]:
    """Seconds a `ledger ... --json` process takes, start-up included, and its answer.
    stderr (the rebuild's progress lines) goes nowhere: a terminal would slow it."""
    started = time.perf_counter()
    answer = subprocess.run(
        [LEDGER, *argv, "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False
    )
    elapsed = time.perf_counter() - started
    try:
        data: dict[str, Any] = json.loads(answer.stdout)
    except ValueError:
        command = " ".join(argv[:2])
        raise SystemExit(f"bench: `ledger {command}` exited {answer.returncode}") from None
    return elapsed, data


def measure_copy_ceiling(url: str) -> tuple[int, float]:
    """(rows, rows/s) of a raw psycopg COPY of the read table's rows, read back from
    the database's own seller_transfers, into a new plain table, one transaction;
    the best of CEILING_TRIES."""
    best = math.inf
    with psycopg.connect(url, autocommit=True) as conn:
        columns = ", ".join(column for column, _ in READ_TABLE_COLUMNS)
        rows = conn.execute(f"SELECT {columns} FROM seller_transfers").fetchall()
        for _ in range(CEILING_TRIES):
            conn.execute(
                "CREATE TABLE plain_seller_transfers ("
                + ", ".join(f"{column} {kind}" for column, kind in READ_TABLE_COLUMNS)
                + ")"
            )
            started = time.perf_counter()
            with (
                conn.transaction(),
                conn.cursor() as cursor,
                cursor.copy(f"COPY plain_seller_transfers ({columns}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
            best = min(best, time.perf_counter() - started)
            # Dropped: the rebuild that follows should find the ledger's tables only.
            conn.execute("DROP TABLE plain_seller_transfers")
    return len(rows), len(rows) / best


def measure_rebuild(url: str, transfers: int, events: int) -> float:
    """Seconds of `ledger rebuild`, checked to have projected what was asked."""
    elapsed, answer = timed_ledger("rebuild", "--database-url", url)
    if answer.get("rows") != transfers or answer.get("events") != events:
        raise SystemExit(
            f"bench: rebuild made {answer.get('rows')} rows from {answer.get('events')}"
            f" events, expected {transfers} from {events}"
        )
    return elapsed


def bench_rebuild(databases: AuditDatabases) -> list[Target]:
    section("rebuild")
    count = databases.count
    url = databases.copy_of_one_event(f"bench_rebuild_{databases.suffix}")
    rows, ceiling = measure_copy_ceiling(url)
    if rows != count:
        raise SystemExit(f"bench: read table has {rows} rows, expected {count}")
    runs = [measure_rebuild(url, count, count) for _ in range(LEDGER_TRIES)]
    elapsed = min(runs)
    rate = count / elapsed
    ratio = rate / ceiling
    first_ratio = count / runs[0] / ceiling
    verdict = "meets" if ratio >= REBUILD_TARGET_RATIO else "BELOW"
    print(f"transfers:  {count:,} imported (one event each), PostgreSQL (fsync on)")
    print(f"ceiling:    {ceiling:,.0f} rows/s  raw psycopg COPY of the read table's rows, plain")
    print(
        f"            table (same 16 column types, no keys/indexes), 1 transaction;"
        f" best of {CEILING_TRIES}"
    )
    print(
        f"ledger:     {rate:,.0f} rows/s  `ledger rebuild`, a new process: {elapsed:.2f} s,"
        f" best of {LEDGER_TRIES} ({', '.join(f'{run:.2f}' for run in runs)} s)"
    )
    print(
        f"ratio:      {ratio:.3f}  ({verdict} the target of {REBUILD_TARGET_RATIO:.2f});"
        f" the first run alone: {first_ratio:.3f}"
    )

    events = 3 * count
    elapsed = measure_rebuild(databases.three_events(), count, events)
    print(
        f"3 events:   {count:,} transfers of Imported, PayoutSucceeded, ReversalRequested:"
        " `ledger rebuild`"
    )
    print(
        f"            {elapsed:.2f} s, {events / elapsed:,.0f} events/s,"
        f" {count / elapsed:,.0f} rows/s  (no target)"
    )
    return [
        Target(
            "rebuild",
            ratio >= REBUILD_TARGET_RATIO,
            f"ratio {ratio:.3f}, target >= {REBUILD_TARGET_RATIO:.2f}",
        )
    ]


def measure_select_ceiling(url: str, decode: Callable[[bytes, Any], object]) -> tuple[int, float]:
    """(events, events/s) of one SELECT of every event, each decoded by `decode(state,
    row)`: in the order verify replays histories in, through a client-side cursor;
    the best of CEILING_TRIES."""
    best, events = math.inf, 0
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        for _ in range(CEILING_TRIES):
            started = time.perf_counter()
            cursor.execute(
                "SELECT originator_id, originator_version, topic, state FROM transfers_events"
                " ORDER BY originator_id, originator_version"
            )
            events = 0
            for row in cursor:
                decode(row[3], row)
                events += 1
            best = min(best, time.perf_counter() - started)
    return events, events / best


def bench_verify(databases: AuditDatabases) -> list[Target]:
    section("verify")
    count = databases.count
    url = databases.one_event()
    recorded_head = audit_head(url)  # everything sealed: verify checks the whole chain
    events, ceiling = measure_select_ceiling(url, lambda state, _row: json.loads(state))
    with Ledger.open(url) as ledger:
        to_domain_event = ledger.transfers.mapper.to_domain_event
        _, mapper = measure_select_ceiling(
            url,
            lambda state, row: to_domain_event(
                StoredEvent(
                    originator_id=row[0], originator_version=row[1], topic=row[2], state=state
                )
            ),
        )
    runs = []
    for _ in range(LEDGER_TRIES):
        elapsed, answer = timed_ledger(
            "audit", "verify", "--head", recorded_head, "--database-url", url
        )
        ok = answer.get("ok") and answer.get("unsealed") == 0
        if not ok or answer.get("events") != events:
            raise SystemExit(f"bench: verify answered {answer}, expected {events} events, clean")
        runs.append(elapsed)
    elapsed = min(runs)
    rate = events / elapsed
    ratio = rate / ceiling
    first_ratio = events / runs[0] / ceiling
    verdict = "meets" if ratio >= VERIFY_TARGET_RATIO else "BELOW"
    print(f"events:     {events:,} of {count:,} transfers, sealed, PostgreSQL (fsync on)")
    print(
        f"ceiling:    {ceiling:,.0f} events/s  raw SELECT (by transfer, version) + json.loads;"
        f" best of {CEILING_TRIES}"
    )
    print(f"            (with the eventsourcing mapper's to_domain_event instead: {mapper:,.0f}/s)")
    print(
        f"ledger:     {rate:,.0f} events/s  `ledger audit verify --head`, a new process:"
        f" {elapsed:.2f} s, best of {LEDGER_TRIES} ({', '.join(f'{run:.2f}' for run in runs)} s)"
    )
    print(
        f"ratio:      {ratio:.3f}  ({verdict} the target of {VERIFY_TARGET_RATIO:.2f});"
        f" the first run alone: {first_ratio:.3f}"
    )
    return [
        Target(
            "verify",
            ratio >= VERIFY_TARGET_RATIO,
            f"ratio {ratio:.3f}, target >= {VERIFY_TARGET_RATIO:.2f}",
        )
    ]


def command_seconds(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def bench_history(databases: AuditDatabases, runs: int) -> list[Target]:
    section("history")
    url = databases.one_event()
    # One in the middle of the primary key, neither end of any index.
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT id FROM seller_transfers ORDER BY id OFFSET %s LIMIT 1",
            (databases.count // 2,),
        ).fetchone()
    if row is None:
        raise SystemExit("bench: the audit database has no transfers")
    transfer_id = str(row[0])
    times = command_seconds([LEDGER, "audit", transfer_id, "--database-url", url], runs)
    # For scale: a command that imports the same CLI and opens no database.
    floor = statistics.median(command_seconds([LEDGER, "matrix"], runs))
    median = statistics.median(times)
    verdict = "meets" if median < HISTORY_TARGET_SECONDS else "ABOVE"
    print(
        f"`ledger audit ID` of one transfer of {databases.count:,}: {runs} runs, each a new"
        " process (start-up included)"
    )
    print(
        f"seconds:    median {median:.3f}  (min {min(times):.3f}, max {max(times):.3f});"
        f" `ledger matrix` (no database) median {floor:.3f}"
    )
    print(f"            median {verdict} the target of < {HISTORY_TARGET_SECONDS:.1f} s")
    return [
        Target(
            "history",
            median < HISTORY_TARGET_SECONDS,
            f"median {median:.3f} s, target < {HISTORY_TARGET_SECONDS:.1f} s",
        )
    ]


# ----- main --------------------------------------------------------------------------------


def parse_only(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(BENCHMARKS)}"
        )
    return chosen


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("expected a whole number of at least 1")
    return int(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        type=parse_only,
        default=list(BENCHMARKS),
        metavar="LIST",
        help=f"comma-separated benchmarks to run (default all: {','.join(BENCHMARKS)})",
    )
    parser.add_argument(
        "--count",
        type=positive,
        default=100_000,
        help="import, rebuild, verify, history: transfers (default 100000)",
    )
    parser.add_argument(
        "--reversals", type=positive, default=300, help="reversals: transfers (default 300)"
    )
    parser.add_argument(
        "--latency-samples",
        type=positive,
        default=50,
        help="latency: reversals per database (default 50)",
    )
    parser.add_argument(
        "--history-runs", type=positive, default=10, help="history: runs (default 10)"
    )
    parser.add_argument(
        "--rounds",
        type=positive,
        default=3,
        help="api, import, reversals, rate: rounds, median and spread reported (default 3)",
    )
    parser.add_argument(
        "--api-ops", type=positive, default=250, help="api: calls per thread (default 250)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 below any target")
    args = parser.parse_args()

    databases: AuditDatabases | None = None

    def audit_databases(admin_url: str, tmp: Path) -> AuditDatabases:
        # One set for rebuild, verify and history: each is minutes of setup.
        nonlocal databases
        if databases is None:
            databases = AuditDatabases(admin_url, tmp, args.count)
        return databases

    def api(admin_url: str, tmp: Path) -> list[Target]:
        section("api")
        print(bench_api_doc.strip().splitlines()[0])
        return [
            Target(name, met, text)
            for name, met, text in bench_api(admin_url, args.rounds, args.api_ops)
        ]

    runs: dict[str, Callable[[str, Path], list[Target]]] = {
        "api": api,
        "import": lambda admin_url, tmp: bench_import(admin_url, tmp, args.count, args.rounds),
        "reversals": lambda admin_url, tmp: bench_reversals(
            admin_url, tmp, args.reversals, args.rounds
        ),
        "rate": lambda admin_url, tmp: bench_rate(admin_url, tmp, args.rounds),
        "latency": lambda admin_url, tmp: bench_latency(admin_url, tmp, args.latency_samples),
        "rebuild": lambda admin_url, tmp: bench_rebuild(audit_databases(admin_url, tmp)),
        "verify": lambda admin_url, tmp: bench_verify(audit_databases(admin_url, tmp)),
        "history": lambda admin_url, tmp: bench_history(
            audit_databases(admin_url, tmp), args.history_runs
        ),
    }
    targets: list[Target] = []
    with tempfile.TemporaryDirectory() as tmp, postgres_server(fsync=True) as admin_url:
        for name in BENCHMARKS:
            if name in args.only:
                started = time.monotonic()
                targets += runs[name](admin_url, Path(tmp))
                # Setup included: how long a run of this part takes, not a result.
                print(f"({name} took {time.monotonic() - started:.0f} s, setup included)")

    section("targets")
    for target in targets:
        print(f"{'meets' if target.met else 'MISSES':<7}{target.name}: {target.text}")
    return 1 if args.check and not all(t.met for t in targets) else 0


if __name__ == "__main__":
    raise SystemExit(main())
