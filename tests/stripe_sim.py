"""Helpers for tests that talk to the local Stripe simulator over real HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import stripe

from ledger.stripe.simulator import OFF, Clock, SimulatorConfig, SimulatorServer, StripeSimulator


@contextmanager
def running_simulator(
    *,
    clock: Clock | None = None,
    server_options: dict[str, Any] | None = None,
    **config_overrides: Any,
) -> Iterator[tuple[StripeSimulator, str]]:
    """An in-process stripe-sim on a free port: yields the simulator and its base URL.

    Rate limiting is off unless a test asks for it (``rate_limit=TEST_MODE``): the suite
    sends bursts that Stripe's test-mode limit would refuse. ``clock`` replaces the
    engine's wall clock (a test can then step time for the rate limiter)."""
    config = SimulatorConfig(**{"port": 0, "rate_limit": OFF, **config_overrides})
    simulator = StripeSimulator(config, clock=clock or time.time)
    with SimulatorServer(simulator, port=config.port, **(server_options or {})) as server:
        yield simulator, server.base_url


def stripe_client(
    base_url: str,
    api_key: str = "sk_test_ledger",
    timeout: float = 5.0,
    max_network_retries: int = 0,
) -> stripe.StripeClient:
    """The real stripe-python client, pointed at the simulator."""
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": base_url},
        http_client=stripe.RequestsClient(timeout=timeout),
        max_network_retries=max_network_retries,
    )


def sim_control(base_url: str, path: str, payload: dict[str, Any] | None = None) -> Any:
    """GET (no payload) or POST a JSON payload to the simulator's /_sim control API."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        f"{base_url}{path}",
        data=data,
        method="GET" if payload is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def transfer_params(**overrides: Any) -> dict[str, Any]:
    """A valid transfer create's parameters, with overrides."""
    params: dict[str, Any] = {
        "amount": 12500,
        "currency": "usd",
        "destination": "acct_1Kettle",
        "transfer_group": "ledger-transfer-1",
        "metadata": {"ledger_transfer_id": "ledger-transfer-1"},
    }
    params.update(overrides)
    return params


def create_transfer(client: stripe.StripeClient, key: str | None = None, **overrides: Any) -> Any:
    """POST /v1/transfers through stripe-python, under an idempotency key if given."""
    options: dict[str, Any] = {"idempotency_key": key} if key else {}
    return client.v1.transfers.create(params=transfer_params(**overrides), options=options)  # type: ignore[arg-type]


def raw_request(
    url: str, headers: dict[str, str], method: str = "GET", data: bytes | None = None
) -> tuple[int, dict[str, str], Any]:
    """One HTTP request without stripe-python: status, headers and the JSON body."""
    request = urllib.request.Request(url, headers=headers, method=method, data=data)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), json.load(error)


class SteppedClock:
    """An engine clock that tests move by hand: time stands still until `advance`."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
