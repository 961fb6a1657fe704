"""How the process managers answer each thing Stripe can say, on both databases.

Each test runs the real daemon (`--once`, in this process) against the
simulator over HTTP, and then checks the ledger AND Stripe's side: the number
of Stripe objects is the guarantee that matters."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
import stripe

from ledger.bootstrap import health_report, work_store
from ledger.domain import payout_cause
from ledger.errors import InvalidInput, TransitionRefused
from ledger.health import Thresholds
from ledger.importing import parse_lines
from ledger.processing.effects import OperatorProblem, idempotency_key
from tests.system.world import (
    API_KEY,
    World,
    ledger_matches_stripe,
    new_world,
    outcome_events,
    running_simulator,
)
from tests.waiting import wait_for


def test_a_pending_transfer_is_paid_out_once_with_the_ledger_ids_at_stripe(world: World) -> None:
    transfer_id = world.create("order-1", amount=1250)
    world.run_daemon_once()
    view = world.show(transfer_id)
    assert view.status == "completed"
    [made] = world.stripe_transfers(transfer_id)
    assert view.stripe_transfer_id == made["id"]
    assert made["amount"] == 1250 and made["currency"] == "usd"
    assert made["destination"] == "acct_1Seller"
    assert made["metadata"]["ledger_transfer_id"] == str(transfer_id)
    assert made["metadata"]["ledger_cause"] == payout_cause(transfer_id)
    [event] = [e for e in world.events(transfer_id) if type(e).__name__ == "PayoutSucceeded"]
    assert event.caused_by == payout_cause(transfer_id)
    assert event.actor == "system:payout-manager"
    # Running again finds nothing to do and calls Stripe no more.
    posts = len(world.money_posts())
    world.run_daemon_once()
    assert len(world.money_posts()) == posts


def test_the_seeds_smoke_probe_refund_to_reversal_pending_to_reversed(world: World) -> None:
    transfer_id = world.create("order-2", amount=9000)
    world.run_daemon_once()
    world.request_reversal(transfer_id, amount=4000)
    assert world.show(transfer_id).status == "reversal_pending"
    world.run_daemon_once()
    view = world.show(transfer_id)
    assert view.status == "reversed"
    assert view.amount_reversed == 4000
    [reversal] = world.stripe_reversals(view.stripe_transfer_id or "")
    assert reversal["amount"] == 4000
    assert reversal["metadata"]["ledger_transfer_id"] == str(transfer_id)
    events = {type(e).__name__: e for e in world.events(transfer_id)}
    reversed_event, requested = events["Reversed"], events["ReversalRequested"]
    assert reversed_event.caused_by == f"{transfer_id}:{requested.originator_version}"
    assert reversed_event.stripe_reversal_id == reversal["id"]


def test_a_stored_500_after_stripe_committed_is_looked_up_not_paid_again(world: World) -> None:
    world.simulator.add_fault("500_after", path="/v1/transfers")
    transfer_id = world.create("order-3")
    world.run_daemon_once()
    assert world.show(transfer_id).status == "completed"
    assert len(world.stripe_transfers(transfer_id)) == 1
    assert outcome_events(world, transfer_id) == ["PayoutSucceeded"]


def test_a_stored_500_for_a_reversal_is_looked_up_not_reversed_again(world: World) -> None:
    transfer_id = world.create("order-4", amount=3000)
    world.run_daemon_once()
    world.simulator.add_fault("500_after", path="/reversals")
    world.request_reversal(transfer_id)
    world.run_daemon_once()
    view = world.show(transfer_id)
    assert view.status == "reversed" and view.amount_reversed == 3000
    assert len(world.stripe_reversals(view.stripe_transfer_id or "")) == 1


def test_a_connection_dropped_after_commit_records_the_transfer_once(world: World) -> None:
    world.simulator.add_fault("drop_after", path="/v1/transfers")
    transfer_id = world.create("order-5")
    world.run_daemon_once()
    assert world.show(transfer_id).status == "completed"
    assert len(world.stripe_transfers(transfer_id)) == 1


def test_a_500_is_looked_up_then_sent_again_under_its_key_and_pays_once(world: World) -> None:
    """Stripe answers a 500 with `Stripe-Should-Retry: false`: the client does
    not try again at once. The ledger looks for what the call may have made,
    finds nothing, and later sends the same request under the SAME key: the
    first may still be running at Stripe (or on its way there), and Stripe
    answers one key once, where a new key would make a second transfer."""
    world.simulator.add_fault("500_before", path="/v1/transfers")
    transfer_id = world.create("order-6")
    world.run_daemon_once()
    view = world.show(transfer_id)
    assert view.status == "completed" and view.retry_count == 1
    assert len(world.stripe_transfers(transfer_id)) == 1
    keys = [r["idempotency_key"] for r in world.money_posts()]
    first = idempotency_key("payout", payout_cause(transfer_id), 1)
    assert keys == [first, first]
    # Between the two, the ledger looked for what the first may have made.
    gets = [r["path"] for r in world.simulator.state()["requests"] if r["method"] == "GET"]
    assert gets and all(path.startswith("/v1/transfers") for path in gets)


def test_a_lock_timeout_is_tried_again_under_the_same_key_and_pays_once(world: World) -> None:
    """A 429 with `Stripe-Should-Retry: true` (Stripe's lock timeout) is tried
    again at once by the client, under the same key."""
    world.simulator.add_fault("lock_timeout", path="/v1/transfers")
    transfer_id = world.create("order-6b")
    world.run_daemon_once()
    view = world.show(transfer_id)
    assert view.status == "completed" and view.retry_count == 0
    assert len(world.stripe_transfers(transfer_id)) == 1
    first = idempotency_key("payout", payout_cause(transfer_id), 1)
    assert [r["idempotency_key"] for r in world.money_posts()] == [first, first]


@pytest.mark.parametrize("unknown", ["drop_after"])
def test_a_payout_whose_first_try_may_have_reached_stripe_is_not_paid_twice_after_a_429(
    world: World, unknown: str
) -> None:
    """Red-team F1: the first try's outcome is unknown (the connection dropped
    after Stripe committed, or a 500), and the client's own retry under the
    same key meets a 429. The 429 says nothing about the first try: the call's
    outcome is unknown, and the ledger looks it up before any new key."""
    world.simulator.add_fault(unknown, path="/v1/transfers")
    world.simulator.add_fault("429", path="/v1/transfers")
    transfer_id = world.create("order-f1")
    world.run_daemon_once()
    world.run_daemon_once()
    made = world.stripe_transfers(transfer_id)
    assert len(made) == 1
    view = world.show(transfer_id)
    assert view.status == "completed" and view.stripe_transfer_id == made[0]["id"]
    assert ledger_matches_stripe(world, [transfer_id]) == []


@pytest.mark.parametrize("unknown", ["drop_after"])
def test_a_reversal_whose_first_try_may_have_reached_stripe_is_not_made_twice_after_a_429(
    world: World, unknown: str
) -> None:
    transfer_id = world.create("order-f1r", amount=6000)
    world.run_daemon_once()
    world.simulator.add_fault(unknown, path="/reversals")
    world.simulator.add_fault("429", path="/reversals")
    world.request_reversal(transfer_id, amount=2500)
    world.run_daemon_once()
    world.run_daemon_once()
    view = world.show(transfer_id)
    assert view.status == "reversed" and view.amount_reversed == 2500
    assert [r["amount"] for r in world.stripe_reversals(view.stripe_transfer_id or "")] == [2500]
    assert ledger_matches_stripe(world, [transfer_id]) == []


@pytest.mark.parametrize("kind", ["payout", "reversal"])
def test_a_same_key_resend_that_meets_a_429_leaves_the_outcome_unknown_and_no_new_key(
    world: World, kind: str
) -> None:
    """Found by review: the first attempt's outcome is unknown (a 500, which
    Stripe asks not to retry) and the look-up finds nothing; the next handling
    sends it again under ITS key, and that meets a 429. A 429 says nothing of
    the first request, which may still land: what was unknown stays unknown,
    the handling after looks up again and sends under the same key, never a
    new one (a new key is how a late first request would pay twice)."""
    path = "/v1/transfers" if kind == "payout" else "/reversals"
    transfer_id = world.create(f"order-429-{kind}", amount=4000)
    if kind == "reversal":
        world.run_daemon_once()
    world.simulator.add_fault("500_before", path=path)
    world.simulator.add_fault("429", path=path)
    if kind == "reversal":
        world.request_reversal(transfer_id)
    world.run_daemon_once()
    world.run_daemon_once()
    posts = [r for r in world.money_posts() if r["path"].endswith(path.rsplit("/", 1)[-1])]
    keys = {r["idempotency_key"] for r in posts}
    if kind == "payout":
        expected = idempotency_key("payout", payout_cause(transfer_id), 1)
    else:
        requested = next(
            e for e in world.events(transfer_id) if type(e).__name__ == "ReversalRequested"
        )
        expected = idempotency_key("reversal", f"{transfer_id}:{requested.originator_version}", 1)
    assert [r["status"] for r in posts] == [500, 429, 200]
    assert keys == {expected}
    view = world.show(transfer_id)
    assert view.status == ("completed" if kind == "payout" else "reversed")
    assert ledger_matches_stripe(world, [transfer_id]) == []


def test_random_faults_with_the_client_retrying_never_move_money_twice(
    migrated_url: str,
) -> None:
    """Red-team F1's random run: 22 transfers against 500_after, drop_after,
    429 and 500_before at 0.15/0.15/0.15/0.1 with seed 7 paid 3 of them twice."""
    faults = {"500_after": 0.15, "drop_after": 0.15, "429": 0.15, "500_before": 0.1}
    with running_simulator(faults=faults, seed=7) as faulty:
        world = new_world(migrated_url, faulty, max_attempts=20)
        transfer_ids = [world.create(f"order-r{n}", amount=1000 + n) for n in range(22)]
        for _ in range(20):
            world.run_daemon_once()
            if all(world.show(t).status == "completed" for t in transfer_ids):
                break
        assert [world.show(t).status for t in transfer_ids] == ["completed"] * 22
        assert ledger_matches_stripe(world, transfer_ids) == []


def _waiting(world: World, transfer_id: UUID, kind: str = "payout") -> dict[str, Any] | None:
    with world.ledger() as ledger, ledger.db.transaction(write=False) as cursor:
        cursor.execute(
            "SELECT waiting_for, waits, attempts, last_failure, not_before FROM stripe_work"
            " WHERE transfer_id = ? AND kind = ?",
            (ledger.db.to_db_id(transfer_id), kind),
        )
        row = cursor.fetchone()
    return dict(row) if row is not None else None


def _run_until(world: World, transfer_id: UUID, status: str) -> None:
    def reached() -> bool:
        world.run_daemon_once()
        return world.show(transfer_id).status == status

    wait_for(reached, timeout=30, what=f"transfer {status}")


def test_a_429_spends_no_attempt_the_payout_waits_then_is_made_once(world: World) -> None:
    """A 429 is back-pressure: no PayoutFailed, no retry counted, no
    permanently_failed however many come (more than LEDGER_MAX_ATTEMPTS
    here); the payout waits each out and is made once. `--once` waits out a
    rate limit's short back-off rather than leave the work for the next run."""
    world.max_attempts = 2
    limited = world.max_attempts + 1
    for _ in range(limited):
        world.simulator.add_fault("429", path="/v1/transfers")
    transfer_id = world.create("order-7")

    world.run_daemon_once()

    assert outcome_events(world, transfer_id) == ["PayoutSucceeded"]
    view = world.show(transfer_id)
    assert (view.status, view.retry_count) == ("completed", 0)
    assert len(world.stripe_transfers(transfer_id)) == 1
    posts = world.money_posts()
    assert [p["status"] for p in posts] == [429] * limited + [200]
    work = _waiting(world, transfer_id)
    assert work is not None and work["waiting_for"] is None


