# mypy: disable-error-code="no-untyped-call"
# (stripe-python's exception constructors carry no type hints.)
"""How the Stripe adapter classifies stripe-python's errors (DESIGN section 6).

These are stripe-python's own exception classes, built as its requestor builds
them from a response; the adapter's calls over real HTTP are tested against the
simulator in tests/system."""

from __future__ import annotations

import pytest
import stripe

from ledger.processing.ports import FailureKind
from ledger.stripe.gateway import (
    StripeSettings,
    classify,
    may_have_reached_stripe,
    should_try_again,
)

KEY = "sk_test_51SecretKeyThatMustNotLeak"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (stripe.AuthenticationError("Invalid API Key provided", http_status=401), "operator"),
        (stripe.PermissionError("lacks permission", http_status=403), "operator"),
        # Back-pressure: a wait that spends no attempt.
        (stripe.RateLimitError("Too many requests", http_status=429), "wait"),
        (
            stripe.InvalidRequestError(
                "Your destination account needs to have at least one of the following"
                " capabilities enabled: transfers, crypto_transfers, legacy_payments",
                None,
                "insufficient_capabilities_for_transfer",
                http_status=400,
            ),
            "wait",
        ),
        (
            stripe.InvalidRequestError(
                "Insufficient funds", None, "balance_insufficient", http_status=400
            ),
            "retry_later",
        ),
        (
            stripe.InvalidRequestError(
                "No such destination: 'acct_x'", "destination", "resource_missing", http_status=400
            ),
            "permanent",
        ),
        (
            stripe.InvalidRequestError(
                "Transfer tr_1 has already been fully reversed.", None, None, http_status=400
            ),
            "unknown",
        ),
        (
            stripe.InvalidRequestError(
                "Amount (900) is greater than unreversed amount on transfer (500)",
                "amount",
                None,
                http_status=400,
            ),
            # Reversed in part by someone since the ledger looked: ask again
            # for what is left, never fail the refund for good.
            "retry_later",
        ),
        (
            stripe.InvalidRequestError(
                "No such transfer: 'tr_x'", "id", "resource_missing", http_status=404
            ),
            "permanent",
        ),
        (
            stripe.InvalidRequestError(
                "Received unknown parameter: foo", "foo", "parameter_unknown", http_status=400
            ),
            "bug",
        ),
        (stripe.IdempotencyError("Keys for idempotent requests ...", http_status=400), "bug"),
        (stripe.APIError("Sorry, something went wrong", http_status=500), "unknown"),
        (stripe.APIError("another in-progress request", http_status=409), "unknown"),
        (stripe.APIConnectionError("Read timed out"), "unknown"),
        (stripe.CardError("declined", None, "card_declined", http_status=402), "permanent"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_each_stripe_answer_has_one_reaction(error: stripe.StripeError, kind: str) -> None:
    assert classify(error).kind == FailureKind(kind)


def test_the_api_key_is_scrubbed_from_every_message() -> None:
    error = stripe.AuthenticationError(f"Invalid API Key provided: {KEY}", http_status=401)
    failure = classify(error, KEY)
    assert KEY not in str(failure) and KEY not in failure.summary()
    assert "[redacted]" in str(failure)


def test_settings_never_show_the_key() -> None:
    settings = StripeSettings.from_env({"STRIPE_API_KEY": KEY})
    assert KEY not in repr(settings)


def test_settings_need_a_key() -> None:
    with pytest.raises(ValueError, match="STRIPE_API_KEY"):
        StripeSettings.from_env({})


@pytest.mark.parametrize(
    ("error", "reached"),
    [
        (stripe.APIConnectionError("connection dropped", should_retry=True), True),
        (stripe.APIError("internal error", http_status=500), True),
        (stripe.APIError("unavailable", http_status=503), True),
        (stripe.IdempotencyError("key in use", http_status=409), True),
        (stripe.RateLimitError("Too many requests", http_status=429), False),
        (stripe.InvalidRequestError("bad", "amount", "amount_too_large", http_status=400), False),
        (stripe.AuthenticationError("Invalid API Key provided", http_status=401), False),
    ],
)
def test_a_try_may_have_reached_stripe_after_a_connection_error_a_5xx_or_a_409(
    error: stripe.StripeError, reached: bool
) -> None:
    assert may_have_reached_stripe(error) is reached


@pytest.mark.parametrize(
    ("error", "again"),
    [
        (stripe.APIConnectionError("timed out", should_retry=True), True),
        (stripe.APIConnectionError("bad certificate", should_retry=False), False),
        (stripe.APIError("internal error", http_status=500), True),
        (
            stripe.APIError(
                "internal error", http_status=500, headers={"stripe-should-retry": "false"}
            ),
            False,
        ),
        (stripe.IdempotencyError("key in use", http_status=409), True),
        (stripe.RateLimitError("Too many requests", http_status=429), False),
        (
            stripe.RateLimitError(
                "lock timeout", http_status=429, headers={"stripe-should-retry": "true"}
            ),
            True,
        ),
        (stripe.InvalidRequestError("bad", "amount", None, http_status=400), False),
    ],
)
def test_a_call_is_tried_again_by_stripe_pythons_rules(
    error: stripe.StripeError, again: bool
) -> None:
    assert should_try_again(error) is again


def test_a_definite_answer_after_an_unknown_try_leaves_the_outcome_unknown() -> None:
    dropped = classify(stripe.APIConnectionError("connection dropped", should_retry=True))
    limited = classify(stripe.RateLimitError("Too many requests", http_status=429))
    assert limited.kind == FailureKind.WAIT
    combined = limited.after_unknown_tries([dropped])
    assert combined.kind == FailureKind.UNKNOWN
    assert "may have reached Stripe" in str(combined) and "429" in combined.summary()


def test_a_429_says_what_it_waits_for_and_honours_retry_after() -> None:
    limited = classify(
        stripe.RateLimitError("Too many requests", http_status=429, headers={"Retry-After": "3"})
    )
    assert (limited.kind, limited.condition, limited.retry_after) == (
        FailureKind.WAIT,
        "rate_limit",
        3.0,
    )
    absurd = classify(
        stripe.RateLimitError("Too many", http_status=429, headers={"Retry-After": "99999"})
    )
    assert absurd.retry_after is None
