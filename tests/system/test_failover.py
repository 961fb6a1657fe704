"""Failover in seconds, with DEFAULT settings: a claim lives as long as the
daemon holding it (its heartbeat renews a short lease), so

- a daemon killed with SIGKILL mid-call has its work taken over at once (it
  is known dead: its process is gone, its PostgreSQL life lock released);
- a daemon frozen mid-call (SIGSTOP: alive to the operating system, silent
  to the database) loses its work when its lease runs out, a few seconds,
  and sends nothing more when it wakes;
- a live daemon in a slow Stripe call keeps its claim however long the call
  takes: no second call for the same attempt.

Real daemon processes against the simulator over HTTP; the takeover times
are measured from the kill to the transfer reading `completed`."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest

from ledger.processing.heartbeat import BEAT_SECONDS, LEASE_BEATS
from tests.system.world import (
    World,
    finish,
    kill,
    ledger_matches_stripe,
    new_world,
    running_simulator,
    start_daemon,
    wait_started,
)
from tests.waiting import wait_for

# The bound for a takeover with default settings.
TAKEOVER_WITHIN_SECONDS = 10.0
LEASE_SECONDS = LEASE_BEATS * BEAT_SECONDS


@pytest.fixture
def slow_world(migrated_url: str) -> Iterator[World]:
    """Stripe answers payouts after 4 s, having committed them at once; the
    client waits up to 20 s."""
    with running_simulator(slow_ms=4_000) as sim:
        yield new_world(migrated_url, sim, timeout_seconds=20.0)


def _posts(world: World) -> list[dict[str, object]]:
    return [r for r in world.money_posts() if r["path"] == "/v1/transfers"]


def _started(world: World, tmp_path: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"{name}.log"
    daemon = start_daemon(world, log_path=log)
    wait_started(daemon, log)
    return daemon, log


def _stop(daemon: subprocess.Popen[bytes], log: Path) -> None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        assert finish(daemon) == 0, log.read_text()


def _completed_after(world: World, transfer_id: UUID, since: float) -> float:
    wait_for(
        lambda: world.show(transfer_id).status == "completed",
        timeout=60,
        what="the transfer to be completed",
    )
    return time.monotonic() - since


def test_a_daemon_killed_mid_call_is_taken_over_at_once_and_nothing_is_paid_twice(
    slow_world: World, tmp_path: Path
) -> None:
    world = slow_world
    world.simulator.add_fault("slow", path="/v1/transfers")
    transfer_id = world.create("order-killed")
    first, _ = _started(world, tmp_path, "first")
    wait_for(lambda: world.stripe_transfers(transfer_id), what="the first daemon's call")
    kill(first)
    killed_at = time.monotonic()
    second, log = _started(world, tmp_path, "second")
    try:
        took = _completed_after(world, transfer_id, killed_at)
    finally:
        _stop(second, log)

    assert took < TAKEOVER_WITHIN_SECONDS, f"taken over after {took:.1f} s"
    assert len(_posts(world)) == 1
    assert ledger_matches_stripe(world, [transfer_id]) == []


def test_a_frozen_daemons_work_is_taken_over_when_its_lease_runs_out_and_it_sends_nothing(
    migrated_url: str, tmp_path: Path
) -> None:
    """SIGSTOP before the call leaves Stripe: the process exists and (on
    PostgreSQL) its life lock is held, so only the lease can say it is gone.
    Woken after the takeover, it must not send its call."""
    with running_simulator() as sim:
        world = new_world(migrated_url, sim, timeout_seconds=20.0)
        transfer_id = world.create("order-frozen")
        first, first_log = _started_frozen_before_the_call(world, tmp_path)
        frozen_at = time.monotonic()
        second, second_log = _started(world, tmp_path, "second")
        try:
            took = _completed_after(world, transfer_id, frozen_at)
            # Woken, its worker finds its claim gone and gives the work up,
            # sending nothing; it then stops cleanly (its in-flight work done).
            first.send_signal(signal.SIGCONT)
            _stop(first, first_log)
        finally:
            first.send_signal(signal.SIGCONT)
            _stop(second, second_log)
            _stop(first, first_log)

    assert LEASE_SECONDS - 1 < took < TAKEOVER_WITHIN_SECONDS, f"taken over after {took:.1f} s"
    assert len(_posts(world)) == 1, first_log.read_text()
    assert ledger_matches_stripe(world, [transfer_id]) == []


def _started_frozen_before_the_call(
    world: World, tmp_path: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    """A daemon that stops itself (SIGSTOP) at the failpoint before its call."""
    log = tmp_path / "frozen.log"
    daemon = start_daemon(world, log_path=log, LEDGER_FAILPOINTS_STOP="before_stripe_call")
    wait_for(
        lambda: _stopped(daemon),
        timeout=30,
        what="the daemon to freeze before its call",
    )
    return daemon, log


def _stopped(process: subprocess.Popen[bytes]) -> bool:
    try:
        state = Path(f"/proc/{process.pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state == "T"


@pytest.mark.postgres
def test_a_live_daemon_in_a_slow_call_keeps_its_claim_and_no_second_call_is_made(
    migrated_postgres_url: str, tmp_path: Path
) -> None:
    """The call takes longer than a lease; another daemon runs alongside.
    The heartbeat renews the claim throughout: one call, one transfer."""
    with running_simulator(slow_ms=int(1.5 * LEASE_SECONDS * 1000)) as sim:
        world = new_world(migrated_postgres_url, sim, timeout_seconds=60.0)
        world.simulator.add_fault("slow", path="/v1/transfers")
        first, first_log = _started(world, tmp_path, "first")
        transfer_id = world.create("order-slow")
        wait_for(lambda: _posts(world), what="the first call")
        second, second_log = _started(world, tmp_path, "second")
        try:
            _completed_after(world, transfer_id, time.monotonic())
        finally:
            _stop(second, second_log)
            _stop(first, first_log)

    assert len(_posts(world)) == 1
    assert len(world.stripe_transfers(transfer_id)) == 1