def test_a_platform_balance_too_short_makes_payouts_wait_until_a_top_up(world: World) -> None:
    world.simulator.set_platform_balance(1_000)
    small = world.create("order-small", amount=600)
    large = world.create("order-large", amount=5_000)

    world.run_daemon_once()

    assert world.show(small).status == "completed"
    assert world.show(large).status == "pending"
    # Said on the transfer itself, once, with no attempt counted.
    assert outcome_events(world, large) == ["PayoutWaiting"]
    view = world.show(large)
    assert view.retry_count == 0
    assert (view.last_error or "").startswith("waiting for the platform's Stripe balance")
    work = _waiting(world, large)
    assert work is not None and work["waiting_for"] == "platform_balance"
    assert "balance_insufficient" in (work["last_failure"] or "")
    report = health_of(world)
    waiting = next(c for c in report["checks"] if c["name"] == "waiting")
    assert waiting["ok"] is True and waiting["warning"] is True
    assert waiting["waiting"]["platform_balance:payout"]["count"] == 1
    # Still due work (a seller is not being paid: a person should top the
    # balance up), which goes overdue; the waiting check says why.
    strict = health_report(world.url, Thresholds(max_due_seconds=0)).as_json()
    due = next(c for c in strict["checks"] if c["name"] == "due work")
    assert due["ok"] is False and due["due"]["payout"] == 1

    world.simulator.top_up(10_000)
    _clear_wait(world, large)  # as if its backoff (a minute at first) had passed
    world.run_daemon_once()

    assert world.show(large).status == "completed"
    assert world.show(large).retry_count == 0
    assert len(world.stripe_transfers(large)) == 1


