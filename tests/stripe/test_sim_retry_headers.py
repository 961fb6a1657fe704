"""Stripe-Should-Retry as Stripe sends it, and what stripe-python does with it, over HTTP.

The clients here retry (max_network_retries=2): the request log shows whether they did."""

from __future__ import annotations

import pytest
import stripe

from ledger.stripe.simulator import ApiRequest
from tests.stripe_sim import create_transfer, running_simulator, stripe_client


def _outcomes(requests: list[dict[str, object]]) -> list[tuple[object, object, object]]:
    return [(r["status"], r["fault"], r["replayed"]) for r in requests]


def test_500_after_and_its_replay_ask_not_to_be_retried() -> None:
    with running_simulator() as (simulator, url):
        client = stripe_client(url, max_network_retries=2)
        simulator.add_fault("500_after")
        with pytest.raises(stripe.APIError) as failed:
            create_transfer(client, key="payout-1")
        assert (failed.value.headers or {}).get("Stripe-Should-Retry") == "false"
        # stripe-python obeys the header before its own rule of retrying 5xx.
        assert _outcomes(simulator.state()["requests"]) == [(500, "500_after", False)]

        with pytest.raises(stripe.APIError) as replayed:
            create_transfer(client, key="payout-1")
        headers = replayed.value.headers or {}
        assert (headers.get("Stripe-Should-Retry"), headers.get("Idempotent-Replayed")) == (
            "false",
            "true",
        )
        assert len(simulator.state()["requests"]) == 2
        assert len(simulator.state()["transfers"]) == 1


def test_500_before_asks_not_to_be_retried_either() -> None:
    with running_simulator() as (simulator, url):
        simulator.add_fault("500_before")
        with pytest.raises(stripe.APIError) as failed:
            create_transfer(stripe_client(url, max_network_retries=2), key="payout-2")
        assert (failed.value.headers or {}).get("Stripe-Should-Retry") == "false"
        assert _outcomes(simulator.state()["requests"]) == [(500, "500_before", False)]
        assert simulator.state()["transfers"] == []


def test_a_lock_timeout_is_a_429_that_asks_to_be_retried() -> None:
    with running_simulator() as (simulator, url):
        simulator.add_fault("lock_timeout")
        with pytest.raises(stripe.RateLimitError) as busy:
            create_transfer(stripe_client(url), key="payout-3")
        error = busy.value
        assert error.http_status == 429
        # stripe-python's RateLimitError leaves .code unset; the body has it.
        assert error.error is not None
        assert error.error.code == "lock_timeout"
        assert (error.headers or {}).get("Stripe-Should-Retry") == "true"
        assert "another API request or Stripe process" in str(error.user_message)
        assert simulator.state()["transfers"] == []

        # A retrying client tries again under the same key, which nothing was saved under.
        simulator.add_fault("lock_timeout")
        created = create_transfer(stripe_client(url, max_network_retries=2), key="payout-4")
        assert created.last_response.headers.get("Idempotent-Replayed") is None
        assert _outcomes(simulator.state()["requests"][1:]) == [
            (429, "lock_timeout", False),
            (200, None, False),
        ]
        assert len(simulator.state()["transfers"]) == 1


def test_a_key_held_by_a_request_in_progress_answers_409_idempotency_key_in_use() -> None:
    with running_simulator() as (simulator, url):
        # The first request, begun in-process and not finished: its key is held.
        held = simulator.begin(
            ApiRequest(
                "POST",
                "/v1/transfers",
                body=b"amount=500&currency=usd&destination=acct_1Held",
                authorization="Bearer sk_test_ledger",
                idempotency_key="payout-5",
            )
        )
        with pytest.raises(stripe.APIError) as busy:
            create_transfer(stripe_client(url), key="payout-5")
        assert busy.value.http_status == 409
        assert busy.value.error is not None
        assert (busy.value.error.type, busy.value.error.code) == (
            "idempotency_error",
            "idempotency_key_in_use",
        )
        assert "'payout-5'" in str(busy.value.user_message)
        assert simulator.finish(held).status == 200

        # Finished: the key answers with the saved transfer; other parameters are a 400.
        with pytest.raises(stripe.IdempotencyError) as mismatch:
            create_transfer(stripe_client(url), key="payout-5")
        assert mismatch.value.http_status == 400
        assert len(simulator.state()["transfers"]) == 1
