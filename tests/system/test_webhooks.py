"""Stripe webhooks through real HTTP: a real `ledger webhook serve` process,
deliveries signed with Stripe's own scheme, Transfer objects from the Stripe
simulator, paid out by the daemon and reversed behind the ledger's back.

One server (and one database, one simulator) per backend serves the whole
module; each test works on transfers of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import pytest

from ledger.api import open_ledger
from ledger.audit.verify import verify
from ledger.domain import payout_cause
from ledger.errors import InvalidInput
from ledger.processing.work import WorkStore
from ledger.stripe.simulator import SimulatorServer
from ledger.webhooks import deliveries, handle_delivery
from ledger.webhooks import handler as handler_module
from tests.system.world import (
    LEDGER_SCRIPT,
    World,
    daemon_env,
    new_world,
    running_simulator,
)
from tests.waiting import wait_for

SECRET: Final = "whsec_test_L3dgerWebhookS1gningSecret9f2c"
WEBHOOK_ACTOR: Final = "system:stripe-webhook"


# ----- the server, once per backend ------------------------------------------------


@dataclass
class Endpoint:
    world: World
    base_url: str
    log_path: Path

    def deliver(
        self,
        payload: bytes,
        *,
        secret: str = SECRET,
        signed_at: int | None = None,
        signature: str | None = "sign",
    ) -> tuple[int, dict[str, Any]]:
        """POST a delivery; `signature=None` sends no Stripe-Signature header."""
        headers = {"Content-Type": "application/json"}
        if signature == "sign":
            headers["Stripe-Signature"] = stripe_signature(payload, secret, signed_at)
        elif signature is not None:
            headers["Stripe-Signature"] = signature
        request = urllib.request.Request(
            self.base_url + "/stripe/webhooks", data=payload, headers=headers, method="POST"
        )
        return _send(request)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def log(self) -> str:
        return self.log_path.read_text()

    def log_entries(self, containing: str) -> list[dict[str, Any]]:
        """The server's log lines that mention `containing` (JSON: it logs to a file)."""
        return [json.loads(line) for line in self.log().splitlines() if containing in line]


def stripe_signature(payload: bytes, secret: str, signed_at: int | None = None) -> str:
    """Stripe's scheme: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<payload>">."""
    timestamp = int(time.time()) if signed_at is None else signed_at
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _send(request: urllib.request.Request) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def module_sim() -> Iterator[SimulatorServer]:
    with running_simulator(api_key=None) as server:
        yield server


@pytest.fixture(scope="module")
def endpoint(
    module_migrated_url: str,
    module_sim: SimulatorServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Endpoint]:
    world = new_world(module_migrated_url, module_sim)
    log_path = tmp_path_factory.mktemp("webhook-server") / "server.log"
    with log_path.open("ab") as log:
        server = subprocess.Popen(
            [str(LEDGER_SCRIPT), "webhook", "serve", "--port", "0"],
            env=daemon_env(world, STRIPE_WEBHOOK_SECRET=SECRET),
            stdout=log,
            stderr=log,
        )
    try:
        listening = wait_for(
            lambda: (
                server.poll() is not None
                or re.search(r"listening on (http://[\d.]+:\d+)", log_path.read_text())
            ),
            what="the webhook server to listen",
        )
        assert isinstance(listening, re.Match), log_path.read_text()
        yield Endpoint(world, listening[1], log_path)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            raise
    # A clean stop, and not a trace of the secret in anything it wrote.
    output = log_path.read_text()
    assert code == 0, output
    assert "webhook server stopped" in output
    assert SECRET not in output


# ----- transfers, and what Stripe says of them --------------------------------------


def paid_transfer(world: World, amount: int = 5_000) -> tuple[UUID, dict[str, Any]]:
    """A ledger transfer the daemon paid out; returns it and its Stripe transfer."""
    transfer_id = world.create(f"order-{uuid.uuid4().hex[:12]}", amount=amount)
    world.run_daemon_once()
    view = world.show(transfer_id)
    assert view.status == "completed" and view.stripe_transfer_id is not None
    return transfer_id, stripe_transfer(world, view.stripe_transfer_id)