def test_a_seller_who_cannot_receive_transfers_yet_waits_and_is_paid_once_onboarded(
    world: World,
) -> None:
    seller = "acct_1nocapSeller"
    transfer_id = world.create("order-nocap", seller=seller)

    world.run_daemon_once()

    view = world.show(transfer_id)
    assert (view.status, view.retry_count) == ("pending", 0)
    assert (view.last_error or "").startswith(
        "waiting for the seller's Stripe account to be able to receive transfers"
    )
    with world.ledger() as ledger:
        assert work_store(ledger).parked() == []
    work = _waiting(world, transfer_id)
    assert work is not None and work["waiting_for"] == "seller_capability"
    assert "insufficient_capabilities_for_transfer" in (work["last_failure"] or "")

    world.simulator.set_account(seller, transfers="active")
    _clear_wait(world, transfer_id)
    world.run_daemon_once()

    assert world.show(transfer_id).status == "completed"


def test_a_seller_who_cannot_receive_transfers_for_too_long_is_given_up_saying_why(
    world: World,
) -> None:
    transfer_id = world.create("order-nocap-long", seller="acct_1nocapForever")
    world.run_daemon_once()
    with world.ledger() as ledger:
        ledger.db.execute_alone(
            "UPDATE stripe_work SET waiting_since = ?, not_before = NULL WHERE transfer_id = ?",
            (
                ledger.db.to_db_time(datetime.now(UTC) - timedelta(days=8)),
                ledger.db.to_db_id(transfer_id),
            ),
        )

    world.run_daemon_once()

    view = world.show(transfer_id)
    assert view.status == "permanently_failed"
    assert "could not receive transfers since" in (view.last_error or "")


