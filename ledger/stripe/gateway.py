"""The Stripe adapter: `PaymentsGateway` on stripe-python's `StripeClient`.

Every failure leaves here as a `StripeCallFailed` of one `FailureKind`, so the
process managers decide on kinds, never on stripe-python's exception classes.
The API key is given to the client and kept, privately, only to scrub it from
every message that leaves; it is in no repr, log line or error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import stripe

from ledger.config import env_number
from ledger.errors import InvalidInput
from ledger.logs import note
from ledger.processing.observer import NO_OBSERVER, Observer
from ledger.processing.ports import (
    FailureKind,
    StripeCallFailed,
    StripeReversal,
    StripeTransfer,
)

# Explicit, because stripe-python's default is 80 s and no retries: a stuck
# call would hold a transfer's claim for over a minute.
DEFAULT_TIMEOUT_SECONDS: Final = 15.0
# stripe-python retries connection errors, timeouts, 409 and 5xx itself, with
# the SAME idempotency key: when the first try committed, Stripe replays its
# saved answer, so these retries never move money twice.
DEFAULT_NETWORK_RETRIES: Final = 2
PAGE_SIZE: Final = 100
_REDACTED: Final = "[redacted]"
# A 400 about one of these is Stripe refusing the transfer or reversal itself.
_REFUSABLE_PARAMS: Final = frozenset({"amount", "currency", "destination"})
_REFUSAL_CODES: Final = frozenset(
    {"amount_too_small", "amount_too_large", "resource_missing", "transfers_not_allowed"}
)


@dataclass(frozen=True)
class StripeSettings:
    api_key: str = field(repr=False)
    api_base: str | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    network_retries: int = DEFAULT_NETWORK_RETRIES

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> StripeSettings:
        api_key = environ.get("STRIPE_API_KEY", "").strip()
        if not api_key:
            raise InvalidInput("STRIPE_API_KEY is not set: the daemon needs a Stripe secret key")
        timeout_seconds = env_number(
            environ,
            "STRIPE_TIMEOUT_SECONDS",
            DEFAULT_TIMEOUT_SECONDS,
            minimum=0,
            exclusive=True,
        )
        assert timeout_seconds is not None
        return cls(
            api_key=api_key,
            api_base=environ.get("STRIPE_API_BASE") or None,
            timeout_seconds=timeout_seconds,
        )

    def longest_call_seconds(self) -> float:
        """How long one gateway call can take, its own retries included
        (stripe-python sleeps at most 5 s between tries)."""
        return (self.timeout_seconds + 5.0) * (self.network_retries + 1)


def stripe_client(settings: StripeSettings) -> stripe.StripeClient:
    """stripe-python's client as the ledger uses it everywhere: this base
    address, this timeout, and stripe-python's own retries of connection
    errors and 5xx (with the same idempotency key, so never a second payout)."""
    base = {"api": settings.api_base} if settings.api_base else None
    return stripe.StripeClient(
        settings.api_key,
        base_addresses=base,  # type: ignore[arg-type]
        max_network_retries=settings.network_retries,
        http_client=stripe.RequestsClient(timeout=settings.timeout_seconds),
    )


class StripeGateway:
    def __init__(self, settings: StripeSettings, observer: Observer = NO_OBSERVER) -> None:
        self._observer = observer
        self._client = stripe_client(settings)
        # Only to scrub it from messages: never printed, never stored elsewhere.
        self._secret = settings.api_key

    def __repr__(self) -> str:
        return "StripeGateway()"

    # ----- transfers ----------------------------------------------------------

    def create_transfer(
        self,
        *,
        amount: int,
        currency: str,
        destination: str,
        transfer_group: str,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> StripeTransfer:
        with self._translated_errors("transfers.create") as call:
            created = call.result = self._client.v1.transfers.create(
                params={
                    "amount": amount,
                    "currency": currency,
                    "destination": destination,
                    "transfer_group": transfer_group,
                    "metadata": dict(metadata),
                },
                options={"idempotency_key": idempotency_key},
            )
        return _transfer(created)

    def transfers_in_group(self, transfer_group: str) -> Sequence[StripeTransfer]:
        with self._translated_errors("transfers.list"):
            return [
                _transfer(t)
                for t in self._pages(
                    lambda after: self._client.v1.transfers.list(
                        params=_page({"transfer_group": transfer_group}, after)  # type: ignore[arg-type]
                    )
                )
            ]

    def retrieve_transfer(self, transfer_id: str) -> StripeTransfer:
        with self._translated_errors("transfers.retrieve") as call:
            call.result = self._client.v1.transfers.retrieve(transfer_id)
        return _transfer(call.result)

    # ----- reversals ----------------------------------------------------------

    def create_reversal(
        self,
        transfer_id: str,
        *,
        amount: int,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> StripeReversal:
        with self._translated_errors("reversals.create") as call:
            created = call.result = self._client.v1.transfers.reversals.create(
                transfer_id,
                params={"amount": amount, "metadata": dict(metadata)},
                options={"idempotency_key": idempotency_key},
            )
        return _reversal(created)

    def reversals_of(self, transfer_id: str) -> Sequence[StripeReversal]:
        with self._translated_errors("reversals.list"):
            return [
                _reversal(r)
                for r in self._pages(
                    lambda after: self._client.v1.transfers.reversals.list(
                        transfer_id,
                        params=_page({}, after),  # type: ignore[arg-type]
                    )
                )
            ]

    # ----- plumbing -----------------------------------------------------------

    @staticmethod
    def _pages(fetch: Any) -> Iterator[Any]:
        after: str | None = None
        while True:
            page = fetch(after)
            data = list(page["data"])
            yield from data
            if not page["has_more"] or not data:
                return
            after = data[-1]["id"]

    @contextmanager
    def _translated_errors(self, endpoint: str) -> Iterator[_Call]:
        """stripe-python's exceptions leave as classified StripeCallFailed.
        Each call is counted and timed (by endpoint and outcome), and its Stripe
        request id goes into the log context of the work being done."""
        call = _Call()
        started = time.monotonic()
        try:
            yield call
        except stripe.StripeError as error:
            failure = classify(error, self._secret)
            note(stripe_request_id=failure.request_id)
            self._observer.stripe_call(endpoint, failure.kind.value, time.monotonic() - started)
            raise failure from None
        response = getattr(call.result, "last_response", None)
        note(stripe_request_id=getattr(response, "request_id", None))
        self._observer.stripe_call(endpoint, "ok", time.monotonic() - started)


class _Call:
    """What a call returned, for its request id (lists leave it unset)."""

    result: Any = None


def classify(error: stripe.StripeError, secret: str = "") -> StripeCallFailed:
    """DESIGN section 6, as a table from Stripe's answer to what to do."""
    status = error.http_status
    code = getattr(error, "code", None)
    message = _message(error, secret)
    kind: FailureKind
    if isinstance(error, stripe.AuthenticationError | stripe.PermissionError):
        kind = FailureKind.OPERATOR
    elif isinstance(error, stripe.IdempotencyError):
        # The same key with other parameters: our bug, not the transfer's fault.
        kind = FailureKind.BUG
    elif isinstance(error, stripe.RateLimitError):
        kind = FailureKind.RETRY_LATER
    elif isinstance(error, stripe.InvalidRequestError):
        param = getattr(error, "param", None)
        if code == "balance_insufficient":
            kind = FailureKind.RETRY_LATER
        elif "fully reversed" in message:
            # Stripe gives this no code: the transfer's state differs from what
            # the ledger thinks. Look it up; don't guess.
            kind = FailureKind.UNKNOWN
        elif param in _REFUSABLE_PARAMS or code in _REFUSAL_CODES or status == 404:
            # Stripe refuses this money movement as asked: this destination,
            # this amount, this currency, or a transfer it does not have.
            kind = FailureKind.PERMANENT
        else:
            # Any other 400 says our request is malformed (an unknown or
            # missing parameter): a bug of ours, not the transfer's fault.
            kind = FailureKind.BUG
    elif isinstance(error, stripe.CardError):
        kind = FailureKind.PERMANENT
    else:
        # APIError (5xx, 409 in-progress key), APIConnectionError (timeout,
        # dropped connection), anything unforeseen: it may have happened.
        kind = FailureKind.UNKNOWN
    return StripeCallFailed(
        kind,
        message,
        code=code,
        http_status=status,
        request_id=error.request_id,
    )


