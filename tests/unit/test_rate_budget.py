"""The Stripe rate budget (ledger/stripe/budget.py) on a virtual clock: its
rate per endpoint and in total, each daemon's share, and a 429's pause."""

from __future__ import annotations

from ledger.stripe.budget import RateBudget


class VirtualTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _budget(per_endpoint: float = 20, total: float = 80) -> tuple[RateBudget, VirtualTime]:
    time = VirtualTime()
    return RateBudget(per_endpoint, total, clock=time.clock, sleep=time.sleep), time


def test_one_endpoint_is_held_to_its_rate_after_a_seconds_burst() -> None:
    budget, time = _budget(per_endpoint=20)
    for _ in range(20 + 100):
        budget.take("transfers.create")
    # 5 at once (a quarter second's burst), then 115 at 20/s.
    assert 5.6 <= time.now <= 5.9


def test_the_total_holds_across_endpoints() -> None:
    budget, time = _budget(per_endpoint=20, total=30)
    for _ in range(60):
        budget.take("transfers.create")
        budget.take("reversals.create")
    # 120 requests at 30/s in all, though each endpoint alone allows 20/s.
    assert 3.6 <= time.now <= 4.0


def test_each_daemon_takes_its_share() -> None:
    budget, time = _budget(per_endpoint=20)
    budget.share(4)  # four daemons alive: 5/s each
    for _ in range(1 + 50):
        budget.take("transfers.create")
    assert 9.9 <= time.now <= 10.1


def test_a_tiny_share_still_sends() -> None:
    budget, time = _budget(per_endpoint=1)
    budget.share(10)  # 0.1/s
    for _ in range(3):
        budget.take("transfers.create")
    assert 19.9 <= time.now <= 20.1


def test_a_429_pauses_every_request_and_halves_the_share() -> None:
    budget, time = _budget(per_endpoint=20)
    budget.take("transfers.create")
    budget.rate_limited(retry_after=3.0)
    budget.take("reversals.create")
    assert time.now >= 3.0
    start = time.now
    for _ in range(50):
        budget.take("reversals.create")
    # Half the share until the next heartbeat: 10/s.
    assert time.now - start >= 4.5
    # Many 429s in one pause halve it once; the heartbeat sets it again.
    for _ in range(20):
        budget.rate_limited(retry_after=None)
    budget.share(1)
    start = time.now
    for _ in range(20):
        budget.take("reversals.create")
    assert time.now - start <= 2.1