def _clear_wait(world: World, transfer_id: UUID) -> None:
    with world.ledger() as ledger:
        ledger.db.execute_alone(
            "UPDATE stripe_work SET not_before = NULL WHERE transfer_id = ?",
            (ledger.db.to_db_id(transfer_id),),
        )


def health_of(world: World) -> dict[str, Any]:
    report = health_report(world.url, Thresholds())
    return report.as_json()


def test_a_response_slower_than_the_timeout_is_looked_up_and_recorded_once(
    migrated_url: str,
) -> None:
    with running_simulator(slow_ms=1500) as slow_sim:
        world = new_world(migrated_url, slow_sim, timeout_seconds=0.5)
        world.simulator.add_fault("slow", path="/v1/transfers")
        transfer_id = world.create("order-8")
        world.run_daemon_once()
        assert world.show(transfer_id).status == "completed"
        assert len(world.stripe_transfers(transfer_id)) == 1


def test_a_transfer_already_fully_reversed_at_stripe_is_recorded_as_reversed(
    world: World,
) -> None:
    transfer_id = world.create("order-9", amount=2500)
    world.run_daemon_once()
    stripe_id = world.show(transfer_id).stripe_transfer_id or ""
    world.simulator.reverse_outside(stripe_id)  # from the Dashboard, behind the ledger's back
    world.request_reversal(transfer_id)
    world.run_daemon_once()
    view = world.show(transfer_id)
    assert view.status == "reversed" and view.amount_reversed == 2500
    assert len(world.stripe_reversals(stripe_id)) == 1  # no over-reversal attempt succeeded


