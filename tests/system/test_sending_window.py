"""A money-moving try is sent only while the work's claim outlives its
answer (`send_while`): after that another daemon may take the work over,
look the call up, find nothing and call under the next key, so a late try
would move the money twice. The deterministic simulation found this (a
daemon paused for a day between beginning its attempt and sending it).

The real stripe-python client over HTTP, against the simulator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ledger.bootstrap import build_daemon, work_store
from ledger.processing.daemon import DaemonOptions
from ledger.processing.effects import EFFECTS, PAYOUT, REVERSAL, idempotency_key
from ledger.processing.manager import SAME_KEY_WITHIN, STRIPE_FINISHES_WITHIN
from ledger.processing.ports import ClaimRanOut, FailureKind, StripeCallFailed
from ledger.processing.work import WorkStore
from ledger.stripe.budget import RateBudget
from ledger.stripe.gateway import StripeGateway, StripeSettings
from ledger.stripe.simulator import SimulatorServer
from tests.paying import unknown_outcome_attempt
from tests.system.world import API_KEY, new_world, running_simulator


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with running_simulator(api_key=API_KEY) as server:
        yield server


PAYOUT_EFFECT = EFFECTS[PAYOUT]
REVERSAL_EFFECT = EFFECTS[REVERSAL]


def _gateway(sim: SimulatorServer) -> StripeGateway:
    settings = StripeSettings(api_key=API_KEY, api_base=sim.base_url, timeout_seconds=2.0)
    return StripeGateway(settings, sleep=lambda seconds: None)


def _pay(gateway: StripeGateway, send_while: object) -> object:
    return gateway.create_transfer(
        amount=1_000,
        currency="usd",
        destination="acct_1Seller",
        transfer_group="group-1",
        metadata={"ledger_transfer_id": "group-1"},
        idempotency_key="ledger-payout-x-a1",
        send_while=send_while,  # type: ignore[arg-type]
    )


def _posts(sim: SimulatorServer) -> list[dict[str, object]]:
    return [r for r in sim.simulator.state()["requests"] if r["method"] == "POST"]


def test_a_try_whose_claim_has_run_out_is_never_sent(sim: SimulatorServer) -> None:
    with pytest.raises(ClaimRanOut) as ran_out:
        _pay(_gateway(sim), lambda: False)

    assert ran_out.value.reached is False
    assert _posts(sim) == []
    assert sim.simulator.state()["transfers"] == []


def test_a_retry_after_the_claim_ran_out_is_not_sent_and_says_the_first_may_have_reached(
    sim: SimulatorServer,
) -> None:
    """The first try's connection drops after Stripe made the transfer; by
    the retry the claim has run out: no second try, and the caller knows the
    outcome is unknown (the next holder of the work looks it up)."""
    sim.simulator.add_fault("drop_after", path="/v1/transfers")
    answers = iter([True, False])

    with pytest.raises(ClaimRanOut) as ran_out:
        _pay(_gateway(sim), lambda: next(answers))

    assert ran_out.value.reached is True
    assert len(_posts(sim)) == 1
    assert len(sim.simulator.state()["transfers"]) == 1


def test_while_the_claim_holds_every_try_is_sent_under_the_same_key(
    sim: SimulatorServer,
) -> None:
    sim.simulator.add_fault("drop_after", path="/v1/transfers")

    made = _pay(_gateway(sim), lambda: True)

    posts = _posts(sim)
    assert [p["idempotency_key"] for p in posts] == ["ledger-payout-x-a1"] * 2
    assert [t["id"] for t in sim.simulator.state()["transfers"]] == [made.id]  # type: ignore[attr-defined]


class _Clock:
    """The daemon's clock, moved on by its own retry sleeps; its heartbeat
    renews its claims throughout (alive, only slow), so only the key's age
    can stop the retry."""

    def __init__(self, jump: timedelta) -> None:
        self.now = datetime.now(UTC)
        self.jump = jump
        self.work: WorkStore | None = None

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        before = self.now
        self.now += self.jump
        if self.work is not None:
            self.work.renew(self.now, beating_since=before)


def _daemon(world: Any, ledger: Any, clock: _Clock) -> Any:
    daemon = build_daemon(
        ledger,
        world.stripe_settings(),
        world.policy(),
        DaemonOptions(concurrency=1),
        clock=clock,
        sleep=clock.sleep,
    )
    clock.work = daemon.work
    return daemon


def test_a_retry_more_than_an_hour_after_the_attempt_began_is_not_sent(
    migrated_url: str,
) -> None:
    """Found by the deterministic simulation: the first try's connection
    dropped after Stripe made the transfer, and the process then slept past
    a day before its retry; Stripe had forgotten the key and paid again. A
    try is now sent only within an hour of its attempt's start (Stripe keeps
    keys 24 h): the outcome is unknown, the next handling looks it up."""
    with running_simulator(api_key=API_KEY) as sim:
        world = new_world(migrated_url, sim)
        sim.simulator.add_fault("drop_after", path="/v1/transfers")
        transfer_id = world.create("order-paused-a-day")
        clock = _Clock(jump=timedelta(hours=2))
        with world.ledger(pool_size=3) as ledger:
            daemon = _daemon(world, ledger, clock)
            daemon.dispatch()
            claim = daemon.next_claim()
            assert claim is not None
            daemon.work_on(claim)

            state = work_store(ledger).state(transfer_id, "payout")
        assert state is not None and state.outcome_unknown
        assert len(_posts(sim)) == 1
        assert world.show(transfer_id).status == "pending"
        # The next handling finds Stripe's transfer and records it: paid once.
        world.run_daemon_once()
        assert world.show(transfer_id).status == "completed"
        assert len(world.stripe_transfers(transfer_id)) == 1


def test_a_try_that_waited_for_the_rate_budget_past_its_claim_is_not_sent(
    sim: SimulatorServer,
) -> None:
    """Found by review: the claim was checked, then the try waited for the
    rate budget (a 429's pause), then it was sent, however long the wait. The
    check now comes after the wait, right before sending."""
    now = [0.0]
    waited: list[float] = []

    def sleep(seconds: float) -> None:
        # The process sleeps through its pause; its claim runs out meanwhile.
        waited.append(seconds)
        now[0] += seconds

    budget = RateBudget(clock=lambda: now[0], sleep=sleep)
    budget.rate_limited(30.0)
    settings = StripeSettings(api_key=API_KEY, api_base=sim.base_url, timeout_seconds=2.0)
    gateway = StripeGateway(settings, sleep=lambda seconds: None, budget=budget)

    with pytest.raises(ClaimRanOut):
        _pay(gateway, lambda: not waited)

    assert waited  # it did wait for the budget
    assert _posts(sim) == []


class _LandsWhileItPauses:
    """The daemon's own gateway, with one thing happening after its first
    look-up: the earlier attempt's request, which was still running at Stripe
    when the look-up ran, lands there (as `land` makes it), while this
    handling pauses for the clock's jump, alive: its heartbeat renews its
    claim."""

    def __init__(self, gateway: Any, clock: _Clock, land: Callable[[], None]) -> None:
        self._gateway = gateway
        self._clock = clock
        self._land: Callable[[], None] | None = land

    def transfers_in_group(self, transfer_group: str) -> Any:
        found = self._gateway.transfers_in_group(transfer_group)
        if self._land is not None:
            self._land()
            self._land = None
            self._clock.sleep(0)  # the pause: the clock jumps, the claim is renewed
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gateway, name)


def _handle_once(daemon: Any) -> None:
    assert daemon.dispatch() == 1
    handling = daemon.next_claim()
    assert handling is not None
    daemon.work_on(handling)


@pytest.mark.parametrize(
    ("looks_up_after", "pauses_for"),
    [
        # Found by the deterministic simulation (a 20,000-seed sweep).
        (timedelta(minutes=1), timedelta(hours=25)),
        # The earlier attempt's last try may have been sent just inside its
        # hour: a look-up just after the hour may still miss it.
        (SAME_KEY_WITHIN + timedelta(minutes=5), timedelta(0)),
    ],
    ids=["paused-a-day-after-looking", "looked-just-after-the-hour"],
)
@pytest.mark.parametrize(
    "written_before_0014", [False, True], ids=["row-of-this-release", "row-from-before-0014"]
)
def test_a_look_up_made_while_the_earlier_request_may_still_run_proves_nothing(
    migrated_url: str, looks_up_after: timedelta, pauses_for: timedelta, written_before_0014: bool
) -> None:
    """A payout request timed out while Stripe was still executing it; the
    next handling looked the payout up: nothing yet. Found by the
    deterministic simulation: that handling then paused for a day before
    calling (alive, its claim renewed), took its day-old "nothing there" for
    proof, the earlier attempt being more than an hour old by then, and
    called under a new key; the earlier request had made its transfer
    meanwhile. Paid twice. A look-up now proves nothing unless it ran after
    every try of the earlier attempt had surely finished at Stripe (each is
    sent within SAME_KEY_WITHIN of the attempt's start, and Stripe is done
    with one within STRIPE_FINISHES_WITHIN): until then the work waits,
    sending nothing, and the next look-up finds the transfer and records it.

    `row-from-before-0014`: the earlier attempt's work row as a release
    before migration 0014 left it, its outcome unknown but no record of when
    the attempt began. Any look-up was proof for such a row (found by review):
    its last write now stands for the start, which errs late."""
    with running_simulator(api_key=API_KEY) as sim:
        world = new_world(migrated_url, sim)
        transfer_id = world.create("order-looked-up-too-early")
        clock = _Clock(jump=pauses_for)
        began = clock.now
        with world.ledger(pool_size=3) as ledger:
            cause = unknown_outcome_attempt(ledger, transfer_id, began)
            if written_before_0014:
                with ledger.db.transaction() as cursor:
                    cursor.execute("UPDATE stripe_work SET attempt_started_at = NULL")
            earlier_key = idempotency_key("payout", cause, 1)
            clock.now = began + looks_up_after
            daemon = _daemon(world, ledger, clock)
            gateway = daemon.manager.gateway
            transfer = ledger.transfers.get(transfer_id)

            def land() -> None:
                # The earlier request, under its own key, as the ledger sent it.
                PAYOUT_EFFECT.call(gateway, transfer, cause, earlier_key, lambda: True)

            daemon.manager.gateway = _LandsWhileItPauses(gateway, clock, land)
            _handle_once(daemon)
            assert len(world.stripe_transfers(transfer_id)) == 1  # landed; nothing after it
            assert [p["idempotency_key"] for p in world.money_posts()] == [earlier_key]
            assert world.show(transfer_id).status == "pending"

            # Not due again until a look-up can prove something: no look-up
            # after look-up meanwhile.
            proof_from = began + SAME_KEY_WITHIN + STRIPE_FINISHES_WITHIN
            if clock.now < proof_from:
                assert daemon.dispatch() == 0
                clock.now = proof_from
            # The next handling's look-up is proof: it finds the transfer.
            _handle_once(daemon)
        assert world.show(transfer_id).status == "completed"
        assert len(world.stripe_transfers(transfer_id)) == 1  # paid once


def test_a_look_up_made_once_every_earlier_try_has_finished_is_proof(migrated_url: str) -> None:
    """The other side: a look-up that ran after the earlier attempt's last try
    surely finished at Stripe, and found nothing, proves the attempt made
    nothing. The payout goes out at once, under the next attempt's key."""
    with running_simulator(api_key=API_KEY) as sim:
        world = new_world(migrated_url, sim)
        transfer_id = world.create("order-looked-up-late-enough")
        clock = _Clock(jump=timedelta(0))
        began = clock.now
        with world.ledger(pool_size=3) as ledger:
            cause = unknown_outcome_attempt(ledger, transfer_id, began)
            clock.now = began + SAME_KEY_WITHIN + STRIPE_FINISHES_WITHIN
            _handle_once(_daemon(world, ledger, clock))
        assert [p["idempotency_key"] for p in world.money_posts()] == [
            idempotency_key("payout", cause, 2)
        ]
        assert world.show(transfer_id).status == "completed"
        assert len(world.stripe_transfers(transfer_id)) == 1


def test_a_row_from_before_0014_counts_its_attempt_from_its_last_write(migrated_url: str) -> None:
    """A work row a release before migration 0014 left, its outcome unknown
    and no record of when its attempt began, written again after that
    attempt began (an old daemon's later claim, say): its last write stands
    for the start, so a look-up proves nothing until an hour and
    STRIPE_FINISHES_WITHIN after that write, later than after the real start
    (the safe side). Until then nothing is sent."""
    with running_simulator(api_key=API_KEY) as sim:
        world = new_world(migrated_url, sim)
        transfer_id = world.create("order-row-from-before-0014")
        clock = _Clock(jump=timedelta(0))
        began = clock.now
        last_write = began + timedelta(minutes=10)
        with world.ledger(pool_size=3) as ledger:
            cause = unknown_outcome_attempt(ledger, transfer_id, began)
            with ledger.db.transaction() as cursor:
                cursor.execute(
                    "UPDATE stripe_work SET attempt_started_at = NULL, updated_at = ?",
                    (ledger.db.to_db_time(last_write),),
                )
            # Proof, had the real start been known; not by the last write.
            clock.now = began + SAME_KEY_WITHIN + STRIPE_FINISHES_WITHIN + timedelta(minutes=1)
            daemon = _daemon(world, ledger, clock)
            _handle_once(daemon)
            assert world.money_posts() == []
            assert daemon.dispatch() == 0  # waits
            clock.now = last_write + SAME_KEY_WITHIN + STRIPE_FINISHES_WITHIN
            _handle_once(daemon)
        assert [p["idempotency_key"] for p in world.money_posts()] == [
            idempotency_key("payout", cause, 2)
        ]
        assert world.show(transfer_id).status == "completed"


class _RefusesOtherParametersWhileItRuns:
    """The daemon's own gateway, answering a reversal's same-key resend as
    Stripe might while the first request under the key still runs there:
    400, other parameters under this key (a reversal's resend asks for what
    is left at Stripe, so its parameters can differ). The first request
    lands right after the look-up that follows that answer."""

    def __init__(self, gateway: Any, land: Callable[[], None]) -> None:
        self._gateway = gateway
        self._land = land
        self._look_ups = 0

    def create_reversal(self, *_: Any, **__: Any) -> Any:
        raise StripeCallFailed(
            FailureKind.BUG,
            "idempotency_error: keys for idempotent requests can only be used with the same"
            " parameters they were first used with",
            http_status=400,
            key_spent=True,
        )

    def reversals_of(self, stripe_transfer: str) -> Any:
        found = self._gateway.reversals_of(stripe_transfer)
        self._look_ups += 1
        if self._look_ups == 2:
            self._land()
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gateway, name)


