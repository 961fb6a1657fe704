"""The Transfer aggregate: each command records its past-tense event, or is refused
and records nothing at all."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Final
from uuid import uuid4

import pytest

from ledger.domain import Transfer, event_ref, transfer_id_for_order
from ledger.errors import IdempotencyConflict, InvalidInput, TransitionRefused
from tests.design_matrix import LEGAL, STATUSES
from tests.unit.builders import (
    AMOUNT,
    CHECKOUT,
    EVEN_LATER,
    FIRST_REFUND,
    LATER,
    PAYOUT_MANAGER,
    REFUND_ACCOUNTING,
    REVERSAL_MANAGER,
    SELLER,
    SOURCE_UPDATED_AT,
    SUPPORT_AGENT,
    a_new_transfer,
    a_transfer_in,
    an_imported_transfer,
    in_memory_app,
)

ORDER_REF: Final = "order-7"

Command = Callable[[Transfer], object]

# Each command, with the status it moves a transfer to.
COMMANDS: Final[dict[str, tuple[str, Command]]] = {
    "record_payout_succeeded": (
        "completed",
        lambda t: t.record_payout_succeeded(
            stripe_transfer_id="tr_2", actor=PAYOUT_MANAGER, caused_by=None
        ),
    ),
    "record_payout_failed": (
        "failed",
        lambda t: t.record_payout_failed(
            error="card_declined", next_retry_at=LATER, actor=PAYOUT_MANAGER, caused_by=None
        ),
    ),
    "record_payout_permanently_failed": (
        "permanently_failed",
        lambda t: t.record_payout_permanently_failed(
            error="account_closed", actor=PAYOUT_MANAGER, caused_by=None
        ),
    ),
    "request_reversal": (
        "reversal_pending",
        lambda t: t.request_reversal(
            request_ref="refund-2", amount=None, actor=REFUND_ACCOUNTING, reason="refunded"
        ),
    ),
    "record_reversal_attempt_failed": (
        "reversal_pending",
        lambda t: t.record_reversal_attempt_failed(
            error="timeout", next_retry_at=LATER, actor=REVERSAL_MANAGER, caused_by=None
        ),
    ),
    "record_reversed": (
        "reversed",
        lambda t: t.record_reversed(
            stripe_reversal_id="trr_2",
            amount_reversed=AMOUNT,
            actor=REVERSAL_MANAGER,
            caused_by=None,
        ),
    ),
    "record_reversal_permanently_failed": (
        "permanently_failed",
        lambda t: t.record_reversal_permanently_failed(
            error="insufficient_funds", actor=REVERSAL_MANAGER, caused_by=None
        ),
    ),
}

REFUSED_BY_THE_MATRIX: Final = [
    pytest.param(status, name, id=f"{name} in {status}")
    for status in STATUSES
    for name, (to_status, _) in COMMANDS.items()
    if (status, to_status) not in LEGAL
    # A further refund of a reversed transfer is a same-status step
    # (tests/unit/test_further_refunds.py), not a move to reversal_pending.
    and (status, name) != ("reversed", "request_reversal")
]


def only_new_event(transfer: Transfer) -> object:
    (event,) = transfer.pending_events
    return event


def assert_refused_without_a_trace(transfer: Transfer, command: Command) -> TransitionRefused:
    before = copy.deepcopy(transfer)
    pending_before = len(transfer.pending_events)
    version_before = transfer.version

    with pytest.raises(TransitionRefused) as refusal:
        command(transfer)

    assert len(transfer.pending_events) == pending_before
    assert transfer.version == version_before
    assert transfer == before
    return refusal.value


# ----- creation --------------------------------------------------------------


def test_a_new_transfer_is_pending_with_nothing_paid_or_reversed() -> None:
    transfer = a_new_transfer()

    assert transfer.status == "pending"
    assert transfer.seller_account_id == SELLER
    assert transfer.amount == AMOUNT
    assert transfer.retry_count == 0
    assert transfer.next_retry_at is None
    assert transfer.stripe_transfer_id is None
    assert transfer.amount_reversed == 0
    assert transfer.reversal_request_ref is None
    assert transfer.version == 1
    created = only_new_event(transfer)
    assert isinstance(created, Transfer.Created)
    assert (created.actor, created.reason, created.caused_by) == (CHECKOUT, None, None)


def test_the_same_order_always_gets_the_same_transfer_id() -> None:
    first = a_new_transfer(order_ref="order-42")
    again = a_new_transfer(order_ref="order-42")

    assert first.id == again.id == transfer_id_for_order("order-42")


def test_different_orders_get_different_transfer_ids() -> None:
    assert a_new_transfer(order_ref="order-42").id != a_new_transfer(order_ref="order-43").id


def test_the_order_reference_is_trimmed_before_it_names_the_transfer() -> None:
    assert a_new_transfer(order_ref="  order-42 ").id == a_new_transfer(order_ref="order-42").id


def test_the_currency_is_stored_in_lower_case() -> None:
    transfer = Transfer.create(
        seller_account_id=SELLER, order_ref=ORDER_REF, amount=1, currency="EUR", actor=CHECKOUT
    )

    assert transfer.currency == "eur"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seller_account_id", "bob"),
        ("order_ref", "  "),
        ("amount", 0),
        ("amount", 12.5),
        ("currency", "dollars"),
        ("actor", ""),
    ],
)
def test_a_transfer_with_an_invalid_value_is_not_created(field: str, value: object) -> None:
    fields: dict[str, object] = {
        "seller_account_id": SELLER,
        "order_ref": ORDER_REF,
        "amount": AMOUNT,
        "currency": "usd",
        "actor": CHECKOUT,
    }
    fields[field] = value

    with pytest.raises(InvalidInput):
        Transfer.create(**fields)  # type: ignore[arg-type]


# ----- payout ----------------------------------------------------------------


@pytest.mark.parametrize("from_status", ["pending", "failed"])
def test_a_successful_payout_completes_the_transfer(from_status: str) -> None:
    transfer = a_transfer_in(from_status)

    transfer.record_payout_succeeded(
        stripe_transfer_id="tr_9", actor=PAYOUT_MANAGER, caused_by="some-event:1"
    )

    event = only_new_event(transfer)
    assert isinstance(event, Transfer.PayoutSucceeded)
    assert (event.from_status, event.to_status) == (from_status, "completed")
    assert event.stripe_transfer_id == "tr_9"
    assert (event.actor, event.reason, event.caused_by) == (PAYOUT_MANAGER, None, "some-event:1")
    assert transfer.status == "completed"
    assert transfer.stripe_transfer_id == "tr_9"
    assert transfer.next_retry_at is None
    assert transfer.last_error is None


def test_recording_the_same_successful_payout_twice_records_it_once() -> None:
    transfer = a_transfer_in("completed")

    transfer.record_payout_succeeded(
        stripe_transfer_id="tr_1", actor=PAYOUT_MANAGER, caused_by=None
    )

    assert transfer.pending_events == []
    assert transfer.version == 2


def test_a_failed_payout_schedules_a_retry_and_remembers_the_error() -> None:
    transfer = a_transfer_in("pending")

    transfer.record_payout_failed(
        error="card_declined", next_retry_at=LATER, actor=PAYOUT_MANAGER, caused_by="e:1"
    )

    event = only_new_event(transfer)
    assert isinstance(event, Transfer.PayoutFailed)
    assert (event.from_status, event.to_status) == ("pending", "failed")
    assert (event.error, event.next_retry_at, event.caused_by) == ("card_declined", LATER, "e:1")
    assert transfer.status == "failed"
    assert transfer.retry_count == 1
    assert transfer.next_retry_at == LATER
    assert transfer.last_error == "card_declined"


def test_another_failed_payout_bumps_the_retry_count_and_stays_failed() -> None:
    transfer = a_transfer_in("failed")

    transfer.record_payout_failed(
        error="rate_limited", next_retry_at=EVEN_LATER, actor=PAYOUT_MANAGER, caused_by=None
    )

    event = only_new_event(transfer)
    assert isinstance(event, Transfer.PayoutFailed)
    assert (event.from_status, event.to_status) == ("failed", "failed")
    assert transfer.retry_count == 2
    assert transfer.next_retry_at == EVEN_LATER
    assert transfer.last_error == "rate_limited"


def test_a_payout_that_fails_for_good_ends_permanently_failed() -> None:
    transfer = a_transfer_in("failed")

    transfer.record_payout_permanently_failed(
        error="account_closed", actor=PAYOUT_MANAGER, caused_by="e:2"
    )

    event = only_new_event(transfer)
    assert isinstance(event, Transfer.PayoutPermanentlyFailed)
    assert (event.from_status, event.to_status) == ("failed", "permanently_failed")
    assert (event.error, event.actor, event.caused_by) == ("account_closed", PAYOUT_MANAGER, "e:2")
    assert transfer.status == "permanently_failed"
    assert transfer.next_retry_at is None
    assert transfer.last_error == "account_closed"


def test_recording_a_permanent_failure_again_records_nothing() -> None:
    transfer = a_transfer_in("permanently_failed")

    transfer.record_payout_permanently_failed(error="again", actor=PAYOUT_MANAGER, caused_by=None)

    assert transfer.pending_events == []
    assert transfer.last_error == "account_closed"


# ----- refund accounting: reversal requests -----------------------------------


def test_a_refund_asks_for_the_whole_transfer_back_by_default() -> None:
    transfer = a_transfer_in("completed")

    recorded = transfer.request_reversal(
        request_ref="refund-7", amount=None, actor=SUPPORT_AGENT, reason="customer refunded"
    )

    assert recorded is True
    event = only_new_event(transfer)
    assert isinstance(event, Transfer.ReversalRequested)
    assert (event.from_status, event.to_status) == ("completed", "reversal_pending")
    assert (event.request_ref, event.amount) == ("refund-7", AMOUNT)
    assert (event.actor, event.reason, event.caused_by) == (
        SUPPORT_AGENT,
        "customer refunded",
        None,
    )
    assert transfer.status == "reversal_pending"
    assert transfer.reversal_request_ref == "refund-7"
    assert transfer.reversal_amount == AMOUNT
    # Due now: the reversal worker picks it up on its first pass.
    assert transfer.next_retry_at is None


def test_a_reversal_request_starts_with_a_clean_retry_slate() -> None:
    transfer = a_new_transfer()
    transfer.record_payout_failed(
        error="e", next_retry_at=LATER, actor=PAYOUT_MANAGER, caused_by=None
    )
    transfer.record_payout_succeeded(
        stripe_transfer_id="tr_1", actor=PAYOUT_MANAGER, caused_by=None
    )
    assert transfer.retry_count == 1

    transfer.request_reversal(request_ref="r", amount=None, actor=SUPPORT_AGENT, reason="refund")

    assert (transfer.retry_count, transfer.next_retry_at, transfer.last_error) == (0, None, None)


def test_a_partial_refund_asks_for_part_of_the_transfer_back() -> None:
    transfer = a_transfer_in("completed")

    transfer.request_reversal(
        request_ref="refund-7", amount=2_500, actor=REFUND_ACCOUNTING, reason=None, caused_by="c:3"
    )

    event = only_new_event(transfer)
    assert isinstance(event, Transfer.ReversalRequested)
    assert event.amount == 2_500
    assert event.caused_by == "c:3"
    assert transfer.reversal_amount == 2_500


def test_a_reversal_of_more_than_is_outstanding_is_refused_and_records_nothing() -> None:
    transfer = a_transfer_in("completed")

    with pytest.raises(InvalidInput, match="only 10000 to reverse"):
        transfer.request_reversal(
            request_ref="refund-7", amount=AMOUNT + 1, actor=SUPPORT_AGENT, reason="refund"
        )

    assert transfer.pending_events == []
    assert transfer.status == "completed"


def test_the_same_reversal_request_again_records_nothing_and_says_so() -> None:
    transfer = a_transfer_in("reversal_pending")

    recorded = transfer.request_reversal(
        request_ref=FIRST_REFUND, amount=AMOUNT, actor=SUPPORT_AGENT, reason="retry"
    )

    assert recorded is False
    assert transfer.pending_events == []
    assert transfer.version == 3


def test_the_same_reversal_request_for_another_amount_is_a_conflict() -> None:
    transfer = a_transfer_in("reversal_pending")

    with pytest.raises(IdempotencyConflict, match="refund-1"):
        transfer.request_reversal(
            request_ref=FIRST_REFUND, amount=100, actor=SUPPORT_AGENT, reason="retry"
        )

    assert transfer.pending_events == []


def test_a_second_refund_while_a_reversal_is_pending_is_a_conflict() -> None:
    transfer = a_transfer_in("reversal_pending")

    with pytest.raises(IdempotencyConflict, match="already has reversal request"):
        transfer.request_reversal(
            request_ref="refund-2", amount=None, actor=SUPPORT_AGENT, reason="again"
        )

    assert transfer.pending_events == []
    assert transfer.reversal_request_ref == FIRST_REFUND


def test_repeating_a_reversal_request_after_it_was_carried_out_records_nothing() -> None:
    transfer = a_transfer_in("reversed")

    recorded = transfer.request_reversal(
        request_ref=FIRST_REFUND, amount=None, actor=REFUND_ACCOUNTING, reason="order refunded"
    )

    assert recorded is False
    assert transfer.pending_events == []


def test_a_reversal_request_is_refused_when_nothing_is_left_to_reverse() -> None:
    transfer = an_imported_transfer(status="completed", amount_reversed=AMOUNT)

    with pytest.raises(InvalidInput):
        transfer.request_reversal(
            request_ref="refund-9", amount=None, actor=SUPPORT_AGENT, reason="refund"
        )


# ----- reversal process manager ------------------------------------------------


def test_a_failed_reversal_attempt_schedules_another_and_stays_pending() -> None:
    transfer = a_transfer_in("reversal_pending")

    transfer.record_reversal_attempt_failed(
        error="timeout", next_retry_at=LATER, actor=REVERSAL_MANAGER, caused_by="e:3"
    )

    event = only_new_event(transfer)
    assert isinstance(event, Transfer.ReversalAttemptFailed)
    assert (event.from_status, event.to_status) == ("reversal_pending", "reversal_pending")
    assert (event.error, event.next_retry_at, event.caused_by) == ("timeout", LATER, "e:3")
    assert transfer.retry_count == 1
    assert transfer.next_retry_at == LATER
    assert transfer.last_error == "timeout"
    assert transfer.reversal_amount == AMOUNT


def test_a_carried_out_reversal_ends_the_transfer_reversed() -> None:
    transfer = a_transfer_in("reversal_pending")
    transfer.record_reversal_attempt_failed(
        error="timeout", next_retry_at=LATER, actor=REVERSAL_MANAGER, caused_by=None
    )

    transfer.record_reversed(
        stripe_reversal_id="trr_5", amount_reversed=AMOUNT, actor=REVERSAL_MANAGER, caused_by="e:4"
    )

    event = transfer.pending_events[-1]
    assert isinstance(event, Transfer.Reversed)
    assert (event.from_status, event.to_status) == ("reversal_pending", "reversed")
    assert (event.stripe_reversal_id, event.amount_reversed) == ("trr_5", AMOUNT)
    assert event.caused_by == "e:4"
    assert transfer.status == "reversed"
    assert transfer.amount_reversed == AMOUNT
    assert (transfer.next_retry_at, transfer.last_error) == (None, None)


def test_recording_the_same_reversal_twice_records_it_once() -> None:
    transfer = a_transfer_in("reversed")

    transfer.record_reversed(
        stripe_reversal_id="trr_1", amount_reversed=AMOUNT, actor=REVERSAL_MANAGER, caused_by=None
    )

    assert transfer.pending_events == []


def test_a_reversal_of_more_than_the_transfer_is_not_recorded() -> None:
    transfer = a_transfer_in("reversal_pending")

    with pytest.raises(InvalidInput, match="amount_reversed"):
        transfer.record_reversed(
            stripe_reversal_id="trr_1",
            amount_reversed=AMOUNT + 1,
            actor=REVERSAL_MANAGER,
            caused_by=None,
        )

    assert transfer.pending_events == []


def test_a_reversal_that_fails_for_good_ends_permanently_failed() -> None:
    transfer = a_transfer_in("reversal_pending")

    transfer.record_reversal_permanently_failed(
        error="insufficient_funds", actor=REVERSAL_MANAGER, caused_by="e:5"
    )

    event = only_new_event(transfer)
    assert isinstance(event, Transfer.ReversalPermanentlyFailed)
    assert (event.from_status, event.to_status) == ("reversal_pending", "permanently_failed")
    assert (event.error, event.caused_by) == ("insufficient_funds", "e:5")
    assert transfer.status == "permanently_failed"
    assert transfer.last_error == "insufficient_funds"


# ----- refusals --------------------------------------------------------------


@pytest.mark.parametrize(("status", "command_name"), REFUSED_BY_THE_MATRIX)
def test_a_command_the_matrix_refuses_records_nothing_and_says_why(
    status: str, command_name: str
) -> None:
    transfer = a_transfer_in(status)
    to_status, command = COMMANDS[command_name]

    refusal = assert_refused_without_a_trace(transfer, command)

    assert (refusal.transfer_id, refusal.from_status, refusal.to_status) == (
        str(transfer.id),
        status,
        to_status,
    )
    assert str(transfer.id) in str(refusal)
    assert f"{status} -> {to_status}" in str(refusal)


def test_twenty_four_command_and_status_combinations_are_refused_by_the_matrix() -> None:
    # Guards the table above against silently shrinking (25 combinations, but
    # a further refund of a reversed transfer is a same-status step).
    assert len(REFUSED_BY_THE_MATRIX) == 24


def test_a_refused_command_leaves_a_saved_transfer_unchanged_in_the_store() -> None:
    app = in_memory_app()
    transfer = a_transfer_in("reversed", app)

    with pytest.raises(TransitionRefused):
        transfer.record_payout_failed(
            error="late", next_retry_at=LATER, actor=PAYOUT_MANAGER, caused_by=None
        )
    app.save(transfer)

    assert len(list(app.events.get(transfer.id))) == 4
    replayed: Transfer = app.repository.get(transfer.id)
    assert replayed.status == "reversed"


# Commands the call sites in DESIGN.md section 2 never make, yet the aggregate accepts
# because it only asks the matrix whether the *target* status is reachable.
OUTSIDE_THEIR_CALL_SITE: Final = [
    pytest.param(
        "completed",
        "record_reversal_attempt_failed",
        id="reversal attempt failed on a completed transfer",
    ),
    pytest.param(
        "failed",
        "record_reversal_permanently_failed",
        id="reversal permanently failed on a failed payout",
    ),
    pytest.param(
        "reversal_pending",
        "record_payout_permanently_failed",
        id="payout permanently failed during a reversal",
    ),
    pytest.param(
        "completed",
        "record_payout_succeeded",
        id="a second payout with another stripe transfer id",
    ),
]


@pytest.mark.parametrize(("status", "command_name"), OUTSIDE_THEIR_CALL_SITE)
def test_a_process_manager_outcome_is_refused_where_its_call_site_never_acts(
    status: str, command_name: str
) -> None:
    """E.g. a reversal attempt that failed cannot move a completed transfer into
    reversal_pending: no reversal was requested, so there is no request ref and no
    amount for the reversal worker to act on."""
    transfer = a_transfer_in(status)
    _, command = COMMANDS[command_name]

    with pytest.raises((TransitionRefused, InvalidInput)):
        command(transfer)

    assert transfer.pending_events == []


# ----- admin -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actor", "reason"),
    [("", "fixing a stuck payout"), ("   ", "fixing"), (SUPPORT_AGENT, ""), (SUPPORT_AGENT, " ")],
)
def test_an_admin_status_change_needs_a_named_person_and_a_reason(actor: str, reason: str) -> None:
    transfer = a_transfer_in("pending")

    with pytest.raises(InvalidInput):
        transfer.set_status_by_admin("failed", actor=actor, reason=reason)

    assert transfer.pending_events == []
    assert transfer.status == "pending"


def test_an_admin_status_change_records_who_changed_what_and_why() -> None:
    transfer = a_transfer_in("pending")

    transfer.set_status_by_admin("failed", actor=SUPPORT_AGENT, reason="seller asked to hold it")

    event = only_new_event(transfer)
    assert isinstance(event, Transfer.StatusSetByAdmin)
    assert (event.from_status, event.to_status) == ("pending", "failed")
    assert (event.actor, event.reason, event.caused_by) == (
        SUPPORT_AGENT,
        "seller asked to hold it",
        None,
    )
    assert transfer.status == "failed"


def test_an_admin_keeping_a_failed_transfer_failed_cancels_its_scheduled_retry() -> None:
    transfer = a_transfer_in("failed")
    assert transfer.next_retry_at == LATER

    transfer.set_status_by_admin("failed", actor=SUPPORT_AGENT, reason="stop retrying")

    event = only_new_event(transfer)
    assert isinstance(event, Transfer.StatusSetByAdmin)
    assert (event.from_status, event.to_status) == ("failed", "failed")
    assert transfer.next_retry_at is None


def test_an_admin_reversal_is_a_full_amount_reversal_request_by_that_person() -> None:
    transfer = a_transfer_in("completed")

    transfer.set_status_by_admin("reversal_pending", actor=SUPPORT_AGENT, reason="fraudulent order")

    event = only_new_event(transfer)
    assert isinstance(event, Transfer.ReversalRequested)
    assert (event.from_status, event.to_status) == ("completed", "reversal_pending")
    assert event.amount == AMOUNT
    assert (event.actor, event.reason) == (SUPPORT_AGENT, "fraudulent order")
    assert event.request_ref.startswith("admin:")
    assert transfer.reversal_amount == AMOUNT


@pytest.mark.parametrize(
    ("status", "to_status"),
    [
        ("completed", "pending"),
        ("completed", "failed"),
        ("reversed", "completed"),
        ("permanently_failed", "pending"),
        ("pending", "reversal_pending"),
        ("pending", "Completed"),
        ("completed", "reversal-pending"),
        ("pending", " pending"),
        ("failed", "bogus"),
    ],
)
def test_an_admin_cannot_make_a_change_the_matrix_refuses(status: str, to_status: str) -> None:
    transfer = a_transfer_in(status)

    refusal = assert_refused_without_a_trace(
        transfer,
        lambda t: t.set_status_by_admin(to_status, actor=SUPPORT_AGENT, reason="because"),
    )

    assert (refusal.from_status, refusal.to_status) == (status, to_status)
    assert str(transfer.id) in str(refusal)


def test_an_admin_cannot_set_an_empty_status() -> None:
    transfer = a_transfer_in("pending")

    with pytest.raises(InvalidInput, match="status"):
        transfer.set_status_by_admin("", actor=SUPPORT_AGENT, reason="because")

    assert transfer.pending_events == []


# ----- who and why -------------------------------------------------------------


def test_a_process_manager_outcome_names_the_event_that_caused_it() -> None:
    transfer = a_new_transfer()
    created = transfer.pending_events[0]
    assert isinstance(created, Transfer.Created)

    transfer.record_payout_succeeded(
        stripe_transfer_id="tr_1", actor=PAYOUT_MANAGER, caused_by=event_ref(created)
    )

    event = transfer.pending_events[-1]
    assert isinstance(event, Transfer.PayoutSucceeded)
    assert event.caused_by == f"{transfer.id}:1"


def test_every_event_of_a_full_lifecycle_says_who_caused_it() -> None:
    transfer = a_new_transfer()
    transfer.record_payout_failed(
        error="e", next_retry_at=LATER, actor=PAYOUT_MANAGER, caused_by="x:1"
    )
    transfer.record_payout_succeeded(stripe_transfer_id="tr", actor=PAYOUT_MANAGER, caused_by="x:2")
    transfer.set_status_by_admin("reversal_pending", actor=SUPPORT_AGENT, reason="fraud")
    transfer.record_reversed(
        stripe_reversal_id="trr", amount_reversed=AMOUNT, actor=REVERSAL_MANAGER, caused_by="x:4"
    )

    who = []
    for event in transfer.pending_events:
        assert isinstance(event, Transfer.Event)
        who.append((event.actor, event.reason, event.caused_by))

    assert who == [
        (CHECKOUT, None, None),
        (PAYOUT_MANAGER, None, "x:1"),
        (PAYOUT_MANAGER, None, "x:2"),
        (SUPPORT_AGENT, "fraud", None),
        (REVERSAL_MANAGER, None, "x:4"),
    ]


@pytest.mark.parametrize("actor", ["", "  ", "two\nlines"])
def test_an_outcome_without_a_proper_actor_is_not_recorded(actor: str) -> None:
    transfer = a_transfer_in("pending")

    with pytest.raises(InvalidInput, match="actor"):
        transfer.record_payout_succeeded(stripe_transfer_id="tr_1", actor=actor, caused_by=None)

    assert transfer.pending_events == []
    assert transfer.status == "pending"


# ----- import ------------------------------------------------------------------


@pytest.mark.parametrize("status", STATUSES)
def test_an_imported_transfer_keeps_the_state_its_row_had(status: str) -> None:
    transfer_id = uuid4()

    transfer = an_imported_transfer(status=status, amount_reversed=400, transfer_id=transfer_id)

    assert transfer.id == transfer_id
    assert transfer.version == 1
    assert transfer.status == status
    assert (transfer.seller_account_id, transfer.order_ref) == (SELLER, "legacy-77")
    assert (transfer.amount, transfer.currency) == (AMOUNT, "usd")
    assert (transfer.retry_count, transfer.next_retry_at) == (3, LATER)
    assert (transfer.stripe_transfer_id, transfer.last_error) == ("tr_legacy", "previous error")
    assert transfer.amount_reversed == 400
    assert transfer.reversal_request_ref is None
    imported = only_new_event(transfer)
    assert isinstance(imported, Transfer.Imported)
    assert imported.source_updated_at == SOURCE_UPDATED_AT
    assert imported.actor == "system:import"


def test_a_transfer_imported_mid_reversal_is_owed_the_rest_of_its_amount() -> None:
    transfer = an_imported_transfer(status="reversal_pending", amount_reversed=400)

    assert transfer.reversal_amount == AMOUNT - 400


@pytest.mark.parametrize("status", ["completed", "failed", "reversed"])
def test_a_transfer_imported_outside_a_reversal_owes_no_reversal(status: str) -> None:
    assert an_imported_transfer(status=status).reversal_amount is None


@pytest.mark.parametrize("status", ["bogus", "Completed", "reversal-pending", ""])
def test_a_transfer_with_an_unknown_status_is_not_imported(status: str) -> None:
    with pytest.raises(InvalidInput, match="status"):
        an_imported_transfer(status=status)


@pytest.mark.parametrize("amount_reversed", [AMOUNT + 1, -1])
def test_a_transfer_reversed_by_more_than_it_paid_or_less_than_nothing_is_not_imported(
    amount_reversed: int,
) -> None:
    with pytest.raises(InvalidInput, match="amount_reversed"):
        an_imported_transfer(status="reversed", amount_reversed=amount_reversed)


@pytest.mark.parametrize(
    "amount_reversed",
    [
        2.5,
        True,
        "5",
    ],
)
def test_an_amount_reversed_that_is_not_whole_minor_units_is_not_imported(
    amount_reversed: object,
) -> None:
    with pytest.raises(InvalidInput, match="amount_reversed"):
        an_imported_transfer(status="reversed", amount_reversed=amount_reversed)


# ----- replay --------------------------------------------------------------------


def test_replaying_a_transfers_stored_events_rebuilds_the_same_transfer() -> None:
    app = in_memory_app()
    transfer = a_new_transfer()
    transfer.record_payout_failed(
        error="card_declined", next_retry_at=LATER, actor=PAYOUT_MANAGER, caused_by=None
    )
    app.save(transfer)
    transfer.record_payout_succeeded(
        stripe_transfer_id="tr_1", actor=PAYOUT_MANAGER, caused_by=None
    )
    transfer.request_reversal(request_ref="r-1", amount=700, actor=SUPPORT_AGENT, reason="refund")
    app.save(transfer)
    transfer.record_reversal_attempt_failed(
        error="timeout", next_retry_at=EVEN_LATER, actor=REVERSAL_MANAGER, caused_by="r:1"
    )
    transfer.record_reversed(
        stripe_reversal_id="trr_1", amount_reversed=700, actor=REVERSAL_MANAGER, caused_by="r:2"
    )
    app.save(transfer)

    replayed: Transfer = app.repository.get(transfer.id)

    assert replayed == transfer
    assert replayed.version == 6
    assert (replayed.status, replayed.amount_reversed, replayed.retry_count) == ("reversed", 700, 1)


@pytest.mark.parametrize("status", STATUSES)
def test_replaying_an_imported_transfer_rebuilds_the_same_transfer(status: str) -> None:
    app = in_memory_app()
    transfer = an_imported_transfer(status=status)
    app.save(transfer)

    replayed: Transfer = app.repository.get(transfer.id)

    assert replayed == transfer


def test_replaying_an_admin_changed_transfer_rebuilds_the_same_transfer() -> None:
    app = in_memory_app()
    transfer = a_transfer_in("failed", app)
    transfer.set_status_by_admin("completed", actor=SUPPORT_AGENT, reason="paid by hand")
    transfer.set_status_by_admin("reversal_pending", actor=SUPPORT_AGENT, reason="chargeback")
    app.save(transfer)

    replayed: Transfer = app.repository.get(transfer.id)

    assert replayed == transfer
    assert replayed.status == "reversal_pending"