def test_a_reversal_costs_one_stripe_request_when_the_ledger_knows_what_is_left(
    world: World,
) -> None:
    # The bound of the daemon's reversal throughput (scripts/bench) is one
    # request per reversal: no look at the transfer before its first attempt.
    transfer_id = world.create("order-9a", amount=2500)
    world.run_daemon_once()
    before = len(world.simulator.state()["requests"])
    world.request_reversal(transfer_id, amount=1000)
    world.run_daemon_once()
    view = world.show(transfer_id)
    assert view.status == "reversed" and view.amount_reversed == 1000
    sent = world.simulator.state()["requests"][before:]
    assert [(r["method"], r["path"].rsplit("/", 1)[-1]) for r in sent] == [("POST", "reversals")]


def test_a_partial_reversal_made_outside_meanwhile_is_retried_for_what_is_left_at_stripe(
    world: World,
) -> None:
    transfer_id = world.create("order-9b", amount=2500)
    world.run_daemon_once()
    stripe_id = world.show(transfer_id).stripe_transfer_id or ""
    # From the Dashboard, its webhook not delivered: the ledger thinks 2,500 is left.
    world.simulator.reverse_outside(stripe_id, amount=1500)
    world.request_reversal(transfer_id)
    world.run_daemon_once()
    view = world.show(transfer_id)
    # The first attempt asked for 2,500 and was refused (nothing moved); the
    # retry looked at Stripe first and asked for the 1,000 left.
    assert outcome_events(world, transfer_id) == [
        "PayoutSucceeded",
        "ReversalAttemptFailed",
        "Reversed",
    ]
    assert "unreversed amount" in (world.events(transfer_id)[-2].error or "")
    assert view.status == "reversed" and view.amount_reversed == 1000
    ours = [r for r in world.stripe_reversals(stripe_id) if r["metadata"]]
    assert [r["amount"] for r in ours] == [1000]
    [at_stripe] = world.stripe_transfers(transfer_id)
    assert at_stripe["amount_reversed"] == 2500


def test_balance_insufficient_is_retried_until_max_attempts_then_permanently_failed(
    world: World,
) -> None:
    transfer_id = world.create("order-10", seller="acct_1nobalance", amount=700)
    world.run_daemon_once()
    world.request_reversal(transfer_id)
    world.run_daemon_once()
    view = world.show(transfer_id)
    assert view.status == "permanently_failed"
    assert "balance_insufficient" in (view.last_error or "")
    assert outcome_events(world, transfer_id) == [
        "PayoutSucceeded",
        "ReversalAttemptFailed",
        "ReversalAttemptFailed",
        "ReversalPermanentlyFailed",
    ]
    reversal_posts = [r for r in world.money_posts() if r["path"].endswith("/reversals")]
    assert len(reversal_posts) == world.max_attempts
    assert world.stripe_reversals(view.stripe_transfer_id or "") == []


