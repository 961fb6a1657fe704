"""The process managers: "an event asks for a Stripe effect; the outcome is
recorded as events on the transfer", once, for payouts and reversals alike.

`ProcessManager.handle` runs one transfer's due work through these steps:

1. it arrives claimed (one daemon at a time; the claim expires if its holder
   dies; the daemon's dispatcher claims what it hands out, many at once);
2. load the transfer and ask the effect which event asks for work now (none:
   another daemon or an operator got there first; release and stop);
3. if an earlier call's outcome is unknown, look the object up at Stripe and
   record what is there instead of calling again;
4. record the attempt as started (committed), then call Stripe with the key
   `ledger-<kind>-<cause>-a<attempt>`, outside any database transaction;
5. record the outcome through the aggregate's commands (the matrix decides),
   and release the claim.

A crash between any two steps leaves either nothing done (the work is found
again) or `outcome_unknown` set (the next daemon looks up before calling), so
money never moves twice. Stripe's answer is classified by the gateway:
succeeded, retry later, permanent refusal, unknown (look it up), operator
problem (stop, spend nothing) or our own bug (park).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, TypeVar

from ledger import values
from ledger.application import Transfers
from ledger.domain import Transfer, payout_cause
from ledger.errors import LedgerError
from ledger.matrix import Status
from ledger.processing.failpoints import failpoint
from ledger.processing.observer import NO_OBSERVER, Observer
from ledger.processing.policy import RetryPolicy
from ledger.processing.ports import (
    FailureKind,
    PaymentsGateway,
    StripeCallFailed,
    StripeReversal,
    StripeTransfer,
)
from ledger.processing.recording import OutcomeRecorder
from ledger.processing.work import Claim, LostClaim, WorkStore

log = logging.getLogger("ledger.processing")

PAYOUT: Final = "payout"
REVERSAL: Final = "reversal"
# What `handle` returns when the read table said due but the transfer did not.
NOTHING_DUE: Final = "nothing due"


class UnresolvedOutcome(LedgerError):
    """Attempts ran out while a call's outcome is still unknown: parked for a
    person, since money may have moved."""


class NothingToReverse(LedgerError):
    """A reversal is asked for, but neither the ledger nor Stripe knows a
    Stripe transfer to reverse (an admin asked it of a transfer paid outside
    the ledger, or an imported one). Never "permanently failed" (that would
    drop the refund silently): parked, for a person to reverse it the way it
    was paid."""


class OperatorProblem(LedgerError):
    """Stripe refused our credentials (401) or a permission (403). Not a transfer
    failure: the daemon stops and says so; no attempt is spent, no transfer failed."""


@dataclass(frozen=True)
class Found:
    """A Stripe object that fulfils the work: made now, or found by a look-up."""

    stripe_id: str
    # Reversals: the transfer's total reversed amount once this one counts.
    amount_reversed: int = 0


def idempotency_key(kind: str, cause: str, attempt: int) -> str:
    """Deterministic per (work, attempt): a retried call of the same attempt
    replays Stripe's saved answer; the next attempt gets a fresh key, which is
    what a saved 500 needs (DESIGN section 6)."""
    return f"ledger-{kind}-{cause}-a{attempt}"


class StripeEffect(ABC):
    """One kind of Stripe effect the ledger asks for."""

    kind: str
    actor: str

    @abstractmethod
    def cause(self, transfer: Transfer, now: datetime) -> str | None:
        """The event asking for this effect now, or None when nothing is due."""

    @abstractmethod
    def look_up(self, gateway: PaymentsGateway, transfer: Transfer, cause: str) -> Found | None:
        """What Stripe already did for this cause, if anything."""

    def check_callable(  # noqa: B027 - an optional step; most effects can always call
        self, gateway: PaymentsGateway, transfer: Transfer
    ) -> None:
        """Raise when the call cannot be made at all (before an attempt is
        counted); the default: it always can."""

    @abstractmethod
    def call(self, gateway: PaymentsGateway, transfer: Transfer, cause: str, key: str) -> Found: ...

    @abstractmethod
    def record_success(self, transfer: Transfer, found: Found, cause: str) -> None: ...

    @abstractmethod
    def record_attempt_failed(
        self, transfer: Transfer, error: str, retry_at: datetime, cause: str
    ) -> None: ...

    @abstractmethod
    def record_permanent_failure(self, transfer: Transfer, error: str, cause: str) -> None: ...


class Payout(StripeEffect):
    """processSellerTransfers and TransferRetryWorker: pending, or failed with
    a retry due -> a Stripe transfer to the seller."""

    kind = PAYOUT
    actor = "system:payout-manager"

    def cause(self, transfer: Transfer, now: datetime) -> str | None:
        due = transfer.status == Status.PENDING or (
            transfer.status == Status.FAILED
            and transfer.next_retry_at is not None
            and transfer.next_retry_at <= now
        )
        return payout_cause(transfer.id) if due else None

    def look_up(self, gateway: PaymentsGateway, transfer: Transfer, cause: str) -> Found | None:
        # transfer_group is the ledger transfer id: every Stripe transfer ever
        # made for it, under any key, is in the group.
        made = gateway.transfers_in_group(str(transfer.id))
        if not made:
            return None
        if len(made) > 1:
            log.error(
                "transfer %s has %d Stripe transfers (%s): money moved more than once,"
                " reverse the extras by hand",
                transfer.id,
                len(made),
                ", ".join(t.id for t in made),
            )
        return Found(_oldest(made).id)

    def call(self, gateway: PaymentsGateway, transfer: Transfer, cause: str, key: str) -> Found:
        made = gateway.create_transfer(
            amount=transfer.amount,
            currency=transfer.currency,
            destination=transfer.seller_account_id,
            transfer_group=str(transfer.id),
            metadata={
                "ledger_transfer_id": str(transfer.id),
                "ledger_cause": cause,
                "ledger_order_ref": transfer.order_ref,
            },
            idempotency_key=key,
        )
        return Found(made.id)

    def record_success(self, transfer: Transfer, found: Found, cause: str) -> None:
        transfer.record_payout_succeeded(
            stripe_transfer_id=found.stripe_id, actor=self.actor, caused_by=cause
        )

    def record_attempt_failed(
        self, transfer: Transfer, error: str, retry_at: datetime, cause: str
    ) -> None:
        transfer.record_payout_failed(
            error=error, next_retry_at=retry_at, actor=self.actor, caused_by=cause
        )

    def record_permanent_failure(self, transfer: Transfer, error: str, cause: str) -> None:
        if transfer.status == Status.PENDING:
            # The matrix has no pending -> permanently_failed: the refused
            # attempt is a failure (no retry scheduled), then the ledger gives
            # up. Both events are saved in one append.
            transfer.record_payout_failed(
                error=error, next_retry_at=None, actor=self.actor, caused_by=cause
            )
        transfer.record_payout_permanently_failed(error=error, actor=self.actor, caused_by=cause)


class Reversal(StripeEffect):
    """StripeReversalWorker: reversal_pending, due -> a Stripe transfer reversal
    of the requested amount."""

    kind = REVERSAL
    actor = "system:reversal-manager"

    def cause(self, transfer: Transfer, now: datetime) -> str | None:
        due = transfer.status == Status.REVERSAL_PENDING and (
            transfer.next_retry_at is None or transfer.next_retry_at <= now
        )
        return transfer.reversal_cause if due else None

    def look_up(self, gateway: PaymentsGateway, transfer: Transfer, cause: str) -> Found | None:
        stripe_transfer = self._stripe_transfer_id(gateway, transfer)
        if stripe_transfer is None:
            return None
        reversals = gateway.reversals_of(stripe_transfer)
        ours = [r for r in reversals if r.metadata.get("ledger_cause") == cause]
        if ours:
            if len(ours) > 1:
                log.error(
                    "transfer %s: %d Stripe reversals for one request (%s)",
                    transfer.id,
                    len(ours),
                    ", ".join(r.id for r in ours),
                )
            return self._found(transfer, _oldest(ours))
        # Reversed in full outside the ledger (the Dashboard, another system):
        # record Stripe's truth rather than ask for more than exists.
        at_stripe = gateway.retrieve_transfer(stripe_transfer)
        if reversals and at_stripe.amount_reversed >= at_stripe.amount:
            total = min(at_stripe.amount_reversed, transfer.amount)
            return Found(reversals[0].id, amount_reversed=total)
        return None

    def check_callable(self, gateway: PaymentsGateway, transfer: Transfer) -> None:
        if self._stripe_transfer_id(gateway, transfer) is None:
            raise NothingToReverse(
                f"no Stripe transfer to reverse: transfer {transfer.id} records none and Stripe"
                " has none in its transfer_group; reverse the money the way it was paid, then"
                " settle the transfer with `ledger transfer set-status`"
            )

    def call(self, gateway: PaymentsGateway, transfer: Transfer, cause: str, key: str) -> Found:
        stripe_transfer = self._stripe_transfer_id(gateway, transfer)
        assert stripe_transfer is not None  # check_callable ran first
        assert transfer.reversal_amount is not None  # set with every reversal_pending
        made = gateway.create_reversal(
            stripe_transfer,
            amount=transfer.reversal_amount,
            metadata={
                "ledger_transfer_id": str(transfer.id),
                "ledger_cause": cause,
                "ledger_request_ref": transfer.reversal_request_ref or "",
            },
            idempotency_key=key,
        )
        return self._found(transfer, made)

    def record_success(self, transfer: Transfer, found: Found, cause: str) -> None:
        transfer.record_reversed(
            stripe_reversal_id=found.stripe_id,
            amount_reversed=found.amount_reversed,
            actor=self.actor,
            caused_by=cause,
        )

    def record_attempt_failed(
        self, transfer: Transfer, error: str, retry_at: datetime, cause: str
    ) -> None:
        transfer.record_reversal_attempt_failed(
            error=error, next_retry_at=retry_at, actor=self.actor, caused_by=cause
        )

    def record_permanent_failure(self, transfer: Transfer, error: str, cause: str) -> None:
        transfer.record_reversal_permanently_failed(error=error, actor=self.actor, caused_by=cause)

    @staticmethod
    def _found(transfer: Transfer, reversal: StripeReversal) -> Found:
        total = min(transfer.amount, transfer.amount_reversed + reversal.amount)
        return Found(reversal.id, amount_reversed=total)

    @staticmethod
    def _stripe_transfer_id(gateway: PaymentsGateway, transfer: Transfer) -> str | None:
        if transfer.stripe_transfer_id:
            return transfer.stripe_transfer_id
        made = gateway.transfers_in_group(str(transfer.id))
        return _oldest(made).id if made else None


T = TypeVar("T", StripeTransfer, StripeReversal)


def _oldest(objects: Sequence[T]) -> T:
    return objects[-1]  # Stripe lists newest first.


EFFECTS: Final[Mapping[str, StripeEffect]] = {PAYOUT: Payout(), REVERSAL: Reversal()}


@dataclass
class _Progress:
    """How far one handling got: decides what `outcome_unknown` must say if it stops."""

    claim: Claim
    outcome_unknown: bool
    call_started: bool = False
    # The claim was released with the recorded outcome, in its transaction.
    released: bool = False


class ProcessManager:
    """Runs due work through the steps in this module's docstring."""

    def __init__(
        self,
        transfers: Transfers,
        work: WorkStore,
        gateway: PaymentsGateway,
        policy: RetryPolicy,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        observer: Observer = NO_OBSERVER,
    ) -> None:
        self.observer = observer
        self.transfers = transfers
        self.work = work
        self.gateway = gateway
        self.policy = policy
        self.clock = clock
        self.recorder = OutcomeRecorder(transfers)

    def handle(self, claim: Claim) -> str:
        """Do the claimed work if it is still due; returns what happened, in a
        few words (for logs). The daemon's dispatcher claims what it hands out,
        many in one statement (`WorkStore.claim_many`)."""
        transfer_id, kind = claim.transfer_id, claim.kind
        effect = EFFECTS[kind]
        progress = _Progress(claim=claim, outcome_unknown=claim.outcome_unknown)
        try:
            transfer = self.transfers.get(transfer_id)
            cause = effect.cause(transfer, self.clock())
            if cause is None:
                self.work.release(claim, outcome_unknown=progress.outcome_unknown, now=self.clock())
                return NOTHING_DUE
            # A new cause (a new request) starts with a clean slate.
            progress.outcome_unknown = claim.outcome_unknown and claim.cause == cause
            outcome = self._run(effect, transfer, cause, progress)
        except LostClaim:
            return "taken over"
        except OperatorProblem:
            # Stripe did nothing on a 401/403; keep only what we knew before.
            self.work.release(claim, outcome_unknown=progress.outcome_unknown, now=self.clock())
            raise
        except Exception as error:
            # Not Stripe's answer (a bug, an unreadable event, the database):
            # never skipped, never blocking others: back off, then park.
            failure = values.clipped(f"{type(error).__name__}: {error}")
            # Parked at once: Stripe saying "this key was used with other
            # parameters" (a bug somewhere), and attempts run out while money
            # may have moved. A person looks before any new key is used.
            park_now = isinstance(error, UnresolvedOutcome | NothingToReverse) or (
                isinstance(error, StripeCallFailed) and error.kind == FailureKind.BUG
            )
            parked = self.work.handling_failed(
                claim,
                failure=failure,
                outcome_unknown=progress.outcome_unknown or progress.call_started,
                retry_at=self.clock() + self.policy.delay(claim.handling_failures + 1),
                now=self.clock(),
                park_now=park_now,
            )
            log.error(  # noqa: TRY400 - the failure is in the line; no traceback in logs
                "%s of transfer %s failed to process%s: %s",
                kind,
                transfer_id,
                " and is parked" if parked else "; will retry",
                failure,
            )
            return "parked" if parked else "handling failed"
        if not progress.released:
            self.work.release(claim, outcome_unknown=progress.outcome_unknown, now=self.clock())
        return outcome

    def _run(
        self,
        effect: StripeEffect,
        transfer: Transfer,
        cause: str,
        progress: _Progress,
    ) -> str:
        if progress.outcome_unknown:
            # An earlier call may have happened: what Stripe has decides.
            try:
                found = effect.look_up(self.gateway, transfer, cause)
            except StripeCallFailed as failure:
                return self._failed(
                    effect, transfer, cause, failure, progress, note="look-up failed"
                )
            if found is not None:
                self._record_success(effect, transfer, found, cause, progress)
                return f"found {found.stripe_id} at Stripe (an earlier call's outcome was unknown)"
        try:
            effect.check_callable(self.gateway, transfer)
        except StripeCallFailed as failure:
            return self._failed(effect, transfer, cause, failure, progress, note="look-up failed")
        attempt = self.work.begin_attempt(progress.claim, cause, self.clock())
        self.observer.attempt_started(effect.kind)
        failpoint("before_stripe_call")
        progress.call_started = True
        try:
            found = effect.call(
                self.gateway, transfer, cause, idempotency_key(effect.kind, cause, attempt)
            )
        except StripeCallFailed as failure:
            if failure.kind != FailureKind.UNKNOWN:
                # A definite answer to this call (and a look-up, if one ran,
                # found nothing from before): nothing is unknown any more.
                progress.outcome_unknown = False
                return self._failed(effect, transfer, cause, failure, progress)
            # It may have happened: the object tells, not the error.
            progress.outcome_unknown = True
            try:
                looked_up = effect.look_up(self.gateway, transfer, cause)
            except StripeCallFailed as lookup_failure:
                if lookup_failure.kind in (FailureKind.OPERATOR, FailureKind.BUG):
                    return self._failed(effect, transfer, cause, lookup_failure, progress)
                note = f"the look-up failed too: {lookup_failure.summary()}"
                return self._failed(effect, transfer, cause, failure, progress, note=note)
            if looked_up is None:
                return self._failed(effect, transfer, cause, failure, progress, note="not found")
            self._record_success(effect, transfer, looked_up, cause, progress)
            return f"found {looked_up.stripe_id} at Stripe after {failure.summary()}"
        failpoint("after_stripe_call")
        self._record_success(effect, transfer, found, cause, progress)
        failpoint("after_record")
        return f"succeeded: {found.stripe_id}"

    def _record_success(
        self,
        effect: StripeEffect,
        transfer: Transfer,
        found: Found,
        cause: str,
        progress: _Progress,
    ) -> None:
        progress.outcome_unknown = False
        self._record(transfer, lambda t: effect.record_success(t, found, cause), progress, cause)

    def _failed(
        self,
        effect: StripeEffect,
        transfer: Transfer,
        cause: str,
        failure: StripeCallFailed,
        progress: _Progress,
        *,
        note: str = "",
    ) -> str:
        """Record a failed attempt (or give up) as the failure's kind says."""
        if failure.kind == FailureKind.OPERATOR:
            raise OperatorProblem(
                f"Stripe refused the API key ({failure.http_status}): {failure};"
                " check STRIPE_API_KEY. No transfer was touched."
            )
        if failure.kind == FailureKind.BUG:
            raise failure  # handle() parks it: the same request cannot succeed
        error = values.clipped(failure.summary())
        failed_attempts = transfer.retry_count + 1
        if progress.outcome_unknown:
            # Money may have moved: the ledger never gives up on its own here
            # (that would say "not paid" of what may be paid). It tries again
            # later, looking up first, and when attempts run out a person looks.
            error = values.clipped(
                f"outcome unknown ({note}): {error}" if note else f"outcome unknown: {error}"
            )
            if self.policy.exhausted(failed_attempts):
                raise UnresolvedOutcome(
                    f"{effect.kind} of transfer {transfer.id}: after {failed_attempts}"
                    f" attempts, {error}"
                )
        elif failure.kind == FailureKind.PERMANENT:
            self._record(
                transfer,
                lambda t: effect.record_permanent_failure(t, error, cause),
                progress,
                cause,
            )
            self.observer.permanent_failure(effect.kind)
            return f"permanently failed: {error}"
        elif self.policy.exhausted(failed_attempts):
            final = values.clipped(f"gave up after {failed_attempts} attempts: {error}")
            self._record(
                transfer,
                lambda t: effect.record_permanent_failure(t, final, cause),
                progress,
                cause,
            )
            self.observer.permanent_failure(effect.kind)
            return f"permanently failed: {final}"
        retry_at = self.clock() + self.policy.delay(failed_attempts)
        self._record(
            transfer,
            lambda t: effect.record_attempt_failed(t, error, retry_at, cause),
            progress,
            cause,
        )
        return f"attempt {failed_attempts} failed, retry at {retry_at:%Y-%m-%d %H:%M:%S}Z: {error}"

    def _record(
        self,
        transfer: Transfer,
        command: Callable[[Transfer], None],
        progress: _Progress,
        cause: str,
    ) -> None:
        """Record an outcome through the aggregate's commands (the matrix
        decides), and release the claim in the same commit, so that the outcome
        and what `outcome_unknown` says cannot disagree after a crash.

        `transfer` was loaded for this handling and not changed: the command
        runs on it and it is saved with other workers' outcomes in one append;
        a stale copy (another writer appended since) is reloaded and the
        command re-run."""
        release = self.work.release_statement(
            progress.claim, progress.outcome_unknown, self.clock()
        )
        self.recorder.record(transfer, command, [release], cause)
        progress.released = True
