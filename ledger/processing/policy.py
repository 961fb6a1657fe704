"""Retry policy: how many attempts, and how long to wait between them."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from ledger.config import env_number

DEFAULT_MAX_ATTEMPTS: Final = 8
DEFAULT_RETRY_BASE_SECONDS: Final = 30.0
DEFAULT_RETRY_MAX_SECONDS: Final = 6 * 3600.0
# The ranges the environment may set (ledger.config.env_number's rule).
MAX_ATTEMPTS_LIMIT: Final = 1000
MAX_DELAY_SECONDS: Final = 7 * 86400.0
# Waits for a condition outside the transfer (ports.Condition) spend no
# attempt. A 429 backs off from a second, doubling to half a minute (or as
# Stripe's Retry-After says); the platform's balance and a seller's account
# from a minute, doubling to an hour.
RATE_WAIT_SECONDS: Final = (1.0, 30.0)
CONDITION_WAIT_SECONDS: Final = (60.0, 3600.0)
# A seller whose account cannot receive transfers for this long: the payout is
# given up (permanently_failed, saying why). LEDGER_SELLER_WAIT_DAYS.
DEFAULT_SELLER_WAIT_DAYS: Final = 7.0


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_seconds: float = DEFAULT_RETRY_BASE_SECONDS
    max_seconds: float = DEFAULT_RETRY_MAX_SECONDS
    seller_wait: timedelta = timedelta(days=DEFAULT_SELLER_WAIT_DAYS)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> RetryPolicy:
        max_attempts = env_number(
            environ,
            "LEDGER_MAX_ATTEMPTS",
            DEFAULT_MAX_ATTEMPTS,
            minimum=1,
            maximum=MAX_ATTEMPTS_LIMIT,
            whole=True,
        )
        assert max_attempts is not None
        base = env_number(
            environ,
            "LEDGER_RETRY_BASE_SECONDS",
            DEFAULT_RETRY_BASE_SECONDS,
            minimum=0,
            maximum=MAX_DELAY_SECONDS,
        )
        ceiling = env_number(
            environ,
            "LEDGER_RETRY_MAX_SECONDS",
            DEFAULT_RETRY_MAX_SECONDS,
            minimum=0,
            maximum=MAX_DELAY_SECONDS,
        )
        seller_days = env_number(
            environ,
            "LEDGER_SELLER_WAIT_DAYS",
            DEFAULT_SELLER_WAIT_DAYS,
            minimum=0,
            maximum=365,
        )
        assert base is not None and ceiling is not None and seller_days is not None
        return cls(
            max_attempts=int(max_attempts),
            base_seconds=base,
            max_seconds=ceiling,
            seller_wait=timedelta(days=seller_days),
        )

    def exhausted(self, failed_attempts: int) -> bool:
        """True when this many failed attempts use up the budget."""
        return failed_attempts >= self.max_attempts

    def delay(self, failed_attempts: int, rng: random.Random | None = None) -> timedelta:
        """Exponential backoff with "equal jitter": half the step fixed, half
        random, so that transfers failing together do not retry in lockstep."""
        exponent = min(max(failed_attempts - 1, 0), 32)
        step = min(self.max_seconds, self.base_seconds * 2**exponent)
        jitter = (rng or random).uniform(0, step / 2)
        return timedelta(seconds=step / 2 + jitter)

    def wait(self, condition: str, waits: int, retry_after: float | None = None) -> timedelta:
        """How long work waits after its `waits`-th refusal in a row for
        `condition` (a ports.Condition value); Stripe's Retry-After wins."""
        if retry_after is not None:
            return timedelta(seconds=retry_after)
        first, ceiling = RATE_WAIT_SECONDS if condition == "rate_limit" else CONDITION_WAIT_SECONDS
        step = min(ceiling, first * 2 ** min(max(waits - 1, 0), 32))
        return timedelta(seconds=step / 2 + random.uniform(0, step / 2))  # noqa: S311

    def next_retry_at(self, now: datetime, failed_attempts: int) -> datetime:
        return now + self.delay(failed_attempts)
