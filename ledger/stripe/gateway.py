"""The Stripe adapter: `PaymentsGateway` on stripe-python's `StripeClient`.

Every failure leaves here as a `StripeCallFailed` of one `FailureKind`, so the
process managers decide on kinds, never on stripe-python's exception classes.
The API key is given to the client and kept, privately, only to scrub it from
every message that leaves; it is in no repr, log line or error.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, TypeVar

import stripe

from ledger import values
from ledger.config import env_number
from ledger.errors import InvalidInput
from ledger.failpoints import failpoint
from ledger.logs import note
from ledger.processing.observer import NO_OBSERVER, Observer
from ledger.processing.ports import (
    ClaimRanOut,
    Condition,
    FailureKind,
    StoppedBeforeSending,
    StripeCallFailed,
    StripeReversal,
    StripeTransfer,
)
from ledger.stripe.budget import DEFAULT_RATE, DEFAULT_TOTAL_RATE, RateBudget

# Explicit, because stripe-python's default is 80 s and no retries: a stuck
# call would hold a transfer's claim for over a minute.
DEFAULT_TIMEOUT_SECONDS: Final = 15.0
MAX_TIMEOUT_SECONDS: Final = 600.0
# A call is tried again after a connection error, a timeout, a 409 or a 5xx
# (unless Stripe says `Stripe-Should-Retry: false`), and after a 429 only when
# Stripe says `Stripe-Should-Retry: true`: stripe-python's own rules. Every try
# of one call uses the SAME idempotency key, so when an earlier try committed,
# Stripe replays its saved answer and no retry moves money twice. The gateway
# makes the tries itself (stripe-python's client makes one), because it must
# remember every try's answer, not only the last one's: see `_tries`.
DEFAULT_NETWORK_RETRIES: Final = 2
# Between tries: stripe-python's backoff (half a second, doubling, at most 5 s,
# each wait drawn between half of that and all of it, never under half a second).
RETRY_INITIAL_DELAY_SECONDS: Final = 0.5
RETRY_MAX_DELAY_SECONDS: Final = 5.0
PAGE_SIZE: Final = 100
# How often a try waiting for a place among the calls in flight looks whether
# the daemon is stopping.
PLACE_WAIT_SLICE_SECONDS: Final = 0.1
_REDACTED: Final = "[redacted]"
# A 400 about one of these is Stripe refusing the transfer or reversal itself.
_REFUSABLE_PARAMS: Final = frozenset({"amount", "currency", "destination"})
_REFUSAL_CODES: Final = frozenset(
    {"amount_too_small", "amount_too_large", "resource_missing", "transfers_not_allowed"}
)
# "This destination cannot receive a transfer now": the seller has not
# finished onboarding (Stripe answers 400 with no `param`).
_SELLER_CONDITION_CODES: Final = frozenset({"insufficient_capabilities_for_transfer"})
# A Retry-After longer than this is not believed (a proxy's, a typo's).
MAX_RETRY_AFTER_SECONDS: Final = 600.0


@dataclass(frozen=True)
class StripeSettings:
    api_key: str = field(repr=False)
    api_base: str | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    network_retries: int = DEFAULT_NETWORK_RETRIES
    # stripe-python's transport; None: its requests-based client over HTTPS.
    # The deterministic simulation passes one that calls the simulator's
    # engine in-process (tests/simulation/transport.py).
    http_client: stripe.HTTPClient | None = field(default=None, repr=False, compare=False)
    # The rate budget of all daemons on the database together (budget.py).
    rate_per_endpoint: float = DEFAULT_RATE
    rate_total: float = DEFAULT_TOTAL_RATE

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
            maximum=MAX_TIMEOUT_SECONDS,
        )
        rate = env_number(
            environ, "LEDGER_STRIPE_RATE", DEFAULT_RATE, minimum=0, exclusive=True, maximum=10_000
        )
        total = env_number(
            environ,
            "LEDGER_STRIPE_RATE_TOTAL",
            DEFAULT_TOTAL_RATE,
            minimum=0,
            exclusive=True,
            maximum=10_000,
        )
        assert timeout_seconds is not None and rate is not None and total is not None
        return cls(
            api_key=api_key,
            api_base=environ.get("STRIPE_API_BASE") or None,
            timeout_seconds=timeout_seconds,
            rate_per_endpoint=rate,
            rate_total=total,
        )

    def longest_call_seconds(self) -> float:
        """How long one gateway call can take: every try timing out, and the
        longest sleep between tries (StripeGateway._retry_delay)."""
        sleeps = sum(
            min(RETRY_INITIAL_DELAY_SECONDS * 2 ** (n - 1), RETRY_MAX_DELAY_SECONDS)
            for n in range(1, self.network_retries + 1)
        )
        return float(self.timeout_seconds * (self.network_retries + 1) + sleeps)


def stripe_client(settings: StripeSettings, *, retries: int | None = None) -> stripe.StripeClient:
    """stripe-python's client as the ledger uses it everywhere: this base
    address and this timeout. `retries`: stripe-python's own retries (default
    the settings'); the gateway asks for none and makes its tries itself."""
    base = {"api": settings.api_base} if settings.api_base else None
    return stripe.StripeClient(
        settings.api_key,
        base_addresses=base,  # type: ignore[arg-type]
        max_network_retries=settings.network_retries if retries is None else retries,
        http_client=settings.http_client or stripe.RequestsClient(timeout=settings.timeout_seconds),
    )


