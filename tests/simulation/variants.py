"""Deliberately broken ledgers: each switches off one thing the money path
relies on, for one schedule, so that tests/simulation/test_simulation.py can
show the simulation finds what that breakage does (and names it) within its
budget. A simulation that finds nothing when the safety is switched off
proves nothing when it is switched on.

Each is a context manager patching the product for the schedule's duration;
nothing here is used by the product or by a passing schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from typing import Any
from unittest import mock

from ledger.failpoints import failpoint
from ledger.processing import effects, manager
from ledger.processing.ports import Condition, FailureKind
from ledger.processing.work import Claim, WorkStore
from ledger.stripe import gateway
from tests.simulation.world import SimWorld, Variant

MONEY_TWICE = ("money moved twice", "reversed more than paid")


@contextmanager
def _no_lookup(world: SimWorld) -> Iterator[None]:
    """An unknown outcome is retried under a new key without looking up."""
    with (
        mock.patch.object(effects.Payout, "look_up", lambda *a: None),
        mock.patch.object(effects.Reversal, "look_up", lambda *a: None),
    ):
        yield


@contextmanager
def _last_try_only(world: SimWorld) -> Iterator[None]:
    """The hardening issue's F1: a call's outcome is decided by its last try
    alone (a dropped connection, then a 429 on the same key: "retry later")."""
    with mock.patch.object(gateway, "may_have_reached_stripe", lambda error: False):
        yield


@contextmanager
def _claims_ignored(world: SimWorld) -> Iterator[None]:
    """Claims are taken and attempts begun whoever holds the work."""
    claim_many = WorkStore.claim_many
    begin_attempt = WorkStore.begin_attempt

    def take_all(self: WorkStore, items: Any, now: Any, dead: Any = ()) -> list[Claim]:
        for transfer_id, kind in items:
            self.db.execute_alone(
                "UPDATE stripe_work SET claimed_by = NULL WHERE transfer_id = ? AND kind = ?",
                (self.db.to_db_id(transfer_id), kind),
            )
        return claim_many(self, items, now, dead)

    def begin_anyway(
        self: WorkStore, claim: Claim, cause: str, now: Any, *, same_key: bool = False
    ) -> int:
        self.db.execute_alone(
            "UPDATE stripe_work SET claimed_by = ? WHERE transfer_id = ? AND kind = ?",
            (claim.owner, self.db.to_db_id(claim.transfer_id), claim.kind),
        )
        return begin_attempt(self, claim, cause, now, same_key=same_key)

    with (
        mock.patch.object(WorkStore, "claim_many", take_all),
        mock.patch.object(WorkStore, "begin_attempt", begin_anyway),
    ):
        yield


@contextmanager
def _release_then_record(world: SimWorld) -> Iterator[None]:
    """The claim is released (outcome_unknown cleared) in one transaction and
    the outcome recorded in a second: a crash between loses the outcome."""

    def record(
        self: manager.ProcessManager,
        transfer: Any,
        command: Callable[[Any], None],
        progress: Any,
        cause: str,
    ) -> None:
        self.work.release(progress.claim, outcome_unknown=False, now=self.clock())
        progress.released = True
        failpoint("between_release_and_record")
        self.recorder.record(transfer, command, [], cause)

    with mock.patch.object(manager.ProcessManager, "_record", record):
        yield


@contextmanager
def _send_after_claim(world: SimWorld) -> Iterator[None]:
    """Tries are sent however long ago the attempt began: its claim may have
    run out and another daemon taken over, looked up and paid, or Stripe may
    have forgotten the key. (Stretching SAME_KEY_WITHIN also puts the moment a
    look-up proves anything ten years off, so every later attempt goes out
    under the first one's key.)"""
    init = manager.ProcessManager.__init__

    def never_late(self: manager.ProcessManager, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.send_margin = -timedelta(days=3650)

    with (
        mock.patch.object(manager.ProcessManager, "__init__", never_late),
        mock.patch.object(manager, "SAME_KEY_WITHIN", timedelta(days=3650)),
    ):
        yield


@contextmanager
def _429_spends_an_attempt(world: SimWorld) -> Iterator[None]:
    """A 429 counted as a failed attempt (what the ledger did before the
    real-Stripe issue): rate limits burn transfers' attempts."""
    real = gateway.classify

    def classify(error: Any, secret: str = "") -> Any:
        failure = real(error, secret)
        if failure.kind == FailureKind.WAIT and failure.condition == Condition.RATE_LIMIT:
            failure.kind = FailureKind.RETRY_LATER
        return failure

    with mock.patch.object(gateway, "classify", classify):
        yield


@contextmanager
def _429_settles_unknown(world: SimWorld) -> Iterator[None]:
    """The review's finding: a 429 met by a same-key resend counted as a
    definite answer, so the next attempt went out under a new key without a
    look-up, while the first request could still land at Stripe."""
    with mock.patch.object(
        manager, "settles_unknown", lambda failure: failure.kind != FailureKind.UNKNOWN
    ):
        yield


@contextmanager
def _lookup_always_proof(world: SimWorld) -> Iterator[None]:
    """A look-up that finds nothing taken for proof that the earlier attempt
    made nothing, however soon after it ran: the next attempt goes out under
    a new key while the earlier request may still be running at Stripe (the
    rule behind the fix for the simulation's seed 914368)."""
    with mock.patch.object(manager, "_lookup_proves_from", lambda began: began):
        yield


def _variant(name: str, install: Callable[[SimWorld], AbstractContextManager[None]]) -> Variant:
    return Variant(name=name, install=install, expected=MONEY_TWICE)


VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        _variant("no-lookup", _no_lookup),
        _variant("last-try-only", _last_try_only),
        _variant("claims-ignored", _claims_ignored),
        _variant("release-then-record", _release_then_record),
        _variant("send-after-claim", _send_after_claim),
        _variant("429-settles-unknown", _429_settles_unknown),
        _variant("lookup-always-proof", _lookup_always_proof),
        Variant(
            name="429-spends-an-attempt",
            install=_429_spends_an_attempt,
            expected=("attempt spent on back-pressure",),
        ),
    )
}
