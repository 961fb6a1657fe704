"""The values the ledger accepts: one set of rules for the aggregate, the CLI and the import.

A refusal is an InvalidInput whose message is one line naming the field, so that the
CLI can print it as is and an operator sees which value was wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

import pytest

from ledger import values
from ledger.errors import InvalidInput

CANONICAL_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def refusal_of(validator: Callable[[object], object], value: object) -> str:
    with pytest.raises(InvalidInput) as refused:
        validator(value)
    message = str(refused.value)
    assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
    return message


# ----- amounts --------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "amount"),
    [
        (1, 1),
        (999_999_999_999, 999_999_999_999),
        ("12", 12),
        ("0012", 12),
    ],
)
def test_an_amount_is_a_whole_number_of_minor_units_up_to_a_trillion_minus_one(
    given: object, amount: int
) -> None:
    accepted = values.amount(given)

    assert accepted == amount
    assert type(accepted) is int


@pytest.mark.parametrize(
    "given",
    [
        pytest.param(0, id="zero"),
        pytest.param(-1, id="negative"),
        pytest.param(1_000_000_000_000, id="a trillion"),
        pytest.param("12.5", id="decimal text"),
        pytest.param("1e3", id="exponent text"),
        pytest.param(12.0, id="a float, even a whole one"),
        pytest.param(True, id="a bool"),
        pytest.param("", id="empty text"),
        pytest.param(" 12", id="padded text"),
        pytest.param("-5", id="negative text"),
        pytest.param("\u0663", id="non-ASCII digit"),
        pytest.param(None, id="nothing"),
    ],
)
def test_an_amount_that_is_not_whole_minor_units_in_range_is_refused(given: object) -> None:
    message = refusal_of(values.amount, given)

    assert message.startswith("invalid amount")


def test_an_amount_refusal_names_the_field_it_was_given_for() -> None:
    message = refusal_of(lambda v: values.amount(v, field="reversal amount"), 0)

    assert message.startswith("invalid reversal amount")


def test_an_absurdly_long_amount_is_refused_as_an_invalid_amount() -> None:
    message = refusal_of(values.amount, "9" * 5_000)

    assert message.startswith("invalid amount")


# ----- currencies -------------------------------------------------------------


@pytest.mark.parametrize(("given", "currency"), [("usd", "usd"), ("USD", "usd"), ("eUr", "eur")])
def test_a_currency_is_three_letters_kept_in_lower_case(given: str, currency: str) -> None:
    assert values.currency(given) == currency


@pytest.mark.parametrize("given", ["us", "usdd", "u$d", "\u00fcsd", "", " usd", "usd\n", 840])
def test_a_currency_that_is_not_three_ascii_letters_is_refused(given: object) -> None:
    message = refusal_of(values.currency, given)

    assert message.startswith("invalid currency")


# ----- sellers ------------------------------------------------------------------


@pytest.mark.parametrize("given", ["acct_1", "acct_1A2b3C"])
def test_a_seller_is_a_stripe_account_id(given: str) -> None:
    assert values.seller_account_id(given) == given


@pytest.mark.parametrize(
    "given", ["acct_", "ACCT_1", "acct_1 ", " acct_1", "bob", "acct_1\n", None]
)
def test_a_seller_that_is_not_a_stripe_account_id_is_refused(given: object) -> None:
    message = refusal_of(values.seller_account_id, given)

    assert message.startswith("invalid seller")


# ----- transfer ids ---------------------------------------------------------------


def test_a_transfer_id_is_a_canonical_uuid() -> None:
    assert values.transfer_id(CANONICAL_ID) == UUID(CANONICAL_ID)


def test_a_transfer_id_may_be_written_in_upper_case() -> None:
    assert values.transfer_id(CANONICAL_ID.upper()) == UUID(CANONICAL_ID)


def test_a_transfer_id_that_is_already_a_uuid_is_kept() -> None:
    assert values.transfer_id(UUID(CANONICAL_ID)) == UUID(CANONICAL_ID)


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("123", id="a number"),
        pytest.param("{" + CANONICAL_ID + "}", id="braces"),
        pytest.param("urn:uuid:" + CANONICAL_ID, id="urn"),
        pytest.param(CANONICAL_ID.replace("-", ""), id="no hyphens"),
        pytest.param(" " + CANONICAL_ID, id="padded"),
        pytest.param("", id="empty"),
        pytest.param(123, id="an int"),
    ],
)
def test_a_transfer_id_in_any_other_form_is_refused(given: object) -> None:
    message = refusal_of(values.transfer_id, given)

    assert message.startswith("invalid transfer id")


# ----- statuses ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    ["pending", "completed", "failed", "reversal_pending", "reversed", "permanently_failed"],
)
def test_each_of_the_six_statuses_is_a_status(given: str) -> None:
    assert values.status(given) == given


@pytest.mark.parametrize(
    "given", ["Completed", "reversal-pending", "", " pending", "pending\n", "bogus", None]
)
def test_anything_else_is_not_a_status(given: object) -> None:
    message = refusal_of(values.status, given)

    assert message.startswith("invalid status")
    assert "reversal_pending" in message, "the refusal lists the statuses there are"


# ----- free text -----------------------------------------------------------------------


def test_free_text_is_trimmed() -> None:
    assert values.text("  fraud  ", "reason") == "fraud"


@pytest.mark.parametrize("given", ["", "   ", "two\nlines", "x" * 501, None])
def test_free_text_that_is_blank_multi_line_or_too_long_is_refused(given: object) -> None:
    message = refusal_of(lambda v: values.text(v, "reason"), given)

    assert message.startswith("invalid reason")
