"""Group commit of outcomes: several workers' outcomes in one append, and what
happens when one of them is stale or refused (both databases)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ledger.domain import Transfer
from ledger.errors import TransitionRefused
from ledger.processing.recording import Outcome, OutcomeRecorder
from tests.ledgers import Ledger


def paid(stripe_id: str) -> Callable[[Transfer], None]:
    def command(transfer: Transfer) -> None:
        transfer.record_payout_succeeded(
            stripe_transfer_id=stripe_id, actor="system:test", caused_by=f"{transfer.id}:1"
        )

    return command


def test_outcomes_arriving_together_are_saved_in_one_append(migrated_url: str) -> None:
    with Ledger.open(migrated_url) as ledger:
        ids = [
            ledger.create_transfer(
                seller_account_id="acct_1A", order_ref=f"o-{n}", amount=100, currency="usd"
            )[0]
            for n in range(3)
        ]
        recorder = OutcomeRecorder(ledger.transfers)
        before = ledger.transfers.recorder.max_notification_id() or 0
        batch = [
            Outcome(ledger.transfers.get(i), paid(f"tr_{n}"), [], f"{i}:1")
            for n, i in enumerate(ids)
        ]
        recorder.save_batch(batch)
        for outcome in batch:
            assert outcome.done.result(timeout=5) is None
        assert [ledger.transfers.get(i).status for i in ids] == ["completed"] * 3
        # One append: the three events have consecutive notification ids.
        after = ledger.transfers.recorder.max_notification_id() or 0
        assert after - before == 3


def test_a_stale_copy_in_a_batch_is_re_run_on_the_current_state(migrated_url: str) -> None:
    with Ledger.open(migrated_url) as ledger:
        stale_id, _ = ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="o-stale", amount=100, currency="usd"
        )
        fresh_id, _ = ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="o-fresh", amount=100, currency="usd"
        )
        stale_copy = ledger.transfers.get(stale_id)
        # An operator acts on it after the worker loaded it.
        ledger.set_status(stale_id, "failed", actor="alice", reason="ticket 9")
        recorder = OutcomeRecorder(ledger.transfers)
        batch = [
            Outcome(stale_copy, paid("tr_stale"), [], f"{stale_id}:1"),
            Outcome(ledger.transfers.get(fresh_id), paid("tr_fresh"), [], f"{fresh_id}:1"),
        ]
        recorder.save_batch(batch)
        for outcome in batch:
            outcome.done.result(timeout=5)
        stale = ledger.transfers.get(stale_id)
        # failed -> completed is legal: re-run against the operator's change.
        assert stale.status == "completed" and stale.stripe_transfer_id == "tr_stale"
        events = [type(e).__name__ for e in ledger.transfers.events.get(stale_id)]
        assert events == ["Created", "StatusSetByAdmin", "PayoutSucceeded"]
        assert ledger.transfers.get(fresh_id).status == "completed"


def test_a_refused_outcome_fails_alone_and_the_rest_is_saved(migrated_url: str) -> None:
    with Ledger.open(migrated_url) as ledger:
        refused_id, _ = ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="o-refused", amount=100, currency="usd"
        )
        ok_id, _ = ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="o-ok", amount=100, currency="usd"
        )
        ledger.set_status(refused_id, "failed", actor="alice", reason="ticket 9")
        ledger.set_status(refused_id, "permanently_failed", actor="alice", reason="ticket 9")
        recorder = OutcomeRecorder(ledger.transfers)
        refused = Outcome(ledger.transfers.get(refused_id), paid("tr_x"), [], f"{refused_id}:1")
        accepted = Outcome(ledger.transfers.get(ok_id), paid("tr_ok"), [], f"{ok_id}:1")
        recorder.save_batch([refused, accepted])
        with pytest.raises(TransitionRefused):
            refused.done.result(timeout=5)
        assert accepted.done.result(timeout=5) is None
        assert ledger.transfers.get(ok_id).status == "completed"
        assert ledger.transfers.get(refused_id).status == "permanently_failed"


def test_record_waits_for_its_own_outcome(migrated_url: str) -> None:
    with Ledger.open(migrated_url) as ledger:
        transfer_id, _ = ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="o-wait", amount=100, currency="usd"
        )
        OutcomeRecorder(ledger.transfers).record(
            ledger.transfers.get(transfer_id), paid("tr_w"), [], f"{transfer_id}:1"
        )
        assert ledger.transfers.get(transfer_id).status == "completed"


def test_an_outcome_whose_commit_answer_was_lost_is_not_recorded_twice(
    migrated_url: str,
) -> None:
    """The library retries an append whose connection dropped; if the first try
    had committed, the retry conflicts. The fallback must see the outcome is
    already there rather than record "attempt failed" a second time."""
    with Ledger.open(migrated_url) as ledger:
        transfer_id, _ = ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="o-lost-ack", amount=100, currency="usd"
        )
        cause = f"{transfer_id}:1"

        def failed(transfer: Transfer) -> None:
            transfer.record_payout_failed(
                error="429", next_retry_at=None, actor="system:test", caused_by=cause
            )

        loaded = ledger.transfers.get(transfer_id)
        ledger.transfers.change(transfer_id, failed)  # the batch that did commit
        outcome = Outcome(loaded, failed, [], cause)
        OutcomeRecorder(ledger.transfers)._save_alone(outcome)
        assert outcome.done.result(timeout=5) is None
        events = [type(e).__name__ for e in ledger.transfers.events.get(transfer_id)]
        assert events == ["Created", "PayoutFailed"]
        assert ledger.transfers.get(transfer_id).retry_count == 1