def test_an_unknown_destination_is_permanently_failed_at_once(world: World) -> None:
    transfer_id = world.create("order-11", seller="acct_unknownSeller")
    world.run_daemon_once()
    view = world.show(transfer_id)
    assert view.status == "permanently_failed"
    assert "resource_missing" in (view.last_error or "")
    # The matrix has no pending -> permanently_failed: the refusal is a failed
    # attempt with no retry scheduled, then the give-up, in one append.
    assert outcome_events(world, transfer_id) == ["PayoutFailed", "PayoutPermanentlyFailed"]
    assert len(world.money_posts()) == 1


def test_a_rejected_api_key_stops_the_daemon_and_touches_no_transfer(
    migrated_url: str,
) -> None:
    with running_simulator(api_key="sk_test_theRightKey") as strict_sim:
        world = new_world(migrated_url, strict_sim)
        check_rejected_key_touches_nothing(world)


def check_rejected_key_touches_nothing(world: World) -> None:
    transfer_id = world.create("order-12")
    before = world.events(transfer_id)
    with pytest.raises(OperatorProblem, match="401"):
        world.run_daemon_once()
    view = world.show(transfer_id)
    assert view.status == "pending" and view.retry_count == 0
    assert len(world.events(transfer_id)) == len(before)
    assert world.stripe_transfers() == []


def test_the_same_key_with_other_parameters_parks_the_work_and_others_go_on(
    world: World,
) -> None:
    poisoned = world.create("order-13", amount=1000)
    healthy = world.create("order-14", amount=2000)
    # Another system already used the key the ledger will use, for another amount.
    client = stripe.StripeClient(API_KEY, base_addresses={"api": world.sim.base_url})
    client.v1.transfers.create(
        params={"amount": 1, "currency": "usd", "destination": "acct_1Other"},
        options={"idempotency_key": idempotency_key("payout", payout_cause(poisoned), 1)},
    )
    world.run_daemon_once()
    assert world.show(healthy).status == "completed"
    assert world.show(poisoned).status == "pending"
    with world.ledger() as ledger:
        parked = work_store(ledger).parked()
    assert [p.transfer_id for p in parked] == [poisoned]
    assert "same parameters" in (parked[0].last_failure or "")
    assert ledger_matches_stripe(world, [healthy]) == []

    # An operator looked into it and puts the work back: it is paid, once.
    with world.ledger() as ledger:
        assert work_store(ledger).unpark(poisoned, datetime.now(UTC)) == 1
    world.run_daemon_once()
    assert world.show(poisoned).status == "completed"
    assert ledger_matches_stripe(world, [healthy, poisoned]) == []


def test_while_a_payouts_outcome_is_unknown_the_ledger_never_gives_up_on_its_own(
    world: World,
) -> None:
    """Stripe committed the transfer but answered 500, and every look-up fails:
    the ledger cannot know, so it must not say "permanently failed" (which
    means "not paid"). It parks the work for a person; once Stripe answers
    again, `parked retry` finds the one transfer."""
    world.simulator.add_fault("500_after", path="/v1/transfers", method="POST")
    # One look-up per attempt (a 500 says `Stripe-Should-Retry: false`, so the
    # client tries each once): all of them fail.
    lookups = world.max_attempts
    world.simulator.add_fault("500_before", count=lookups, path="/v1/transfers", method="GET")
    transfer_id = world.create("order-unknown")
    world.run_daemon_once()
    view = world.show(transfer_id)
    assert view.status == "failed", "an unknown outcome must not end permanently_failed"
    with world.ledger() as ledger:
        [parked] = work_store(ledger).parked()
    assert parked.transfer_id == transfer_id
    assert "outcome unknown" in (parked.last_failure or "")
    assert len(world.stripe_transfers(transfer_id)) == 1
    assert len(payout_keys(world)) == 1

    with world.ledger() as ledger:
        work_store(ledger).unpark(transfer_id, datetime.now(UTC))
    world.run_daemon_once()
    assert world.show(transfer_id).status == "completed"
    assert ledger_matches_stripe(world, [transfer_id]) == []
    assert len(payout_keys(world)) == 1


