"""A money-moving try is sent only while the work's claim outlives its
answer (`send_while`): after that another daemon may take the work over,
look the call up, find nothing and call under the next key, so a late try
would move the money twice. The deterministic simulation found this (a
daemon paused for a day between beginning its attempt and sending it).

The real stripe-python client over HTTP, against the simulator."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from ledger.bootstrap import build_daemon, work_store
from ledger.processing.daemon import DaemonOptions
from ledger.processing.ports import ClaimRanOut
from ledger.processing.work import WorkStore
from ledger.stripe.budget import RateBudget
from ledger.stripe.gateway import StripeGateway, StripeSettings
from ledger.stripe.simulator import SimulatorServer
from tests.system.world import API_KEY, new_world, running_simulator


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with running_simulator(api_key=API_KEY) as server:
        yield server


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
            daemon = build_daemon(
                ledger,
                world.stripe_settings(),
                world.policy(),
                DaemonOptions(concurrency=1),
                clock=clock,
                sleep=clock.sleep,
            )
            clock.work = daemon.work
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
