"""What `ledger reconcile` found: each difference, the counts of what was
checked, and the report made of them (as text lines or JSON)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger import values
from ledger.stripe.listing import ListedTransfer


@dataclass(frozen=True)
class Difference:
    """One thing the ledger and Stripe disagree on, with both sides' values."""

    transfer_id: str | None
    stripe_transfer_id: str | None
    field: str
    ledger: Any
    stripe: Any
    note: str = ""
    # A daemon may be between its Stripe call and recording the answer.
    in_flight: bool = False
    money_moved_twice: bool = False
    # More for machines (a webhook delivery's event id and time).
    # (`dataclasses.field`: within this class, `field` is the attribute above.)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "transfer_id": self.transfer_id,
            "stripe_transfer_id": self.stripe_transfer_id,
            "field": self.field,
            "ledger": self.ledger,
            "stripe": self.stripe,
            "note": self.note,
            "in_flight": self.in_flight,
            "money_moved_twice": self.money_moved_twice,
            **self.extra,
        }

    def as_text(self) -> str:
        line = (
            f"{self.transfer_id or '-'} {self.stripe_transfer_id or '-'} {self.field}:"
            f" ledger {_show(self.ledger)}, Stripe {_show(self.stripe)}"
        )
        return f"{line} -- {self.note}" if self.note else line

    def rank(self) -> int:
        """Money moved twice first, things that may settle by themselves last."""
        return 0 if self.money_moved_twice else 2 if self.in_flight else 1


@dataclass
class Checked:
    # Ledger transfers compared with their Stripe transfer, or found to
    # record none although their status says Stripe paid them.
    ledger_transfers: int = 0
    # Stripe transfers listed, and those among them that name no ledger
    # transfer and that no ledger transfer records (the platform's other
    # business): those are left alone.
    stripe_transfers: int = 0
    other_stripe_transfers: int = 0
    # Of the ledger transfers: how many had to be retrieved one by one (pass 2).
    retrieved: int = 0
    reversals: int = 0
    # Second payouts already reversed in full at Stripe: money moved twice and
    # came back, nothing left to do, so not a difference.
    extra_payouts_reversed: int = 0
    # Deliveries listed; None when there is no webhook table to read.
    webhook_events: int | None = None
    # Differences that may have been in flight, checked again; how many settled.
    rechecked: int = 0
    settled: int = 0
    # 429s waited out.
    rate_limited: int = 0

    def as_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class Report:
    since: datetime | None
    checked: Checked = field(default_factory=Checked)
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "since": values.iso(self.since) if self.since else None,
            "checked": self.checked.as_json(),
            "money_moved_twice": sum(d.money_moved_twice for d in self.differences),
            "in_flight": sum(d.in_flight for d in self.differences),
            "differences": [d.as_json() for d in self.differences],
        }

    def lines(self) -> list[str]:
        """For a person: one line per difference, then a summary line."""
        checked = self.checked
        scope = (
            f"{checked.ledger_transfers:,} ledger transfers, {checked.stripe_transfers:,} Stripe"
            f" transfers ({checked.other_stripe_transfers:,} not the ledger's),"
            f" {checked.reversals:,} reversals checked"
        )
        if self.since:
            scope += f" since {values.iso(self.since)}"
        if checked.rate_limited:
            scope += f"; waited out {checked.rate_limited} Stripe rate limits"
        if self.ok:
            return [f"reconcile: the ledger and Stripe agree: {scope}"]
        counts = [
            f"{n} {what}"
            for n, what in (
                (sum(d.money_moved_twice for d in self.differences), "money moved twice"),
                (sum(d.in_flight for d in self.differences), "may be in flight"),
            )
            if n
        ]
        total = len(self.differences)
        summary = f"reconcile: {total} difference{'s' if total != 1 else ''}"
        if counts:
            summary += f" ({', '.join(counts)})"
        return [*(d.as_text() for d in self.differences), f"{summary}: {scope}"]


def summary(transfer: ListedTransfer) -> dict[str, Any]:
    return {
        "amount": transfer.amount,
        "currency": transfer.currency,
        "destination": transfer.destination,
    }


def describe(transfer: ListedTransfer) -> str:
    return _show(summary(transfer))


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, Mapping):
        if "destination" in value:
            return f"{value['amount']} {value['currency']} to {value['destination']}"
        if "id" in value and "amount" in value:
            return f"{value['id']} of {value['amount']}"
        return json.dumps(value)
    return str(value)
