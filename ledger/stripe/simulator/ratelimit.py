"""Stripe's rate limits: requests per second per endpoint, and operations per second in total.

Stripe's documented numbers: 25 operations/s in test mode and 100 in live mode, and a default
of 25 requests/s for each endpoint (each named API operation: creating a transfer and
retrieving one are two endpoints). The limiter runs before anything else of the request: a
limited request answers 429 ``rate_limit`` without executing and without touching its
idempotency key.

The window is a sliding second over the engine's clock: a request is let in when fewer than
the limit were let in during the second before it. Refused requests do not count, so a client
that backs off gets in as soon as the window has room.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

from ledger.errors import InvalidInput

WINDOW_SECONDS: Final = 1.0
_TOTAL: Final = "*"


@dataclass(frozen=True)
class RateLimit:
    """Requests per second let in; None: no limit of that kind."""

    per_endpoint: int | None
    total: int | None

    def __post_init__(self) -> None:
        for name, value in (("per-endpoint", self.per_endpoint), ("total", self.total)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise InvalidInput(f"the {name} rate limit must be a positive integer or none")

    @property
    def enabled(self) -> bool:
        return self.per_endpoint is not None or self.total is not None

    def describe(self) -> str:
        if not self.enabled:
            return "off"
        parts = [
            f"{self.per_endpoint}/s per endpoint" if self.per_endpoint is not None else "",
            f"{self.total}/s total" if self.total is not None else "",
        ]
        return ", ".join(part for part in parts if part)

    def with_overrides(self, per_endpoint: int | None, total: int | None) -> RateLimit:
        """This limit with the given numbers in place of its own; 0 lifts that limit."""
        return RateLimit(
            self.per_endpoint if per_endpoint is None else (per_endpoint or None),
            self.total if total is None else (total or None),
        )


TEST_MODE: Final = RateLimit(per_endpoint=25, total=25)
LIVE_MODE: Final = RateLimit(per_endpoint=25, total=100)
OFF: Final = RateLimit(per_endpoint=None, total=None)
PRESETS: Final = {"test": TEST_MODE, "live": LIVE_MODE, "off": OFF}


def rate_limit_preset(name: str) -> RateLimit:
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidInput(
            f"unknown rate limit {name!r}: expected one of {', '.join(PRESETS)}"
        ) from None


class RateLimiter:
    """Sliding one-second windows per (scope, endpoint) and per scope; not thread-safe (the
    engine holds its lock). A scope is one API key, as Stripe limits per account."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._windows: dict[tuple[str, str], deque[float]] = {}

    def admit(self, scope: str, endpoint: str, now: float) -> bool:
        """True, and the request counted, if it fits in both windows."""
        checks = [
            ((scope, _TOTAL), self.limit.total),
            ((scope, endpoint), self.limit.per_endpoint),
        ]
        windows = [(self._window(key, now), limit) for key, limit in checks if limit is not None]
        if any(len(window) >= limit for window, limit in windows):
            return False
        for window, _ in windows:
            window.append(now)
        return True

    def _window(self, key: tuple[str, str], now: float) -> deque[float]:
        window = self._windows.setdefault(key, deque())
        while window and window[0] <= now - WINDOW_SECONDS:
            window.popleft()
        return window
