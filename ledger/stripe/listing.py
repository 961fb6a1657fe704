"""Reading Stripe for `ledger reconcile`: every transfer, page by page, and a
transfer's reversals, over stripe-python's `StripeClient`.

Read-only: nothing here moves money, so every call may simply be made again.
Politely: Stripe answers 429 when we read too fast (its limits are per
account, shared with everything else the platform does), and then this module
waits, exponentially longer with jitter, and tries the same request again,
up to a cap. Other failures leave as `StripeReadFailed`, one line, with the API
key scrubbed (by the gateway's own `classify`).

Only what reconcile compares is kept of each Stripe object (a few ids and
integers, in slotted dataclasses), so that a page of 100 transfers is all that
is ever held of Stripe's answers.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, TypeVar
from uuid import UUID

import stripe
from stripe.params import TransferListParams, TransferReversalListParams

from ledger import values
from ledger.errors import InvalidInput, LedgerError
from ledger.stripe.gateway import StripeSettings, classify, stripe_client

# Stripe's largest page.
PAGE_SIZE: Final = 100
# The first wait after a 429, doubled for each 429 in a row, up to the ceiling;
# each wait is drawn between half of that and all of it, so that several
# readers limited at once do not come back in step.
RATE_LIMIT_BASE_SECONDS: Final = 0.5
RATE_LIMIT_MAX_SECONDS: Final = 20.0
# After this many 429s in a row (about two minutes of waiting) reconcile stops
# and says so, instead of hammering an account that is busy with payouts.
RATE_LIMIT_MAX_TRIES: Final = 10

log = logging.getLogger("ledger.reconcile")
T = TypeVar("T")


class StripeReadFailed(LedgerError):
    """Stripe did not answer a read (credentials, outage, too many 429s)."""


@dataclass(frozen=True, slots=True)
class ListedReversal:
    id: str
    amount: int
    created: int
    # Set when the ledger's reversal manager made it (its metadata names the
    # causing event); None for a reversal made outside the ledger.
    ledger_cause: str | None


@dataclass(frozen=True, slots=True)
class ListedTransfer:
    id: str
    amount: int
    currency: str
    destination: str
    amount_reversed: int
    created: int
    transfer_group: str | None
    # metadata["ledger_transfer_id"], as the payout manager sets it.
    metadata_transfer_id: str | None
    # Set when the ledger's payout manager made it (metadata["ledger_cause"]).
    ledger_cause: str | None
    # Oldest first. None when Stripe did not embed them all in the transfer:
    # then they are listed with `StripeReader.reversals`.
    reversals: tuple[ListedReversal, ...] | None

    def ledger_transfer_id(self) -> UUID | None:
        """The ledger transfer this Stripe transfer names, if any."""
        return ledger_id_named(self.metadata_transfer_id, self.transfer_group)


def ledger_id_named(metadata_transfer_id: object, transfer_group: object) -> UUID | None:
    """The ledger transfer a Stripe transfer names, by the one rule that both
    `ledger reconcile` and the webhook handler use, so they never disagree on
    whose it is: `metadata.ledger_transfer_id` first (a key only the ledger
    sets), then `transfer_group` (the payout manager sets it to the ledger id
    too, but other systems on the platform use it for their own grouping). A
    value that is not a transfer id names nothing."""
    for candidate in (metadata_transfer_id, transfer_group):
        if isinstance(candidate, str) and candidate:
            try:
                return values.transfer_id(candidate)
            except InvalidInput:
                continue
    return None


@dataclass(frozen=True)
class Backoff:
    """How long to wait after the n-th 429 in a row (n from 0)."""

    base_seconds: float = RATE_LIMIT_BASE_SECONDS
    max_seconds: float = RATE_LIMIT_MAX_SECONDS
    max_tries: int = RATE_LIMIT_MAX_TRIES
    draw: Callable[[], float] = field(default=random.random, repr=False)

    def delay(self, attempt: int) -> float:
        ceiling = min(self.max_seconds, self.base_seconds * 2.0**attempt)
        return ceiling / 2 + self.draw() * ceiling / 2


class StripeReader:
    """Stripe transfers and reversals, read politely. `rate_limited` counts the
    429s waited out, for the report."""

    def __init__(
        self,
        settings: StripeSettings,
        *,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        # The daemon's client: stripe-python's retries of connection errors
        # and 5xx are harmless on reads too.
        self._client = stripe_client(settings)
        # Only to scrub it from messages: never printed, never stored elsewhere.
        self._secret = settings.api_key
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self.rate_limited = 0

    def __repr__(self) -> str:
        return "StripeReader()"

    def transfers(self, *, created_gte: int | None = None) -> Iterator[list[ListedTransfer]]:
        """Every transfer (made at or after `created_gte`, Unix seconds), newest
        first as Stripe lists them, one page at a time."""
        after: str | None = None
        while True:
            page_params: TransferListParams = {"limit": PAGE_SIZE}
            if created_gte is not None:
                page_params["created"] = {"gte": created_gte}
            if after:
                page_params["starting_after"] = after
            page = self._call(
                "list transfers", partial(self._client.v1.transfers.list, params=page_params)
            )
            listed = [_transfer(item.to_dict()) for item in page.data]
            if listed:
                yield listed
            if not page.has_more or not listed:
                return
            after = listed[-1].id

    def transfers_changed(self, *, created_gte: int) -> set[str]:
        """The transfers Stripe's events say changed at or after `created_gte`
        (`transfer.reversed`, `transfer.updated`; Stripe keeps events 30 days):
        a reversal made today of a transfer made last year."""
        changed: set[str] = set()
        after: str | None = None
        while True:
            params: dict[str, Any] = {
                "limit": PAGE_SIZE,
                "types": list(CHANGE_EVENTS),
                "created": {"gte": created_gte},
            }
            if after:
                params["starting_after"] = after
            page = self._call(
                "list events",
                partial(self._client.v1.events.list, params=params),  # type: ignore[arg-type]
            )
            events = [item.to_dict() for item in page.data]
            for event in events:
                obj = (event.get("data") or {}).get("object") or {}
                if obj.get("object") == "transfer" and isinstance(obj.get("id"), str):
                    changed.add(obj["id"])
            if not page.has_more or not events:
                return changed
            after = str(events[-1]["id"])

    def transfer(self, transfer_id: str) -> ListedTransfer | None:
        """One transfer, or None when Stripe has no such transfer."""
        try:
            found = self._call(
                f"retrieve transfer {transfer_id}",
                partial(self._client.v1.transfers.retrieve, transfer_id),
                missing_ok=True,
            )
        except _Missing:
            return None
        return _transfer(found.to_dict())

    def reversals(self, transfer_id: str) -> tuple[ListedReversal, ...]:
        """Every reversal of a transfer, oldest first."""
        found: list[ListedReversal] = []
        after: str | None = None
        while True:
            params: TransferReversalListParams = {"limit": PAGE_SIZE}
            if after:
                params["starting_after"] = after
            page = self._call(
                f"list reversals of {transfer_id}",
                partial(self._client.v1.transfers.reversals.list, transfer_id, params=params),
            )
            listed = [_reversal(item.to_dict()) for item in page.data]
            found += listed
            if not page.has_more or not listed:
                break
            after = listed[-1].id
        # Stripe lists newest first (its `created` has whole seconds, so the
        # order, not the time, says which came first).
        return tuple(reversed(found))

    def _call(self, what: str, request: Callable[[], T], *, missing_ok: bool = False) -> T:
        attempt = 0
        while True:
            try:
                return request()
            except stripe.RateLimitError:
                self.rate_limited += 1
                attempt += 1
                if attempt >= self._backoff.max_tries:
                    raise StripeReadFailed(
                        f"Stripe answered 429 (rate limited) {attempt} times in a row to"
                        f" {what}: the account's rate limit is taken by other work; try again"
                        " later"
                    ) from None
                wait = self._backoff.delay(attempt - 1)
                # Which request and how long: no key, no header, nothing secret.
                log.info("Stripe rate limit (429) on %s: waiting %.2f s", what, wait)
                self._sleep(wait)
            except stripe.StripeError as error:
                if missing_ok and error.http_status == 404:
                    raise _Missing from None
                failure = classify(error, self._secret)
                raise StripeReadFailed(f"Stripe did not {what}: {failure.summary()}") from None


class _Missing(Exception):
    """Stripe answered 404 to a retrieve."""


# The events that say a transfer changed after it was made.
CHANGE_EVENTS: Final = ("transfer.reversed", "transfer.updated")


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _transfer(obj: Mapping[str, Any]) -> ListedTransfer:
    destination: Any = obj["destination"]
    if isinstance(destination, Mapping):  # expanded into an account object
        destination = destination["id"]
    metadata = _metadata(obj)
    embedded: Any = obj.get("reversals")
    reversals: tuple[ListedReversal, ...] | None = None
    if isinstance(embedded, Mapping) and not embedded.get("has_more"):
        # Newest first, as Stripe lists; kept oldest first.
        reversals = tuple(_reversal(r) for r in embedded.get("data") or ())[::-1]
    elif not int(obj.get("amount_reversed") or 0):
        reversals = ()  # Nothing reversed: there is nothing to list.
    return ListedTransfer(
        id=str(obj["id"]),
        amount=int(obj["amount"]),
        currency=str(obj["currency"]),
        destination=str(destination),
        amount_reversed=int(obj.get("amount_reversed") or 0),
        created=int(obj.get("created") or 0),
        transfer_group=obj.get("transfer_group") or None,
        metadata_transfer_id=metadata.get("ledger_transfer_id") or None,
        ledger_cause=metadata.get("ledger_cause") or None,
        reversals=reversals,
    )


def _reversal(obj: Mapping[str, Any]) -> ListedReversal:
    return ListedReversal(
        id=str(obj["id"]),
        amount=int(obj["amount"]),
        created=int(obj.get("created") or 0),
        ledger_cause=_metadata(obj).get("ledger_cause") or None,
    )
