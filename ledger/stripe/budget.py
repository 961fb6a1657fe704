"""One rate budget for all daemons on a database: requests per second to
each Stripe endpoint and in total, kept under Stripe's limits so that the
platform's live charges are never the ones rate-limited.

Stripe allows 100 operations per second in live mode (25 in test mode) and
fewer on single endpoints (25 per second by default), and asks background
jobs to keep to a part of it. The budget is LEDGER_STRIPE_RATE per endpoint
(default 20) and LEDGER_STRIPE_RATE_TOTAL in all (default 80), for all the
daemons on one database together: each daemon takes its share, the budget
divided by the daemons alive (counted from the heartbeats at every beat).
Each share is a token bucket (a quarter of a second's worth of burst); a
request waits for its tokens. A 429 is back-pressure: the daemon that got
it pauses all its requests (Stripe's Retry-After, else a second) and halves
its share until the next beat (once per pause, however many 429s came); its
heartbeat tells the other daemons, which pause as long (migration 0016).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

DEFAULT_RATE: Final = 20.0
DEFAULT_TOTAL_RATE: Final = 80.0
PAUSE_AFTER_429_SECONDS: Final = 1.0
# A request waits in slices this long, so that a new share (the heartbeat's)
# or the end of a pause is seen while it waits.
WAIT_SLICE_SECONDS: Final = 0.25
BURST_SECONDS: Final = 0.25
# Waits shorter than this are rounding, not waits (float sums of tiny waits
# would otherwise never add up to a whole token).
_NEARLY_NOW: Final = 1e-6


@dataclass
class _Bucket:
    rate: float
    tokens: float
    at: float

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate * BURST_SECONDS)

    def refill(self, now: float) -> None:
        # At least one request's worth, however small a daemon's share.
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now


class RateBudget:
    def __init__(
        self,
        per_endpoint: float = DEFAULT_RATE,
        total: float = DEFAULT_TOTAL_RATE,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.per_endpoint = per_endpoint
        self.total = total
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._share = 1.0
        self._buckets: dict[str, _Bucket] = {}
        self._paused_until = 0.0
        self.waited_seconds = 0.0

    def share(self, daemons_alive: int) -> None:
        """This daemon's part of the budget: 1 / the daemons alive."""
        with self._lock:
            self._share = 1.0 / max(1, daemons_alive)
            for name, bucket in self._buckets.items():
                bucket.rate = self._rate(name)

    def _rate(self, name: str) -> float:
        return (self.total if name == "" else self.per_endpoint) * self._share

    def take(self, endpoint: str) -> None:
        """Wait until a request to `endpoint` fits the budget, then count it."""
        while True:
            with self._lock:
                now = self._clock()
                wait = self._paused_until - now
                if wait <= 0:
                    endpoint_bucket = self._bucket(endpoint, now)
                    total_bucket = self._bucket("", now)
                    short = max(
                        (1 - endpoint_bucket.tokens) / endpoint_bucket.rate,
                        (1 - total_bucket.tokens) / total_bucket.rate,
                    )
                    if short <= _NEARLY_NOW:
                        endpoint_bucket.tokens -= 1
                        total_bucket.tokens -= 1
                        return
                    wait = short
            wait = min(wait, WAIT_SLICE_SECONDS)
            self.waited_seconds += wait
            self._sleep(wait)

    def paused_for(self) -> float:
        """Seconds this daemon still pauses (after a 429), 0 when it does not."""
        with self._lock:
            return max(0.0, self._paused_until - self._clock())

    def pause(self, seconds: float) -> None:
        """Another daemon met a 429 (the heartbeat says): pause as long."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def rate_limited(self, retry_after: float | None) -> None:
        """Stripe answered 429: pause every request of this daemon, and halve
        its share until the heartbeat sets it again."""
        with self._lock:
            now = self._clock()
            already_paused = self._paused_until > now
            self._paused_until = max(
                self._paused_until, now + (retry_after or PAUSE_AFTER_429_SECONDS)
            )
            if already_paused:
                return
            self._share /= 2
            for name, bucket in self._buckets.items():
                bucket.rate = self._rate(name)

    def _bucket(self, name: str, now: float) -> _Bucket:
        bucket = self._buckets.get(name)
        if bucket is None:
            rate = self._rate(name)
            bucket = self._buckets[name] = _Bucket(rate=rate, tokens=0.0, at=now)
            bucket.tokens = bucket.capacity
        bucket.refill(now)
        return bucket