def payout_keys(world: World) -> set[str]:
    """The idempotency keys of every payout request: one per call, whatever
    its tries."""
    return {r["idempotency_key"] for r in world.money_posts() if r["path"] == "/v1/transfers"}


def test_a_refund_of_a_transfer_paid_by_hand_is_refused_up_front(world: World) -> None:
    """Red-team F5: `set-status completed --reason "paid by hand"`, then a
    refund. There is no Stripe transfer to reverse; the refund must not end as
    `permanently_failed` ("never paid") with nothing for a person to act on:
    the refund handler hears it at once."""
    transfer_id = world.create("order-by-hand")
    with world.ledger() as ledger:
        ledger.set_status(transfer_id, "completed", actor="alice", reason="paid by hand")
        before = list(ledger.transfers.events.get(transfer_id))
        with pytest.raises(TransitionRefused, match="no Stripe transfer"):
            ledger.request_reversal(
                transfer_id, request_ref="refund-1", amount=None, reason="refund", actor="api"
            )
        assert list(ledger.transfers.events.get(transfer_id)) == before
    world.run_daemon_once()
    assert world.show(transfer_id).status == "completed"
    assert world.money_posts() == []


def test_a_reversal_an_admin_asks_of_a_transfer_paid_by_hand_is_parked_for_a_person(
    world: World,
) -> None:
    """A person may set such a transfer `reversal_pending`: the reversal
    manager finds nothing to reverse at Stripe and parks the work, saying
    why, instead of failing the transfer for good."""
    transfer_id = world.create("order-by-hand-2")
    with world.ledger() as ledger:
        ledger.set_status(transfer_id, "completed", actor="alice", reason="paid by hand")
        ledger.set_status(transfer_id, "reversal_pending", actor="alice", reason="chargeback")

    world.run_daemon_once()

    view = world.show(transfer_id)
    assert view.status == "reversal_pending" and view.retry_count == 0
    with world.ledger() as ledger:
        [parked] = work_store(ledger).parked()
    assert parked.transfer_id == transfer_id and parked.kind == "reversal"
    assert "no Stripe transfer to reverse" in (parked.last_failure or "")
    assert world.money_posts() == []


def test_a_look_up_that_finds_something_else_than_what_was_asked_parks_with_both_sides(
    world: World,
) -> None:
    """After a lost answer the payout is looked up by transfer_group. A 1,100
    transfer found there is not the 4,200 payout the ledger asked for: it is
    never recorded as the payout; the work is parked showing both sides, and
    nothing more is paid."""
    transfer_id = world.create("order-lookup", amount=4200)
    with world.ledger() as ledger:
        work = work_store(ledger)
        work.claim_seconds = 0  # as a killed daemon leaves it: claim run out
        now = datetime.now(UTC)
        [claim] = work.claim_many([(transfer_id, "payout")], now)
        work.begin_attempt(claim, payout_cause(transfer_id), now)
    client = stripe.StripeClient(API_KEY, base_addresses={"api": world.sim.base_url})
    client.v1.transfers.create(
        params={
            "amount": 1100,
            "currency": "usd",
            "destination": "acct_1Seller",
            "transfer_group": str(transfer_id),
            "metadata": {"ledger_transfer_id": str(transfer_id)},
        }
    )

    world.run_daemon_once()

    view = world.show(transfer_id)
    assert (view.status, view.stripe_transfer_id) == ("pending", None)
    with world.ledger() as ledger:
        [parked] = work_store(ledger).parked()
    assert parked.transfer_id == transfer_id
    failure = parked.last_failure or ""
    assert "NotWhatWasAsked" in failure and "4200 usd to acct_1Seller" in failure
    assert "1100 usd to acct_1Seller" in failure
    assert len(world.stripe_transfers(transfer_id)) == 1  # nothing more was paid


