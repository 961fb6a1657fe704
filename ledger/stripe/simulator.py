"""stripe-sim: a local Stripe-compatible server for transfers and transfer reversals.

Developers try the ledger's daemon without a Stripe account, and tests and benchmarks drive
it over real HTTP with the real stripe-python client::

    stripe.StripeClient(key, base_addresses={"api": "http://127.0.0.1:12111"})

Endpoints (Stripe API v1 shapes, form-encoded bodies, JSON answers, a ``Request-Id`` header on
every answer): ``POST``/``GET /v1/transfers``, ``GET /v1/transfers/{id}``,
``POST``/``GET /v1/transfers/{id}/reversals`` and ``GET /v1/transfers/{id}/reversals/{rid}``.
Lists are newest first with ``limit`` (default 10, at most 100), ``starting_after`` and
``ending_before``; ``GET /v1/transfers`` filters on ``destination``, ``transfer_group`` and
``created`` (a Unix time, or ``created[gt|gte|lt|lte]``).
Any other ``/v1`` address answers 404 "Unrecognized request URL".

Conventions, in the spirit of Stripe's magic test values:

- API keys come as ``Authorization: Bearer KEY`` (HTTP Basic with the key as the user name
  works too). No key: 401. Without ``--api-key`` any key is accepted; with it, any other key
  is 401 with the key masked to its last four characters, as Stripe does; the full key is never
  printed, logged or returned. Keys starting with ``rk_`` (restricted keys) answer 403
  ``permission_error``, as a restricted key lacking the permission does.
- Every ``acct_...`` id is a connected account, except ids containing ``unknown``: a transfer
  to one answers 400 ``resource_missing`` on ``destination``. Accounts whose id contains
  ``nobalance`` have no funds to take a reversal from: 400 ``balance_insufficient``.
  ``POST /_sim/accounts`` overrides both for any account.
- The platform balance is unlimited unless ``--platform-balance`` is given; transfers take
  from it and reversals give back. A transfer larger than what is left answers 400
  ``balance_insufficient``.
- A reversal of a transfer that is already fully reversed answers 400
  ``invalid_request_error`` with no code and the message
  "Transfer tr_x has already been fully reversed.", as Stripe does.
- Errors that depend on the request alone (missing or malformed parameters) are answered
  before executing and are not saved under the idempotency key; errors that depend on state
  (unknown destination or transfer, ``balance_insufficient``, a reversal larger than what is
  left, already fully reversed) come from executing and are saved, as on Stripe.

Idempotency follows Stripe's v1 rules: keys are scoped per API key; the first request that
begins executing saves its status and body, which later requests with the key get back
(``Idempotent-Replayed: true``), 500s included; the same key with other parameters answers
400 ``idempotency_error``; a key whose request is still executing answers 409. Saved keys
expire after a day (``POST /_sim/expire-idempotency-keys`` expires them all at once).

Latency and faults. ``--latency-ms`` delays every ``/v1`` request; a money-moving POST spends
it while executing, with its idempotency key held. Faults hit money-moving POSTs (create a
transfer, create a reversal):

- ``500_before``: 500 ``api_error``; nothing executed, nothing saved.
- ``429``: 429 rate limit; nothing executed, nothing saved, no ``Stripe-Should-Retry``.
- ``500_after``: executes and commits, saves a 500 ``api_error`` under the key, answers 500.
- ``drop_after``: executes, commits, saves the success, closes the connection unanswered.
- ``slow``: executes, commits, saves the success, then waits ``--slow-ms`` before answering.

Each money-moving POST draws once from ``random.Random(seed)`` with the ``--faults``
probabilities, so the same seed and the same requests give the same faults. Scripted faults
(``POST /_sim/faults``) form a FIFO queue consumed before any random draw, and may target any
method and path. The three "after" faults only hit a request that freshly succeeds: a replay,
a conflict or an error answer is left alone, and a scripted entry waits for the next match.

Control, for tests, under ``/_sim`` with no key: ``GET /_sim/state``, ``POST /_sim/faults``,
``/_sim/reset``, ``/_sim/expire-idempotency-keys``, ``/_sim/accounts``,
``/_sim/platform-balance``, ``/_sim/reverse`` (a reversal made outside the ledger, as from
the Dashboard), and ``POST /_sim/transfers/{id}`` with any of ``{"amount", "currency",
"destination", "created"}`` (a stored transfer edited in place: a Stripe that drifted from the
ledger, or a transfer made earlier). ``StripeSimulator`` offers the same in-process.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import json
import operator
import os
import random
import re
import secrets
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, TextIO
from urllib.parse import parse_qsl, unquote, urlsplit

from ledger.errors import InvalidInput, LedgerError
from ledger.signals import stop_on_signals

DESCRIPTION: Final = (
    "Local Stripe-compatible simulator on 127.0.0.1 for trying the daemon without a Stripe "
    "account: transfers and transfer reversals (API v1 shapes) with Stripe's idempotency "
    "semantics, and injectable latency and faults. Point the ledger at it with "
    "STRIPE_API_BASE. Conventions: any acct_ id is a connected account except ids containing "
    "'unknown' (400 resource_missing); ids containing 'nobalance' cannot fund reversals "
    "(400 balance_insufficient); keys starting with rk_ get 403; without --api-key any key is "
    "accepted. Faults (name=probability, comma-separated): 500_before (500, nothing done), "
    "500_after (done, 500 saved under the idempotency key), drop_after (done, connection "
    "closed unanswered), 429 (rate limited, nothing done), slow (done, answer delayed by "
    "--slow-ms). Tests inspect and steer it under /_sim (state, faults, reset, accounts,"
    " transfers)."
)

DEFAULT_PORT: Final = 12111
DEFAULT_SLOW_MS: Final = 30_000
DEFAULT_IDEMPOTENCY_TTL_SECONDS: Final = 86_400.0

# Fixed order: the one uniform draw per request maps onto these in this order, so a seed
# gives the same faults whatever order the --faults spec lists them in.
FAULT_NAMES: Final = ("500_before", "500_after", "drop_after", "429", "slow")
_BEFORE_FAULTS: Final = frozenset({"500_before", "429"})

_DEFAULT_LIST_LIMIT: Final = 10
_MAX_LIST_LIMIT: Final = 100
_EMBEDDED_REVERSALS: Final = 10
_MAX_IDEMPOTENCY_KEY_LENGTH: Final = 255
# A benchmark can send hundreds of thousands of requests; the log keeps the newest.
_MAX_LOGGED_REQUESTS: Final = 100_000
_KEY_PREFIXES: Final = ("sk_test_", "sk_live_", "rk_test_", "rk_live_", "pk_test_", "pk_live_")

_ACCOUNT_ID: Final = re.compile(r"acct_[A-Za-z0-9_]+")
_CURRENCY: Final = re.compile(r"[A-Za-z]{3}")
_FORM_KEY: Final = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_FORM_SUBKEY: Final = re.compile(r"\[([^\[\]]*)\]")
_TRANSFERS: Final = re.compile(r"/v1/transfers")
_TRANSFER: Final = re.compile(r"/v1/transfers/([^/]+)")
_REVERSALS: Final = re.compile(r"/v1/transfers/([^/]+)/reversals")
_REVERSAL: Final = re.compile(r"/v1/transfers/([^/]+)/reversals/([^/]+)")
_SIM_TRANSFER: Final = re.compile(r"/_sim/transfers/([^/]+)")


def parse_faults(spec: str) -> dict[str, float]:
    """``"500_after=0.05,drop_after=0.05,429=0.1"`` -> ``{name: probability}``; "" -> {}."""
    faults: dict[str, float] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, value = (text.strip() for text in item.partition("="))
        if not sep:
            raise InvalidInput(f"invalid fault {item!r}: expected NAME=PROBABILITY")
        if name not in FAULT_NAMES:
            raise InvalidInput(f"unknown fault {name!r}: expected one of {', '.join(FAULT_NAMES)}")
        try:
            probability = float(value)
        except ValueError:
            raise InvalidInput(f"invalid probability {value!r} for fault {name}") from None
        if not 0.0 <= probability <= 1.0:
            raise InvalidInput(f"probability for fault {name} must be within [0, 1], not {value}")
        if name in faults:
            raise InvalidInput(f"fault {name} is given twice")
        faults[name] = probability
    _check_fault_probabilities(faults)
    return faults


def _check_fault_probabilities(faults: Mapping[str, float]) -> None:
    for name, probability in faults.items():
        if name not in FAULT_NAMES:
            raise InvalidInput(f"unknown fault {name!r}: expected one of {', '.join(FAULT_NAMES)}")
        if not 0.0 <= probability <= 1.0:
            raise InvalidInput(f"probability for fault {name} must be within [0, 1]")
    # One draw picks at most one fault per request, so the chances cannot add up past 1.
    if sum(faults.values()) > 1.0 + 1e-9:
        raise InvalidInput("fault probabilities add up to more than 1")


def format_faults(faults: Mapping[str, float]) -> str:
    """The --faults spec for these faults, or "none"."""
    spec = ",".join(f"{name}={faults[name]:g}" for name in FAULT_NAMES if faults.get(name))
    return spec or "none"


def mask_api_key(key: str) -> str:
    """The key as Stripe shows it in errors: its kind and its last four characters only."""
    prefix = next((p for p in _KEY_PREFIXES if key.startswith(p)), "")
    rest = key[len(prefix) :]
    # A short secret would be half revealed by four characters.
    if len(rest) < 12:
        return f"{prefix}****"
    return f"{prefix}****{rest[-4:]}"


@dataclass(frozen=True)
class SimulatorConfig:
    port: int = DEFAULT_PORT
    latency_ms: int = 0
    slow_ms: int = DEFAULT_SLOW_MS
    faults: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    # repr=False: a config printed in a log or a test failure must not show the key.
    api_key: str | None = field(default=None, repr=False)
    # None: unlimited.
    platform_balance: int | None = None
    idempotency_ttl_seconds: float = DEFAULT_IDEMPOTENCY_TTL_SECONDS

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidInput(f"invalid port {self.port}: expected 0 to 65535")
        if self.latency_ms < 0:
            raise InvalidInput("latency must not be negative")
        if self.slow_ms < 0:
            raise InvalidInput("slow-fault delay must not be negative")
        _check_fault_probabilities(self.faults)
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidInput("the API key must not be empty")
        if self.platform_balance is not None and self.platform_balance < 0:
            raise InvalidInput("platform balance must not be negative")
        if self.idempotency_ttl_seconds <= 0:
            raise InvalidInput("idempotency key lifetime must be positive")


# --- requests, answers and Stripe's errors ---------------------------------------------------


@dataclass(frozen=True)
class ApiRequest:
    """One HTTP request as the simulator sees it; the HTTP layer fills it in."""

    method: str
    path: str
    query: str = ""
    body: bytes = b""
    authorization: str | None = None
    idempotency_key: str | None = None


@dataclass
class ApiResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    request_id: str = ""
    fault: str | None = None
    replayed: bool = False
    # drop_after: close the connection without sending a byte of this answer.
    drop: bool = False
    # slow: wait this long before answering.
    delay_seconds: float = 0.0


class StripeErrorResponse(Exception):
    """A Stripe error answer: ``{"error": {"type", "message", "code"?, "param"?}}``."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}

    def response(self) -> ApiResponse:
        return ApiResponse(self.status, self.body())


