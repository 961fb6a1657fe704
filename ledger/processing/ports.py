"""What the process managers need from Stripe, in the ledger's own words.

The Stripe adapter (`ledger.stripe.gateway`) implements `PaymentsGateway`; the
process managers import only this module, so they can be read (and reasoned
about) without knowing stripe-python, and any Stripe-compatible service fits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class FailureKind(StrEnum):
    """How a process manager must react to a failed call (DESIGN section 5)."""

    # Stripe refused for now (429, balance_insufficient): count an attempt, back off.
    RETRY_LATER = "retry_later"
    # Stripe will never do this (unknown destination, invalid amount): give up.
    PERMANENT = "permanent"
    # The call may or may not have happened (timeout, dropped connection, 5xx, a
    # state Stripe says differs from ours): look the object up, never call blindly.
    UNKNOWN = "unknown"
    # Our credentials are wrong (401) or lack a permission (403): stop all work,
    # spend no attempt, fail no transfer.
    OPERATOR = "operator"
    # Our own bug (same idempotency key with other parameters): park and alert.
    BUG = "bug"
    # A condition outside the transfer (`StripeCallFailed.condition`): our rate
    # (429), the platform's balance, the seller's account. Nothing happened;
    # the work waits with a backoff of its own and spends no attempt.
    WAIT = "wait"


class Condition(StrEnum):
    """What a WAIT waits for."""

    RATE_LIMIT = "rate_limit"
    PLATFORM_BALANCE = "platform_balance"
    SELLER_CAPABILITY = "seller_capability"


class StripeCallFailed(Exception):
    """A Stripe call did not succeed. The message never contains the API key."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
        condition: Condition | None = None,
        retry_after: float | None = None,
        key_spent: bool = False,
        replayed_error: bool = False,
    ) -> None:
        self.kind = kind
        self.code = code
        self.http_status = http_status
        self.request_id = request_id
        # WAIT only: what for, and how long Stripe asked us to wait (Retry-After).
        self.condition = condition
        self.retry_after = retry_after
        # Stripe knows this idempotency key from an earlier request that has
        # finished: it replayed that request's 5xx, or refused other
        # parameters under it. Sending the key again cannot make anything.
        self.key_spent = key_spent
        # Stripe replayed an earlier request's saved 5xx under this key: that
        # request has surely finished there.
        self.replayed_error = replayed_error
        super().__init__(message)

    def summary(self) -> str:
        """One line for `last_error`: what Stripe said, and where to look it up."""
        parts = [str(self.http_status)] if self.http_status else []
        if self.code:
            parts.append(self.code)
        parts.append(str(self))
        if self.request_id:
            parts.append(f"({self.request_id})")
        return " ".join(parts)

    def after_unknown_tries(self, earlier: Sequence[StripeCallFailed]) -> StripeCallFailed:
        """This (last) answer of a call whose earlier tries may have reached
        Stripe: the call's outcome is unknown, whatever this answer says."""
        tries = "; ".join(f.summary() for f in earlier)
        return StripeCallFailed(
            FailureKind.UNKNOWN,
            f"an earlier try may have reached Stripe ({tries}), then: {self.summary()}",
            code=self.code,
            http_status=self.http_status,
            request_id=self.request_id,
            key_spent=self.key_spent,
            replayed_error=self.replayed_error,
        )


class ClaimRanOut(Exception):
    """A money-moving try was not sent: `send_while` said the work's claim
    would run out before its answer came, and from then on another daemon
    may take the work over and look the call up. A try sent after that
    look-up would move money the look-up did not see; so it is never sent.
    `reached`: an earlier try of this call may have reached Stripe."""

    def __init__(self, message: str, *, reached: bool) -> None:
        self.reached = reached
        super().__init__(message)


class StoppedBeforeSending(Exception):
    """A try was not sent because the daemon is stopping (a signal came while
    it waited for a place among the calls in flight): after a stop, no new
    request leaves. `reached`: an earlier try of this call may have reached
    Stripe."""

    def __init__(self, message: str, *, reached: bool) -> None:
        self.reached = reached
        super().__init__(message)


@dataclass(frozen=True)
class StripeTransfer:
    id: str
    amount: int
    currency: str
    destination: str
    transfer_group: str | None
    amount_reversed: int
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StripeReversal:
    id: str
    transfer: str
    amount: int
    metadata: Mapping[str, str] = field(default_factory=dict)


class PaymentsGateway(Protocol):
    """Stripe Connect transfers and reversals. Every method raises
    StripeCallFailed on failure, already classified. The money-moving ones
    send each try only while `send_while()` is true (else ClaimRanOut)."""

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
    ) -> StripeTransfer: ...

    def transfers_in_group(self, transfer_group: str) -> Sequence[StripeTransfer]: ...

    def retrieve_transfer(self, transfer_id: str) -> StripeTransfer: ...

    def create_reversal(
        self,
        transfer_id: str,
        *,
        amount: int,
        metadata: Mapping[str, str],
        idempotency_key: str,
        send_while: Callable[[], bool] | None = None,
    ) -> StripeReversal: ...

    def reversals_of(self, transfer_id: str) -> Sequence[StripeReversal]: ...