def test_other_parameters_under_a_reversals_key_prove_nothing_while_its_first_request_may_run(
    migrated_url: str,
) -> None:
    """Found by review: "other parameters under this key" was taken to mean
    that the first request under the key had finished, so a look-up finding
    nothing cleared the unknown outcome and the next attempt went out under
    a new key. A reversal's resend can differ from its first request; were
    Stripe to answer so while that request still runs, the money would be
    reversed twice. Now such an answer proves nothing before a look-up
    could: the work waits, spending no attempt, and the next look-up finds
    what the first request made."""
    with running_simulator(api_key=API_KEY) as sim:
        world = new_world(migrated_url, sim)
        transfer_id = world.create("order-other-parameters")
        world.run_daemon_once()
        world.request_reversal(transfer_id, amount=600)
        clock = _Clock(jump=timedelta(0))
        began = clock.now
        with world.ledger(pool_size=3) as ledger:
            cause = unknown_outcome_attempt(ledger, transfer_id, began, REVERSAL_EFFECT)
            earlier_key = idempotency_key(REVERSAL, cause, 1)
            clock.now = began + timedelta(minutes=1)
            daemon = _daemon(world, ledger, clock)
            gateway = daemon.manager.gateway
            transfer = ledger.transfers.get(transfer_id)

            def land() -> None:
                REVERSAL_EFFECT.call(gateway, transfer, cause, earlier_key, lambda: True)

            daemon.manager.gateway = _RefusesOtherParametersWhileItRuns(gateway, land)
            _handle_once(daemon)
            [stripe_transfer] = world.stripe_transfers(transfer_id)
            assert len(world.stripe_reversals(stripe_transfer["id"])) == 1  # the first landed
            assert world.show(transfer_id).retry_count == 0  # no attempt spent
            assert daemon.dispatch() == 0  # waits for a look-up that can prove something
            clock.now = began + SAME_KEY_WITHIN + STRIPE_FINISHES_WITHIN
            daemon.manager.gateway = gateway
            _handle_once(daemon)
        assert world.show(transfer_id).amount_reversed == 600
        assert len(world.stripe_reversals(stripe_transfer["id"])) == 1  # reversed once
