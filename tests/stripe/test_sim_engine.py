"""The engine in-process, without HTTP: deterministic answers from a seed and a clock, and the
transport's part (drop, delay) told in the answer instead of carried out."""

from __future__ import annotations

import json
import random
from typing import Any
from urllib.parse import urlencode

from ledger.stripe.simulator import (
    TEST_MODE,
    ApiRequest,
    ApiResponse,
    SimulatorConfig,
    StripeSimulator,
)
from tests.stripe_sim import SteppedClock

AUTH = "Bearer sk_test_engine"
SECRET = "whsec_engine"


def _post(path: str, key: str | None = None, **params: Any) -> ApiRequest:
    return ApiRequest(
        "POST", path, body=urlencode(params).encode(), authorization=AUTH, idempotency_key=key
    )


def _get(path: str, **params: Any) -> ApiRequest:
    return ApiRequest("GET", path, query=urlencode(params), authorization=AUTH)


def _transfer(key: str | None = None, amount: int = 500, **params: Any) -> ApiRequest:
    return _post(
        "/v1/transfers", key, amount=amount, currency="usd", destination="acct_1Seller", **params
    )


def _wire(response: ApiResponse) -> bytes:
    """Everything an answer tells, as bytes."""
    return json.dumps(
        {
            "status": response.status,
            "body": response.body,
            "headers": response.headers,
            "request_id": response.request_id,
            "fault": response.fault,
            "replayed": response.replayed,
            "rate_limited": response.rate_limited,
            "drop": response.drop,
            "delay_seconds": response.delay_seconds,
        },
        sort_keys=True,
    ).encode()


def _session(seed: int) -> bytes:
    """A fixed sequence of requests against a seeded engine on a clock that steps 10 ms per
    reading; everything the engine answered and delivered, as bytes."""
    ticks = iter(range(10**6))
    config = SimulatorConfig(
        seed=seed,
        faults={"500_before": 0.1, "500_after": 0.1, "drop_after": 0.1, "lock_timeout": 0.1},
        rate_limit=TEST_MODE,
        platform_balance=60_000,
        webhook_secret=SECRET,
    )
    simulator = StripeSimulator(config, clock=lambda: 1_700_000_000 + next(ticks) / 100)
    out: list[bytes] = []
    transfer_ids: list[str] = []
    for i in range(60):
        # Keys repeat, so replays and conflicts happen as well as fresh requests.
        response = simulator.handle(_transfer(f"payout-{i % 40}", amount=1000 + i % 40))
        out.append(_wire(response))
        if response.status == 200:
            transfer_ids.append(response.body["id"])
        if i % 7 == 0 and transfer_ids:
            path = f"/v1/transfers/{transfer_ids[-1]}/reversals"
            out.append(_wire(simulator.handle(_post(path, f"refund-{i}", amount=100))))
        if i % 11 == 0:
            out.append(_wire(simulator.handle(_get("/v1/transfers", limit=3))))
            out.append(_wire(simulator.handle(_get("/v1/events", limit=5))))
    for delivery in simulator.take_deliveries():
        out.append(delivery.payload + delivery.signature(1_700_000_100).encode())
    out.append(json.dumps(simulator.state(), sort_keys=True).encode())
    return b"\n".join(out)


def test_the_same_seed_clock_and_requests_give_byte_identical_answers() -> None:
    first = _session(seed=11)
    assert first == _session(seed=11)
    assert first != _session(seed=12)
    # The session exercised what it is meant to: faults, replays, the limiter, events.
    for marker in (
        b'"fault": "500_after"',
        b'"fault": "drop_after"',
        b'"fault": "lock_timeout"',
        b'"Idempotent-Replayed": "true"',
        b'"rate_limited": true',
        b'"type": "transfer.updated"',
    ):
        assert marker in first, marker


def test_reset_starts_the_ids_again_from_the_seed_even_with_an_injected_generator() -> None:
    simulator = StripeSimulator(
        SimulatorConfig(rate_limit=TEST_MODE), clock=lambda: 5.0, rng=random.Random(99)
    )
    first = simulator.handle(_transfer()).body["id"]
    simulator.reset()
    assert simulator.handle(_transfer()).body["id"] == first
    other = StripeSimulator(SimulatorConfig(), clock=lambda: 5.0, rng=random.Random(100))
    assert other.handle(_transfer()).body["id"] != first


def test_a_dropped_or_slow_answer_is_told_not_carried_out() -> None:
    simulator = StripeSimulator(SimulatorConfig(slow_ms=1500), clock=SteppedClock())
    simulator.add_fault("drop_after")
    dropped = simulator.handle(_transfer("payout-drop"))
    assert (dropped.status, dropped.drop, dropped.fault) == (200, True, "drop_after")
    # Committed and saved: the caller that "lost" the answer gets it again under the key.
    again = simulator.handle(_transfer("payout-drop"))
    assert (again.replayed, again.drop, again.body["id"]) == (True, False, dropped.body["id"])

    simulator.add_fault("slow")
    slow = simulator.handle(_transfer("payout-slow"))
    assert (slow.status, slow.delay_seconds, slow.drop) == (200, 1.5, False)
    assert len(simulator.state()["transfers"]) == 2


def test_begin_holds_the_key_until_finish() -> None:
    simulator = StripeSimulator(SimulatorConfig(), clock=SteppedClock())
    held = simulator.begin(_transfer("payout-held"))
    busy = simulator.handle(_transfer("payout-held"))
    assert busy.status == 409
    assert busy.body["error"]["code"] == "idempotency_key_in_use"
    assert simulator.state()["transfers"] == []
    done = simulator.finish(held)
    assert done.status == 200
    replayed = simulator.handle(_transfer("payout-held"))
    assert (replayed.replayed, replayed.body["id"]) == (True, done.body["id"])
    assert replayed.headers["Original-Request"] == done.request_id


def test_saved_keys_expire_by_the_engine_clock() -> None:
    clock = SteppedClock()
    simulator = StripeSimulator(SimulatorConfig(), clock=clock)
    first = simulator.handle(_transfer("payout-day"))
    clock.advance(86_399)
    assert simulator.handle(_transfer("payout-day")).body["id"] == first.body["id"]
    clock.advance(1)
    fresh = simulator.handle(_transfer("payout-day"))
    assert (fresh.replayed, fresh.body["id"] != first.body["id"]) == (False, True)
    assert fresh.body["created"] == int(clock.now)


def test_rate_limits_hold_in_process_too() -> None:
    clock = SteppedClock()
    simulator = StripeSimulator(SimulatorConfig(), clock=clock)
    answers = [simulator.handle(_get("/v1/transfers")).status for _ in range(26)]
    assert answers == [200] * 25 + [429]
    clock.advance(1)
    assert simulator.handle(_get("/v1/transfers")).status == 200


def test_a_reset_while_a_request_executes_leaves_it_a_proper_answer() -> None:
    simulator = StripeSimulator(SimulatorConfig(), clock=SteppedClock())
    held = simulator.begin(_transfer("payout-reset"))
    simulator.reset()
    done = simulator.finish(held)
    assert done.status == 200
    assert simulator.handle(_transfer("payout-reset")).replayed