def stripe_transfer(world: World, stripe_transfer_id: str) -> dict[str, Any]:
    """GET /v1/transfers/{id}, as Stripe would put it in an event."""
    request = urllib.request.Request(
        f"{world.sim.base_url}/v1/transfers/{stripe_transfer_id}",
        headers={"Authorization": f"Bearer {world.api_key}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data


def reverse_outside(world: World, stripe_transfer_id: str, amount: int | None = None) -> str:
    """A reversal made at the simulator behind the ledger's back (the Dashboard)."""
    reversal = world.simulator.reverse_outside(stripe_transfer_id, amount)
    return str(reversal["id"])


def event_of(
    transfer: dict[str, Any],
    event_type: str = "transfer.reversed",
    *,
    previous_attributes: dict[str, Any] | None = None,
) -> tuple[str, bytes]:
    """A Stripe event wrapping `transfer`; returns its id and its JSON body."""
    event_id = f"evt_{secrets.token_hex(12)}"
    data: dict[str, Any] = {"object": transfer}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    body = {
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }
    return event_id, json.dumps(body).encode()


def delivery_row(world: World, event_id: str) -> dict[str, Any] | None:
    with world.ledger() as ledger, ledger.db.transaction(write=False) as cursor:
        cursor.execute(
            "SELECT event_type, stripe_transfer_id, transfer_id, outcome, detail, received_at"
            " FROM stripe_webhook_events WHERE stripe_event_id = ?",
            (event_id,),
        )
        return cursor.fetchone()


def event_types(world: World, transfer_id: UUID) -> list[str]:
    return [type(e).__name__ for e in world.events(transfer_id)]


# ----- the tests ------------------------------------------------------------------


def test_a_reversal_made_outside_is_recorded_once_however_often_stripe_delivers_it(
    endpoint: Endpoint,
) -> None:
    world = endpoint.world
    transfer_id, paid = paid_transfer(world, amount=5_000)
    reversal_id = reverse_outside(world, paid["id"], 2_000)
    event_id, payload = event_of(stripe_transfer(world, paid["id"]))

    answers = [endpoint.deliver(payload) for _ in range(3)]

    assert [status for status, _ in answers] == [200, 200, 200]
    assert [body["outcome"] for _, body in answers] == ["recorded", "duplicate", "duplicate"]
    events = world.events(transfer_id)
    assert [type(e).__name__ for e in events] == [
        "Created",
        "PayoutSucceeded",
        "ReversalRequested",
        "Reversed",
    ]
    requested, reversed_ = events[2:]
    for event in (requested, reversed_):
        assert (event.actor, event.caused_by) == (WEBHOOK_ACTOR, event_id)
    assert (requested.request_ref, requested.amount) == (f"stripe:{reversal_id}", 2_000)
    assert (reversed_.stripe_reversal_id, reversed_.amount_reversed) == (reversal_id, 2_000)
    # The read table is current when the answer comes back.
    view = world.show(transfer_id)
    assert (view.status, view.amount_reversed, view.version) == ("reversed", 2_000, 4)
    row = delivery_row(world, event_id)
    assert row is not None
    assert (row["outcome"], row["transfer_id"], row["stripe_transfer_id"]) == (
        "recorded",
        str(transfer_id),
        paid["id"],
    )
    # One log line per delivery, with the event, its type, the transfer, the outcome.
    wait_for(lambda: len(endpoint.log_entries(event_id)) >= 3, what="the deliveries' log lines")
    entries = endpoint.log_entries(event_id)
    assert len(entries) == 3
    for entry in entries:
        assert (entry["component"], entry["level"]) == ("ledger.webhooks", "info")
        assert (entry["event"], entry["transfer_id"]) == ("transfer.reversed", str(transfer_id))
    assert [e["message"].rsplit(": ", 1)[-1] for e in entries] == [
        "recorded",
        "duplicate",
        "duplicate",
    ]


def test_a_further_reversal_outside_keeps_the_amount_reversed_up_with_stripe(
    endpoint: Endpoint,
) -> None:
    world = endpoint.world
    transfer_id, paid = paid_transfer(world, amount=5_000)
    reverse_outside(world, paid["id"], 1_000)
    assert endpoint.deliver(event_of(stripe_transfer(world, paid["id"]))[1])[0] == 200
    second = reverse_outside(world, paid["id"], 1_500)
    later_id, later = event_of(stripe_transfer(world, paid["id"]))

    status, body = endpoint.deliver(later)

    assert (status, body["outcome"]) == (200, "recorded")
    last = world.events(transfer_id)[-1]
    assert type(last).__name__ == "Reversed"
    assert (last.from_status, last.to_status) == ("reversed", "reversed")
    assert (last.stripe_reversal_id, last.amount_reversed, last.caused_by) == (
        second,
        2_500,
        later_id,
    )
    assert world.show(transfer_id).amount_reversed == 2_500
    # The audit replays it like any other history, against the matrix.
    with world.ledger() as ledger:
        report = verify(ledger.db, ledger.transfers.mapper.to_domain_event)
    assert report.findings == []


@pytest.mark.parametrize(
    "kind",
    ["forged", "stale", "future", "far-future", "unsigned", "garbled"],
)
def test_a_delivery_without_a_good_signature_is_refused_and_leaves_no_trace(
    endpoint: Endpoint, kind: str
) -> None:
    world = endpoint.world
    transfer_id, paid = paid_transfer(world)
    reverse_outside(world, paid["id"])
    event_id, payload = event_of(stripe_transfer(world, paid["id"]))
    delivered: Callable[[], tuple[int, dict[str, Any]]] = {
        "forged": lambda: endpoint.deliver(payload, secret="whsec_someoneElsesSecret"),
        "stale": lambda: endpoint.deliver(payload, signed_at=int(time.time()) - 301),
        # Dated ahead, a captured delivery would stay replayable until then.
        "future": lambda: endpoint.deliver(payload, signed_at=int(time.time()) + 3600),
        "far-future": lambda: endpoint.deliver(
            payload, signed_at=int(time.time()) + 10 * 365 * 86400
        ),
        "unsigned": lambda: endpoint.deliver(payload, signature=None),
        "garbled": lambda: endpoint.deliver(payload, signature="t=now,v1=?"),
    }[kind]

    status, body = delivered()

    assert status == 400
    assert "error" in body and SECRET not in json.dumps(body)
    assert event_types(world, transfer_id) == ["Created", "PayoutSucceeded"]
    assert delivery_row(world, event_id) is None
    # And the same event, properly signed, is still new to the ledger.
    assert endpoint.deliver(payload)[1]["outcome"] == "recorded"


def test_a_delivery_for_a_transfer_the_ledger_does_not_know_is_reported_not_crashed_on(
    endpoint: Endpoint,
) -> None:
    world = endpoint.world
    _, paid = paid_transfer(world)
    stranger = {
        **paid,
        "id": "tr_madeByAnotherSystem",
        "transfer_group": str(uuid.uuid4()),
        "metadata": {},
    }
    event_id, payload = event_of(stranger)

    status, body = endpoint.deliver(payload)

    assert (status, body["outcome"]) == (200, "unknown_transfer")
    row = delivery_row(world, event_id)
    assert row is not None
    assert (row["outcome"], row["transfer_id"], row["stripe_transfer_id"]) == (
        "unknown_transfer",
        None,
        "tr_madeByAnotherSystem",
    )
    assert "tr_madeByAnotherSystem" in row["detail"]
    # Reported in the log, and the server goes on answering.
    [entry] = wait_for(lambda: endpoint.log_entries(event_id), what="the delivery's log line")
    assert entry["level"] == "warning" and "unknown_transfer" in entry["message"]
    assert endpoint.get("/healthz") == (200, '{"status":"ok"}')
    metrics = endpoint.get("/metrics")[1]
    assert re.search(
        r'ledger_webhook_deliveries_total\{outcome="unknown_transfer",type="transfer.reversed"\}'
        r" [1-9]",
        metrics,
    )


def test_the_ledgers_own_reversal_arriving_as_a_webhook_appends_nothing(
    endpoint: Endpoint,
) -> None:
    world = endpoint.world
    transfer_id, paid = paid_transfer(world)
    world.request_reversal(transfer_id, amount=1_200)
    world.run_daemon_once()
    assert world.show(transfer_id).status == "reversed"
    before = event_types(world, transfer_id)
    event_id, payload = event_of(stripe_transfer(world, paid["id"]))

    status, body = endpoint.deliver(payload)

    assert (status, body["outcome"]) == (200, "already_known")
    assert event_types(world, transfer_id) == before
    row = delivery_row(world, event_id)
    assert row is not None
    assert (row["outcome"], row["detail"]) == (
        "already_known",
        "every reversal is the ledger's own",
    )


def test_a_transfer_update_showing_no_reversal_at_all_appends_nothing(
    endpoint: Endpoint,
) -> None:
    """An update that does not say what it changed may be a reversal: looked
    at, and found to have none."""
    world = endpoint.world
    transfer_id, paid = paid_transfer(world)
    event_id, payload = event_of(stripe_transfer(world, paid["id"]), "transfer.updated")

    assert endpoint.deliver(payload)[1]["outcome"] == "already_known"
    assert event_types(world, transfer_id) == ["Created", "PayoutSucceeded"]
    row = delivery_row(world, event_id)
    assert row is not None
    assert (row["outcome"], row["detail"]) == ("already_known", "the transfer shows no reversals")


def test_a_partial_reversal_outside_while_the_ledgers_own_waits_is_counted_and_both_made(
    endpoint: Endpoint,
) -> None:
    """The ledger's own reversal request is waiting (reversal_pending) when
    someone reverses part of the transfer in the Dashboard: the Dashboard's
    reversal is recorded at once (the transfer stays reversal_pending, for
    the request's own reversal), and the daemon then makes the request's
    reversal on top. Stripe does not deliver a 200-answered event again, so
    refusing it (as the ledger once did) left the ledger behind Stripe; the
    deterministic simulation found that."""
    world = endpoint.world
    transfer_id, paid = paid_transfer(world, amount=5_000)
    world.request_reversal(transfer_id, amount=1_000)
    reverse_outside(world, paid["id"], 700)
    event_id, payload = event_of(stripe_transfer(world, paid["id"]))

    status, body = endpoint.deliver(payload)

    assert (status, body["outcome"]) == (200, "recorded")
    last = world.events(transfer_id)[-1]
    assert (type(last).__name__, last.from_status, last.to_status) == (
        "Reversed",
        "reversal_pending",
        "reversal_pending",
    )
    assert (last.caused_by, last.amount_reversed) == (event_id, 700)
    view = world.show(transfer_id)
    assert (view.status, view.amount_reversed) == ("reversal_pending", 700)
    # Delivered again: known.
    assert endpoint.deliver(payload)[1]["outcome"] in ("duplicate", "already_known")

    world.run_daemon_once()

    view = world.show(transfer_id)
    assert (view.status, view.amount_reversed) == ("reversed", 1_700)
    assert stripe_transfer(world, paid["id"])["amount_reversed"] == 1_700


def test_a_reversal_of_a_payout_the_ledger_has_not_recorded_yet_is_asked_for_again(
    endpoint: Endpoint,
) -> None:
    """The ledger still says pending (a daemon died after Stripe paid and
    before recording it): it cannot tell yet that the Stripe transfer
    reversed is its money. Answered 500, so Stripe delivers it again later;
    nothing is saved. Once the payout is recorded, the delivery is."""
    world = endpoint.world
    transfer_id = world.create(f"order-{uuid.uuid4().hex[:12]}")
    _a_daemon_dies_mid_payout(world, transfer_id)
    paid = _stripe_transfer_for(world, transfer_id)  # Stripe's side, as the daemon left it
    reverse_outside(world, paid["id"], 700)
    event_id, payload = event_of(stripe_transfer(world, paid["id"]))

    status, body = endpoint.deliver(payload)

    assert status == 500
    assert "not yet" in body["error"] and paid["id"] in body["error"]
    assert event_types(world, transfer_id) == ["Created"]
    assert delivery_row(world, event_id) is None

    world.run_daemon_once()  # looks the payout up, finds paid["id"], records it
    assert world.show(transfer_id).stripe_transfer_id == paid["id"]

    status, body = endpoint.deliver(payload)

    assert (status, body["outcome"]) == (200, "recorded")
    view = world.show(transfer_id)
    assert (view.status, view.amount_reversed) == ("reversed", 700)


def test_a_reversal_of_a_transfer_an_admin_completed_by_hand_is_refused(
    endpoint: Endpoint,
) -> None:
    """Completed by an admin, the ledger records no Stripe transfer, so it
    cannot tell that the one reversed is its money: refused, and reported."""
    world = endpoint.world
    transfer_id = world.create(f"order-{uuid.uuid4().hex[:12]}")
    paid = _stripe_transfer_for(world, transfer_id)
    with world.ledger() as ledger:
        ledger.set_status(transfer_id, "completed", actor="alice@ops", reason="paid, OPS-9")
    reverse_outside(world, paid["id"], 700)
    event_id, payload = event_of(stripe_transfer(world, paid["id"]))

    status, body = endpoint.deliver(payload)

    assert (status, body["outcome"]) == (200, "refused")
    assert event_types(world, transfer_id) == ["Created", "StatusSetByAdmin"]
    row = delivery_row(world, event_id)
    assert row is not None
    assert (row["outcome"], row["transfer_id"]) == ("refused", str(transfer_id))
    assert "the ledger records no Stripe transfer for it" in row["detail"]
    assert paid["id"] in row["detail"]


def test_a_reversal_of_a_duplicate_payout_is_not_booked_on_the_transfer_paid_meanwhile(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A duplicate payout tr_B is in the ledger transfer's group at Stripe (made
    by hand, say), and is reversed in the Dashboard. Its delivery finds the
    transfer still pending, and the daemon records its own payout tr_A before
    the delivery's change is made: the change must see tr_A and refuse."""
    world = endpoint.world
    transfer_id = world.create(f"order-{uuid.uuid4().hex[:12]}")
    duplicate = _stripe_transfer_for(world, transfer_id)
    reverse_outside(world, duplicate["id"])
    event_id, payload = event_of(stripe_transfer(world, duplicate["id"]))
    found = handler_module._find_transfer

    def daemon_pays_meanwhile(*args: Any) -> Any:
        named = found(*args)
        world.run_daemon_once()
        return named

    monkeypatch.setattr(handler_module, "_find_transfer", daemon_pays_meanwhile)
    with world.ledger() as ledger:
        answer = handle_delivery(ledger, payload, stripe_signature(payload, SECRET), SECRET)

    assert (answer.status, answer.outcome) == (200, "refused")
    payout = world.show(transfer_id).stripe_transfer_id
    assert payout not in (None, duplicate["id"])
    assert event_types(world, transfer_id) == ["Created", "PayoutSucceeded"]
    row = delivery_row(world, event_id)
    assert row is not None
    assert (row["outcome"], row["transfer_id"]) == ("refused", str(transfer_id))
    assert f"was paid out as {payout}, not {duplicate['id']}" in row["detail"]


def test_a_stripe_transfer_naming_no_ledger_transfer_is_ignored(endpoint: Endpoint) -> None:
    """One of the platform's other Stripe transfers: not the ledger's business,
    and nothing `ledger reconcile` should list."""
    world = endpoint.world
    _, paid = paid_transfer(world)
    foreign = {
        **paid,
        "id": f"tr_platformOwn{secrets.token_hex(6)}",
        "transfer_group": "ORDER_77",
        "metadata": {"order": "77"},
    }
    event_id, payload = event_of(foreign)

    assert endpoint.deliver(payload) == (200, {"id": event_id, "outcome": "ignored"})
    row = delivery_row(world, event_id)
    assert row is not None
    assert (row["outcome"], row["transfer_id"], row["detail"]) == (
        "ignored",
        None,
        "names no ledger transfer",
    )


def test_the_ledger_id_in_the_metadata_is_read_before_the_transfer_group(
    endpoint: Endpoint,
) -> None:
    """As `ledger reconcile` reads it: metadata.ledger_transfer_id is set only
    by the ledger; a transfer_group may be anyone's grouping."""
    world = endpoint.world
    transfer_id, paid = paid_transfer(world)
    other_id, _ = paid_transfer(world)
    reverse_outside(world, paid["id"], 400)
    grouped_elsewhere = {**stripe_transfer(world, paid["id"]), "transfer_group": str(other_id)}
    event_id, payload = event_of(grouped_elsewhere)

    assert endpoint.deliver(payload)[1]["outcome"] == "recorded"
    assert world.show(transfer_id).amount_reversed == 400
    assert event_types(world, other_id) == ["Created", "PayoutSucceeded"]
    row = delivery_row(world, event_id)
    assert row is not None and row["transfer_id"] == str(transfer_id)


def test_concurrent_deliveries_of_one_event_record_it_once_and_all_get_200(
    endpoint: Endpoint,
) -> None:
    world = endpoint.world
    transfer_id, paid = paid_transfer(world)
    reverse_outside(world, paid["id"])
    _, payload = event_of(stripe_transfer(world, paid["id"]))

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: endpoint.deliver(payload), range(4)))

    assert [status for status, _ in answers] == [200] * 4
    assert sorted(body["outcome"] for _, body in answers) == ["duplicate"] * 3 + ["recorded"]
    assert event_types(world, transfer_id).count("Reversed") == 1