def _message(error: stripe.StripeError, secret: str) -> str:
    text = " ".join(str(error.user_message or type(error).__name__).split())
    if secret:
        text = text.replace(secret, _REDACTED)
    return text


def _page(params: dict[str, Any], after: str | None) -> dict[str, Any]:
    params = {**params, "limit": PAGE_SIZE}
    if after:
        params["starting_after"] = after
    return params


def _metadata(obj: Mapping[str, Any]) -> dict[str, str]:
    raw = obj.get("metadata") or {}
    return {str(k): str(v) for k, v in raw.items()}


def _transfer(stripe_object: Any) -> StripeTransfer:
    # stripe-python 16 objects refuse dict methods; to_dict() is the plain data.
    obj: dict[str, Any] = stripe_object.to_dict()
    destination: Any = obj["destination"]
    if isinstance(destination, dict):  # expanded into an account object
        destination = destination["id"]
    return StripeTransfer(
        id=obj["id"],
        amount=int(obj["amount"]),
        currency=str(obj["currency"]),
        destination=str(destination),
        transfer_group=obj.get("transfer_group"),
        amount_reversed=int(obj.get("amount_reversed") or 0),
        metadata=_metadata(obj),
    )


def _reversal(stripe_object: Any) -> StripeReversal:
    obj: dict[str, Any] = stripe_object.to_dict()
    transfer: Any = obj["transfer"]
    if isinstance(transfer, dict):  # expanded into a transfer object
        transfer = transfer["id"]
    return StripeReversal(
        id=obj["id"], transfer=str(transfer), amount=int(obj["amount"]), metadata=_metadata(obj)
    )