def test_a_transfer_refunded_item_by_item_gets_one_stripe_reversal_per_refund(
    world: World,
) -> None:
    """Three partial refunds of one order, each its own request and its own
    Stripe reversal, until the transfer is fully reversed; a refund above
    what is left is refused; an earlier refund retried appends nothing."""
    transfer_id = world.create("order-items", amount=5_000)
    world.run_daemon_once()

    def refund(ref: str, amount: int | None) -> bool:
        with world.ledger() as ledger:
            return ledger.request_reversal(
                transfer_id, request_ref=ref, amount=amount, reason="item refunded"
            )

    assert refund("refund-item-1", 1_000)
    world.run_daemon_once()
    assert refund("refund-item-2", 1_500)
    view = world.show(transfer_id)
    assert (view.status, view.amount_reversed) == ("reversed", 1_000)
    world.run_daemon_once()
    view = world.show(transfer_id)
    assert (view.status, view.amount_reversed, view.next_retry_at) == ("reversed", 2_500, None)

    assert refund("refund-item-1", 1_000) is False  # retried: nothing new
    with pytest.raises(InvalidInput, match="only 2500 to reverse"):
        refund("refund-item-3", 2_501)
    assert refund("refund-item-3", None)  # the rest
    world.run_daemon_once()

    view = world.show(transfer_id)
    assert (view.status, view.amount_reversed) == ("reversed", 5_000)
    stripe_id = view.stripe_transfer_id or ""
    assert [r["amount"] for r in world.stripe_reversals(stripe_id)] == [1_000, 1_500, 2_500]
    assert ledger_matches_stripe(world, [transfer_id]) == []


def test_a_payout_funded_by_a_charge_is_sent_with_it_and_never_waits_for_the_balance(
    world: World,
) -> None:
    """`source_transaction`: Stripe makes the transfer wait for that charge's
    funds instead of taking the platform's available balance, so a short
    balance does not hold it up."""
    world.simulator.set_platform_balance(0)
    with world.ledger() as ledger:
        transfer_id = ledger.service.create_transfer(
            seller="acct_1Seller",
            amount=4_200,
            currency="usd",
            order_ref="order-funded",
            actor="checkout",
            source_transaction="ch_1FundedByThisCharge",
        ).transfer.id

    world.run_daemon_once()

    assert world.show(transfer_id).status == "completed"
    [made] = world.stripe_transfers(transfer_id)
    assert made["source_transaction"] == "ch_1FundedByThisCharge"


def test_a_malformed_source_transaction_is_refused_and_nothing_is_appended(
    world: World,
) -> None:
    with world.ledger() as ledger, pytest.raises(InvalidInput, match="source_transaction"):
        ledger.service.create_transfer(
            seller="acct_1Seller",
            amount=100,
            currency="usd",
            order_ref="order-bad-source",
            actor="checkout",
            source_transaction="tr_notacharge",
        )
    with world.ledger() as ledger:
        assert ledger.list() == []


def test_an_imported_pending_transfer_keeps_the_charge_that_funds_it(world: World) -> None:
    world.simulator.set_platform_balance(0)
    transfer_id = UUID("7b4c9d2e-1f3a-4b5c-8d6e-9f0a1b2c3d4e")
    line = {
        "id": str(transfer_id),
        "seller_account_id": "acct_1Seller",
        "order_ref": "legacy-funded",
        "amount": 900,
        "currency": "usd",
        "status": "pending",
        "source_transaction": "ch_1LegacyCharge",
    }
    with world.ledger() as ledger:
        ledger.import_transfers(parse_lines([json.dumps(line)]))

    world.run_daemon_once()

    assert world.show(transfer_id).status == "completed"
    [made] = world.stripe_transfers(transfer_id)
    assert made["source_transaction"] == "ch_1LegacyCharge"