def _invalid(
    message: str, *, param: str | None = None, code: str | None = None
) -> StripeErrorResponse:
    return StripeErrorResponse(400, "invalid_request_error", message, code=code, param=param)


def _no_such(kind: str, object_id: str, *, param: str, status: int = 404) -> StripeErrorResponse:
    return StripeErrorResponse(
        status,
        "invalid_request_error",
        f"No such {kind}: '{object_id}'",
        code="resource_missing",
        param=param,
    )


def _api_error(fault: str) -> StripeErrorResponse:
    return StripeErrorResponse(
        500,
        "api_error",
        "Sorry, something went wrong. We've already been notified of the problem."
        f" (stripe-sim fault {fault})",
    )


def _rate_limited() -> StripeErrorResponse:
    # Stripe's 429 body: type invalid_request_error with code rate_limit.
    return StripeErrorResponse(
        429,
        "invalid_request_error",
        "Request rate limit exceeded. Learn more about rate limits here:"
        " https://stripe.com/docs/rate-limits. (stripe-sim fault 429)",
        code="rate_limit",
    )


def _balance_insufficient(message: str) -> StripeErrorResponse:
    return _invalid(message, code="balance_insufficient")


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# --- form decoding and validation ------------------------------------------------------------


def _decode_form(raw: bytes | str, *, where: str = "body") -> dict[str, Any]:
    """``metadata[order]=1&amount=5`` -> ``{"metadata": {"order": "1"}, "amount": "5"}``."""
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise _invalid(f"The request {where} is not UTF-8") from None
    params: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        match = _FORM_KEY.fullmatch(key)
        if match is None:
            raise _invalid(f"Invalid parameter name in the request {where}: {key!r}")
        parts = [match.group(1), *_FORM_SUBKEY.findall(match.group(2))]
        target = params
        for part in parts[:-1]:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                raise _mixed_hash(parts[0])
            target = child
        if isinstance(target.get(parts[-1]), dict):
            raise _mixed_hash(parts[0])
        target[parts[-1]] = value
    return params


