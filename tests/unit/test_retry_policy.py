"""The retry policy: exponential backoff with jitter, bounded, from the environment."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from ledger.errors import InvalidInput
from ledger.processing.policy import RetryPolicy


def test_defaults_are_the_contracts() -> None:
    policy = RetryPolicy.from_env({})
    assert (policy.max_attempts, policy.base_seconds, policy.max_seconds) == (8, 30.0, 21600.0)


def test_each_failed_attempt_doubles_the_wait_half_of_it_random() -> None:
    policy = RetryPolicy(base_seconds=30, max_seconds=3600)
    rng = random.Random(1)
    for failed, step in [(1, 30), (2, 60), (3, 120), (4, 240)]:
        waits = [policy.delay(failed, rng) for _ in range(200)]
        assert all(timedelta(seconds=step / 2) <= w <= timedelta(seconds=step) for w in waits)
        assert len(set(waits)) > 100, "jitter spreads transfers that failed together"


def test_the_wait_never_exceeds_the_ceiling() -> None:
    policy = RetryPolicy(base_seconds=30, max_seconds=600)
    assert all(policy.delay(n) <= timedelta(seconds=600) for n in range(1, 200))


def test_attempts_are_exhausted_at_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.exhausted(n) for n in (1, 2, 3, 4)] == [False, False, True, True]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LEDGER_MAX_ATTEMPTS", "0"),
        ("LEDGER_MAX_ATTEMPTS", "2.5"),
        ("LEDGER_MAX_ATTEMPTS", "lots"),
        ("LEDGER_RETRY_BASE_SECONDS", "-1"),
        ("LEDGER_RETRY_MAX_SECONDS", "nan"),
    ],
)
def test_a_malformed_setting_is_refused_naming_it(name: str, value: str) -> None:
    with pytest.raises(InvalidInput, match=name):
        RetryPolicy.from_env({name: value})
