"""What an on-call engineer relies on: `ledger health`, the daemon's Prometheus
metrics and its JSON log lines, each against a real daemon process, a real
database and the simulator over HTTP."""

from __future__ import annotations

import json
import re
import signal
import socket
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import stripe

from ledger.cli import run
from ledger.domain import Transfer, payout_cause
from ledger.health import measure
from ledger.processing.effects import idempotency_key
from ledger.processing.work import WorkStore
from tests.paying import unknown_outcome_attempt
from tests.system.world import World, finish, kill, start_daemon, wait_started
from tests.waiting import wait_for

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def health(url: str, capsys: pytest.CaptureFixture[str], **env: str) -> tuple[int, dict[str, Any]]:
    """`ledger health --json`: the exit code and each check by name."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        code = run(["health", "--json", "--database-url", url])
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is (code == 0)
    return code, {check["name"]: check for check in report["checks"]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """The metrics page as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("ledger_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_health_and_logs_follow_a_working_daemon(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = [world.create(f"order-{n}", amount=1000 + n) for n in range(3)]
    code, checks = health(world.url, capsys)
    assert code == 1
    assert not checks["daemons"]["ok"], "no daemon has run yet"
    assert checks["database"]["ok"] and checks["migrations"]["ok"] and checks["parked"]["ok"]
    assert checks["due work"]["due"]["payout"] == 3

    port = free_port()
    log_path = tmp_path / "daemon.log"
    daemon = start_daemon(
        world, "--metrics-port", str(port), "--log-format", "json", log_path=log_path
    )
    try:
        wait_started(daemon, log_path)
        created_ok = 'ledger_stripe_calls_total{endpoint="transfers.create",outcome="ok"}'
        wait_for(lambda: scrape(port).get(created_ok) == 3, what="three payouts counted")
        # Each outcome is in the read table with its events (written in the
        # same append): nothing is left for the daemon's catch-up.
        wait_for(
            lambda: all(world.show(t).status == "completed" for t in first),
            what="the outcomes in the read table",
        )
        metrics = scrape(port)
        assert metrics["ledger_events_projected_total"] == 0
        assert metrics['ledger_attempts_total{kind="payout"}'] == 3
        assert metrics['ledger_stripe_call_seconds_count{endpoint="transfers.create"}'] == 3
        assert all(world.show(t).status == "completed" for t in first)
        assert metrics["ledger_daemons_running"] == 1
        assert metrics["ledger_parked_items"] == 0
        code, checks = health(world.url, capsys)
        assert code == 0, checks

        # The figures move as more work is done.
        more = [world.create(f"order-more-{n}") for n in range(2)]
        wait_for(lambda: scrape(port).get(created_ok) == 5, what="five payouts counted")
        wait_for(lambda: all(world.show(t).status == "completed" for t in more), what="payouts")
        metrics = scrape(port)
        assert metrics['ledger_due_work{kind="payout"}'] == 0
        assert metrics["ledger_projection_lag_events"] == 0
        # A label holding an id would make a time series per transfer.
        for name in metrics:
            assert not UUID_RE.search(name) and "tr_" not in name, name
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert finish(daemon) == 0, log_path.read_text()

    # Stopped cleanly: it no longer counts as a running daemon.
    code, checks = health(world.url, capsys)
    assert code == 1 and not checks["daemons"]["ok"]

    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert all({"time", "level", "component", "message"} <= line.keys() for line in lines)
    payouts = [line for line in lines if line.get("event") == "payout"]
    assert {line["transfer_id"] for line in payouts} == {str(t) for t in first + more}
    assert all(line["stripe_request_id"].startswith("req_") for line in payouts)


def test_health_fails_while_the_projection_is_held_behind(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    with world.ledger() as ledger:
        # Appended the way another writer leaves it: events without their rows.
        transfer = Transfer.create(
            seller_account_id="acct_1Seller",
            order_ref="order-unprojected",
            amount=700,
            currency="usd",
            actor="test",
        )
        ledger.transfers.events.put(transfer.collect_events())
    code, checks = health(world.url, capsys, LEDGER_HEALTH_MAX_LAG_EVENTS="0")
    assert code == 1
    assert not checks["projection"]["ok"]
    assert checks["projection"]["lag_events"] == 1
    # Within the default limits one event behind is not yet a problem.
    _, checks = health(world.url, capsys)
    assert checks["projection"]["ok"]


def test_health_fails_while_work_is_parked(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    poisoned = world.create("order-poisoned")
    # Another system used the ledger's idempotency key with other parameters:
    # Stripe answers idempotency_error and the work is parked for a person.
    client = stripe.StripeClient(world.api_key, base_addresses={"api": world.sim.base_url})
    client.v1.transfers.create(
        params={"amount": 1, "currency": "usd", "destination": "acct_1Other"},
        options={"idempotency_key": idempotency_key("payout", payout_cause(poisoned), 1)},
    )
    world.run_daemon_once()
    code, checks = health(world.url, capsys)
    assert code == 1
    assert not checks["parked"]["ok"] and checks["parked"]["parked"] == 1
    # Parked work is not counted as waiting for a daemon.
    assert checks["due work"]["due"]["payout"] == 0


def test_a_wait_for_proof_is_not_due_till_it_ends_but_a_failing_handling_is(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Work released until a look-up can prove an earlier call made nothing
    resolves on its own: not due before then (`waiting` says it), and due
    from then. A handling failure's backoff is no such wait: a transfer whose
    handling keeps failing stays due from when it was asked for, and goes
    overdue. (A wait for a condition stays due too: see the platform balance
    test in test_stripe_answers.py.)"""
    proving = world.create("order-waits-for-proof")
    with world.ledger() as ledger:
        now = datetime.now(UTC)
        unknown_outcome_attempt(
            ledger,
            proving,
            now,
            until=now + timedelta(hours=1),
            reason="not sent: a look-up from later decides",
        )
        decode = ledger.transfers.mapper.to_domain_event
        assert measure(ledger.db, decode, now).due["payout"].count == 0
        after = measure(ledger.db, decode, now + timedelta(hours=1, seconds=30))
    assert after.due["payout"].count == 1
    # Due from the wait's end, not from the transfer's creation an hour before.
    assert after.due["payout"].oldest_seconds == pytest.approx(30, abs=5)

    failing = world.create("order-handling-fails")
    with world.ledger() as ledger:
        store = WorkStore(ledger.db, "daemon-of-the-test", 30)
        (failed,) = store.claim_many([(failing, "payout")], now)
        store.handling_failed(
            failed,
            failure="database went away",
            outcome_unknown=False,
            retry_at=now + timedelta(hours=1),
            now=now,
        )

    code, checks = health(world.url, capsys, LEDGER_HEALTH_MAX_DUE_SECONDS="0")

    assert checks["due work"]["due"]["payout"] == 1  # the failing one alone
    assert code == 1 and not checks["due work"]["ok"]  # overdue at once with no time allowed
    waiting = checks["waiting"]
    assert waiting["ok"] and waiting["warning"]
    assert waiting["waiting"]["proof:payout"]["count"] == 1
    assert "a look-up that can prove" in waiting["detail"]


def test_a_daemon_killed_outright_stops_being_seen(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Beats every 0.2 s (the loop turns at least every second on PostgreSQL),
    # so a 3 s limit tells a live daemon from a dead one within seconds.
    limit = {"LEDGER_HEALTH_DAEMON_SECONDS": "3"}
    log_path = tmp_path / "daemon.log"
    daemon = start_daemon(world, log_path=log_path, LEDGER_HEARTBEAT_SECONDS="0.2")
    try:
        wait_started(daemon, log_path)
        wait_for(
            lambda: health(world.url, capsys, **limit)[1]["daemons"]["running"] == 1,
            what="the daemon's first heartbeat",
        )
        # Still seen well after the limit: it keeps beating.
        first_seen = heartbeat_seen_at(world)
        wait_for(lambda: heartbeat_seen_at(world) > first_seen, what="a later heartbeat")
        assert health(world.url, capsys, **limit)[1]["daemons"]["running"] == 1
    finally:
        kill(daemon)
    # No clean stop was recorded: only the heartbeat's age tells.
    assert heartbeat_seen_at(world, column="stopped_at") is None
    wait_for(
        lambda: health(world.url, capsys, **limit)[1]["daemons"]["running"] == 0,
        what="the killed daemon to stop being seen",
        timeout=15,
    )
    code, checks = health(world.url, capsys, **limit)
    assert code == 1 and "no daemon seen in the last 3 s" in checks["daemons"]["detail"]


def heartbeat_seen_at(world: World, column: str = "seen_at") -> Any:
    with world.ledger() as ledger, ledger.db.transaction(write=False) as cursor:
        cursor.execute(f"SELECT {column} AS value FROM daemon_heartbeats")
        [row] = cursor.fetchall()
        return row["value"]


def test_health_of_a_database_that_is_missing_or_not_migrated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    code, checks = health(url, capsys)
    assert code == 1 and not checks["database"]["ok"]
    assert list(checks) == ["database"]


def test_a_malformed_threshold_is_bad_input(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEDGER_HEALTH_MAX_LAG_SECONDS", "soon")
        assert run(["health", "--database-url", world.url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LEDGER_HEALTH_MAX_LAG_SECONDS" in err
