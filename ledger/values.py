"""Validation of the values the ledger accepts: ids, sellers, currencies, amounts.

One set of rules, used by the aggregate, the CLI and the import reader alike.
Each validator returns the normalised value or raises InvalidInput with one
line that names the field and the offending value.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final
from uuid import UUID

from ledger.errors import InvalidInput
from ledger.matrix import STATUSES, is_known_status

MIN_AMOUNT: Final = 1
MAX_AMOUNT: Final = 999_999_999_999
_SELLER_RE: Final = re.compile(r"acct_[A-Za-z0-9]+")
_CURRENCY_RE: Final = re.compile(r"[A-Za-z]{3}")
MAX_TEXT: Final = 500


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def transfer_id(value: object) -> UUID:
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            # Canonical hyphenated form only: "urn:uuid:" prefixes and braces
            # are accepted by UUID() but are not transfer ids users write.
            parsed = UUID(value)
        except ValueError:
            pass
        else:
            if str(parsed) == value.lower():
                return parsed
    raise InvalidInput(f"invalid transfer id {_show(value)}: expected a UUID")


def seller_account_id(value: object) -> str:
    if isinstance(value, str) and _SELLER_RE.fullmatch(value):
        return value
    raise InvalidInput(
        f"invalid seller {_show(value)}: expected a Stripe account id like acct_1A2b3C"
    )


def currency(value: object) -> str:
    if isinstance(value, str) and value.isascii() and _CURRENCY_RE.fullmatch(value):
        return value.lower()
    raise InvalidInput(f"invalid currency {_show(value)}: expected three letters like usd")


def amount(value: object, field: str = "amount") -> int:
    """An amount of minor units (cents), 1 to 999,999,999,999. Never a float."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        # Bounded before int(): Python refuses to parse over 4,300 digits, and
        # anything past 15 is out of range anyway.
        value = int(value) if len(value) <= 15 else MAX_AMOUNT + 1
    if isinstance(value, int) and not isinstance(value, bool):
        if MIN_AMOUNT <= value <= MAX_AMOUNT:
            return value
        raise InvalidInput(
            f"invalid {field} {_show(value)}: must be from {MIN_AMOUNT} to {MAX_AMOUNT:,}"
            " minor units"
        )
    raise InvalidInput(f"invalid {field} {_show(value)}: expected a whole number of minor units")


def non_negative_int(value: object, field: str, maximum: int = MAX_AMOUNT) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum:
        return value
    raise InvalidInput(f"invalid {field} {_show(value)}: expected a whole number from 0")


def status(value: object) -> str:
    if isinstance(value, str) and is_known_status(value):
        return value
    raise InvalidInput(f"invalid status {_show(value)}: expected one of {', '.join(STATUSES)}")


def text(value: object, field: str) -> str:
    """Free text (order refs, reasons, actors): non-blank, one line, bounded."""
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            raise InvalidInput(f"invalid {field}: must not be empty")
        if len(stripped) > MAX_TEXT or "\n" in stripped or "\r" in stripped:
            raise InvalidInput(
                f"invalid {field}: must be one line of at most {MAX_TEXT} characters"
            )
        return stripped
    raise InvalidInput(f"invalid {field} {_show(value)}: expected text")


def timestamp(value: object, field: str) -> datetime:
    """An aware datetime, or an ISO 8601 string with an offset; normalised to UTC."""
    parsed: datetime | None = None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InvalidInput(
            f"invalid {field} {_show(value)}: expected an ISO 8601 time with a UTC offset"
        )
    return parsed.astimezone(UTC)
