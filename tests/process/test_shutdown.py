"""SIGTERM while Stripe calls are in flight: the daemon stops taking work,
exits 0 within a few seconds, and nothing is lost or done twice."""

from __future__ import annotations

import signal
from pathlib import Path

from ledger.processing.daemon import SHUTDOWN_GRACE_SECONDS
from tests.process.world import (
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