def test_a_transfer_update_is_acted_on_only_when_it_shows_a_reversal(
    endpoint: Endpoint,
) -> None:
    world = endpoint.world
    transfer_id, paid = paid_transfer(world)
    described = event_of(
        stripe_transfer(world, paid["id"]),
        "transfer.updated",
        previous_attributes={"description": None},
    )[1]
    assert endpoint.deliver(described)[1]["outcome"] == "ignored"
    reverse_outside(world, paid["id"], 300)
    shown = event_of(
        stripe_transfer(world, paid["id"]),
        "transfer.updated",
        previous_attributes={"amount_reversed": 0},
    )[1]

    assert endpoint.deliver(shown)[1]["outcome"] == "recorded"
    assert world.show(transfer_id).amount_reversed == 300


def test_an_event_the_ledger_does_not_act_on_is_ignored(endpoint: Endpoint) -> None:
    _, paid = paid_transfer(endpoint.world)
    event_id, payload = event_of(paid, "transfer.created")

    assert endpoint.deliver(payload) == (200, {"id": event_id, "outcome": "ignored"})
    row = delivery_row(endpoint.world, event_id)
    assert row is not None and row["outcome"] == "ignored"


def test_the_server_refuses_to_start_without_a_signing_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "STRIPE_"))}
    env["LEDGER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'never-opened.db'}"

    done = subprocess.run(
        [str(LEDGER_SCRIPT), "webhook", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 2
    assert done.stderr.startswith("ledger: error: STRIPE_WEBHOOK_SECRET is not set")
    assert len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "never-opened.db").exists()


# ----- the plain function, in-process (as a marketplace mounts it) -----------------


def test_the_handler_is_a_plain_function_a_marketplace_can_call_in_process(
    endpoint: Endpoint,
) -> None:
    world = endpoint.world
    transfer_id, paid = paid_transfer(world)
    reverse_outside(world, paid["id"], 900)
    event_id, payload = event_of(stripe_transfer(world, paid["id"]))

    with world.ledger() as ledger:
        answer = handle_delivery(ledger, payload, stripe_signature(payload, SECRET), SECRET)
        again = handle_delivery(ledger, payload, stripe_signature(payload, SECRET), SECRET)
        unsigned = handle_delivery(ledger, payload, None, SECRET)

    assert (answer.status, answer.outcome, answer.content_type) == (
        200,
        "recorded",
        "application/json",
    )
    assert json.loads(answer.body) == {"id": event_id, "outcome": "recorded"}
    assert (again.status, again.outcome) == (200, "duplicate")
    assert (unsigned.status, unsigned.outcome) == (400, "bad_signature")
    assert world.show(transfer_id).amount_reversed == 900


def test_while_a_secret_is_rolled_a_delivery_signed_with_either_is_accepted(
    endpoint: Endpoint,
) -> None:
    """Stripe signs with the old and the new secret while an endpoint's secret
    is rolled; STRIPE_WEBHOOK_SECRET may hold both, comma-separated."""
    world = endpoint.world
    rolled = "whsec_theNewSecretAfterTheRoll"
    transfer_id, paid = paid_transfer(world)
    reverse_outside(world, paid["id"], 700)
    _, payload = event_of(stripe_transfer(world, paid["id"]))

    with world.ledger() as ledger:
        by_new = handle_delivery(
            ledger, payload, stripe_signature(payload, rolled), f"{SECRET}, {rolled}"
        )
        by_old = handle_delivery(
            ledger, payload, stripe_signature(payload, SECRET), [rolled, SECRET]
        )
        by_neither = handle_delivery(
            ledger, payload, stripe_signature(payload, "whsec_other"), [SECRET, rolled]
        )

    assert (by_new.status, by_new.outcome) == (200, "recorded")
    assert (by_old.status, by_old.outcome) == (200, "duplicate")
    assert (by_neither.status, by_neither.outcome) == (400, "bad_signature")
    assert rolled not in by_neither.body.decode() and SECRET not in by_neither.body.decode()
    assert world.show(transfer_id).amount_reversed == 700


@pytest.mark.parametrize("tolerance", [0, -1, 86_401, 10**20])
def test_the_handlers_tolerance_is_bounded(endpoint: Endpoint, tolerance: int) -> None:
    world = endpoint.world
    with world.ledger() as ledger, pytest.raises(InvalidInput, match="tolerance"):
        handle_delivery(ledger, b"{}", None, SECRET, tolerance_seconds=tolerance)


def test_the_handler_takes_the_python_apis_ledger_too(endpoint: Endpoint) -> None:
    """The README's marketplace code holds the object `open_ledger` returns."""
    world = endpoint.world
    transfer_id, paid = paid_transfer(world)
    reverse_outside(world, paid["id"], 600)
    event_id, payload = event_of(stripe_transfer(world, paid["id"]))

    with open_ledger(world.url) as ledger:
        answer = handle_delivery(ledger, payload, stripe_signature(payload, SECRET), SECRET)

    assert (answer.status, answer.outcome) == (200, "recorded")
    assert world.show(transfer_id).amount_reversed == 600
    row = delivery_row(world, event_id)
    assert row is not None and row["outcome"] == "recorded"


def test_a_delivery_the_ledger_cannot_deal_with_now_is_answered_500_and_saved_nowhere(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Stripe delivers it again later; the error's line names no secret even
    when the error does."""
    world = endpoint.world
    transfer_id, paid = paid_transfer(world)
    reverse_outside(world, paid["id"])
    event_id, payload = event_of(stripe_transfer(world, paid["id"]))

    def database_gone(*_: object) -> None:
        raise ConnectionError(f"server closed the connection (key {SECRET})")

    with world.ledger() as ledger:
        monkeypatch.setattr(deliveries, "previous", database_gone)
        answer = handle_delivery(ledger, payload, stripe_signature(payload, SECRET), SECRET)
        monkeypatch.undo()
        redelivered = handle_delivery(ledger, payload, stripe_signature(payload, SECRET), SECRET)

    assert (answer.status, answer.outcome) == (500, "error")
    assert SECRET not in answer.body.decode()
    assert event_id in caplog.text and "ConnectionError" in caplog.text
    assert SECRET not in caplog.text
    assert (redelivered.status, redelivered.outcome) == (200, "recorded")
    assert event_types(world, transfer_id).count("Reversed") == 1


def _a_daemon_dies_mid_payout(world: World, transfer_id: UUID) -> None:
    """What a daemon killed during its payout call leaves: the attempt begun
    (outcome unknown) under a claim that has run out."""
    with world.ledger() as ledger:
        work = WorkStore(ledger.db, "killed-daemon", claim_seconds=0)
        now = datetime.now(UTC)
        [claim] = work.claim_many([(transfer_id, "payout")], now)
        work.begin_attempt(claim, payout_cause(transfer_id), now)


def _stripe_transfer_for(world: World, transfer_id: UUID) -> dict[str, Any]:
    """A Stripe transfer made for a ledger transfer, as the payout manager makes
    it (transfer_group = the ledger id), without the ledger recording it."""
    request = urllib.request.Request(
        f"{world.sim.base_url}/v1/transfers",
        data=urllib.parse.urlencode(
            {
                "amount": 5000,
                "currency": "usd",
                "destination": "acct_1Seller",
                "transfer_group": str(transfer_id),
                "metadata[ledger_transfer_id]": str(transfer_id),
                "metadata[ledger_cause]": payout_cause(transfer_id),
            }
        ).encode(),
        headers={"Authorization": f"Bearer {world.api_key}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data
