"""SIGTERM while Stripe calls are in flight: the daemon stops taking work,
exits 0 within a few seconds, and nothing is lost or done twice."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from psycopg import sql

from ledger.config import DatabaseConfig
from ledger.processing.daemon import BACKLOG_PER_CALL, SHUTDOWN_GRACE_SECONDS
from tests.system.world import (
    World,
    finish,
    ledger_matches_stripe,
    new_world,
    running_simulator,
    start_daemon,
    wait_started,
)
from tests.waiting import wait_for


def test_sigterm_during_in_flight_calls_exits_0_and_loses_nothing(
    migrated_url: str, tmp_path: Path
) -> None:
    with running_simulator(latency_ms=800) as sim:
        world = new_world(migrated_url, sim)
        transfer_ids = [world.create(f"order-{n}") for n in range(12)]
        log = tmp_path / "daemon.log"
        daemon = start_daemon(world, "--concurrency", "4", log_path=log)
        wait_started(daemon, log)
        # Calls are in flight once the simulator has seen them arrive.
        wait_for(lambda: len(world.money_posts()) >= 4, what="calls in flight")
        daemon.send_signal(signal.SIGTERM)
        # In-flight calls take 0.8 s here; the daemon waits for them, no longer
        # than its grace period, and then exits cleanly.
        assert finish(daemon, timeout=SHUTDOWN_GRACE_SECONDS + 10) == 0, log.read_text()
        assert "SIGTERM received" in log.read_text()
        # It stopped taking work: not everything was paid.
        assert len(world.stripe_transfers()) < len(transfer_ids)

        world.run_daemon_once()
        with world.ledger() as ledger:
            assert {v.status for v in ledger.list()} == {"completed"}
        assert ledger_matches_stripe(world, transfer_ids) == []
        assert len(world.stripe_transfers()) == len(transfer_ids)


def test_sigterm_hands_queued_work_back_at_once_while_every_worker_is_in_a_slow_call(
    migrated_url: str, tmp_path: Path
) -> None:
    """Red-team item 12: with every worker blocked in a slow call, the work
    queued behind them kept its claim for the whole lease. It goes back now,
    and so does the work of the workers waiting for a place among the calls
    in flight (they had recorded their attempts, but sent nothing)."""
    with running_simulator(latency_ms=30_000) as sim:
        world = new_world(migrated_url, sim)
        for n in range(8):
            world.create(f"order-q{n}")
        log = tmp_path / "daemon.log"
        daemon = _daemon_with_its_backlog_claimed(world, log)
        # Two calls in flight; the rest of the backlog claimed behind them:
        # workers waiting for a place, and work queued for them.
        wait_for(lambda: len(world.money_posts()) >= 2, what="both places taken by a call")
        daemon.send_signal(signal.SIGTERM)
        assert finish(daemon, timeout=SHUTDOWN_GRACE_SECONDS + 10) == 0, log.read_text()
        assert len(world.money_posts()) == 2  # nothing sent after the signal

        # Only the two calls that were sent may keep their claims (a call
        # still in flight at exit does, to be looked up by whoever takes it
        # over; one whose try timed out is handed back: its next try is not
        # sent), and only they are owed a look-up. The rest are free again,
        # as they were. Their keys are ledger-payout-<transfer id>:1-a1.
        sent = {
            UUID(r["idempotency_key"].removeprefix("ledger-payout-").split(":")[0])
            for r in world.money_posts()
        }
        assert claimed(world) <= sent
        assert unknown(world) == sent


def _daemon_with_its_backlog_claimed(world: World, log: Path) -> subprocess.Popen[bytes]:
    """A daemon with two places, once it holds its whole backlog (the
    simulator is slow: nothing it claims is done meanwhile)."""
    daemon = start_daemon(world, "--concurrency", "2", log_path=log)
    wait_started(daemon, log)
    wait_for(
        lambda: len(claimed(world)) == 2 * BACKLOG_PER_CALL,
        what="the whole backlog claimed",
    )
    return daemon


def unknown(world: World) -> set[UUID]:
    return _work_where(world, "outcome_unknown")


def claimed(world: World) -> set[UUID]:
    return _work_where(world, "claimed_by IS NOT NULL")


def _work_where(world: World, condition: str) -> set[UUID]:
    with world.ledger() as ledger, ledger.db.transaction(write=False) as cursor:
        cursor.execute(f"SELECT transfer_id FROM stripe_work WHERE {condition}")
        return {UUID(str(row["transfer_id"])) for row in cursor.fetchall()}


@pytest.mark.postgres
def test_sigterm_with_the_database_gone_exits_without_waiting_on_it_write_after_write(
    migrated_postgres_url: str, postgres_admin_url: str, tmp_path: Path
) -> None:
    """With the database unreachable, each write a stopping daemon makes
    (hand back a claim, project, say it stopped) waited out the pool's
    timeout, one after another. It writes nothing more once its loop's
    database steps fail: the claims run out on their own."""
    name = DatabaseConfig.from_url(migrated_postgres_url).dbname
    with running_simulator(latency_ms=30_000) as sim:
        world = new_world(migrated_postgres_url, sim)
        for n in range(8):
            world.create(f"order-gone-{n}")
        log = tmp_path / "daemon.log"
        daemon = _daemon_with_its_backlog_claimed(world, log)
        try:
            with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
                        sql.Identifier(name)
                    )
                )
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
            wait_for(lambda: "failed" in log.read_text(), what="the daemon to notice")
            daemon.send_signal(signal.SIGTERM)
            # A turn in progress may still wait out the pool's timeout once
            # (10 s), then the grace for calls in flight (5 s); not a wait per write.
            assert finish(daemon, timeout=SHUTDOWN_GRACE_SECONDS + 25) == 0, log.read_text()
        finally:
            with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name))
                )
