"""Stripe's form-encoded parameters: decoding, and the checks Stripe makes before executing.

Everything here depends on the request alone, so its errors are answered before the request
begins executing and are never saved under an idempotency key.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

from ledger.stripe.simulator.api import StripeErrorResponse, invalid

DEFAULT_LIST_LIMIT: Final = 10
MAX_LIST_LIMIT: Final = 100
MAX_EVENT_TYPES: Final = 20

ACCOUNT_ID: Final = re.compile(r"acct_[A-Za-z0-9_]+")
CHARGE_ID: Final = re.compile(r"ch_[A-Za-z0-9_]+")
CURRENCY: Final = re.compile(r"[A-Za-z]{3}")
_FORM_KEY: Final = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_FORM_SUBKEY: Final = re.compile(r"\[([^\[\]]*)\]")

TRANSFER_CREATE_PARAMS: Final = frozenset(
    {
        "amount",
        "currency",
        "destination",
        "transfer_group",
        "description",
        "metadata",
        "source_transaction",
        "expand",
    }
)
REVERSAL_CREATE_PARAMS: Final = frozenset(
    {"amount", "description", "metadata", "refund_application_fee", "expand"}
)
TRANSFER_LIST_PARAMS: Final = frozenset(
    {
        "destination",
        "transfer_group",
        "created",
        "limit",
        "starting_after",
        "ending_before",
        "expand",
    }
)
REVERSAL_LIST_PARAMS: Final = frozenset({"limit", "starting_after", "ending_before", "expand"})
EVENT_LIST_PARAMS: Final = frozenset(
    {"type", "types", "created", "limit", "starting_after", "ending_before", "expand"}
)
RETRIEVE_PARAMS: Final = frozenset({"expand"})

# `created=T` compares for equality; `created[gte]=T` and friends bound it.
_CREATED_COMPARISONS: Final[dict[str, Callable[[int, int], bool]]] = {
    "": operator.eq,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def decode_form(raw: bytes | str, *, where: str = "body") -> dict[str, Any]:
    """``metadata[order]=1&amount=5&types[]=a`` ->
    ``{"metadata": {"order": "1"}, "amount": "5", "types": ["a"]}``.

    stripe-python sends arrays as ``types[0]=a``, which decodes to ``{"0": "a"}``;
    `string_list` accepts both shapes."""
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise invalid(f"The request {where} is not UTF-8") from None
    params: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        match = _FORM_KEY.fullmatch(key)
        if match is None:
            raise invalid(f"Invalid parameter name in the request {where}: {key!r}")
        parts = [match.group(1), *_FORM_SUBKEY.findall(match.group(2))]
        if "" in parts[:-1]:
            raise invalid(f"Invalid array in the request {where}: {key!r}", param=parts[0])
        target = params
        for part in parts[:-2]:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                raise _mixed_hash(parts[0])
            target = child
        if len(parts) > 1 and parts[-1] == "":
            items = target.setdefault(parts[-2], [])
            if not isinstance(items, list):
                raise _mixed_hash(parts[0])
            items.append(value)
            continue
        if len(parts) > 1:
            child = target.setdefault(parts[-2], {})
            if not isinstance(child, dict):
                raise _mixed_hash(parts[0])
            target = child
        if isinstance(target.get(parts[-1]), dict | list):
            raise _mixed_hash(parts[0])
        target[parts[-1]] = value
    return params


def _mixed_hash(name: str) -> StripeErrorResponse:
    return invalid(f"Invalid hash: {name} is given both as a value and as a hash", param=name)


def reject_unknown(params: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for name in params:
        if name not in allowed:
            raise invalid(
                f"Received unknown parameter: {name}"
                # Stripe's text, then what the simulator knows: a parameter Stripe has but
                # the simulator lacks must not look like a typo.
                f" (stripe-sim supports: {', '.join(sorted(allowed))})",
                param=name,
                code="parameter_unknown",
            )


def string(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"Invalid string: {name} must be a string, not a hash", param=name)
    return value


def required(params: Mapping[str, Any], name: str) -> str:
    value = string(params, name)
    if value is None or value == "":
        raise invalid(f"Missing required param: {name}.", param=name, code="parameter_missing")
    return value


def string_list(params: Mapping[str, Any], name: str) -> list[str] | None:
    """An array parameter, sent as ``name[0]=a&name[1]=b`` or ``name[]=a&name[]=b``."""
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, dict) and all(k.isdigit() for k in value):
        value = [value[k] for k in sorted(value, key=int)]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise invalid(f"Invalid array: {name} must be an array of strings", param=name)
    return value


def positive_integer(text: str, name: str) -> int:
    # Digits only: Stripe refuses "1e3", "+5" and " 5" alike.
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise invalid(
            f"Invalid positive integer: {text!r}", param=name, code="parameter_invalid_integer"
        )
    return int(text)


def metadata(params: Mapping[str, Any]) -> dict[str, str]:
    value = params.get("metadata")
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise invalid("Invalid hash: metadata must be a hash", param="metadata")
    found: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(item, str):
            raise invalid(f"Invalid metadata value for {key!r}: nested hashes", param="metadata")
        if len(key) > 40 or len(item) > 500:
            raise invalid(
                "Metadata keys are at most 40 characters and values at most 500",
                param=f"metadata[{key}]",
            )
        # On Stripe an empty value unsets the key.
        if item:
            found[key] = item
    if len(found) > 50:
        raise invalid("Metadata has at most 50 keys", param="metadata")
    return found


@dataclass(frozen=True)
class CreateTransfer:
    amount: int
    currency: str
    destination: str
    transfer_group: str | None
    description: str | None
    metadata: dict[str, str]
    # A charge whose funds pay the transfer: the platform's available balance is not used.
    source_transaction: str | None = None


@dataclass(frozen=True)
class CreateReversal:
    transfer_id: str
    amount: int | None
    metadata: dict[str, str]


def validate_transfer_create(params: Mapping[str, Any]) -> CreateTransfer:
    reject_unknown(params, TRANSFER_CREATE_PARAMS)
    amount = positive_integer(required(params, "amount"), "amount")
    currency = required(params, "currency")
    if not CURRENCY.fullmatch(currency):
        raise invalid(f"Invalid currency: {currency}.", param="currency")
    destination = required(params, "destination")
    if not ACCOUNT_ID.fullmatch(destination):
        raise invalid(
            f"Invalid destination: '{destination}' is not a connected account id (acct_...)",
            param="destination",
        )
    source = string(params, "source_transaction") or None
    if source is not None and not CHARGE_ID.fullmatch(source):
        raise invalid(f"No such charge: '{source}'", param="source_transaction")
    return CreateTransfer(
        amount=amount,
        currency=currency.lower(),
        destination=destination,
        transfer_group=string(params, "transfer_group") or None,
        description=string(params, "description") or None,
        metadata=metadata(params),
        source_transaction=source,
    )


def validate_reversal_create(transfer_id: str, params: Mapping[str, Any]) -> CreateReversal:
    reject_unknown(params, REVERSAL_CREATE_PARAMS)
    amount_text = string(params, "amount")
    amount = positive_integer(amount_text, "amount") if amount_text is not None else None
    string(params, "description")
    refund_fee = string(params, "refund_application_fee")
    if refund_fee is not None and refund_fee not in ("true", "false"):
        raise invalid(f"Invalid boolean: {refund_fee}", param="refund_application_fee")
    return CreateReversal(transfer_id=transfer_id, amount=amount, metadata=metadata(params))


def created_filter(params: Mapping[str, Any]) -> Callable[[int], bool]:
    """``created=T`` (exactly) or ``created[gte]=T`` and friends, as Stripe's list filters."""
    value = params.get("created")
    if value is None:
        return lambda created: True
    if isinstance(value, list):
        raise invalid("Invalid integer: created must not be an array", param="created")
    given = value if isinstance(value, dict) else {"": value}
    bounds: list[tuple[Callable[[int, int], bool], int]] = []
    for name, text in given.items():
        param = f"created[{name}]" if name else "created"
        if name not in _CREATED_COMPARISONS or (not name and isinstance(value, dict)):
            raise invalid(
                f"Received unknown parameter: {param}", param=param, code="parameter_unknown"
            )
        if not isinstance(text, str) or not text.isascii() or not text.isdigit():
            raise invalid(
                f"Invalid integer: {text!r}", param=param, code="parameter_invalid_integer"
            )
        bounds.append((_CREATED_COMPARISONS[name], int(text)))
    return lambda created: all(compare(created, bound) for compare, bound in bounds)


def list_limit(params: Mapping[str, Any]) -> int:
    text = string(params, "limit")
    if text is None:
        return DEFAULT_LIST_LIMIT
    limit = positive_integer(text, "limit")
    if limit > MAX_LIST_LIMIT:
        raise invalid(f"This value must be less than or equal to {MAX_LIST_LIMIT}.", param="limit")
    return limit
