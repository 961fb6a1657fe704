# mypy: disable-error-code="no-untyped-call"
# (stripe-python's exception constructors carry no type hints.)
"""How the Stripe adapter classifies stripe-python's errors (DESIGN section 6).

These are stripe-python's own exception classes, built as its requestor builds
them from a response; the adapter's calls over real HTTP are tested against the
simulator in tests/process."""

from __future__ import annotations

import pytest
import stripe

from ledger.processing.ports import FailureKind
from ledger.stripe.gateway import StripeSettings, classify

KEY = "sk_test_51SecretKeyThatMustNotLeak"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (stripe.AuthenticationError("Invalid API Key provided", http_status=401), "operator"),
        (stripe.PermissionError("lacks permission", http_status=403), "operator"),
        (stripe.RateLimitError("Too many requests", http_status=429), "retry_later"),
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
                "Amount (900) is greater than unreversed amount", "amount", None, http_status=400
            ),
            "permanent",
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
