"""The process manager: runs one transfer's due Stripe work (a payout or a
reversal, ledger/processing/effects.py), once.

`ProcessManager.handle` runs one transfer's due work through these steps:

1. it arrives claimed (one daemon at a time; the claim expires if its holder
   dies; the daemon's dispatcher claims what it hands out, many at once);
2. load the transfer and ask the effect which event asks for work now (none:
   another daemon or an operator got there first; release and stop);
3. if an earlier call's outcome is unknown, look the object up at Stripe and
   record what is there instead of calling again; if nothing is there, call
   again under the earlier call's key (within an hour of it), which Stripe
   answers once however many daemons send it. "Nothing there" proves the
   earlier call made nothing only if the look-up ran after the call's last
   try surely finished at Stripe (an hour and STRIPE_FINISHES_WITHIN after
   the call began). A look-up before then that comes too late to use the
   earlier key leaves the work waiting until a look-up can prove it;
4. record the attempt as started (committed, the claim renewed), then call
   Stripe with the key `ledger-<kind>-<cause>-a<attempt>`, outside any
   database transaction, sending each try only while the claim outlives its
   answer: after that another daemon may take over, look up, find nothing and
   call under the next key, so a late try would move the money twice;
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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from ledger import values
from ledger.application import Transfers
from ledger.domain import Transfer
from ledger.failpoints import failpoint
from ledger.processing.effects import (
    EFFECTS,
    NOTHING_DUE,
    PAYOUT,
    Found,
    FurtherReversalRefused,
    NothingToReverse,
    NotWhatWasAsked,
    OperatorProblem,
    StripeEffect,
    UnresolvedOutcome,
    idempotency_key,
)
from ledger.processing.observer import NO_OBSERVER, Observer
from ledger.processing.policy import RetryPolicy
from ledger.processing.ports import (
    ClaimRanOut,
    Condition,
    FailureKind,
    PaymentsGateway,
    StoppedBeforeSending,
    StripeCallFailed,
)
from ledger.processing.recording import OutcomeRecorder
from ledger.processing.work import Claim, LostClaim, WorkStore

log = logging.getLogger("ledger.processing")

# What a payout waits for, as its last_error says it.
_WAITING_FOR: Final = {
    "platform_balance": "the platform's Stripe balance (balance_insufficient)",
    "seller_capability": "the seller's Stripe account to be able to receive transfers",
}

# Stripe keeps an idempotency key's answer for at least 24 hours: a try is
# sent under an attempt's key only this soon after the attempt began.
SAME_KEY_WITHIN: Final = timedelta(hours=1)
# How long after `may_send` let a try go Stripe may still be acting on it: the
# request's way there plus its execution, which a client that timed out or
# died does not stop. An assumption, not a figure Stripe documents: minutes at
# the very worst (the deterministic simulation's Stripe takes up to five). A
# request Stripe acted on later than this could still be paid twice.
STRIPE_FINISHES_WITHIN: Final = timedelta(minutes=10)


@dataclass
class _Progress:
    """How far one handling got: decides what `outcome_unknown` must say if it stops."""

    claim: Claim
    outcome_unknown: bool
    call_started: bool = False
    # The claim was released with the recorded outcome, in its transaction.
    released: bool = False


def _lookup_proves_from(attempt_began: datetime) -> datetime:
    """From when a look-up that finds nothing proves that the attempt begun
    at `attempt_began` made nothing: its tries are all sent within
    SAME_KEY_WITHIN of its start (`may_send`), and Stripe is done with each
    within STRIPE_FINISHES_WITHIN of receiving it."""
    return attempt_began + SAME_KEY_WITHIN + STRIPE_FINISHES_WITHIN


def settles_unknown(failure: StripeCallFailed) -> bool:
    """Does this definite answer to a call (after a look-up, if one ran,
    found nothing from before) settle an earlier call's unknown outcome?
    Not a WAIT: a 429 is answered before anything runs and is not saved
    under the key, so it says nothing of an earlier try that may still land
    (found by review: a same-key resend met a 429, and the next attempt went
    out under a new key). The other WAITs (a seller not yet able to receive,
    the platform's balance) are taken the same way: keeping the outcome
    unknown only costs the next handling a look-up first."""
    return failure.kind not in (FailureKind.UNKNOWN, FailureKind.WAIT)


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
        recorder: OutcomeRecorder | None = None,
        send_margin: timedelta = timedelta(seconds=4),
    ) -> None:
        self.observer = observer
        # A try is sent only while the claim holds this much longer.
        self.send_margin = send_margin
        self.transfers = transfers
        self.work = work
        self.gateway = gateway
        self.policy = policy
        self.clock = clock
        # Outcomes of several workers saved in one append (see recording.py).
        self.recorder = recorder or OutcomeRecorder(transfers)

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
        except StoppedBeforeSending as stopped:
            # The daemon is stopping and this try was never sent: the work
            # goes back for the next daemon, knowing no more and no less than
            # before (an earlier try of this call may have reached Stripe).
            outcome_unknown = progress.outcome_unknown or stopped.reached
            self.work.release(claim, outcome_unknown=outcome_unknown, now=self.clock())
            return str(stopped)
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
            park_now = isinstance(
                error,
                UnresolvedOutcome | NothingToReverse | NotWhatWasAsked | FurtherReversalRefused,
            ) or (isinstance(error, StripeCallFailed) and error.kind == FailureKind.BUG)
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
        looked_up_at = self.clock()
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
        # Nothing at Stripe yet. The earlier call (a killed or frozen daemon's)
        # may still be on its way or running there, so a new key could move
        # the money twice: it is sent again under ITS key, which Stripe
        # answers once (a concurrent one gets 409, a finished one its saved
        # answer), while Stripe surely still knows the key.
        earlier = progress.claim.attempt_started_at
        # Does "nothing there" prove the earlier attempt made nothing? Judged
        # by when the look-up ran, not by now. Found by the deterministic
        # simulation: a handling paused for a day between its look-up and its
        # call (its heartbeat renewing the claim meanwhile) took its day-old
        # "nothing there" for proof and called under a new key; the earlier
        # request, still running at Stripe when it looked, had made its
        # transfer since. Paid twice.
        unproven = (
            progress.outcome_unknown
            and earlier is not None
            and looked_up_at < _lookup_proves_from(earlier)
        )
        if (
            unproven
            and earlier is not None
            and self.clock() >= earlier + SAME_KEY_WITHIN - self.send_margin
        ):
            # Too late to send under its key, too early for a look-up to
            # prove anything: the work waits until one can.
            return self._wait_for_proof(progress, earlier, "not sent")
        # Unproven, and early enough: the earlier attempt again, under its key.
        same_key = unproven
        try:
            effect.check_callable(self.gateway, transfer)
        except StripeCallFailed as failure:
            return self._failed(effect, transfer, cause, failure, progress, note="look-up failed")
        began = earlier if same_key and earlier is not None else self.clock()
        attempt = self.work.begin_attempt(progress.claim, cause, self.clock(), same_key=same_key)
        self.observer.attempt_started(effect.kind)
        failpoint("before_stripe_call")
        progress.call_started = True
        claim = progress.claim

        def may_send() -> bool:
            # Our claim holds (nobody else may have looked up and called), and
            # Stripe surely still knows this key (found by the deterministic
            # simulation: a retry a day later was paid again).
            now = self.clock()
            return now < began + SAME_KEY_WITHIN and self.work.holds(claim, now, self.send_margin)

        try:
            found = effect.call(
                self.gateway,
                transfer,
                cause,
                idempotency_key(effect.kind, cause, attempt),
                may_send,
            )
        except ClaimRanOut as ran_out:
            # Found by the deterministic simulation: a daemon paused for a day
            # before sending paid a transfer another daemon had paid since.
            # Nothing more is sent under this key; whoever holds the work next
            # looks up first (begin_attempt left outcome_unknown set).
            progress.outcome_unknown = True
            return str(ran_out)
        except StripeCallFailed as failure:
            if same_key and failure.key_spent:
                return self._key_spent(effect, transfer, cause, failure, progress)
            if failure.kind != FailureKind.UNKNOWN:
                if settles_unknown(failure):
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

    def _key_spent(
        self,
        effect: StripeEffect,
        transfer: Transfer,
        cause: str,
        failure: StripeCallFailed,
        progress: _Progress,
    ) -> str:
        """The earlier request under this key has finished (Stripe replayed its
        5xx, or refused other parameters under the key): what it made, if
        anything, is at Stripe now. Found: recorded. Not found: nothing was
        made, and the next attempt may use a new key."""
        looked_up_at = self.clock()
        try:
            found = effect.look_up(self.gateway, transfer, cause)
        except StripeCallFailed as lookup_failure:
            progress.outcome_unknown = True
            note = f"the look-up failed: {lookup_failure.summary()}"
            return self._failed(effect, transfer, cause, failure, progress, note=note)
        if found is not None:
            self._record_success(effect, transfer, found, cause, progress)
            return f"found {found.stripe_id} at Stripe after {failure.summary()}"
        earlier = progress.claim.attempt_started_at
        if (
            effect.resend_may_differ
            and not failure.replayed_error
            and earlier is not None
            and looked_up_at < _lookup_proves_from(earlier)
        ):
            # "Other parameters under this key" says a request with the key
            # was received, not that it has finished: were Stripe to answer
            # so while our first request under it still runs, nothing found
            # here would prove nothing (found by review; the simulator
            # answers 409 while a key is in use). Only a resend that can
            # differ from that first request (a reversal's asks for what is
            # left) meets it; a payout's never does, so for a payout the
            # answer means someone else's request took the key first. This
            # one waits for a look-up that can prove something, spending no
            # attempt.
            return self._wait_for_proof(progress, earlier, f"after {failure.summary()}")
        progress.outcome_unknown = False
        definite = StripeCallFailed(
            FailureKind.RETRY_LATER,
            f"the earlier request under this key made nothing ({failure.summary()})",
            code=failure.code,
            http_status=failure.http_status,
            request_id=failure.request_id,
        )
        return self._failed(effect, transfer, cause, definite, progress)

    def _wait_for_proof(self, progress: _Progress, earlier: datetime, what: str) -> str:
        """Release the work, outcome unknown, until a look-up can prove that
        the attempt begun at `earlier` made nothing; nothing is sent."""
        proof_from = _lookup_proves_from(earlier)
        reason = (
            f"{what}: the earlier attempt's request may have been running at Stripe when it"
            f" was looked up; a look-up from {values.iso(max(proof_from, self.clock()))} decides"
        )
        self.work.release(
            progress.claim, outcome_unknown=True, now=self.clock(), until=proof_from, reason=reason
        )
        progress.released = True
        return reason

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
        if failure.kind == FailureKind.WAIT:
            return self._wait(effect, transfer, cause, failure, progress)
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

    def _wait(
        self,
        effect: StripeEffect,
        transfer: Transfer,
        cause: str,
        failure: StripeCallFailed,
        progress: _Progress,
    ) -> str:
        """A condition outside the transfer (ports.Condition): no attempt is
        spent, no event appended; the work waits with a backoff of its own.
        What outcome_unknown said stays (a look-up refused with a 429 leaves
        the earlier call as unknown as it was)."""
        claim = progress.claim
        condition = str(failure.condition or Condition.RATE_LIMIT)
        now = self.clock()
        waits = claim.waits + 1 if claim.waiting_for == condition else 1
        since = claim.waiting_since if claim.waiting_for == condition else now
        summary = values.clipped(failure.summary())
        if (
            condition == Condition.SELLER_CAPABILITY
            and since is not None
            and now - since >= self.policy.seller_wait
            and not progress.outcome_unknown
        ):
            error = values.clipped(
                f"the seller's account could not receive transfers since"
                f" {values.iso(since)}: {summary}"
            )
            self._record(
                transfer,
                lambda t: effect.record_permanent_failure(t, error, cause),
                progress,
                cause,
            )
            self.observer.permanent_failure(effect.kind)
            return f"permanently failed: {error}"
        until = now + self.policy.wait(condition, waits, failure.retry_after)
        wait = self.work.wait_statement(
            claim,
            condition=condition,
            failure=summary,
            outcome_unknown=progress.outcome_unknown,
            until=until,
            now=now,
        )
        if waits == 1 and condition != Condition.RATE_LIMIT and effect.kind == PAYOUT:
            # The first refusal of a streak is told on the transfer itself
            # (its last_error), for the person who looks at it; a 429 is too
            # passing for an event. Saved with the wait, in one transaction.
            told = values.clipped(f"waiting for {_WAITING_FOR[condition]}: {summary}")
            self.recorder.record(
                transfer,
                lambda t: t.record_payout_waiting(error=told, actor=effect.actor, caused_by=cause),
                [wait],
                cause,
            )
        else:
            self.work.apply(wait)
        progress.released = True
        self.observer.waiting(effect.kind, condition)
        return f"waiting for {condition} until {until:%Y-%m-%d %H:%M:%S}Z: {summary}"

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
