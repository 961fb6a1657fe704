"""The daemon's loop: new work wakes it at once on PostgreSQL, and it keeps
exactly `--concurrency` Stripe calls in flight."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import pytest

from ledger.bootstrap import build_daemon
from ledger.processing.daemon import DaemonOptions
from tests.system.world import World, new_world, running_simulator
from tests.waiting import wait_for

# Far longer than any wait below: only a notification can explain a quick pick-up.
NEVER_POLL_SECONDS = 600.0


@pytest.mark.postgres
def test_on_postgresql_new_work_wakes_the_daemon_without_polling(
    migrated_postgres_url: str,
) -> None:
    with running_simulator() as server:
        world = new_world(migrated_postgres_url, server)
        stop = threading.Event()
        with world.ledger(pool_size=4) as ledger:
            daemon = build_daemon(
                ledger,
                world.stripe_settings(),
                world.policy(),
                DaemonOptions(concurrency=2, poll_seconds=NEVER_POLL_SECONDS),
                stop,
            )
            runner = threading.Thread(target=daemon.run)
            runner.start()
            try:
                # A first payout shows the daemon is up; then it goes idle,
                # waiting up to NEVER_POLL_SECONDS for a wake-up.
                first = world.create("order-first")
                wait_for(lambda: world.show(first).status == "completed", what="a first payout")
                wait_for(
                    lambda: not daemon.wake.is_set() and not daemon._busy(),
                    what="the daemon to go idle",
                )
                second = world.create("order-wake")
                wait_for(
                    lambda: world.show(second).status == "completed",
                    timeout=20,
                    what="the NOTIFY to wake the daemon and the payout to be recorded",
                )
            finally:
                stop.set()
                daemon.wake.set()
                runner.join(timeout=30)
        assert not runner.is_alive()


def test_concurrency_n_keeps_exactly_n_stripe_calls_in_flight(migrated_url: str) -> None:
    # The daemon runs more worker threads than calls (their database steps
    # overlap the calls); the simulator's record of each request, from its
    # arrival to its answer, shows how many were in flight together.
    with running_simulator(latency_ms=300) as server:
        world: World = new_world(migrated_url, server)
        for n in range(12):
            world.create(f"order-c{n}")
        world.run_daemon_once(concurrency=4)
        requests = world.money_posts()
    assert len(requests) == 12
    assert most_in_flight(requests) == 4


def most_in_flight(requests: list[dict[str, Any]]) -> int:
    # An answer at the same instant as an arrival counts first: that place was free.
    moments = sorted([(r["at"], 1) for r in requests] + [(r["answered_at"], -1) for r in requests])
    in_flight = most = 0
    for _, change in moments:
        in_flight += change
        most = max(most, in_flight)
    return most


def test_a_step_that_keeps_failing_is_one_log_line_not_a_traceback_every_turn(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Red-team item 13: while projecting (or the database) keeps failing, the
    daemon logs the problem once, and once more when it is over; every turn
    meanwhile adds nothing at error level, and no traceback."""
    turns = 0
    broken = True

    def ensure_current(_: object) -> int:
        nonlocal turns
        turns += 1
        if broken:
            raise RuntimeError("the projection cannot catch up\nsecond line of detail")
        return 0

    monkeypatch.setattr("ledger.backend.Backend.ensure_current", ensure_current)
    with running_simulator() as server:
        world = new_world(migrated_url, server)
        stop = threading.Event()
        with world.ledger(pool_size=4) as ledger, caplog.at_level("INFO", "ledger.daemon"):
            daemon = build_daemon(
                ledger,
                world.stripe_settings(),
                world.policy(),
                DaemonOptions(concurrency=1, poll_seconds=0.01),
                stop,
            )
            runner = threading.Thread(target=daemon.run)
            runner.start()
            try:
                wait_for(lambda: turns >= 20, what="twenty turns with the projection failing")
                paid = world.create("order-meanwhile")
                wait_for(lambda: world.show(paid).status == "completed", what="work going on")
                broken = False
                wait_for(lambda: "works again" in caplog.text, what="the recovery line")
            finally:
                stop.set()
                runner.join(timeout=30)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == [
        "projection failed: RuntimeError: the projection cannot catch up"
    ]
    assert all(r.exc_info is None for r in caplog.records if r.levelno >= 20)


