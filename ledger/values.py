"""Validation of the values the ledger accepts: ids, sellers, currencies, amounts, text.

One set of rules, used by the aggregate, the CLI and the import reader alike.
Each validator returns the normalised value or raises InvalidInput with one
line that names the field and the offending value.

Text is checked for what both databases can store and any terminal can print:
no NUL (PostgreSQL's text cannot hold it), no other control or format
character (ESC, TAB, a line or paragraph separator, a bidirectional override:
terminal escape injection and spoofing), no lone surrogate (not encodable as
UTF-8: what a non-UTF-8 command-line argument decodes to), and a length limit
on every field.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Final
from uuid import UUID

from ledger.errors import InvalidInput
from ledger.matrix import STATUSES, is_known_status

MIN_AMOUNT: Final = 1
MAX_AMOUNT: Final = 999_999_999_999
_AMOUNT_DIGITS: Final = len(str(MAX_AMOUNT))
_SELLER_RE: Final = re.compile(r"acct_[A-Za-z0-9]+")
_CURRENCY_RE: Final = re.compile(r"[A-Za-z]{3}")
# Stripe's ids: letters, digits and underscores (tr_1Pa..., trr_...).
_STRIPE_ID_RE: Final = re.compile(r"[A-Za-z0-9_]+")

# Length limits, in characters. Stripe's ids are at most 255 characters, and
# Stripe keeps metadata values (where refs go) up to 500.
MAX_ID: Final = 255
MAX_REF: Final = 255
MAX_ACTOR: Final = 200
MAX_TEXT: Final = 500

# Unicode categories refused in stored text: control (Cc), format (Cf: zero
# width, bidirectional overrides), surrogate (Cs) and the line and paragraph
# separators (Zl, Zp).
_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# The same for ASCII text, the usual case, without a per-character lookup.
_ASCII_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def _show(value: object) -> str:
    # repr() escapes control characters and surrogates: safe on any terminal.
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def refused_character(text: str) -> str | None:
    """The first character of `text` the ledger refuses to store or print raw, if any."""
    if text.isascii():
        found = _ASCII_CONTROL.search(text)
        return found.group() if found else None
    for char in text:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            return char
    return None


def printable(text: str) -> str:
    """`text` with every refused character escaped (\\x1b, \\u2028): stored text
    written before these rules, or received from elsewhere, is never
    printed raw to a terminal."""
    if refused_character(text) is None:
        return text
    return "".join(
        char.encode("unicode_escape").decode("ascii")
        if unicodedata.category(char) in _REFUSED_CATEGORIES
        else char
        for char in text
    )


def clipped(text: str, limit: int = MAX_TEXT) -> str:
    """Text from outside the ledger's callers (Stripe's messages, an
    exception's) made storable: refused characters escaped, one line, at most
    `limit` characters. Never raises: what Stripe says must not stop the
    recording of what Stripe did."""
    safe = printable(" ".join(text.split())) or "(no message)"
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


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
    if isinstance(value, str) and len(value) <= MAX_ID and _SELLER_RE.fullmatch(value):
        return value
    raise InvalidInput(
        f"invalid seller {_show(value)}: expected a Stripe account id like acct_1A2b3C"
        f" (at most {MAX_ID} characters)"
    )


def stripe_id(value: object, field: str) -> str:
    """An id Stripe gave (tr_..., trr_...): letters, digits and underscores."""
    if isinstance(value, str) and len(value) <= MAX_ID and _STRIPE_ID_RE.fullmatch(value):
        return value
    raise InvalidInput(
        f"invalid {field} {_show(value)}: expected a Stripe id like tr_1A2b3C"
        f" (at most {MAX_ID} characters)"
    )


def source_transaction(value: object) -> str:
    """The charge a payout is funded by (`ch_...`, or a `py_...` payment):
    Stripe then makes the transfer wait for that charge's funds rather than
    take the platform's available balance."""
    if (
        isinstance(value, str)
        and value.startswith(("ch_", "py_"))
        and len(value) <= MAX_ID
        and _STRIPE_ID_RE.fullmatch(value)
    ):
        return value
    raise InvalidInput(
        f"invalid source_transaction {_show(value)}: expected a charge id like ch_1A2b3C"
        f" (at most {MAX_ID} characters)"
    )


def currency(value: object) -> str:
    if isinstance(value, str) and value.isascii() and _CURRENCY_RE.fullmatch(value):
        return value.lower()
    raise InvalidInput(f"invalid currency {_show(value)}: expected three letters like usd")


def amount(value: object, field: str = "amount") -> int:
    """An amount of minor units (cents), 1 to 999,999,999,999. Never a float."""
    typed = value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        # Bounded before int(): Python refuses to parse over 4,300 digits, and
        # anything longer than the maximum is out of range anyway. Leading
        # zeros are only zeros.
        digits = value.lstrip("0") or "0"
        value = int(digits) if len(digits) <= _AMOUNT_DIGITS else MAX_AMOUNT + 1
    if isinstance(value, int) and not isinstance(value, bool):
        if MIN_AMOUNT <= value <= MAX_AMOUNT:
            return value
        # The value as typed, never one derived from it.
        raise InvalidInput(
            f"invalid {field} {_show(typed)}: must be from {MIN_AMOUNT} to {MAX_AMOUNT:,}"
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


def text(value: object, field: str, max_length: int = MAX_TEXT) -> str:
    """Free text: non-blank, one line of printable characters, at most
    `max_length` characters once surrounding spaces are stripped."""
    if not isinstance(value, str):
        raise InvalidInput(f"invalid {field} {_show(value)}: expected text")
    stripped = value.strip()
    if not stripped:
        raise InvalidInput(f"invalid {field}: must not be empty")
    refused = refused_character(stripped)
    if refused is not None:
        raise InvalidInput(
            f"invalid {field} {_show(stripped)}: holds {refused!r}, which stored text may not"
            " (control and format characters, and bytes that are not UTF-8, are refused)"
        )
    if len(stripped) > max_length:
        raise InvalidInput(
            f"invalid {field}: {len(stripped):,} characters, at most {max_length} allowed"
        )
    return stripped


def order_ref(value: object, field: str = "order") -> str:
    return text(value, field, MAX_REF)


def request_ref(value: object, field: str = "request") -> str:
    return text(value, field, MAX_REF)


def actor(value: object) -> str:
    return text(value, "actor", MAX_ACTOR)


def reason(value: object) -> str:
    return text(value, "reason", MAX_TEXT)


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
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00:00+14:00 is in year 0 in UTC, 9999-12-31T23:59:59-14:00
        # in year 10000: neither exists for Python (nor for the ledger).
        raise InvalidInput(
            f"invalid {field} {_show(value)}: out of range (years 1 to 9999 in UTC)"
        ) from None


# ----- stored values, read back (not input: no refusal, only their one form) -----


def as_uuid(value: object) -> UUID:
    """A stored id (a UUID, or its text as SQLite and JSON keep it) as a UUID."""
    return value if isinstance(value, UUID) else UUID(str(value))


def iso(value: datetime) -> str:
    """A time as the ledger prints it everywhere: ISO 8601, UTC as `Z`."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