T = TypeVar("T")


class StripeGateway:
    def __init__(
        self,
        settings: StripeSettings,
        observer: Observer = NO_OBSERVER,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        budget: RateBudget | None = None,
        calls_at_once: int | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        """`calls_at_once`: at most this many requests in flight through this
        gateway (`ledger daemon --concurrency`); None: no limit. `stopping`:
        once set, no request is sent any more (StoppedBeforeSending)."""
        self._observer = observer
        self.budget = budget
        # A place is held for one try, so that the daemon's own steps around
        # a call (loading the transfer, recording the attempt and the outcome)
        # take no place among the Stripe calls in flight (DESIGN section 5).
        self._places = threading.BoundedSemaphore(calls_at_once) if calls_at_once else None
        self._stopping = stopping or threading.Event()
        self._client = stripe_client(settings, retries=0)
        self._tries_per_call = settings.network_retries + 1
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
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
        send_while: Callable[[], bool] | None = None,
        source_transaction: str | None = None,
    ) -> StripeTransfer:
        params: dict[str, Any] = {
            "amount": amount,
            "currency": currency,
            "destination": destination,
            "transfer_group": transfer_group,
            "metadata": dict(metadata),
        }
        if source_transaction is not None:
            params["source_transaction"] = source_transaction
        try:
            created = self._tries(
                "transfers.create",
                lambda: self._client.v1.transfers.create(
                    params=params,  # type: ignore[arg-type]
                    options={"idempotency_key": idempotency_key},
                ),
                moves_money=True,
                send_while=send_while,
            )
        except StripeCallFailed as failure:
            if failure.kind == FailureKind.RETRY_LATER and failure.code == "balance_insufficient":
                # The platform's available balance is short (charges settle
                # days later): the platform's condition; the payout waits.
                failure.kind = FailureKind.WAIT
                failure.condition = Condition.PLATFORM_BALANCE
            raise
        return _transfer(created)

    def transfers_in_group(self, transfer_group: str) -> Sequence[StripeTransfer]:
        return [
            _transfer(t)
            for t in self._pages(
                "transfers.list",
                lambda after: self._client.v1.transfers.list(
                    params=_page({"transfer_group": transfer_group}, after)  # type: ignore[arg-type]
                ),
            )
        ]

    def retrieve_transfer(self, transfer_id: str) -> StripeTransfer:
        return _transfer(
            self._tries(
                "transfers.retrieve",
                lambda: self._client.v1.transfers.retrieve(transfer_id),
                moves_money=False,
            )
        )

    # ----- reversals ----------------------------------------------------------

    def create_reversal(
        self,
        transfer_id: str,
        *,
        amount: int,
        metadata: Mapping[str, str],
        idempotency_key: str,
        send_while: Callable[[], bool] | None = None,
    ) -> StripeReversal:
        created = self._tries(
            "reversals.create",
            lambda: self._client.v1.transfers.reversals.create(
                transfer_id,
                params={"amount": amount, "metadata": dict(metadata)},
                options={"idempotency_key": idempotency_key},
            ),
            moves_money=True,
            send_while=send_while,
        )
        return _reversal(created)

    def reversals_of(self, transfer_id: str) -> Sequence[StripeReversal]:
        return [
            _reversal(r)
            for r in self._pages(
                "reversals.list",
                lambda after: self._client.v1.transfers.reversals.list(
                    transfer_id,
                    params=_page({}, after),  # type: ignore[arg-type]
                ),
            )
        ]

    # ----- plumbing -----------------------------------------------------------

    def _pages(self, endpoint: str, fetch: Callable[[str | None], Any]) -> Iterator[Any]:
        after: str | None = None
        while True:
            page = self._tries(endpoint, partial(fetch, after), moves_money=False)
            data = list(page["data"])
            yield from data
            if not page["has_more"] or not data:
                return
            after = data[-1]["id"]

    def _tries(
        self,
        endpoint: str,
        send: Callable[[], T],
        *,
        moves_money: bool,
        send_while: Callable[[], bool] | None = None,
    ) -> T:
        """One call, made in up to `network_retries + 1` tries under the same
        idempotency key; returns what the successful try returned, or raises
        the call's StripeCallFailed.

        The call's failure is decided by EVERY try, never by the last answer
        alone: once a try of a money-moving call may have reached Stripe (a
        dropped connection, a timeout, a 5xx, a 409 for a key in use), the
        call's outcome is unknown whatever the later tries answered. A later
        429 or 400 says nothing about what the earlier try did; only a look-up
        can (DESIGN section 5). Each try is counted and timed by endpoint and
        outcome, and its Stripe request id goes into the log context.

        Each try is sent only while `send_while()` holds (the process manager:
        "my claim outlives this try's answer"), checked right before sending:
        a process paused between tries or before the first (a suspended VM, a
        stopped container) does not send after another daemon may have looked
        the call up and made it again under the next attempt's key."""
        reached: list[StripeCallFailed] = []
        for number in range(1, self._tries_per_call + 1):
            failpoint("stripe_try")
            with self._place(endpoint, number, reached=bool(reached)):
                if self.budget is not None:
                    # May wait (a 429's pause): the checks below come after it.
                    self.budget.take(endpoint)
                # Checked last, right before sending: a stop, or a process
                # paused while it waited for its place or its budget, sends
                # nothing after another daemon may have taken the work over.
                if self._stopping.is_set():
                    raise self._stopped(endpoint, number, reached=bool(reached))
                if send_while is not None and not send_while():
                    raise ClaimRanOut(
                        f"{endpoint}: not sent (try {number}), the claim would run out before"
                        " its answer; the next holder of the work looks it up",
                        reached=bool(reached),
                    )
                started = time.monotonic()
                try:
                    result = send()
                except stripe.StripeError as error:
                    failure = classify(error, self._secret)
                    if self.budget is not None and isinstance(error, stripe.RateLimitError):
                        self.budget.rate_limited(failure.retry_after)
                    note(stripe_request_id=failure.request_id)
                    self._observer.stripe_call(
                        endpoint, failure.kind.value, time.monotonic() - started
                    )
                    if moves_money and may_have_reached_stripe(error):
                        reached.append(failure)
                    if not (number < self._tries_per_call and should_try_again(error)):
                        if reached and failure.kind != FailureKind.UNKNOWN:
                            raise failure.after_unknown_tries(reached) from None
                        raise failure from None
                else:
                    response = getattr(result, "last_response", None)
                    note(stripe_request_id=getattr(response, "request_id", None))
                    self._observer.stripe_call(endpoint, "ok", time.monotonic() - started)
                    return result
            # Waiting to try again holds no place among the calls in flight.
            self._sleep(self._retry_delay(number))
        raise AssertionError("unreachable: the last try returns or raises")

    @contextlib.contextmanager
    def _place(self, endpoint: str, number: int, *, reached: bool) -> Iterator[None]:
        """A place among the calls in flight, for one try (none to wait for
        without a limit). A stop while waiting gives up the wait."""
        if self._places is None:
            yield
            return
        # Woken now and then to see whether to stop: a stopping daemon's
        # waiting workers give their work back instead of sending it later.
        while not self._places.acquire(timeout=PLACE_WAIT_SLICE_SECONDS):
            if self._stopping.is_set():
                raise self._stopped(endpoint, number, reached=reached)
        try:
            yield
        finally:
            self._places.release()

    @staticmethod
    def _stopped(endpoint: str, number: int, *, reached: bool) -> StoppedBeforeSending:
        return StoppedBeforeSending(
            f"{endpoint}: not sent (try {number}), the daemon is stopping", reached=reached
        )

    def _retry_delay(self, failed_tries: int) -> float:
        ceiling = min(
            RETRY_INITIAL_DELAY_SECONDS * 2 ** (failed_tries - 1), RETRY_MAX_DELAY_SECONDS
        )
        return float(max(RETRY_INITIAL_DELAY_SECONDS, ceiling * (0.5 + self._rng.random() / 2)))