def test_a_daemon_whose_loop_is_stuck_stops_beating_until_it_turns_again(
    migrated_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A live heartbeat thread must not vouch for a dead loop: while the loop
    does not turn, no heartbeat is written and no claim renewed (its work
    runs out to the other daemons, `ledger health` sees it); once it turns,
    beats resume. (The threshold is shortened here; the default is
    STUCK_AFTER_SECONDS.)"""
    with running_simulator() as server:
        world = new_world(migrated_url, server)
        stop = threading.Event()
        release = threading.Event()
        with world.ledger(pool_size=4) as ledger:
            daemon = build_daemon(
                ledger,
                world.stripe_settings(),
                world.policy(),
                DaemonOptions(concurrency=2, heartbeat_seconds=0.2),
                stop,
            )
            assert daemon.heartbeat is not None
            daemon.heartbeat.stuck_after = 1.0
            catch_up = ledger.ensure_current
            turns = 0

            def one_turn_then_stuck() -> int:
                nonlocal turns
                turns += 1
                if turns == 2:
                    release.wait(30)  # the loop hangs here
                return catch_up()

            ledger.ensure_current = one_turn_then_stuck  # type: ignore[method-assign]
            runner = threading.Thread(target=daemon.run)
            runner.start()
            try:
                wait_for(
                    lambda: "loop has not turned" in caplog.text,
                    timeout=20,
                    what="the heartbeat to see the loop stuck",
                )
                stuck_at = seen_at(world)
                # While it stays stuck, beat after beat writes nothing.
                heartbeat = daemon.heartbeat
                renew = heartbeat.renew
                assert renew is not None
                renewals: list[datetime] = []

                def counted_renew(now: datetime) -> int:
                    renewals.append(now)
                    return renew(now)

                heartbeat.renew = counted_renew
                was_stuck = heartbeat._loop_stuck
                skipped: list[bool] = []

                def counted() -> bool:
                    stuck = was_stuck()
                    skipped.append(stuck)
                    return stuck

                heartbeat._loop_stuck = counted  # type: ignore[method-assign]
                wait_for(lambda: skipped.count(True) >= 10, what="ten beats while stuck")
                assert renewals == []
                assert seen_at(world) == stuck_at
                release.set()
                wait_for(
                    lambda: "loop turns again" in caplog.text,
                    timeout=20,
                    what="beats to resume once the loop turns",
                )
                wait_for(lambda: seen_at(world) > stuck_at, what="a heartbeat written again")
                wait_for(lambda: len(renewals) > 0, what="claims renewed again")
            finally:
                release.set()
                stop.set()
                daemon.wake.set()
                runner.join(timeout=30)
        assert not runner.is_alive()


def test_a_stopping_daemon_returns_only_after_a_heartbeat_under_way_has_ended(
    migrated_url: str,
) -> None:
    """The heartbeat beats in a thread of its own. Stopping, the daemon must
    not return (its caller then closes the database) while a beat is still
    running statements: on SQLite a connection closed under another thread's
    statement kills the process with signal 11, which a daemon in
    test_failover did. A beat is held here in its claim renewal, as a slow
    statement would hold it, for at most two seconds."""
    with running_simulator() as server:
        world = new_world(migrated_url, server)
        stop = threading.Event()
        with world.ledger(pool_size=4) as ledger:
            daemon = build_daemon(
                ledger,
                world.stripe_settings(),
                world.policy(),
                DaemonOptions(concurrency=2, heartbeat_seconds=0.2),
                stop,
            )
            heartbeat = daemon.heartbeat
            assert heartbeat is not None and heartbeat.renew is not None
            renew = heartbeat.renew
            in_beat = threading.Event()
            order: list[str] = []

            def slow_renew(now: datetime) -> int:
                if not order:
                    in_beat.set()
                    threading.Event().wait(2.0)  # the slow statement
                    order.append("beat ended")
                return renew(now)

            stopped = heartbeat.stopped

            def recorded_stop() -> None:
                order.append("stopped row")
                stopped()

            heartbeat.renew = slow_renew
            heartbeat.stopped = recorded_stop  # type: ignore[method-assign]

            def run() -> None:
                daemon.run()
                order.append("run returned")

            runner = threading.Thread(target=run)
            runner.start()
            try:
                wait_for(in_beat.is_set, timeout=20, what="a beat under way")
                stop.set()
                daemon.wake.set()
                runner.join(timeout=30)
            finally:
                stop.set()
                daemon.wake.set()
                runner.join(timeout=30)
            assert not runner.is_alive()
    assert order == ["beat ended", "stopped row", "run returned"]


def seen_at(world: World) -> datetime:
    with world.ledger() as ledger, ledger.db.transaction(write=False) as cursor:
        cursor.execute("SELECT seen_at FROM daemon_heartbeats")
        times = [ledger.db.from_db_time(row["seen_at"]) for row in cursor.fetchall()]
    return max(t for t in times if t is not None)