def _mixed_hash(name: str) -> StripeErrorResponse:
    return _invalid(f"Invalid hash: {name} is given both as a value and as a hash", param=name)


def _reject_unknown(params: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for name in params:
        if name not in allowed:
            raise _invalid(
                f"Received unknown parameter: {name}"
                f" (stripe-sim supports: {', '.join(sorted(allowed))})",
                param=name,
                code="parameter_unknown",
            )


def _string(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(f"Invalid string: {name} must be a string, not a hash", param=name)
    return value


def _required(params: Mapping[str, Any], name: str) -> str:
    value = _string(params, name)
    if value is None or value == "":
        raise _invalid(f"Missing required param: {name}.", param=name, code="parameter_missing")
    return value


def _positive_integer(text: str, name: str) -> int:
    # Digits only: Stripe refuses "1e3", "+5" and " 5" alike.
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise _invalid(
            f"Invalid positive integer: {text!r}", param=name, code="parameter_invalid_integer"
        )
    return int(text)


def _metadata(params: Mapping[str, Any]) -> dict[str, str]:
    value = params.get("metadata")
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise _invalid("Invalid hash: metadata must be a hash", param="metadata")
    metadata: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(item, str):
            raise _invalid(f"Invalid metadata value for {key!r}: nested hashes", param="metadata")
        if len(key) > 40 or len(item) > 500:
            raise _invalid(
                "Metadata keys are at most 40 characters and values at most 500",
                param=f"metadata[{key}]",
            )
        # On Stripe an empty value unsets the key.
        if item:
            metadata[key] = item
    if len(metadata) > 50:
        raise _invalid("Metadata has at most 50 keys", param="metadata")
    return metadata


@dataclass(frozen=True)
class _CreateTransfer:
    amount: int
    currency: str
    destination: str
    transfer_group: str | None
    description: str | None
    metadata: dict[str, str]


@dataclass(frozen=True)
class _CreateReversal:
    transfer_id: str
    amount: int | None
    metadata: dict[str, str]


_TRANSFER_CREATE_PARAMS: Final = frozenset(
    {"amount", "currency", "destination", "transfer_group", "description", "metadata", "expand"}
)
_REVERSAL_CREATE_PARAMS: Final = frozenset(
    {"amount", "description", "metadata", "refund_application_fee", "expand"}
)
_TRANSFER_LIST_PARAMS: Final = frozenset(
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
# `created=T` compares for equality; `created[gte]=T` and friends bound it.
_CREATED_COMPARISONS: Final[dict[str, Callable[[int, int], bool]]] = {
    "": operator.eq,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}
_REVERSAL_LIST_PARAMS: Final = frozenset({"limit", "starting_after", "ending_before", "expand"})
_RETRIEVE_PARAMS: Final = frozenset({"expand"})


def _validate_transfer_create(params: Mapping[str, Any]) -> _CreateTransfer:
    _reject_unknown(params, _TRANSFER_CREATE_PARAMS)
    amount = _positive_integer(_required(params, "amount"), "amount")
    currency = _required(params, "currency")
    if not _CURRENCY.fullmatch(currency):
        raise _invalid(f"Invalid currency: {currency}.", param="currency")
    destination = _required(params, "destination")
    if not _ACCOUNT_ID.fullmatch(destination):
        raise _invalid(
            f"Invalid destination: '{destination}' is not a connected account id (acct_...)",
            param="destination",
        )
    return _CreateTransfer(
        amount=amount,
        currency=currency.lower(),
        destination=destination,
        transfer_group=_string(params, "transfer_group") or None,
        description=_string(params, "description") or None,
        metadata=_metadata(params),
    )


def _validate_reversal_create(transfer_id: str, params: Mapping[str, Any]) -> _CreateReversal:
    _reject_unknown(params, _REVERSAL_CREATE_PARAMS)
    amount_text = _string(params, "amount")
    amount = _positive_integer(amount_text, "amount") if amount_text is not None else None
    _string(params, "description")
    refund_fee = _string(params, "refund_application_fee")
    if refund_fee is not None and refund_fee not in ("true", "false"):
        raise _invalid(f"Invalid boolean: {refund_fee}", param="refund_application_fee")
    return _CreateReversal(transfer_id=transfer_id, amount=amount, metadata=_metadata(params))


def _created_filter(params: Mapping[str, Any]) -> Callable[[int], bool]:
    """``created=T`` (exactly) or ``created[gte]=T`` and friends, as Stripe's list filters."""
    value = params.get("created")
    if value is None:
        return lambda created: True
    given = value if isinstance(value, dict) else {"": value}
    bounds: list[tuple[Callable[[int, int], bool], int]] = []
    for name, text in given.items():
        param = f"created[{name}]" if name else "created"
        if name not in _CREATED_COMPARISONS or (not name and isinstance(value, dict)):
            raise _invalid(
                f"Received unknown parameter: {param}", param=param, code="parameter_unknown"
            )
        if not isinstance(text, str) or not text.isascii() or not text.isdigit():
            raise _invalid(
                f"Invalid integer: {text!r}", param=param, code="parameter_invalid_integer"
            )
        bounds.append((_CREATED_COMPARISONS[name], int(text)))
    return lambda created: all(compare(created, bound) for compare, bound in bounds)


def _list_limit(params: Mapping[str, Any]) -> int:
    text = _string(params, "limit")
    if text is None:
        return _DEFAULT_LIST_LIMIT
    limit = _positive_integer(text, "limit")
    if limit > _MAX_LIST_LIMIT:
        raise _invalid(
            f"This value must be less than or equal to {_MAX_LIST_LIMIT}.", param="limit"
        )
    return limit


# --- the objects -----------------------------------------------------------------------------


@dataclass
class _Reversal:
    id: str
    seq: int
    amount: int
    currency: str
    transfer: str
    metadata: dict[str, str]
    created: int
    destination_payment_refund: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "transfer_reversal",
            "amount": self.amount,
            "balance_transaction": None,
            "created": self.created,
            "currency": self.currency,
            "destination_payment_refund": self.destination_payment_refund,
            "metadata": dict(self.metadata),
            "source_refund": None,
            "transfer": self.transfer,
        }


@dataclass
class _Transfer:
    id: str
    seq: int
    amount: int
    currency: str
    destination: str
    transfer_group: str | None
    description: str | None
    metadata: dict[str, str]
    created: int
    destination_payment: str
    reversals: list[_Reversal] = field(default_factory=list)

    @property
    def amount_reversed(self) -> int:
        return sum(reversal.amount for reversal in self.reversals)

    def as_json(self) -> dict[str, Any]:
        newest_first = self.reversals[::-1]
        return {
            "id": self.id,
            "object": "transfer",
            "amount": self.amount,
            "amount_reversed": self.amount_reversed,
            "balance_transaction": None,
            "created": self.created,
            "currency": self.currency,
            "description": self.description,
            "destination": self.destination,
            "destination_payment": self.destination_payment,
            "livemode": False,
            "metadata": dict(self.metadata),
            "reversals": {
                "object": "list",
                "data": [r.as_json() for r in newest_first[:_EMBEDDED_REVERSALS]],
                "has_more": len(newest_first) > _EMBEDDED_REVERSALS,
                "total_count": len(newest_first),
                "url": f"/v1/transfers/{self.id}/reversals",
            },
            "reversed": self.amount_reversed >= self.amount,
            "source_transaction": None,
            "source_type": "card",
            "transfer_group": self.transfer_group,
        }


@dataclass
class _Account:
    exists: bool | None = None
    reversal_balance: bool | None = None


@dataclass
class _SavedResponse:
    """What an idempotency key stands for; status None while its first request executes."""

    fingerprint: tuple[str, str, str]
    request_id: str
    status: int | None = None
    body: dict[str, Any] = field(default_factory=dict)
    saved_at: float = 0.0


@dataclass
class _ScriptedFault:
    fault: str
    count: int
    path: str | None
    method: str

    def matches(self, request: ApiRequest) -> bool:
        return request.method == self.method and (self.path is None or self.path in request.path)

    def as_json(self) -> dict[str, Any]:
        return {"fault": self.fault, "count": self.count, "path": self.path, "method": self.method}


@dataclass
class _RequestRecord:
    at: float
    method: str
    path: str
    idempotency_key: str | None
    status: int | None = None
    fault: str | None = None
    replayed: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "method": self.method,
            "path": self.path,
            "idempotency_key": self.idempotency_key,
            "status": self.status,
            "fault": self.fault,
            "replayed": self.replayed,
        }


@dataclass(frozen=True)
class _FaultDraw:
    """The fault a request drew: a random one by name, or the scripted queue's say."""

    name: str | None = None
    scripted: bool = False


@dataclass(frozen=True)
class _Route:
    kind: str
    transfer_id: str = ""
    reversal_id: str = ""

    @property
    def moves_money(self) -> bool:
        return self.kind in ("create_transfer", "create_reversal")


def _route(method: str, path: str) -> _Route:
    if _TRANSFERS.fullmatch(path):
        kinds = {"POST": "create_transfer", "GET": "list_transfers"}
        ids: tuple[str, ...] = ()
    elif match := _TRANSFER.fullmatch(path):
        kinds = {"GET": "retrieve_transfer"}
        ids = match.groups()
    elif match := _REVERSALS.fullmatch(path):
        kinds = {"POST": "create_reversal", "GET": "list_reversals"}
        ids = match.groups()
    elif match := _REVERSAL.fullmatch(path):
        kinds = {"GET": "retrieve_reversal"}
        ids = match.groups()
    else:
        kinds, ids = {}, ()
    if method not in kinds:
        raise StripeErrorResponse(
            404,
            "invalid_request_error",
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs"
            " or we can help at https://support.stripe.com/.",
        )
    transfer_id = unquote(ids[0]) if ids else ""
    reversal_id = unquote(ids[1]) if len(ids) > 1 else ""
    return _Route(kinds[method], transfer_id, reversal_id)


class _Pause:
    """The request's latency, spent once, wherever the request spends it."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._spent = False

    def __call__(self) -> None:
        if not self._spent:
            self._spent = True
            if self._seconds > 0:
                time.sleep(self._seconds)


# --- the simulator ---------------------------------------------------------------------------


class StripeSimulator:
    """Stripe's state and behaviour for transfers and reversals; thread-safe.

    One lock guards all state. Latency and slow answers are spent outside it, so 64
    concurrent requests each wait their own latency at the same time.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self._lock = threading.Lock()
        self._reset_state()

    def _reset_state(self) -> None:
        # S311: faults need reproducibility from a seed, not unpredictability.
        self._random = random.Random(self.config.seed)  # noqa: S311
        self._seq = 0
        self._transfers: dict[str, _Transfer] = {}
        self._reversals: dict[str, _Reversal] = {}
        self._keys: dict[tuple[str, str], _SavedResponse] = {}
        self._scripted: deque[_ScriptedFault] = deque()
        self._accounts: dict[str, _Account] = {}
        self._platform_balance = self.config.platform_balance
        self._requests: deque[_RequestRecord] = deque(maxlen=_MAX_LOGGED_REQUESTS)

    # --- control, in-process ---

    def reset(self) -> None:
        """Forget everything: objects, keys, the request log, faults, account settings;
        the random faults start again from the seed."""
        with self._lock:
            self._reset_state()

    def state(self) -> dict[str, Any]:
        """Transfers and reversals (oldest first), the request log, and the knobs' state."""
        with self._lock:
            return {
                "transfers": [t.as_json() for t in self._transfers.values()],
                "reversals": [r.as_json() for r in self._reversals.values()],
                "requests": [r.as_json() for r in self._requests],
                "platform_balance": self._platform_balance,
                "scripted_faults": [f.as_json() for f in self._scripted],
            }

    def add_fault(
        self, fault: str, count: int = 1, path: str | None = None, method: str = "POST"
    ) -> None:
        """Queue a fault for the next `count` matching /v1 requests (path is a substring)."""
        if fault not in FAULT_NAMES:
            raise InvalidInput(f"unknown fault {fault!r}: expected one of {', '.join(FAULT_NAMES)}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidInput("fault count must be a positive integer")
        if path is not None and not isinstance(path, str):
            raise InvalidInput("fault path must be a string")
        if not isinstance(method, str) or not method.isalpha():
            raise InvalidInput("fault method must be an HTTP method such as POST")
        with self._lock:
            self._scripted.append(_ScriptedFault(fault, count, path or None, method.upper()))

    def expire_idempotency_keys(self) -> int:
        """Expire every saved key at once, as if a day had passed; returns how many.

        Keys whose first request is still executing stay: Stripe would not forget those."""
        with self._lock:
            saved = [k for k, v in self._keys.items() if v.status is not None]
            for key in saved:
                del self._keys[key]
            return len(saved)

    def set_account(
        self, account_id: str, *, exists: bool | None = None, reversal_balance: bool | None = None
    ) -> None:
        """Override the naming convention for one account; None leaves a setting as it is."""
        if not isinstance(account_id, str) or not _ACCOUNT_ID.fullmatch(account_id):
            raise InvalidInput(f"invalid account id {account_id!r}: expected acct_...")
        for name, value in (("exists", exists), ("reversal_balance", reversal_balance)):
            if value is not None and not isinstance(value, bool):
                raise InvalidInput(f"{name} must be true or false")
        with self._lock:
            account = self._accounts.setdefault(account_id, _Account())
            if exists is not None:
                account.exists = exists
            if reversal_balance is not None:
                account.reversal_balance = reversal_balance

    def set_platform_balance(self, amount: int | None) -> None:
        """What the platform has left to transfer from now on; None: unlimited."""
        if amount is not None and (
            isinstance(amount, bool) or not isinstance(amount, int) or amount < 0
        ):
            raise InvalidInput("platform balance must be a non-negative integer or null")
        with self._lock:
            self._platform_balance = amount

    def reverse_outside(self, transfer_id: str, amount: int | None = None) -> dict[str, Any]:
        """A reversal made outside the ledger (as from the Dashboard): no request, no key,
        no fault, and the connected account's balance is not checked.

        Raises StripeErrorResponse as the API would (unknown transfer, too much, done)."""
        if amount is not None and (
            isinstance(amount, bool) or not isinstance(amount, int) or amount < 1
        ):
            raise InvalidInput("amount must be a positive integer")
        with self._lock:
            command = _CreateReversal(transfer_id=transfer_id, amount=amount, metadata={})
            return self._create_reversal(command, check_balance=False)

    def edit_transfer(
        self,
        transfer_id: str,
        *,
        amount: int | None = None,
        currency: str | None = None,
        destination: str | None = None,
        created: int | None = None,
    ) -> dict[str, Any]:
        """Change a stored transfer in place, as Stripe never would: for tests of a
        Stripe that disagrees with the ledger (`ledger reconcile`), or of a transfer
        made long ago (`created`, Unix seconds). None leaves a field as it is.

        Raises StripeErrorResponse 404 for an unknown transfer."""
        for name, value in (("amount", amount), ("created", created)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise InvalidInput(f"{name} must be a positive integer")
        if currency is not None and (
            not isinstance(currency, str) or not _CURRENCY.fullmatch(currency)
        ):
            raise InvalidInput("currency must be three letters")
        if destination is not None and (
            not isinstance(destination, str) or not _ACCOUNT_ID.fullmatch(destination)
        ):
            raise InvalidInput("destination must be an account id (acct_...)")
        with self._lock:
            transfer = self._transfer(transfer_id)
            if amount is not None:
                transfer.amount = amount
            if currency is not None:
                transfer.currency = currency.lower()
            if destination is not None:
                transfer.destination = destination
            if created is not None:
                transfer.created = created
            return transfer.as_json()

    # --- the API ---

    def handle(self, request: ApiRequest) -> ApiResponse:
        """Answer one /v1 request; may sleep (latency) outside the lock."""
        request_id = f"req_{secrets.token_hex(7)}"
        record = _RequestRecord(
            at=time.time(),
            method=request.method,
            path=request.path,
            idempotency_key=request.idempotency_key,
        )
        with self._lock:
            self._requests.append(record)
        pause = _Pause(self.config.latency_ms / 1000)
        try:
            response = self._answer(request, request_id, pause)
        except StripeErrorResponse as error:
            response = error.response()
        except Exception as error:
            # A simulator bug answers a readable 500 rather than a dropped connection.
            response = StripeErrorResponse(
                500, "api_error", f"stripe-sim internal error: {type(error).__name__}: {error}"
            ).response()
        pause()
        response.request_id = request_id
        with self._lock:
            record.status = response.status
            record.fault = response.fault
            record.replayed = response.replayed
        return response

    def _answer(self, request: ApiRequest, request_id: str, pause: _Pause) -> ApiResponse:
        scope = self._authenticate(request.authorization)
        route = _route(request.method, request.path)
        draw = self._draw_fault(request, random_allowed=route.moves_money)
        if draw.name in _BEFORE_FAULTS:
            error = _rate_limited() if draw.name == "429" else _api_error(draw.name)
            response = error.response()
            response.fault = draw.name
            return response
        if route.moves_money:
            return self._move_money(
                request, route, scope=scope, request_id=request_id, draw=draw, pause=pause
            )
        pause()
        params = _decode_form(request.query, where="query string")
        with self._lock:
            body = self._read(route, params)
            fault = self._take_after_fault(draw, request)
        failed = fault == "500_after"
        response = _api_error("500_after").response() if failed else ApiResponse(200, body)
        return self._with_after_fault(response, fault)

    def _authenticate(self, authorization: str | None) -> str:
        """The idempotency scope of the request's API key, or a 401/403 answer."""
        key = _api_key_from(authorization)
        if not key:
            raise StripeErrorResponse(
                401,
                "invalid_request_error",
                "You did not provide an API key. You need to provide your API key in the"
                " Authorization header, using Bearer auth (e.g. 'Authorization: Bearer"
                " YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details.",
            )
        expected = self.config.api_key
        if expected is not None and not secrets.compare_digest(key.encode(), expected.encode()):
            raise StripeErrorResponse(
                401, "invalid_request_error", f"Invalid API Key provided: {mask_api_key(key)}"
            )
        if key.startswith("rk_"):
            raise StripeErrorResponse(
                403,
                "permission_error",
                f"The provided key '{mask_api_key(key)}' does not have the required permissions"
                " for this endpoint. Having the 'rak_transfer_write' permission would allow"
                " this request to continue. (stripe-sim: keys starting with rk_ always get 403)",
            )
        # Scoped by a digest so the state never holds keys in a form one could print.
        return hashlib.sha256(key.encode()).hexdigest()

    def _draw_fault(self, request: ApiRequest, *, random_allowed: bool) -> _FaultDraw:
        with self._lock:
            entry = next((f for f in self._scripted if f.matches(request)), None)
            if entry is not None:
                if entry.fault in _BEFORE_FAULTS:
                    self._consume(entry)
                    return _FaultDraw(entry.fault, scripted=True)
                # An "after" fault is only taken when the request succeeds.
                return _FaultDraw(scripted=True)
            if not random_allowed or not self.config.faults:
                return _FaultDraw()
            draw = self._random.random()
            threshold = 0.0
            for name in FAULT_NAMES:
                threshold += self.config.faults.get(name, 0.0)
                if draw < threshold:
                    return _FaultDraw(name)
            return _FaultDraw()

    def _take_after_fault(self, draw: _FaultDraw, request: ApiRequest) -> str | None:
        """Under the lock, for a request that succeeded: the "after" fault it gets, if any."""
        if not draw.scripted:
            return draw.name if draw.name not in _BEFORE_FAULTS else None
        entry = next((f for f in self._scripted if f.matches(request)), None)
        if entry is None or entry.fault in _BEFORE_FAULTS:
            return None
        self._consume(entry)
        return entry.fault

    def _consume(self, entry: _ScriptedFault) -> None:
        entry.count -= 1
        if entry.count == 0:
            self._scripted.remove(entry)

    def _with_after_fault(self, response: ApiResponse, fault: str | None) -> ApiResponse:
        response.fault = fault
        if fault == "drop_after":
            response.drop = True
        elif fault == "slow":
            response.delay_seconds = self.config.slow_ms / 1000
        return response

    def _move_money(
        self,
        request: ApiRequest,
        route: _Route,
        *,
        scope: str,
        request_id: str,
        draw: _FaultDraw,
        pause: _Pause,
    ) -> ApiResponse:
        key = request.idempotency_key
        if key is not None and not 0 < len(key) <= _MAX_IDEMPOTENCY_KEY_LENGTH:
            raise _invalid(
                f"Idempotency keys must be 1 to {_MAX_IDEMPOTENCY_KEY_LENGTH} characters long."
            )
        params = _decode_form(request.body)
        fingerprint = (request.method, request.path, json.dumps(params, sort_keys=True))
        command: _CreateTransfer | _CreateReversal | None = None
        invalid: StripeErrorResponse | None = None
        try:
            if route.kind == "create_transfer":
                command = _validate_transfer_create(params)
            else:
                command = _validate_reversal_create(route.transfer_id, params)
        except StripeErrorResponse as error:
            invalid = error

        with self._lock:
            if key is not None:
                saved = self._saved_response(scope, key)
                if saved is not None:
                    return self._replay(saved, key, fingerprint)
            if invalid is not None:
                # Validation comes before executing: nothing is saved under the key.
                raise invalid
            if key is not None:
                self._keys[(scope, key)] = _SavedResponse(fingerprint, request_id)

        saved_or_released = False
        try:
            # The key is held in progress while the request executes: a concurrent
            # request with it gets 409.
            pause()
            with self._lock:
                assert command is not None
                fault: str | None = None
                try:
                    if isinstance(command, _CreateTransfer):
                        status, body = 200, self._create_transfer(command)
                    else:
                        status, body = 200, self._create_reversal(command, check_balance=True)
                    fault = self._take_after_fault(draw, request)
                except StripeErrorResponse as error:
                    status, body = error.status, error.body()
                if fault == "500_after":
                    failure = _api_error(fault)
                    status, body = failure.status, failure.body()
                if key is not None:
                    self._keys[(scope, key)] = _SavedResponse(
                        fingerprint, request_id, status, body, time.monotonic()
                    )
                saved_or_released = True
        finally:
            if key is not None and not saved_or_released:
                with self._lock:
                    self._keys.pop((scope, key), None)
        headers = {"Idempotency-Key": key} if key is not None else {}
        return self._with_after_fault(ApiResponse(status, body, headers), fault)

    def _saved_response(self, scope: str, key: str) -> _SavedResponse | None:
        saved = self._keys.get((scope, key))
        if saved is None or saved.status is None:
            return saved
        if time.monotonic() - saved.saved_at >= self.config.idempotency_ttl_seconds:
            del self._keys[(scope, key)]
            return None
        return saved

    def _replay(
        self, saved: _SavedResponse, key: str, fingerprint: tuple[str, str, str]
    ) -> ApiResponse:
        if saved.status is None:
            raise StripeErrorResponse(
                409,
                "idempotency_error",
                "There is currently another in-progress request using this"
                f" Stripe-Idempotency-Key (that probably means you submitted twice, and the"
                f" other request is still going through): '{key}'. Please try again later.",
            )
        if saved.fingerprint != fingerprint:
            raise StripeErrorResponse(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they"
                f" were first used with. Try using a key other than '{key}' if you meant to"
                " execute a different request.",
            )
        headers = {
            "Idempotency-Key": key,
            "Idempotent-Replayed": "true",
            "Original-Request": saved.request_id,
        }
        # A copy: the saved body must stay as it was first answered.
        body = json.loads(json.dumps(saved.body))
        return ApiResponse(saved.status, body, headers, replayed=True)

    # --- executing, under the lock ---

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _account_exists(self, account_id: str) -> bool:
        account = self._accounts.get(account_id)
        if account is not None and account.exists is not None:
            return account.exists
        return "unknown" not in account_id

    def _account_can_fund_reversal(self, account_id: str) -> bool:
        account = self._accounts.get(account_id)
        if account is not None and account.reversal_balance is not None:
            return account.reversal_balance
        return "nobalance" not in account_id

    def _create_transfer(self, command: _CreateTransfer) -> dict[str, Any]:
        if not self._account_exists(command.destination):
            raise _no_such("destination", command.destination, param="destination", status=400)
        if self._platform_balance is not None:
            if command.amount > self._platform_balance:
                raise _balance_insufficient(
                    "Insufficient funds in Stripe account. In test mode, you can add funds to"
                    " your available balance by creating a charge with 4000 0000 0000 0077."
                    " (stripe-sim: the platform balance is set by --platform-balance)"
                )
            self._platform_balance -= command.amount
        transfer = _Transfer(
            id=_new_id("tr"),
            seq=self._next_seq(),
            amount=command.amount,
            currency=command.currency,
            destination=command.destination,
            transfer_group=command.transfer_group,
            description=command.description,
            metadata=command.metadata,
            created=int(time.time()),
            destination_payment=_new_id("py"),
        )
        self._transfers[transfer.id] = transfer
        return transfer.as_json()

    def _create_reversal(self, command: _CreateReversal, *, check_balance: bool) -> dict[str, Any]:
        transfer = self._transfers.get(command.transfer_id)
        if transfer is None:
            raise _no_such("transfer", command.transfer_id, param="id")
        unreversed = transfer.amount - transfer.amount_reversed
        if unreversed <= 0:
            # Stripe's answer has no code of its own; callers must retrieve the transfer.
            raise _invalid(f"Transfer {transfer.id} has already been fully reversed.")
        amount = command.amount if command.amount is not None else unreversed
        if amount > unreversed:
            raise _invalid(
                f"Amount ({amount}) is greater than unreversed amount on transfer ({unreversed})",
                param="amount",
            )
        if check_balance and not self._account_can_fund_reversal(transfer.destination):
            raise _balance_insufficient(
                f"Insufficient funds in the connected account {transfer.destination} to cover"
                " this reversal. (stripe-sim: ids containing 'nobalance' cannot fund reversals)"
            )
        reversal = _Reversal(
            id=_new_id("trr"),
            seq=self._next_seq(),
            amount=amount,
            currency=transfer.currency,
            transfer=transfer.id,
            metadata=command.metadata,
            created=int(time.time()),
            destination_payment_refund=_new_id("pyr"),
        )
        transfer.reversals.append(reversal)
        self._reversals[reversal.id] = reversal
        if self._platform_balance is not None:
            self._platform_balance += amount
        return reversal.as_json()

    def _read(self, route: _Route, params: Mapping[str, Any]) -> dict[str, Any]:
        if route.kind == "list_transfers":
            _reject_unknown(params, _TRANSFER_LIST_PARAMS)
            destination = _string(params, "destination")
            group = _string(params, "transfer_group")
            created = _created_filter(params)
            transfers = [
                t
                for t in self._transfers.values()
                if (destination is None or t.destination == destination)
                and (group is None or t.transfer_group == group)
                and created(t.created)
            ]
            return self._page(transfers, params, "/v1/transfers", self._transfer_seq)
        if route.kind == "retrieve_transfer":
            _reject_unknown(params, _RETRIEVE_PARAMS)
            return self._transfer(route.transfer_id).as_json()
        transfer = self._transfer(route.transfer_id)
        if route.kind == "list_reversals":
            _reject_unknown(params, _REVERSAL_LIST_PARAMS)
            url = f"/v1/transfers/{transfer.id}/reversals"
            return self._page(transfer.reversals, params, url, self._reversal_seq)
        _reject_unknown(params, _RETRIEVE_PARAMS)
        reversal = self._reversals.get(route.reversal_id)
        if reversal is None or reversal.transfer != transfer.id:
            raise _no_such("transfer reversal", route.reversal_id, param="id")
        return reversal.as_json()

    def _transfer(self, transfer_id: str) -> _Transfer:
        transfer = self._transfers.get(transfer_id)
        if transfer is None:
            raise _no_such("transfer", transfer_id, param="id")
        return transfer

    def _transfer_seq(self, object_id: str) -> int | None:
        transfer = self._transfers.get(object_id)
        return transfer.seq if transfer is not None else None

    def _reversal_seq(self, object_id: str) -> int | None:
        reversal = self._reversals.get(object_id)
        return reversal.seq if reversal is not None else None

    def _page(
        self,
        items: Sequence[_Transfer | _Reversal],
        params: Mapping[str, Any],
        url: str,
        seq_of: Callable[[str], int | None],
    ) -> dict[str, Any]:
        """One page of a Stripe list, newest first, by cursor."""
        limit = _list_limit(params)
        after = _string(params, "starting_after")
        before = _string(params, "ending_before")
        if after and before:
            raise _invalid(
                "You may only specify one of these parameters: ending_before, starting_after."
            )
        newest_first = sorted(items, key=lambda item: item.seq, reverse=True)
        if after or before:
            cursor = after or before or ""
            param = "starting_after" if after else "ending_before"
            # The cursor may lie outside the filtered list; its place in time still counts.
            cursor_seq = seq_of(cursor)
            if cursor_seq is None:
                kind = "transfer" if url == "/v1/transfers" else "transfer reversal"
                raise _no_such(kind, cursor, param=param, status=400)
            if after:
                older = [i for i in newest_first if i.seq < cursor_seq]
                page, has_more = older[:limit], len(older) > limit
            else:
                newer = [i for i in newest_first if i.seq > cursor_seq]
                page, has_more = newer[-limit:], len(newer) > limit
        else:
            page, has_more = newest_first[:limit], len(newest_first) > limit
        return {
            "object": "list",
            "data": [item.as_json() for item in page],
            "has_more": has_more,
            "url": url,
        }

    # --- control over HTTP ---

    def handle_control(self, method: str, path: str, body: bytes) -> ApiResponse:
        """Answer a /_sim request (no API key): inspection and steering for tests."""
        response = self._control(method, path, body)
        response.request_id = f"req_{secrets.token_hex(7)}"
        return response

    def _control(self, method: str, path: str, body: bytes) -> ApiResponse:
        try:
            if method == "GET" and path == "/_sim/state":
                return ApiResponse(200, self.state())
            if method != "POST":
                raise _unknown_control(method, path)
            payload = _json_object(body)
            if path == "/_sim/reset":
                self.reset()
                return ApiResponse(200, {"reset": True})
            if path == "/_sim/faults":
                self.add_fault(
                    payload.get("fault", ""),
                    payload.get("count", 1),
                    payload.get("path"),
                    payload.get("method", "POST"),
                )
                return ApiResponse(200, {"scripted_faults": self.state()["scripted_faults"]})
            if path == "/_sim/expire-idempotency-keys":
                return ApiResponse(200, {"expired": self.expire_idempotency_keys()})
            if path == "/_sim/accounts":
                account_id = payload.get("id", "")
                self.set_account(
                    account_id,
                    exists=payload.get("exists"),
                    reversal_balance=payload.get("reversal_balance"),
                )
                return ApiResponse(200, {"id": account_id, "updated": True})
            if path == "/_sim/platform-balance":
                amount = _required_field(payload, "amount", '{"amount": N or null}')
                self.set_platform_balance(amount)
                return ApiResponse(200, {"platform_balance": amount})
            if path == "/_sim/reverse":
                transfer_id = _required_field(payload, "transfer", '{"transfer": "tr_..."}')
                if not isinstance(transfer_id, str):
                    return _invalid('expected {"transfer": "tr_...", "amount": N}').response()
                return ApiResponse(200, self.reverse_outside(transfer_id, payload.get("amount")))
            if match := _SIM_TRANSFER.fullmatch(path):
                edits = _transfer_edits(payload)
                return ApiResponse(200, self.edit_transfer(unquote(match.group(1)), **edits))
            raise _unknown_control(method, path)
        except InvalidInput as error:
            return _invalid(str(error)).response()
        except StripeErrorResponse as error:
            return error.response()


def _unknown_control(method: str, path: str) -> StripeErrorResponse:
    return StripeErrorResponse(
        404, "invalid_request_error", f"Unrecognized stripe-sim control URL ({method}: {path})"
    )


def _transfer_edits(payload: Mapping[str, Any]) -> dict[str, Any]:
    fields = {"amount", "currency", "destination", "created"}
    if not payload or set(payload) - fields:
        raise InvalidInput(
            'expected a JSON object with any of "amount", "currency", "destination", "created"'
        )
    return dict(payload)


def _required_field(payload: Mapping[str, Any], name: str, shape: str) -> Any:
    if name not in payload:
        raise InvalidInput(f"expected a JSON object like {shape}")
    return payload[name]


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the request body is not JSON") from None
    if not isinstance(payload, dict):
        raise InvalidInput("the request body must be a JSON object")
    return payload


def _api_key_from(authorization: str | None) -> str:
    if not authorization:
        return ""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    if scheme.lower() == "basic":
        # curl -u sk_test_...: sends the key as the user name.
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[0]
    return ""


# --- HTTP ------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # 64 clients connecting at once must not overflow the listen backlog (default 5).
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], simulator: StripeSimulator, access_log: TextIO | None
    ) -> None:
        self.simulator = simulator
        self.access_log = access_log
        self.log_lock = threading.Lock()
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Tracked so stop() can close idle keep-alive connections whose threads wait on them.
        with self._connections_lock:
            self._connections.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that died mid-request (a SIGKILLed daemon, in the crash
        # tests) is business as usual for a server; anything else is reported.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; Nagle would hold the body for the client's ACK.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        # The access log is written by _log; http.server's own lines are not wanted.
        pass

    def _serve(self) -> None:
        split = urlsplit(self.path)
        try:
            body = self._read_body()
        except ValueError as error:
            self.close_connection = True
            response = _invalid(str(error)).response()
            response.request_id = f"req_{secrets.token_hex(7)}"
            self._send(response)
            return
        simulator = self.server.simulator
        if split.path == "/_sim" or split.path.startswith("/_sim/"):
            response = simulator.handle_control(self.command, split.path, body)
        else:
            response = simulator.handle(
                ApiRequest(
                    method=self.command,
                    path=split.path,
                    query=split.query,
                    body=body,
                    authorization=self.headers.get("Authorization"),
                    idempotency_key=self.headers.get("Idempotency-Key"),
                )
            )
        self._log(split.path, response)
        if response.drop:
            # Committed and saved, but the client hears nothing: not a byte of the answer.
            self.close_connection = True
            return
        if response.delay_seconds > 0 and self.server.stopping.wait(response.delay_seconds):
            self.close_connection = True
            return
        self._send(response)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise ValueError("stripe-sim needs a Content-Length; chunked bodies are not supported")
        length_header = self.headers.get("Content-Length") or "0"
        if not length_header.isdigit():
            raise ValueError("invalid Content-Length")
        length = int(length_header)
        return self.rfile.read(length) if length else b""

    def _send(self, response: ApiResponse) -> None:
        data = json.dumps(response.body).encode()
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Request-Id", response.request_id)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (a timeout during a slow answer): nothing left to tell it.
            self.close_connection = True

    def _log(self, path: str, response: ApiResponse) -> None:
        log = self.server.access_log
        if log is None:
            return
        # Method, path, status and fault only: never headers, so never the API key.
        notes = "".join(
            (
                f" fault={response.fault}" if response.fault else "",
                " replayed" if response.replayed else "",
                " (dropped)" if response.drop else "",
            )
        )
        line = f"stripe-sim {self.command} {path} {response.status}{notes}\n"
        with self.server.log_lock, contextlib.suppress(OSError, ValueError):
            log.write(line)
            log.flush()


class SimulatorServer:
    """The simulator served over HTTP from a background thread; a context manager."""

    def __init__(
        self,
        simulator: StripeSimulator,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        access_log: TextIO | None = None,
    ) -> None:
        self.simulator = simulator
        self.host = host
        self._requested_port = port
        self._access_log = access_log
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> SimulatorServer:
        """Bind and serve in a background thread; raises OSError if the port is taken."""
        if self._server is not None:
            raise RuntimeError("the stripe-sim server is already started")
        server = _HTTPServer((self.host, self._requested_port), self.simulator, self._access_log)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="stripe-sim",
            daemon=True,
        )
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the stripe-sim server is not started")
        return self._server.server_port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop serving, wake slow answers and close open connections; safe to repeat."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.stopping.set()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# --- command line ----------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add stripe-sim's options to a (sub)parser; `run_from_args` runs it."""
    if parser.description is None:
        parser.description = DESCRIPTION
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one and prints it)",
    )
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=0,
        metavar="MS",
        help="delay before answering each /v1 request (default 0)",
    )
    parser.add_argument(
        "--slow-ms",
        type=int,
        default=DEFAULT_SLOW_MS,
        metavar="MS",
        help=f"how long a 'slow' fault holds its answer (default {DEFAULT_SLOW_MS})",
    )
    parser.add_argument(
        "--faults",
        default="",
        metavar="SPEC",
        help="random faults on money-moving POSTs, e.g. '500_after=0.05,drop_after=0.05,429=0.1';"
        f" names: {', '.join(FAULT_NAMES)} (default none)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the fault draws: the same seed and requests give the same faults (default 0)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="accept only this API key (default: STRIPE_SIM_API_KEY if set, else any key)",
    )
    parser.add_argument(
        "--platform-balance",
        type=int,
        default=None,
        metavar="MINOR",
        help="what the platform can transfer in total, in minor units (default unlimited)",
    )
    parser.add_argument(
        "--idempotency-ttl-seconds",
        type=float,
        default=DEFAULT_IDEMPOTENCY_TTL_SECONDS,
        metavar="S",
        help="how long idempotency keys are kept (default 86400, Stripe's 24 h)",
    )


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The configuration the parsed options ask for; InvalidInput when they do not add up."""
    return SimulatorConfig(
        port=args.port,
        latency_ms=args.latency_ms,
        slow_ms=args.slow_ms,
        faults=parse_faults(args.faults or ""),
        seed=args.seed,
        api_key=args.api_key or os.environ.get("STRIPE_SIM_API_KEY") or None,
        platform_balance=args.platform_balance,
        idempotency_ttl_seconds=args.idempotency_ttl_seconds,
    )


def startup_line(config: SimulatorConfig, base_url: str) -> str:
    return (
        f"stripe-sim listening on {base_url} (latency {config.latency_ms} ms,"
        f" faults {format_faults(config.faults)}, seed {config.seed});"
        f" export STRIPE_API_BASE={base_url}"
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM, then stop cleanly and return 0."""
    config = config_from_args(args)
    simulator = StripeSimulator(config)
    server = SimulatorServer(simulator, port=config.port, access_log=sys.stderr)
    try:
        server.start()
    except OSError as error:
        reason = error.strerror or str(error)
        raise LedgerError(
            f"cannot listen on 127.0.0.1:{config.port}: {reason} (--port 0 picks a free port)"
        ) from None
    stop = threading.Event()
    with stop_on_signals(stop):
        try:
            print(startup_line(config, server.base_url), flush=True)
            # A timed wait: the signal handler runs in this thread between waits at the latest.
            while not stop.wait(0.5):
                pass
        finally:
            server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m ledger.stripe.simulator`, for when the `ledger` command is not at hand."""
    parser = argparse.ArgumentParser(prog="stripe-sim", description=DESCRIPTION)
    configure_parser(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except InvalidInput as error:
        print(f"stripe-sim: error: {error}", file=sys.stderr)
        return 2
    except LedgerError as error:
        print(f"stripe-sim: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
