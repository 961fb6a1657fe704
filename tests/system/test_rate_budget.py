"""Two daemons under Stripe's test-mode rate limits (the simulator's: 25
requests per second per endpoint and in total), sharing one rate budget
through the database: every payout is made, none fails or is parked for a
429, and few requests are rate-limited at all."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from ledger.bootstrap import work_store
from ledger.stripe.simulator import TEST_MODE
from tests.system.world import finish, new_world, running_simulator, start_daemon, wait_started
from tests.waiting import wait_for

PAYOUTS = 80


@pytest.mark.postgres
def test_two_daemons_keep_under_stripes_limit_and_pay_everything_once(
    migrated_postgres_url: str, tmp_path: Path
) -> None:
    with running_simulator(rate_limit=TEST_MODE) as sim:
        world = new_world(migrated_postgres_url, sim, timeout_seconds=10.0)
        ids = [world.create(f"order-rate-{i}", amount=100 + i) for i in range(PAYOUTS)]
        # Test mode allows 25/s in all: the budget's total is set under it
        # (live mode's default, 80, is under Stripe's live 100).
        env = {"LEDGER_STRIPE_RATE_TOTAL": "20"}
        daemons = []
        for name in ("a", "b"):
            log = tmp_path / f"{name}.log"
            daemon = start_daemon(world, "--concurrency", "16", log_path=log, **env)
            wait_started(daemon, log)
            daemons.append((daemon, log))
        try:
            wait_for(
                lambda: all(world.show(t).status == "completed" for t in ids),
                timeout=120,
                what="every payout",
            )
        finally:
            for daemon, _ in daemons:
                daemon.send_signal(signal.SIGTERM)
            for daemon, log in daemons:
                assert finish(daemon) == 0, log.read_text()

        requests = sim.simulator.state()["requests"]
        limited = [r for r in requests if r["status"] == 429]
        assert len(limited) <= 0.05 * len(requests), (len(limited), len(requests))
        assert all(world.show(t).retry_count == 0 for t in ids)
        with world.ledger() as ledger:
            assert work_store(ledger).parked() == []
        posts = [r for r in requests if r["method"] == "POST" and r["status"] == 200]
        assert len(posts) == PAYOUTS
