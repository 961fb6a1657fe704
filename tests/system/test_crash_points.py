"""A daemon killed (SIGKILL, a real process) at each step of a Stripe effect:
on restart the work is neither lost nor done twice, on both databases.

The crash points are named failpoints in the product code
(ledger/processing/failpoints.py): `before_stripe_call` (the attempt is
recorded as started, nothing sent), `after_stripe_call` (Stripe committed,
the ledger knows nothing), `after_record` (the outcome is saved, with the claim
released in the same commit, and the read table not yet projected).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from ledger.failpoints import NAMES
from tests.system.world import (
    World,
    finish,
    kill,
    ledger_matches_stripe,
    new_world,
    outcome_events,
    running_simulator,
    start_daemon,
    wait_started,
)
from tests.waiting import wait_for


def crash_then_recover(world: World, failpoint: str, tmp_path: Path) -> int:
    """Run a daemon that SIGKILLs itself at `failpoint`, then a healthy one
    until nothing is left to do; returns the crashed daemon's exit status."""
    crashed = start_daemon(
        world,
        "--once",
        log_path=tmp_path / "crashed.log",
        LEDGER_FAILPOINTS=failpoint,
    )
    status = finish(crashed)
    healthy_log = tmp_path / "healthy.log"
    # Default settings: the dead daemon's work is taken over at once (it is
    # known dead), not after a lease shortened for the test.
    healthy = start_daemon(world, log_path=healthy_log)
    try:
        wait_started(healthy, healthy_log)
        wait_for(lambda: _settled(world), timeout=60, what="the work to settle")
    finally:
        healthy.send_signal(signal.SIGTERM)
        assert finish(healthy) == 0, (tmp_path / "healthy.log").read_text()
    return status


_SETTLED = {"completed", "reversed", "permanently_failed"}


def _settled(world: World) -> bool:
    with world.ledger() as ledger:
        views = ledger.list()
    return all(
        v.status in _SETTLED and not (v.status == "completed" and v.reversal_request_ref)
        for v in views
    )


@pytest.mark.parametrize("failpoint", NAMES)
def test_a_payout_interrupted_by_a_crash_is_made_exactly_once(
    world: World, failpoint: str, tmp_path: Path
) -> None:
    transfer_id = world.create("order-crash", amount=4321)
    status = crash_then_recover(world, failpoint, tmp_path)
    assert status == -signal.SIGKILL, "the failpoint did not kill the daemon"
    assert world.show(transfer_id).status == "completed"
    assert ledger_matches_stripe(world, [transfer_id]) == []
    assert len(world.stripe_transfers(transfer_id)) == 1
    assert outcome_events(world, transfer_id) == ["PayoutSucceeded"]
    # Before the call nothing was sent: the next daemon looks up, finds nothing
    # and calls once. After it, Stripe has the transfer: the next daemon finds
    # it by looking up, and never calls again.
    creates = [r for r in world.money_posts() if r["path"] == "/v1/transfers"]
    assert len(creates) == 1


@pytest.mark.parametrize("failpoint", NAMES)
def test_a_reversal_interrupted_by_a_crash_is_made_exactly_once(
    world: World, failpoint: str, tmp_path: Path
) -> None:
    transfer_id = world.create("order-crash-reversal", amount=8000)
    world.run_daemon_once()
    world.request_reversal(transfer_id, amount=3000)
    status = crash_then_recover(world, failpoint, tmp_path)
    assert status == -signal.SIGKILL, "the failpoint did not kill the daemon"
    view = world.show(transfer_id)
    assert view.status == "reversed" and view.amount_reversed == 3000
    assert ledger_matches_stripe(world, [transfer_id]) == []
    assert len(world.stripe_reversals(view.stripe_transfer_id or "")) == 1
    assert outcome_events(world, transfer_id) == ["PayoutSucceeded", "Reversed"]


def test_after_a_crash_and_a_day_when_stripe_forgot_the_key_the_transfer_is_found_not_remade(
    world: World, tmp_path: Path
) -> None:
    """Stripe may prune idempotency keys after 24 h: a reused key would then run
    a NEW request. The restarted daemon must look the transfer up instead."""
    transfer_id = world.create("order-old-key", amount=1111)
    crashed = start_daemon(
        world,
        "--once",
        log_path=tmp_path / "crashed.log",
        LEDGER_FAILPOINTS="after_stripe_call",
    )
    assert finish(crashed) == -signal.SIGKILL
    assert len(world.stripe_transfers(transfer_id)) == 1
    assert world.simulator.expire_idempotency_keys() >= 1
    world.run_daemon_once()
    assert world.show(transfer_id).status == "completed"
    assert len(world.stripe_transfers(transfer_id)) == 1
    assert ledger_matches_stripe(world, [transfer_id]) == []


def test_a_daemon_killed_during_the_call_leaves_work_that_is_found_not_redone(
    migrated_url: str, tmp_path: Path
) -> None:
    """SIGKILL while the HTTP call is open: Stripe has committed the transfer
    but holds its answer (a slow fault), so the daemon never learns of it."""
    with running_simulator(slow_ms=60_000) as slow_sim:
        world = new_world(migrated_url, slow_sim)
        world.simulator.add_fault("slow", path="/v1/transfers")
        transfer_id = world.create("order-killed-mid-call")
        log = tmp_path / "killed.log"
        daemon = start_daemon(world, log_path=log)
        try:
            wait_for(lambda: world.stripe_transfers(transfer_id), what="Stripe to commit")
        finally:
            kill(daemon)
        assert world.show(transfer_id).status == "pending"
        world.run_daemon_once()
        assert world.show(transfer_id).status == "completed"
        assert ledger_matches_stripe(world, [transfer_id]) == []
        creates = [r for r in world.money_posts() if r["path"] == "/v1/transfers"]
        assert len(creates) == 1, "the restarted daemon called Stripe again"
