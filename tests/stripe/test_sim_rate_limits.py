"""stripe-sim's rate limits, through the real stripe-python client over HTTP.

The engine's clock stands still in these tests (SteppedClock), so "within one second" is
exact however slow the machine is, and moving to the next second is one call."""

from __future__ import annotations

import argparse

import pytest
import stripe

from ledger.cli.stripe_sim import config_from_args, configure_parser
from ledger.errors import InvalidInput
from ledger.stripe.simulator import (
    LIVE_MODE,
    OFF,
    TEST_MODE,
    RateLimit,
    SimulatorConfig,
)
from tests.stripe_sim import (
    SteppedClock,
    create_transfer,
    running_simulator,
    sim_control,
    stripe_client,
)

RATE_LIMIT_MESSAGE = (
    "Too many requests hit the API too quickly. We recommend an exponential backoff of your"
    " requests."
)


def test_test_mode_lets_25_requests_a_second_through_per_endpoint() -> None:
    clock = SteppedClock()
    with running_simulator(rate_limit=TEST_MODE, clock=clock) as (simulator, url):
        client = stripe_client(url, max_network_retries=2)
        for _ in range(25):
            client.v1.transfers.list()
        with pytest.raises(stripe.RateLimitError) as limited:
            client.v1.transfers.list()
        error = limited.value
        assert error.http_status == 429
        assert error.error is not None
        assert (error.error.type, error.error.code) == ("invalid_request_error", "rate_limit")
        assert error.user_message == RATE_LIMIT_MESSAGE
        # Stripe asks for no retry of its own, so stripe-python made one request only.
        assert "Stripe-Should-Retry" not in (error.headers or {})
        log = simulator.state()["requests"]
        assert len(log) == 26
        assert [r["rate_limited"] for r in log[-2:]] == [False, True]

        # Refused requests do not count: the next second has the whole budget again.
        clock.advance(1.0)
        for _ in range(25):
            client.v1.transfers.list()


def test_the_window_slides_over_the_engine_clock() -> None:
    clock = SteppedClock()
    limit = RateLimit(per_endpoint=2, total=None)
    with running_simulator(rate_limit=limit, clock=clock) as (_, url):
        client = stripe_client(url)
        client.v1.transfers.list()
        clock.advance(0.5)
        client.v1.transfers.list()
        clock.advance(0.4)
        with pytest.raises(stripe.RateLimitError):
            client.v1.transfers.list()
        # One second after the first request, it leaves the window; the second stays.
        clock.advance(0.1)
        client.v1.transfers.list()
        with pytest.raises(stripe.RateLimitError):
            client.v1.transfers.list()


def test_endpoints_have_budgets_of_their_own_under_a_total() -> None:
    clock = SteppedClock()
    with running_simulator(rate_limit=LIVE_MODE, clock=clock) as (_, url):
        client = stripe_client(url)
        transfer = create_transfer(client)
        for _ in range(24):
            client.v1.transfers.retrieve(transfer.id)
        for _ in range(25):
            client.v1.transfers.list()
        with pytest.raises(stripe.RateLimitError):
            client.v1.transfers.list()
        # Retrieving is another endpoint, with budget left; the total is 100 in live mode.
        client.v1.transfers.retrieve(transfer.id)
        with pytest.raises(stripe.RateLimitError):
            client.v1.transfers.retrieve(transfer.id)
        # The 25/s of each endpoint are spent; creating a reversal and listing events are not.
        client.v1.transfers.reversals.create(transfer.id, params={"amount": 1})
        client.v1.events.list()

    with running_simulator(rate_limit=TEST_MODE, clock=clock) as (_, url):
        client = stripe_client(url)
        for _ in range(20):
            client.v1.transfers.list()
        for _ in range(5):
            client.v1.events.list()
        # In test mode the total, 25, is spent across endpoints.
        with pytest.raises(stripe.RateLimitError):
            create_transfer(client)


def test_a_limited_request_is_neither_executed_nor_saved_under_its_key() -> None:
    clock = SteppedClock()
    with running_simulator(rate_limit=RateLimit(None, total=1), clock=clock) as (simulator, url):
        client = stripe_client(url)
        client.v1.transfers.list()
        with pytest.raises(stripe.RateLimitError):
            create_transfer(client, key="payout-limited")
        assert simulator.state()["transfers"] == []

        clock.advance(1.0)
        created = create_transfer(client, key="payout-limited")
        # Not a replay: the limiter ran before the key was looked at.
        assert created.last_response.headers.get("Idempotent-Replayed") is None
        assert len(simulator.state()["transfers"]) == 1


def test_limits_are_counted_per_api_key_and_never_on_the_control_api() -> None:
    clock = SteppedClock()
    with running_simulator(rate_limit=RateLimit(None, total=1), clock=clock) as (simulator, url):
        stripe_client(url).v1.transfers.list()
        with pytest.raises(stripe.RateLimitError):
            stripe_client(url).v1.transfers.list()
        # Another API key is another account, with a budget of its own.
        stripe_client(url, api_key="sk_test_otherAccount").v1.transfers.list()
        for _ in range(5):
            assert len(sim_control(url, "/_sim/state")["requests"]) == 3
        sim_control(url, "/_sim/faults", {"fault": "500_before"})
        assert simulator.state()["rate_limit"] == "1/s total"


def test_the_limiter_runs_before_scripted_faults() -> None:
    clock = SteppedClock()
    with running_simulator(rate_limit=RateLimit(None, total=1), clock=clock) as (simulator, url):
        client = stripe_client(url)
        client.v1.transfers.list()
        simulator.add_fault("500_before")
        with pytest.raises(stripe.RateLimitError):
            create_transfer(client)
        # The fault still waits for the first request the limiter lets in.
        assert len(simulator.scripted_faults()) == 1
        clock.advance(1.0)
        with pytest.raises(stripe.APIError):
            create_transfer(client)
        assert simulator.scripted_faults() == []


def _config(*argv: str) -> SimulatorConfig:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_the_command_line_defaults_to_test_mode_limits() -> None:
    assert SimulatorConfig().rate_limit == TEST_MODE
    assert _config().rate_limit == TEST_MODE
    assert _config("--rate-limit", "live").rate_limit == LIVE_MODE
    assert _config("--rate-limit", "off").rate_limit == OFF
    assert _config("--rate-limit-total", "50").rate_limit == RateLimit(25, 50)
    assert _config("--rate-limit", "off", "--rate-limit-per-endpoint", "5").rate_limit == (
        RateLimit(5, None)
    )
    assert _config("--rate-limit", "live", "--rate-limit-total", "0").rate_limit == (
        RateLimit(25, None)
    )
    assert TEST_MODE.describe() == "25/s per endpoint, 25/s total"
    assert OFF.describe() == "off"
    with pytest.raises(InvalidInput, match="--rate-limit-total"):
        _config("--rate-limit-total", "-1")
    with pytest.raises(InvalidInput):
        RateLimit(per_endpoint=0, total=None)