def may_have_reached_stripe(error: stripe.StripeError) -> bool:
    """Could this try have changed something at Stripe? A connection that
    failed or timed out may have carried the request (conservatively: any);
    a 5xx may come after Stripe committed (and is then saved under the key);
    a 409 says another request with this key is executing right now. A 429 is
    answered before anything runs (Stripe's limiter comes first), and every
    other 4xx is Stripe's definite, saved answer to this key."""
    if isinstance(error, stripe.APIConnectionError):
        return True
    status = error.http_status or 0
    return status >= 500 or status == 409


def should_try_again(error: stripe.StripeError) -> bool:
    """stripe-python's rules for trying the same request again: Stripe's
    `Stripe-Should-Retry` header first; else connection errors it deems
    retryable, 409 and 5xx."""
    if isinstance(error, stripe.APIConnectionError):
        return bool(getattr(error, "should_retry", False))
    advice = (error.headers or {}).get("stripe-should-retry")
    if advice == "false":
        return False
    if advice == "true":
        return True
    status = error.http_status or 0
    return status == 409 or status >= 500


def classify(error: stripe.StripeError, secret: str = "") -> StripeCallFailed:
    """DESIGN section 6, as a table from Stripe's answer to what to do."""
    status = error.http_status
    code = getattr(error, "code", None)
    message = _message(error, secret)
    kind: FailureKind
    condition: Condition | None = None
    retry_after: float | None = None
    if isinstance(error, stripe.AuthenticationError | stripe.PermissionError):
        kind = FailureKind.OPERATOR
    elif isinstance(error, stripe.IdempotencyError):
        # The same key with other parameters: our bug, not the transfer's fault.
        kind = FailureKind.BUG
    elif isinstance(error, stripe.RateLimitError):
        # Our rate, not the transfer's failure: back-pressure (DESIGN section 5).
        kind = FailureKind.WAIT
        condition = Condition.RATE_LIMIT
        retry_after = _retry_after(error)
    elif isinstance(error, stripe.InvalidRequestError):
        param = getattr(error, "param", None)
        if code == "balance_insufficient":
            # A reversal's: the connected account's balance (the seed's
            # reversal_pending -> permanently_failed edge); a payout's is the
            # platform's, turned into a wait by create_transfer.
            kind = FailureKind.RETRY_LATER
        elif code in _SELLER_CONDITION_CODES:
            # The seller's account cannot receive transfers yet (onboarding
            # not finished): the seller's condition, not our bug.
            kind = FailureKind.WAIT
            condition = Condition.SELLER_CAPABILITY
        elif "fully reversed" in message:
            # Stripe gives this no code: the transfer's state differs from what
            # the ledger thinks. Look it up; don't guess.
            kind = FailureKind.UNKNOWN
        elif "unreversed amount" in message.lower():
            # More than Stripe has left: someone reversed part of it meanwhile
            # (found by the deterministic simulation). A first attempt asks for
            # what the ledger knows is left. Nothing was done; the retry looks
            # at Stripe first and asks for what is left there, instead of
            # failing the refund for good. Told by the message alone: whether
            # Stripe names `param` here is not something to depend on.
            kind = FailureKind.RETRY_LATER
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
    # Stripe replayed the saved 5xx of an earlier request under this key.
    replayed_error = _header(error, "idempotent-replayed") == "true" and (status or 0) >= 500
    return StripeCallFailed(
        kind,
        message,
        code=code,
        http_status=status,
        request_id=error.request_id,
        condition=condition,
        retry_after=retry_after,
        key_spent=(isinstance(error, stripe.IdempotencyError) and status == 400) or replayed_error,
        replayed_error=replayed_error,
    )


def _header(error: stripe.StripeError, name: str) -> str | None:
    return next(
        (value for key, value in (error.headers or {}).items() if key.lower() == name), None
    )


def _retry_after(error: stripe.StripeError) -> float | None:
    """Stripe's Retry-After, in seconds, when it sends one (a sane one)."""
    raw = _header(error, "retry-after")
    try:
        seconds = float(raw) if raw is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds <= MAX_RETRY_AFTER_SECONDS else None


def _message(error: stripe.StripeError, secret: str) -> str:
    # Stripe's text (or whatever answered in its place) is outside input:
    # made one storable, printable line before it goes anywhere.
    text = str(error.user_message or type(error).__name__)
    if secret:
        text = text.replace(secret, _REDACTED)
    return values.clipped(text)


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
