"""Random command sequences against a transfer, checked against a model of the matrix.

Hypothesis drives a transfer (created, or imported in any status) through random
payouts, refunds, reversal outcomes and admin changes (to known statuses and to typos),
saving it into an in-memory event store after every command. A small model, written
here independently of `ledger.matrix`, predicts each command's outcome; the store is
checked after every step: status as predicted, nothing appended by a refusal, every
stored status change legal and chained onto the previous one, and a replay equal to
the live transfer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ledger.domain import Transfer, TransferState
from ledger.errors import IdempotencyConflict, InvalidInput, LedgerError, TransitionRefused
from tests.design_matrix import LEGAL, STATUSES
from tests.unit.builders import in_memory_app

TYPOS: Final = ("Completed", "reversal-pending", " pending", "bogus", "")
LATER: Final = datetime(2030, 1, 1, tzinfo=UTC)
REQUEST_REFS: Final = ("refund-1", "refund-2")
STRIPE_TRANSFER_IDS: Final = ("tr_1", "tr_2")

Appended = Literal["appended"]
Nothing = Literal["nothing"]
APPENDED: Final[Appended] = "appended"
NOTHING: Final[Nothing] = "nothing"
AWAITING_PAYOUT: Final = {"pending", "failed"}
AWAITING_REVERSAL: Final = {"reversal_pending"}
Outcome = Appended | Nothing | type[LedgerError]


@dataclass
class TransferModel:
    """What the design says a transfer is after each command; nothing more."""

    transfer_id: UUID
    amount: int
    status: str
    version: int = 1
    retry_count: int = 0
    amount_reversed: int = 0
    stripe_transfer_id: str | None = None
    reversal_request_ref: str | None = None
    reversal_amount: int | None = None
    # A further refund of a reversed transfer waits for its reversal.
    further_pending: bool = False
    requested: set[str] = field(default_factory=set)
    reversal_ids: set[str] = field(default_factory=set)

    @property
    def outstanding(self) -> int:
        return self.amount - self.amount_reversed

    def _moves_to(self, to_status: str) -> bool:
        return (self.status, to_status) in LEGAL

    def _appended(self, to_status: str) -> Outcome:
        self.status = to_status
        self.version += 1
        return APPENDED

    def _at_stage(self, to_status: str, stage: set[str]) -> bool:
        """Legal for the matrix AND where the command's call site acts: payout
        outcomes on pending/failed transfers, reversal outcomes on reversal_pending."""
        return self._moves_to(to_status) and self.status in stage

    def payout_succeeded(self, stripe_transfer_id: str) -> Outcome:
        if self.status == "completed" and self.stripe_transfer_id == stripe_transfer_id:
            return NOTHING
        if not self._at_stage("completed", AWAITING_PAYOUT):
            return TransitionRefused
        self.stripe_transfer_id = stripe_transfer_id
        return self._appended("completed")

    def payout_failed(self) -> Outcome:
        if not self._at_stage("failed", AWAITING_PAYOUT):
            return TransitionRefused
        self.retry_count += 1
        return self._appended("failed")

    def permanently_failed(self, stage: set[str]) -> Outcome:
        if self.status == "permanently_failed":
            return NOTHING
        if not self._at_stage("permanently_failed", stage):
            return TransitionRefused
        return self._appended("permanently_failed")

    def reversal_requested(
        self, request_ref: str, amount: int | None, *, stripe_required: bool = True
    ) -> Outcome:
        if request_ref == self.reversal_request_ref:
            # The same request again: nothing, unless it names another amount.
            same = amount is None or amount == self.reversal_amount
            return NOTHING if same else IdempotencyConflict
        if request_ref in self.requested:
            return NOTHING  # an earlier refund, retried after a later one
        if self.status == "reversed":
            # A further refund: reversed -> reversed, within the matrix.
            if self.stripe_transfer_id is None:
                return TransitionRefused
            if self.outstanding <= 0:
                return InvalidInput
            if self.further_pending:
                return IdempotencyConflict
            amount = self.outstanding if amount is None else amount
            if amount > self.outstanding:
                return InvalidInput
            self.reversal_request_ref = request_ref
            self.reversal_amount = amount
            self.retry_count = 0
            self.further_pending = True
            self.requested.add(request_ref)
            return self._appended("reversed")
        if not self._moves_to("reversal_pending"):
            return TransitionRefused
        if stripe_required and self.stripe_transfer_id is None:
            return TransitionRefused  # nothing to reverse at Stripe (paid by hand)
        if self.outstanding <= 0:
            return InvalidInput
        if self.status == "reversal_pending":
            return IdempotencyConflict  # one reversal at a time
        amount = self.outstanding if amount is None else amount
        if amount > self.outstanding:
            return InvalidInput
        self.reversal_request_ref = request_ref
        self.reversal_amount = amount
        self.retry_count = 0
        self.requested.add(request_ref)
        return self._appended("reversal_pending")

    def reversal_attempt_failed(self) -> Outcome:
        if self.status == "reversed" and self.further_pending:
            self.retry_count += 1
            return self._appended("reversed")
        if not self._at_stage("reversal_pending", AWAITING_REVERSAL):
            return TransitionRefused
        self.retry_count += 1
        return self._appended("reversal_pending")

    def reversed(self, reversal_id: str, amount_reversed: int) -> Outcome:
        if reversal_id in self.reversal_ids:
            return NOTHING
        if self.status == "reversed" and not self.further_pending:
            return NOTHING
        if self.status != "reversed" and not self._at_stage("reversed", AWAITING_REVERSAL):
            return TransitionRefused
        self.amount_reversed = amount_reversed
        self.further_pending = False
        self.reversal_ids.add(reversal_id)
        return self._appended("reversed")

    def set_by_admin(self, to_status: str) -> Outcome:
        if not to_status:
            return InvalidInput
        if not self._moves_to(to_status):
            return TransitionRefused
        if to_status == "reversal_pending" and self.status != "reversal_pending":
            # A full-amount reversal request under a ref of the admin's own.
            return self.reversal_requested(
                f"admin:{self.transfer_id}:{self.version + 1}", None, stripe_required=False
            )
        # An operator's change cancels any scheduled retry or waiting refund.
        self.further_pending = False
        return self._appended(to_status)


class TransferLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.app = in_memory_app()
        self._transfer: Transfer | None = None
        self._model: TransferModel | None = None

    @property
    def transfer(self) -> Transfer:
        assert self._transfer is not None
        return self._transfer

    @property
    def model(self) -> TransferModel:
        assert self._model is not None
        return self._model

    # ----- how a transfer comes to be ---------------------------------------

    @initialize(origin=st.sampled_from(("created", *STATUSES)), amount=st.integers(2, 10**6))
    def a_transfer_comes_into_being(self, origin: str, amount: int) -> None:
        """Created for an order (pending), or imported from the old table in any status."""
        if origin == "created":
            self._transfer = Transfer.create(
                seller_account_id="acct_1",
                order_ref="order-1",
                amount=amount,
                currency="usd",
                actor="system:checkout",
            )
            self._model = TransferModel(self.transfer.id, amount, "pending")
        else:
            amount_reversed = amount // 2 if origin == "reversed" else 0
            self._transfer = Transfer.import_existing(
                transfer_id=uuid4(),
                state=TransferState(
                    status=origin,
                    seller_account_id="acct_1",
                    order_ref="legacy-1",
                    amount=amount,
                    currency="usd",
                    retry_count=2,
                    next_retry_at=None,
                    stripe_transfer_id="tr_legacy",
                    amount_reversed=amount_reversed,
                    last_error=None,
                    reversal_request_ref=None,
                    reversal_amount=None,
                ),
                source_updated_at=None,
                actor="system:import",
            )
            self._model = TransferModel(
                self.transfer.id,
                amount,
                origin,
                retry_count=2,
                amount_reversed=amount_reversed,
                stripe_transfer_id="tr_legacy",
                # Imported mid-reversal: owed the rest of its amount.
                reversal_amount=amount - amount_reversed if origin == "reversal_pending" else None,
            )
        self.app.save(self.transfer)

    # ----- one command, checked against the model ---------------------------------

    def stored_event_count(self) -> int:
        return len(list(self.app.events.get(self.transfer.id)))

    def attempt(self, expected: Outcome, command: Callable[[Transfer], object]) -> None:
        stored_before = self.stored_event_count()
        if isinstance(expected, type):
            with pytest.raises(LedgerError) as refused:
                command(self.transfer)
            assert type(refused.value) is expected, f"expected {expected.__name__}: {refused}"
            assert self.transfer.pending_events == [], "a refused command left an event"
        else:
            command(self.transfer)
        self.app.save(self.transfer)
        appended = self.stored_event_count() - stored_before
        assert appended == (1 if expected == APPENDED else 0)

    @rule(stripe_transfer_id=st.sampled_from(STRIPE_TRANSFER_IDS))
    def payout_succeeds(self, stripe_transfer_id: str) -> None:
        self.attempt(
            self.model.payout_succeeded(stripe_transfer_id),
            lambda t: t.record_payout_succeeded(
                stripe_transfer_id=stripe_transfer_id, actor="system:payout", caused_by=None
            ),
        )

    @rule(next_retry_at=st.none() | st.just(LATER))
    def payout_fails(self, next_retry_at: datetime | None) -> None:
        self.attempt(
            self.model.payout_failed(),
            lambda t: t.record_payout_failed(
                error="card_declined",
                next_retry_at=next_retry_at,
                actor="system:payout",
                caused_by=None,
            ),
        )

    @rule()
    def payout_fails_for_good(self) -> None:
        self.attempt(
            self.model.permanently_failed(AWAITING_PAYOUT),
            lambda t: t.record_payout_permanently_failed(
                error="account_closed", actor="system:payout", caused_by=None
            ),
        )

    @rule(request_ref=st.sampled_from(REQUEST_REFS), data=st.data())
    def a_refund_asks_for_a_reversal(self, request_ref: str, data: st.DataObject) -> None:
        amount = data.draw(st.none() | st.integers(1, self.model.amount + 1), label="amount")
        self.attempt(
            self.model.reversal_requested(request_ref, amount),
            lambda t: t.request_reversal(
                request_ref=request_ref, amount=amount, actor="bob@example.com", reason="refund"
            ),
        )

    @rule()
    def a_reversal_attempt_fails(self) -> None:
        self.attempt(
            self.model.reversal_attempt_failed(),
            lambda t: t.record_reversal_attempt_failed(
                error="timeout", next_retry_at=LATER, actor="system:reversal", caused_by=None
            ),
        )

    @rule(data=st.data(), number=st.integers(1, 3))
    def the_reversal_is_carried_out(self, data: st.DataObject, number: int) -> None:
        amount_reversed = data.draw(st.integers(1, self.model.amount), label="amount_reversed")
        self.attempt(
            self.model.reversed(f"trr_{number}", amount_reversed),
            lambda t: t.record_reversed(
                stripe_reversal_id=f"trr_{number}",
                amount_reversed=amount_reversed,
                actor="system:reversal",
                caused_by=None,
            ),
        )

    @rule()
    def the_reversal_fails_for_good(self) -> None:
        self.attempt(
            self.model.permanently_failed(AWAITING_REVERSAL),
            lambda t: t.record_reversal_permanently_failed(
                error="insufficient_funds", actor="system:reversal", caused_by=None
            ),
        )

    @rule(to_status=st.sampled_from(STATUSES + TYPOS))
    def an_admin_sets_the_status(self, to_status: str) -> None:
        self.attempt(
            self.model.set_by_admin(to_status),
            lambda t: t.set_status_by_admin(to_status, actor="carol@example.com", reason="ops"),
        )

    # ----- what must hold after every step --------------------------------------

    @invariant()
    def the_transfer_is_where_the_model_says(self) -> None:
        assert self.transfer.status == self.model.status
        assert self.transfer.version == self.model.version
        assert self.transfer.retry_count == self.model.retry_count
        assert self.transfer.amount_reversed == self.model.amount_reversed
        assert self.transfer.reversal_request_ref == self.model.reversal_request_ref
        assert self.transfer.reversal_amount == self.model.reversal_amount

    @invariant()
    def every_stored_status_change_is_legal_and_follows_the_one_before(self) -> None:
        resulting_status: str | None = None
        for event in self.app.events.get(self.transfer.id):
            if isinstance(event, Transfer.Imported):
                assert resulting_status is None
                resulting_status = event.status
            elif isinstance(event, Transfer.Created):
                assert resulting_status is None
                resulting_status = "pending"
            else:
                assert isinstance(event, Transfer.StatusChanged)
                assert event.from_status == resulting_status
                assert (event.from_status, event.to_status) in LEGAL
                resulting_status = event.to_status
        assert resulting_status == self.model.status

    @invariant()
    def replaying_the_stored_events_rebuilds_the_live_transfer(self) -> None:
        replayed: Transfer = self.app.repository.get(self.transfer.id)

        assert replayed == self.transfer


TransferLifecycle.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_a_transfer_only_ever_moves_as_the_matrix_allows = TransferLifecycle.TestCase
