"""stripe-sim, driven by the real stripe-python client over real HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import pytest
import stripe

from ledger.cli import run
from ledger.errors import InvalidInput
from ledger.stripe.simulator import SimulatorConfig, mask_api_key, parse_faults
from tests.stripe_sim import (
    create_transfer,
    raw_request,
    running_simulator,
    sim_control,
    stripe_client,
)
from tests.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]


# --- transfers and reversals ------------------------------------------------------------------


def test_transfer_is_created_retrieved_and_listed_by_filter_and_cursor() -> None:
    with running_simulator() as (_, url):
        client = stripe_client(url)
        first = create_transfer(client, currency="USD", description="payout for order-1")
        assert first.id.startswith("tr_")
        assert first.object == "transfer"
        assert (first.amount, first.currency, first.destination) == (12500, "usd", "acct_1Kettle")
        assert first.transfer_group == "ledger-transfer-1"
        assert first.metadata.to_dict() == {"ledger_transfer_id": "ledger-transfer-1"}
        assert (first.amount_reversed, first.reversed, first.livemode) == (0, False, False)
        assert first.reversals.total_count == 0
        assert first.reversals.url == f"/v1/transfers/{first.id}/reversals"
        assert first.destination_payment.startswith("py_")
        assert first.description == "payout for order-1"

        retrieved = client.v1.transfers.retrieve(first.id)
        assert retrieved.to_dict() == first.to_dict()

        others = [
            create_transfer(client, destination="acct_2Other", transfer_group=f"g{i}")
            for i in range(4)
        ]
        by_group = client.v1.transfers.list(params={"transfer_group": "ledger-transfer-1"})
        assert [t.id for t in by_group.data] == [first.id]
        by_destination = client.v1.transfers.list(params={"destination": "acct_2Other"})
        # Newest first, as Stripe lists.
        assert [t.id for t in by_destination.data] == [t.id for t in reversed(others)]

        page1 = client.v1.transfers.list(params={"limit": 2})
        assert [t.id for t in page1.data] == [others[3].id, others[2].id]
        assert page1.has_more
        page2 = client.v1.transfers.list(params={"limit": 2, "starting_after": page1.data[-1].id})
        assert [t.id for t in page2.data] == [others[1].id, others[0].id]
        assert page2.has_more
        page3 = client.v1.transfers.list(params={"limit": 2, "starting_after": page2.data[-1].id})
        assert [t.id for t in page3.data] == [first.id]
        assert not page3.has_more
        back = client.v1.transfers.list(params={"limit": 2, "ending_before": first.id})
        assert [t.id for t in back.data] == [others[1].id, others[0].id]
        assert back.has_more
        everything = list(client.v1.transfers.list(params={"limit": 2}).auto_paging_iter())
        assert len(everything) == 5


def test_unknown_transfer_and_unknown_urls_are_404() -> None:
    with running_simulator() as (_, url):
        client = stripe_client(url)
        with pytest.raises(stripe.InvalidRequestError) as missing:
            client.v1.transfers.retrieve("tr_nothere")
        assert missing.value.http_status == 404
        assert missing.value.code == "resource_missing"
        assert "No such transfer: 'tr_nothere'" in str(missing.value.user_message)
        assert missing.value.request_id is not None
        assert missing.value.request_id.startswith("req_")

        status, headers, body = raw_request(
            f"{url}/v1/payouts", {"Authorization": "Bearer sk_test_x"}
        )
        assert status == 404
        assert body["error"]["type"] == "invalid_request_error"
        assert "Unrecognized request URL" in body["error"]["message"]
        assert headers["Request-Id"].startswith("req_")


def test_reversals_partial_then_full_then_refused() -> None:
    with running_simulator() as (_, url):
        client = stripe_client(url)
        transfer = create_transfer(client, amount=1000)
        partial = client.v1.transfers.reversals.create(
            transfer.id,
            params={"amount": 400, "description": "refund 555", "metadata": {"request": "r1"}},
            options={"idempotency_key": "reverse-1"},
        )
        assert partial.id.startswith("trr_")
        assert (partial.object, partial.amount, partial.currency) == (
            "transfer_reversal",
            400,
            "usd",
        )
        assert partial.transfer == transfer.id
        assert partial.metadata is not None
        assert partial.metadata.to_dict() == {"request": "r1"}
        assert isinstance(partial.destination_payment_refund, str)
        assert partial.destination_payment_refund.startswith("pyr_")
        after_partial = client.v1.transfers.retrieve(transfer.id)
        assert (after_partial.amount_reversed, after_partial.reversed) == (400, False)
        assert [r.id for r in after_partial.reversals.data] == [partial.id]

        with pytest.raises(stripe.InvalidRequestError) as too_much:
            client.v1.transfers.reversals.create(transfer.id, params={"amount": 1000})
        assert too_much.value.http_status == 400
        assert too_much.value.param == "amount"
        assert "Amount (1000) is greater than unreversed amount on transfer (600)" in str(
            too_much.value.user_message
        )

        # No amount: the rest.
        rest = client.v1.transfers.reversals.create(
            transfer.id, params={"refund_application_fee": False}
        )
        assert rest.amount == 600
        done = client.v1.transfers.retrieve(transfer.id)
        assert (done.amount_reversed, done.reversed) == (1000, True)
        assert done.to_dict()["reversals"]["total_count"] == 2

        with pytest.raises(stripe.InvalidRequestError) as already:
            client.v1.transfers.reversals.create(transfer.id, params={"amount": 1})
        assert already.value.http_status == 400
        assert already.value.error is not None
        assert already.value.error.code is None
        assert already.value.error.type == "invalid_request_error"
        # Stripe's text (stripe-ruby#1058 quotes it): callers match "fully reversed".
        assert (
            already.value.user_message == f"The transfer {transfer.id} is already fully reversed."
        )

        listed = client.v1.transfers.reversals.list(transfer.id, params={"limit": 1})
        assert [r.id for r in listed.data] == [rest.id]
        assert listed.has_more
        older = client.v1.transfers.reversals.list(transfer.id, params={"starting_after": rest.id})
        assert [r.id for r in older.data] == [partial.id]
        assert client.v1.transfers.reversals.retrieve(transfer.id, partial.id).amount == 400

        with pytest.raises(stripe.InvalidRequestError) as no_transfer:
            client.v1.transfers.reversals.create("tr_nothere", params={"amount": 1})
        assert (no_transfer.value.http_status, no_transfer.value.code) == (404, "resource_missing")


def test_unknown_destination_is_resource_missing_on_destination() -> None:
    with running_simulator() as (simulator, url):
        client = stripe_client(url)
        with pytest.raises(stripe.InvalidRequestError) as unknown:
            create_transfer(client, destination="acct_unknown42")
        assert unknown.value.http_status == 400
        assert unknown.value.code == "resource_missing"
        assert unknown.value.param == "destination"
        assert "No such destination: 'acct_unknown42'" in str(unknown.value.user_message)

        # The control API can make any account unknown, and an unknown one known.
        sim_control(url, "/_sim/accounts", {"id": "acct_1Gone", "exists": False})
        simulator.set_account("acct_unknown42", exists=True)
        with pytest.raises(stripe.InvalidRequestError) as gone:
            create_transfer(client, destination="acct_1Gone")
        assert gone.value.code == "resource_missing"
        assert create_transfer(client, destination="acct_unknown42").destination == "acct_unknown42"
        assert len(simulator.state()["transfers"]) == 1


def test_platform_balance_insufficient_and_reversals_give_back() -> None:
    with running_simulator(platform_balance=1000) as (_, url):
        client = stripe_client(url)
        transfer = create_transfer(client, amount=800)
        with pytest.raises(stripe.InvalidRequestError) as short:
            create_transfer(client, amount=300)
        assert short.value.http_status == 400
        assert short.value.code == "balance_insufficient"

        client.v1.transfers.reversals.create(transfer.id, params={"amount": 100})
        assert create_transfer(client, amount=300).amount == 300

        sim_control(url, "/_sim/platform-balance", {"amount": None})
        assert create_transfer(client, amount=10**9).amount == 10**9


def test_account_without_balance_cannot_fund_a_reversal() -> None:
    with running_simulator() as (simulator, url):
        client = stripe_client(url)
        transfer = create_transfer(client, destination="acct_nobalance1")
        with pytest.raises(stripe.InvalidRequestError) as short:
            client.v1.transfers.reversals.create(
                transfer.id, params={"amount": 100}, options={"idempotency_key": "rev-a"}
            )
        assert short.value.code == "balance_insufficient"
        assert client.v1.transfers.retrieve(transfer.id).amount_reversed == 0

        other = create_transfer(client, destination="acct_1Funded")
        sim_control(url, "/_sim/accounts", {"id": "acct_1Funded", "reversal_balance": False})
        with pytest.raises(stripe.InvalidRequestError) as also_short:
            client.v1.transfers.reversals.create(other.id, params={"amount": 100})
        assert also_short.value.code == "balance_insufficient"

        # Execution-stage: the refusal is saved under its key, even once funds arrive.
        simulator.set_account("acct_nobalance1", reversal_balance=True)
        with pytest.raises(stripe.InvalidRequestError) as replayed:
            client.v1.transfers.reversals.create(
                transfer.id, params={"amount": 100}, options={"idempotency_key": "rev-a"}
            )
        assert replayed.value.code == "balance_insufficient"
        assert (replayed.value.headers or {}).get("Idempotent-Replayed") == "true"
        fresh = client.v1.transfers.reversals.create(
            transfer.id, params={"amount": 100}, options={"idempotency_key": "rev-b"}
        )
        assert fresh.amount == 100


def test_a_reversal_outside_the_ledger_shows_on_the_transfer() -> None:
    with running_simulator() as (simulator, url):
        client = stripe_client(url)
        transfer = create_transfer(client, amount=1000, destination="acct_nobalance2")
        reversal = sim_control(url, "/_sim/reverse", {"transfer": transfer.id, "amount": 250})
        assert reversal["object"] == "transfer_reversal"
        assert client.v1.transfers.retrieve(transfer.id).amount_reversed == 250
        simulator.reverse_outside(transfer.id)
        assert client.v1.transfers.retrieve(transfer.id).reversed is True
        # Outside reversals are not API requests.
        assert [r["method"] for r in simulator.state()["requests"]] == ["POST", "GET", "GET"]


def test_a_transfer_edited_at_the_simulator_answers_with_its_new_values() -> None:
    with running_simulator() as (simulator, url):
        client = stripe_client(url)
        transfer = create_transfer(client, amount=1000)
        edited = sim_control(url, f"/_sim/transfers/{transfer.id}", {"amount": 900})
        assert edited["amount"] == 900
        after = client.v1.transfers.retrieve(transfer.id)
        assert (after.amount, after.currency, after.destination) == (900, "usd", "acct_1Kettle")
        simulator.edit_transfer(
            transfer.id, currency="EUR", destination="acct_2Other", created=1_700_000_000
        )
        after = client.v1.transfers.retrieve(transfer.id)
        assert (after.currency, after.destination, after.created) == (
            "eur",
            "acct_2Other",
            1_700_000_000,
        )
        # Edits are not API requests.
        assert [r["method"] for r in simulator.state()["requests"]] == ["POST", "GET", "GET"]

        for payload in ({}, {"amount": 0}, {"amount": "5"}, {"colour": "red"}):
            status, _, body = raw_request(
                f"{url}/_sim/transfers/{transfer.id}",
                {},
                method="POST",
                data=json.dumps(payload).encode(),
            )
            assert status == 400, payload
            assert body["error"]["type"] == "invalid_request_error"
        status, _, body = raw_request(
            f"{url}/_sim/transfers/tr_nothere", {}, method="POST", data=b'{"amount": 5}'
        )
        assert status == 404
        assert body["error"]["code"] == "resource_missing"
        assert client.v1.transfers.retrieve(transfer.id).amount == 900


def test_transfers_are_listed_by_creation_time() -> None:
    with running_simulator() as (simulator, url):
        client = stripe_client(url)
        made = [create_transfer(client, transfer_group=f"g{i}") for i in range(3)]
        for transfer, created in zip(made, (1000, 2000, 3000), strict=True):
            simulator.edit_transfer(transfer.id, created=created)

        def listed(created: Any, **params: Any) -> list[str | None]:
            found = client.v1.transfers.list(params={"created": created, **params})  # type: ignore[arg-type]
            return [t.transfer_group for t in found.auto_paging_iter()]

        assert listed({"gte": 2000}) == ["g2", "g1"]
        assert listed({"gt": 2000}) == ["g2"]
        assert listed({"lt": 2000}) == ["g0"]
        assert listed({"gte": 1000, "lte": 2000}) == ["g1", "g0"]
        assert listed(3000) == ["g2"]
        # Paging by cursor within the filter.
        assert listed({"gte": 1000}, limit=1) == ["g2", "g1", "g0"]
        assert listed({"gte": 1000}, transfer_group="g1") == ["g1"]
        with pytest.raises(stripe.InvalidRequestError) as bad:
            listed({"gte": "yesterday"})
        assert bad.value.param == "created[gte]"
        with pytest.raises(stripe.InvalidRequestError) as unknown:
            listed({"after": 5})
        assert unknown.value.code == "parameter_unknown"


def test_validation_errors_come_first_and_are_not_saved() -> None:
    with running_simulator() as (simulator, url):
        client = stripe_client(url)
        cases: list[tuple[dict[str, Any], str]] = [
            ({"amount": 0}, "amount"),
            ({"amount": "12.5"}, "amount"),
            ({"amount": None}, "amount"),
            ({"currency": "dollars"}, "currency"),
            ({"destination": "cus_123"}, "destination"),
            ({"destination": None}, "destination"),
            ({"colour": "blue"}, "colour"),
        ]
        for overrides, param in cases:
            with pytest.raises(stripe.InvalidRequestError) as refused:
                create_transfer(client, key="order-1", **overrides)
            assert refused.value.http_status == 400, overrides
            assert refused.value.param == param, overrides
        # The key was never saved, so a valid request with it executes.
        assert create_transfer(client, key="order-1").amount == 12500
        assert len(simulator.state()["transfers"]) == 1


# --- API keys ---------------------------------------------------------------------------------


def test_missing_wrong_and_restricted_keys() -> None:
    secret = "sk_test_51ConfiguredKeyabcd"
    with running_simulator(api_key=secret) as (simulator, url):
        status, headers, body = raw_request(f"{url}/v1/transfers", {})
        assert status == 401
        assert "You did not provide an API key" in body["error"]["message"]
        assert headers["Request-Id"].startswith("req_")

        wrong = "sk_test_51SomebodyElsesKey9876"
        with pytest.raises(stripe.AuthenticationError) as rejected:
            stripe_client(url, api_key=wrong).v1.transfers.list()
        assert rejected.value.http_status == 401
        message = str(rejected.value.user_message)
        assert message == "Invalid API Key provided: sk_test_****9876"
        assert wrong not in str(rejected.value.http_body)

        assert stripe_client(url, api_key=secret).v1.transfers.list().data == []
        assert secret not in json.dumps(simulator.state())
        assert secret not in repr(simulator.config)

    with running_simulator() as (_, url):
        assert stripe_client(url, api_key="sk_test_anything").v1.transfers.list().data == []
        with pytest.raises(stripe.PermissionError) as restricted:
            create_transfer(stripe_client(url, api_key="rk_test_51RestrictedKeyzzzz"))
        assert restricted.value.http_status == 403
        assert "rk_test_51RestrictedKeyzzzz" not in str(restricted.value.http_body)


def test_masking_shows_the_kind_and_last_four_only() -> None:
    assert mask_api_key("sk_test_51HxYzAbCdEfGhIjabcd") == "sk_test_****abcd"
    assert mask_api_key("sk_live_short") == "sk_live_****"
    assert mask_api_key("whatever-this-key-is-1234") == "****1234"


# --- idempotency ------------------------------------------------------------------------------


def test_same_key_same_params_replays_the_same_transfer() -> None:
    with running_simulator() as (simulator, url):
        client = stripe_client(url)
        first = create_transfer(client, key="payout-1")
        again = create_transfer(client, key="payout-1")
        assert again.id == first.id
        assert again.last_response.headers.get("Idempotent-Replayed") == "true"
        assert first.last_response.headers.get("Idempotent-Replayed") is None
        assert len(simulator.state()["transfers"]) == 1
        # Keys are scoped per API key: another key's "payout-1" is another request.
        other = create_transfer(stripe_client(url, api_key="sk_test_other"), key="payout-1")
        assert other.id != first.id
        log = simulator.state()["requests"]
        assert [r["replayed"] for r in log] == [False, True, False]


def test_same_key_other_params_is_an_idempotency_error() -> None:
    with running_simulator() as (simulator, url):
        client = stripe_client(url)
        create_transfer(client, key="payout-2")
        with pytest.raises(stripe.IdempotencyError) as conflict:
            create_transfer(client, key="payout-2", amount=999)
        assert conflict.value.http_status == 400
        assert "Try using a key other than 'payout-2'" in str(conflict.value.user_message)
        assert len(simulator.state()["transfers"]) == 1


def test_500_after_is_replayed_for_the_key_while_the_transfer_exists() -> None:
    with running_simulator() as (simulator, url):
        client = stripe_client(url)
        simulator.add_fault("500_after")
        for _ in range(2):
            with pytest.raises(stripe.APIError) as failed:
                create_transfer(client, key="payout-3", transfer_group="group-500")
            assert failed.value.http_status == 500
        assert (failed.value.headers or {}).get("Idempotent-Replayed") == "true"
        state = simulator.state()
        assert len(state["transfers"]) == 1
        assert [(r["status"], r["fault"], r["replayed"]) for r in state["requests"]] == [
            (500, "500_after", False),
            (500, None, True),
        ]
        found = client.v1.transfers.list(params={"transfer_group": "group-500"})
        assert [t.id for t in found.data] == [state["transfers"][0]["id"]]


def test_500_before_executes_nothing_so_the_same_key_runs_once() -> None:
    with running_simulator() as (simulator, url):
        client = stripe_client(url)
        sim_control(url, "/_sim/faults", {"fault": "500_before", "path": "/v1/transfers"})
        with pytest.raises(stripe.APIError) as failed:
            create_transfer(client, key="payout-4")
        assert failed.value.http_status == 500
        assert simulator.state()["transfers"] == []
        created = create_transfer(client, key="payout-4")
        assert created.last_response.headers.get("Idempotent-Replayed") is None
        assert create_transfer(client, key="payout-4").id == created.id
        assert len(simulator.state()["transfers"]) == 1


def test_dropped_connection_after_commit() -> None:
    with running_simulator() as (simulator, url):
        simulator.add_fault("drop_after")
        with pytest.raises(stripe.APIConnectionError):
            create_transfer(stripe_client(url), key="payout-5", transfer_group="dropped")
        assert len(simulator.state()["transfers"]) == 1

        # With retries, the client's retry under the same key gets the saved success.
        simulator.add_fault("drop_after")
        retrying = stripe_client(url, max_network_retries=2)
        created = create_transfer(retrying, key="payout-6", transfer_group="retried")
        assert created.last_response.headers.get("Idempotent-Replayed") == "true"
        state = simulator.state()
        assert [t["transfer_group"] for t in state["transfers"]] == ["dropped", "retried"]
        assert [(r["fault"], r["replayed"]) for r in state["requests"][1:]] == [
            ("drop_after", False),
            (None, True),
        ]


def test_429_is_a_rate_limit_error_and_creates_nothing() -> None:
    with running_simulator() as (simulator, url):
        simulator.add_fault("429", count=2)
        client = stripe_client(url, max_network_retries=2)
        with pytest.raises(stripe.RateLimitError) as limited:
            create_transfer(client, key="payout-7")
        assert limited.value.http_status == 429
        # No Stripe-Should-Retry: the client does not retry a 429 on its own.
        assert "Stripe-Should-Retry" not in (limited.value.headers or {})
        assert len(simulator.state()["requests"]) == 1
        assert simulator.state()["transfers"] == []
        with pytest.raises(stripe.RateLimitError):
            create_transfer(client, key="payout-7")
        assert create_transfer(client, key="payout-7").amount == 12500
        assert len(simulator.state()["transfers"]) == 1


def test_slow_answer_times_the_client_out_after_commit() -> None:
    with running_simulator(slow_ms=2000) as (simulator, url):
        simulator.add_fault("slow")
        started = time.monotonic()
        with pytest.raises(stripe.APIConnectionError):
            create_transfer(stripe_client(url, timeout=0.5), key="payout-8")
        assert time.monotonic() - started < 1.9
        assert len(simulator.state()["transfers"]) == 1
        # Saved before the wait: asking again with the key answers at once.
        [saved] = simulator.state()["transfers"]
        assert create_transfer(stripe_client(url), key="payout-8").id == saved["id"]


def test_expired_keys_run_a_new_request() -> None:
    with running_simulator() as (simulator, url):
        client = stripe_client(url)
        first = create_transfer(client, key="payout-9")
        assert sim_control(url, "/_sim/expire-idempotency-keys", {}) == {"expired": 1}
        second = create_transfer(client, key="payout-9")
        assert second.id != first.id
        assert len(simulator.state()["transfers"]) == 2

    with running_simulator(idempotency_ttl_seconds=0.05) as (simulator, url):
        client = stripe_client(url)
        first = create_transfer(client, key="payout-10")
        wait_for(
            lambda: create_transfer(client, key="payout-10").id != first.id,
            what="the key to expire on its own",
        )


def test_a_key_still_executing_answers_409() -> None:
    with running_simulator(latency_ms=500) as (simulator, url):
        results: queue.Queue[Any] = queue.Queue()

        def create_in_background() -> None:
            results.put(create_transfer(stripe_client(url), key="payout-11"))

        first = threading.Thread(target=create_in_background)
        first.start()
        # The key is claimed as soon as the request arrives, before its latency.
        wait_for(lambda: len(simulator.state()["requests"]) == 1, what="the first request")
        with pytest.raises(stripe.APIError) as busy:
            create_transfer(stripe_client(url), key="payout-11")
        first.join(timeout=5)
        assert busy.value.http_status == 409
        assert busy.value.error is not None
        assert busy.value.error.type == "idempotency_error"
        assert busy.value.error.code == "idempotency_key_in_use"
        assert str(busy.value.user_message).startswith(
            "There is currently another in-progress request using this Stripe-Idempotency-Key"
        )
        assert results.get(timeout=1).amount == 12500
        assert len(simulator.state()["transfers"]) == 1


def test_sixty_four_concurrent_connections_wait_their_latency_together() -> None:
    latency = 0.3
    with running_simulator(latency_ms=int(latency * 1000)) as (simulator, url):
        client = stripe_client(url, timeout=10)

        def create(i: int) -> str:
            return str(create_transfer(client, key=f"concurrent-{i}", transfer_group=f"g{i}").id)

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=64) as pool:
            ids = list(pool.map(create, range(64)))
        elapsed = time.monotonic() - started
        assert len(set(ids)) == 64
        assert len(simulator.state()["transfers"]) == 64
        # One after another this would take 64 x 0.3 s = 19 s.
        assert elapsed < 16 * latency


# --- faults and the request log ---------------------------------------------------------------


def _fault_sequence(seed: int) -> list[str | None]:
    faults = {"500_before": 0.2, "500_after": 0.1, "429": 0.2, "drop_after": 0.1}
    with running_simulator(faults=faults, seed=seed) as (simulator, url):
        client = stripe_client(url)
        for i in range(30):
            with contextlib.suppress(stripe.StripeError):
                create_transfer(client, key=f"seeded-{i}")
        # Lookups never draw a random fault.
        client.v1.transfers.list()
        return [r["fault"] for r in simulator.state()["requests"]]


def test_the_same_seed_gives_the_same_faults() -> None:
    first = _fault_sequence(seed=7)
    assert first == _fault_sequence(seed=7)
    assert first != _fault_sequence(seed=8)
    assert {"500_before", "429", None} <= set(first)
    assert first[-1] is None


def test_scripted_faults_follow_path_and_method_and_wait_for_a_success() -> None:
    with running_simulator() as (simulator, url):
        client = stripe_client(url)
        simulator.add_fault("500_after", path="/reversals")
        simulator.add_fault("500_before", method="GET")
        transfer = create_transfer(client)  # not a reversal: untouched
        with pytest.raises(stripe.APIError):
            client.v1.transfers.retrieve(transfer.id)
        # An error answer leaves an "after" fault queued for the next success.
        with pytest.raises(stripe.InvalidRequestError):
            client.v1.transfers.reversals.create(transfer.id, params={"amount": 10**6})
        with pytest.raises(stripe.APIError):
            client.v1.transfers.reversals.create(transfer.id, params={"amount": 10})
        assert client.v1.transfers.retrieve(transfer.id).amount_reversed == 10
        assert simulator.state()["scripted_faults"] == []
        assert [r["fault"] for r in simulator.state()["requests"]] == [
            None,
            "500_before",
            None,
            "500_after",
            None,
        ]


def test_reset_forgets_everything() -> None:
    with running_simulator() as (simulator, url):
        client = stripe_client(url)
        create_transfer(client, key="payout-12")
        simulator.add_fault("429")
        assert sim_control(url, "/_sim/reset", {}) == {"reset": True}
        state = sim_control(url, "/_sim/state")
        assert (state["transfers"], state["requests"], state["scripted_faults"]) == ([], [], [])
        fresh = create_transfer(client, key="payout-12")
        assert fresh.last_response.headers.get("Idempotent-Replayed") is None


def test_request_log_records_arrival_times() -> None:
    with running_simulator(latency_ms=200) as (_, url):
        client = stripe_client(url)
        before = time.time()
        create_transfer(client, key="payout-13")
        after = time.time()
        [record] = sim_control(url, "/_sim/state")["requests"]
        assert record["method"] == "POST"
        assert record["path"] == "/v1/transfers"
        assert record["idempotency_key"] == "payout-13"
        assert record["status"] == 200
        assert (record["fault"], record["replayed"]) == (None, False)
        # Arrival, not completion: the 200 ms of latency come after it.
        assert before <= record["at"] <= after - 0.19


def test_control_api_refuses_bad_input() -> None:
    with running_simulator() as (_, url):
        status, _, body = raw_request(
            f"{url}/_sim/faults", {}, method="POST", data=b'{"fault": "meteor"}'
        )
        assert status == 400
        assert "unknown fault 'meteor'" in body["error"]["message"]
        status, _, _ = raw_request(f"{url}/_sim/nothing", {}, method="POST", data=b"{}")
        assert status == 404


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("meteor=0.1", "unknown fault 'meteor'"),
        ("429=1.5", "within [0, 1]"),
        ("429=-0.1", "within [0, 1]"),
        ("429=lots", "invalid probability"),
        ("429", "expected NAME=PROBABILITY"),
        ("429=0.1,429=0.2", "given twice"),
        ("500_after=0.6,drop_after=0.6", "add up to more than 1"),
    ],
)
def test_parse_faults_rejects_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)) as refused:
        parse_faults(spec)
    assert "\n" not in str(refused.value)


def test_parse_faults_reads_good_specs() -> None:
    assert parse_faults("") == {}
    assert parse_faults(" 500_after=0.05, drop_after=0.05,429=0.1 ") == {
        "500_after": 0.05,
        "drop_after": 0.05,
        "429": 0.1,
    }
    with pytest.raises(InvalidInput):
        SimulatorConfig(faults={"slow": 2.0})


# --- the command line -------------------------------------------------------------------------


def test_cli_refuses_a_bad_fault_spec_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["stripe-sim", "--port", "0", "--faults", "meteor=0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unknown fault 'meteor'" in err


def _first_line(stream: IO[str], timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no startup line within {timeout} s") from None


def test_cli_serves_until_sigterm_and_never_shows_the_key() -> None:
    secret = "sk_test_51CommandLineKeyqrst"
    env = {k: v for k, v in os.environ.items() if k != "STRIPE_SIM_API_KEY"}
    env["STRIPE_SIM_API_KEY"] = secret
    process = subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", "stripe-sim", "--port", "0", "--latency-ms", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = _first_line(process.stdout, timeout=15)
        match = re.fullmatch(
            r"stripe-sim listening on (http://127\.0\.0\.1:(\d+)) \(latency 1 ms, faults none,"
            r" seed 0, rate limit 25/s per endpoint, 25/s total\);"
            r" export STRIPE_API_BASE=\1\n",
            line,
        )
        assert match, line
        assert int(match.group(2)) > 0
        base_url = match.group(1)

        created = create_transfer(stripe_client(base_url, api_key=secret), key="cli-1")
        assert created.amount == 12500
        with pytest.raises(stripe.AuthenticationError):
            stripe_client(base_url, api_key="sk_test_51NotTheRightKey0000").v1.transfers.list()

        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
        assert process.returncode == 0
        assert "POST /v1/transfers 200" in err
        assert "GET /v1/transfers 401" in err
        assert secret not in line + out + err
        assert "sk_test_51NotTheRightKey0000" not in out + err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
