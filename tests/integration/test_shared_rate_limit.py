"""A 429 slows every daemon on the database, not only the one that met it:
its heartbeat row says until when it pauses (migration 0016), and the other
daemons' heartbeats read it and pause as long; each also learns how many
daemons share the rate budget (both databases)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ledger.processing.heartbeat import Heartbeat
from tests.ledgers import Ledger


class Budget:
    def __init__(self, paused: float = 0.0) -> None:
        self.paused = paused
        self.shares: list[int] = []
        self.pauses: list[float] = []

    def share(self, daemons_alive: int) -> None:
        self.shares.append(daemons_alive)

    def paused_for(self) -> float:
        return self.paused

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)


def test_a_daemon_rate_limited_makes_the_others_pause_and_all_count_each_other(
    migrated_url: str,
) -> None:
    now = datetime.now(UTC)
    limited, other = Budget(paused=5.0), Budget()
    with Ledger.open(migrated_url) as ledger:
        a = Heartbeat(ledger.db, "host:1:a", 4, lambda: now, 2.0, peers=limited)
        b = Heartbeat(ledger.db, "host:2:b", 4, lambda: now, 2.0, peers=other)
        a.start()
        b.start()
        a._last = b._last = float("-inf")  # beat now, whatever the interval
        a.beat()
        b.beat()

    assert other.shares[-1] == 2 and limited.shares[-1] == 2
    assert len(other.pauses) == 1 and 4.9 <= other.pauses[0] <= 5.0


def test_a_pause_that_is_over_slows_nobody(migrated_url: str) -> None:
    now = datetime.now(UTC)
    later = now + timedelta(seconds=10)
    clock = [now]
    limited, other = Budget(paused=5.0), Budget()
    with Ledger.open(migrated_url) as ledger:
        a = Heartbeat(ledger.db, "host:1:a", 4, lambda: clock[0], 2.0, peers=limited)
        b = Heartbeat(ledger.db, "host:2:b", 4, lambda: clock[0], 2.0, peers=other)
        a.start()
        a._last = float("-inf")
        a.beat()
        clock[0] = later
        b.start()

    assert other.pauses == []
