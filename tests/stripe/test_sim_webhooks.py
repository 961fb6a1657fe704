"""Signed webhook deliveries: over HTTP to a local endpoint, and queued in-process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import stripe

from ledger.errors import InvalidInput
from ledger.stripe.simulator import ApiRequest, SimulatorConfig, StripeSimulator, signature_header
from tests.stripe_sim import create_transfer, running_simulator, sim_control, stripe_client
from tests.waiting import wait_for

SECRET = "whsec_test_simulatorSigningSecret"
FAST_RETRIES = {"webhook_retry_delays": (0.05, 0.05, 0.05)}


@dataclass
class Endpoint:
    """A webhook endpoint: answers each delivery with the next scripted status (then 200);
    while `gate` is clear it holds its answer."""

    statuses: list[int] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def deliveries(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return list(self.received)


@contextmanager
def webhook_endpoint(
    statuses: list[int] | None = None, *, open_gate: bool = True
) -> Iterator[Endpoint]:
    endpoint = Endpoint(statuses=list(statuses or []))
    if open_gate:
        endpoint.gate.set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with endpoint.lock:
                endpoint.received.append((dict(self.headers), body))
                status = endpoint.statuses.pop(0) if endpoint.statuses else 200
            endpoint.gate.wait(timeout=30)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    endpoint.url = f"http://127.0.0.1:{server.server_address[1]}/webhooks"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield endpoint
    finally:
        endpoint.gate.set()
        server.shutdown()
        server.server_close()
        thread.join()


def test_each_event_is_delivered_signed_as_stripe_signs() -> None:
    with (
        webhook_endpoint() as endpoint,
        running_simulator(webhook_url=endpoint.url, webhook_secret=SECRET) as (_, url),
    ):
        client = stripe_client(url)
        transfer = create_transfer(client, amount=1000)
        client.v1.transfers.reversals.create(transfer.id, params={"amount": 100})
        wait_for(
            lambda: len(endpoint.deliveries()) == 3, timeout=10, what="three webhook deliveries"
        )
        received = endpoint.deliveries()
        events = [
            stripe.Webhook.construct_event(body, headers["Stripe-Signature"], SECRET)
            for headers, body in received
        ]
        assert [e.type for e in events] == [
            "transfer.created",
            "transfer.reversed",
            "transfer.updated",
        ]
        assert {e.data.object.id for e in events} == {transfer.id}
        listed = client.v1.events.list()
        assert sorted(e.id for e in events) == sorted(e.id for e in listed.data)
        headers, body = received[0]
        assert headers["Content-Type"].startswith("application/json")
        timestamp = int(headers["Stripe-Signature"].split(",")[0].removeprefix("t="))
        assert abs(timestamp - time.time()) < 60
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(body, headers["Stripe-Signature"], "whsec_other")
        # Outside reversals are delivered too.
        sim_control(url, "/_sim/reverse", {"transfer": transfer.id})
        wait_for(lambda: len(endpoint.deliveries()) == 5, timeout=10, what="two more deliveries")


def test_a_failed_delivery_is_retried_with_backoff_until_it_succeeds() -> None:
    with (
        webhook_endpoint(statuses=[500, 503]) as endpoint,
        running_simulator(
            webhook_url=endpoint.url, webhook_secret=SECRET, server_options=FAST_RETRIES
        ) as (_, url),
    ):
        create_transfer(stripe_client(url))
        wait_for(
            lambda: len(endpoint.deliveries()) == 3,
            timeout=10,
            what="the delivery and its two retries",
        )
        received = endpoint.deliveries()
        events = [
            stripe.Webhook.construct_event(body, headers["Stripe-Signature"], SECRET)
            for headers, body in received
        ]
        assert len({e.id for e in events}) == 1


def test_deliveries_give_up_after_a_few_attempts() -> None:
    with (
        webhook_endpoint(statuses=[500] * 10) as endpoint,
        running_simulator(
            webhook_url=endpoint.url, webhook_secret=SECRET, server_options=FAST_RETRIES
        ) as (_, url),
    ):
        create_transfer(stripe_client(url))
        wait_for(lambda: len(endpoint.deliveries()) == 4, timeout=10, what="four attempts")
        # The sender's own schedule (3 retries) is what ends it: one more never comes.
        create_transfer(stripe_client(url), transfer_group="next")
        wait_for(lambda: len(endpoint.deliveries()) >= 5, timeout=10, what="the next event")
        event_ids = [
            stripe.Webhook.construct_event(body, headers["Stripe-Signature"], SECRET).id
            for headers, body in endpoint.deliveries()
        ]
        assert event_ids.count(event_ids[0]) == 4


def test_a_slow_endpoint_never_holds_up_api_answers() -> None:
    with (
        webhook_endpoint(open_gate=False) as endpoint,
        running_simulator(webhook_url=endpoint.url, webhook_secret=SECRET) as (simulator, url),
    ):
        client = stripe_client(url)
        create_transfer(client)
        wait_for(endpoint.deliveries, timeout=10, what="the first delivery")
        # The endpoint holds the first delivery unanswered; the API goes on answering.
        for i in range(5):
            create_transfer(client, transfer_group=f"g{i}")
        assert len(simulator.state()["transfers"]) == 6
        assert not endpoint.gate.is_set()
        endpoint.gate.set()
        wait_for(lambda: len(endpoint.deliveries()) == 6, timeout=10, what="all deliveries")


def test_in_process_the_engine_queues_deliveries_for_the_caller() -> None:
    simulator = StripeSimulator(SimulatorConfig(webhook_secret=SECRET), clock=lambda: 1_000.0)
    response = simulator.handle(
        ApiRequest(
            "POST",
            "/v1/transfers",
            body=b"amount=700&currency=usd&destination=acct_1Seller",
            authorization="Bearer sk_test_inprocess",
        )
    )
    assert response.status == 200
    [delivery] = simulator.take_deliveries()
    assert simulator.take_deliveries() == []
    assert delivery.event_type == "transfer.created"
    assert SECRET not in repr(delivery)
    now = int(time.time())
    event = stripe.Webhook.construct_event(delivery.payload, delivery.signature(now), SECRET)
    assert (event.id, event.data.object.id) == (delivery.event_id, response.body["id"])
    assert delivery.headers(now)["Stripe-Signature"] == signature_header(
        delivery.payload, SECRET, now
    )
    # Without a secret nothing is queued.
    plain = StripeSimulator(SimulatorConfig())
    plain.handle(
        ApiRequest(
            "POST",
            "/v1/transfers",
            body=b"amount=700&currency=usd&destination=acct_1Seller",
            authorization="Bearer sk_test_inprocess",
        )
    )
    assert plain.take_deliveries() == []


def test_webhook_configuration_is_checked() -> None:
    with pytest.raises(InvalidInput, match="needs a webhook secret"):
        SimulatorConfig(webhook_url="http://127.0.0.1:9/hooks")
    with pytest.raises(InvalidInput, match="http"):
        SimulatorConfig(webhook_url="ftp://example.com/hooks", webhook_secret=SECRET)
    with pytest.raises(InvalidInput):
        SimulatorConfig(webhook_secret=" ")
    assert SECRET not in repr(SimulatorConfig(webhook_secret=SECRET))
