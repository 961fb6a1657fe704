"""Transfers, reversals and accounts, with Stripe's rules for moving money.

`Book` holds them; the engine calls it under its lock. Nothing here reads a clock or draws a
random number of its own: times and ids are handed in, so that a seeded engine with a fixed
clock gives the same objects every run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from ledger.stripe.simulator.api import (
    PLATFORM_BALANCE_MESSAGE,
    balance_insufficient,
    insufficient_capabilities,
    invalid,
    no_such,
)
from ledger.stripe.simulator.params import (
    CreateReversal,
    CreateTransfer,
    list_limit,
    string,
)

EMBEDDED_REVERSALS: Final = 10

Capability = Literal["active", "inactive"]
NewId = Callable[[str], str]


@dataclass
class Reversal:
    id: str
    seq: int
    amount: int
    currency: str
    transfer: str
    metadata: dict[str, str]
    created: int
    destination_payment_refund: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "transfer_reversal",
            "amount": self.amount,
            "balance_transaction": None,
            "created": self.created,
            "currency": self.currency,
            "destination_payment_refund": self.destination_payment_refund,
            "metadata": dict(self.metadata),
            "source_refund": None,
            "transfer": self.transfer,
        }


@dataclass
class Transfer:
    id: str
    seq: int
    amount: int
    currency: str
    destination: str
    transfer_group: str | None
    description: str | None
    metadata: dict[str, str]
    created: int
    destination_payment: str
    source_transaction: str | None = None
    reversals: list[Reversal] = field(default_factory=list)

    @property
    def amount_reversed(self) -> int:
        return sum(reversal.amount for reversal in self.reversals)

    @property
    def reversed(self) -> bool:
        # True only once fully reversed, as on Stripe: read amount_reversed for partial ones.
        return self.amount_reversed >= self.amount

    def as_json(self) -> dict[str, Any]:
        newest_first = self.reversals[::-1]
        return {
            "id": self.id,
            "object": "transfer",
            "amount": self.amount,
            "amount_reversed": self.amount_reversed,
            "balance_transaction": None,
            "created": self.created,
            "currency": self.currency,
            "description": self.description,
            "destination": self.destination,
            "destination_payment": self.destination_payment,
            "livemode": False,
            "metadata": dict(self.metadata),
            "reversals": {
                "object": "list",
                "data": [r.as_json() for r in newest_first[:EMBEDDED_REVERSALS]],
                "has_more": len(newest_first) > EMBEDDED_REVERSALS,
                "total_count": len(newest_first),
                "url": f"/v1/transfers/{self.id}/reversals",
            },
            "reversed": self.reversed,
            "source_transaction": self.source_transaction,
            "source_type": "card",
            "transfer_group": self.transfer_group,
        }


@dataclass
class Account:
    """Settings that override the naming conventions for one account; None: convention."""

    exists: bool | None = None
    reversal_balance: bool | None = None
    transfers: Capability | None = None


@dataclass(frozen=True)
class ReversalMade:
    reversal: Reversal
    transfer: Transfer
    # What changed on the transfer, as it was before: an event's previous_attributes.
    previous: dict[str, Any]


class Book:
    """Stripe's objects for one simulator; not thread-safe (the engine holds its lock)."""

    def __init__(self, platform_balance: int | None) -> None:
        self.seq = 0
        self.transfers: dict[str, Transfer] = {}
        self.reversals: dict[str, Reversal] = {}
        self.accounts: dict[str, Account] = {}
        # None: unlimited.
        self.platform_balance = platform_balance

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # --- accounts, by convention unless overridden ---

    def account(self, account_id: str) -> Account:
        return self.accounts.setdefault(account_id, Account())

    def account_exists(self, account_id: str) -> bool:
        account = self.accounts.get(account_id)
        if account is not None and account.exists is not None:
            return account.exists
        return "unknown" not in account_id

    def can_receive_transfers(self, account_id: str) -> bool:
        account = self.accounts.get(account_id)
        if account is not None and account.transfers is not None:
            return account.transfers == "active"
        return "nocap" not in account_id

    def can_fund_reversal(self, account_id: str) -> bool:
        account = self.accounts.get(account_id)
        if account is not None and account.reversal_balance is not None:
            return account.reversal_balance
        return "nobalance" not in account_id

    # --- money ---

    def create_transfer(self, command: CreateTransfer, *, created: int, new_id: NewId) -> Transfer:
        """Stripe's checks in Stripe's order: the destination, its capability, the funds."""
        if not self.account_exists(command.destination):
            raise no_such("destination", command.destination, param="destination", status=400)
        if not self.can_receive_transfers(command.destination):
            raise insufficient_capabilities()
        # A transfer tied to a charge waits for that charge's funds on Stripe instead of
        # taking the available balance, so it never fails for balance.
        funded_by_balance = command.source_transaction is None
        if funded_by_balance and self.platform_balance is not None:
            if command.amount > self.platform_balance:
                raise balance_insufficient(PLATFORM_BALANCE_MESSAGE)
            self.platform_balance -= command.amount
        transfer = Transfer(
            id=new_id("tr"),
            seq=self.next_seq(),
            amount=command.amount,
            currency=command.currency,
            destination=command.destination,
            transfer_group=command.transfer_group,
            description=command.description,
            metadata=command.metadata,
            created=created,
            destination_payment=new_id("py"),
            source_transaction=command.source_transaction,
        )
        self.transfers[transfer.id] = transfer
        return transfer

    def create_reversal(
        self, command: CreateReversal, *, created: int, new_id: NewId, check_balance: bool
    ) -> ReversalMade:
        transfer = self.transfer(command.transfer_id)
        unreversed = transfer.amount - transfer.amount_reversed
        if unreversed <= 0:
            # Stripe's answer has no code of its own; callers must retrieve the transfer.
            raise invalid(f"The transfer {transfer.id} is already fully reversed.")
        amount = command.amount if command.amount is not None else unreversed
        if amount > unreversed:
            raise invalid(
                f"Amount ({amount}) is greater than unreversed amount on transfer ({unreversed})",
                param="amount",
            )
        if check_balance and not self.can_fund_reversal(transfer.destination):
            raise balance_insufficient(
                "Insufficient funds in the connected account to cover this transfer reversal."
            )
        previous: dict[str, Any] = {"amount_reversed": transfer.amount_reversed}
        was_reversed = transfer.reversed
        reversal = Reversal(
            id=new_id("trr"),
            seq=self.next_seq(),
            amount=amount,
            currency=transfer.currency,
            transfer=transfer.id,
            metadata=command.metadata,
            created=created,
            destination_payment_refund=new_id("pyr"),
        )
        transfer.reversals.append(reversal)
        self.reversals[reversal.id] = reversal
        if transfer.reversed != was_reversed:
            previous["reversed"] = was_reversed
        if self.platform_balance is not None:
            self.platform_balance += amount
        return ReversalMade(reversal, transfer, previous)

    # --- reading ---

    def transfer(self, transfer_id: str) -> Transfer:
        transfer = self.transfers.get(transfer_id)
        if transfer is None:
            raise no_such("transfer", transfer_id, param="id")
        return transfer

    def reversal(self, transfer_id: str, reversal_id: str) -> Reversal:
        transfer = self.transfer(transfer_id)
        reversal = self.reversals.get(reversal_id)
        if reversal is None or reversal.transfer != transfer.id:
            raise no_such("transfer reversal", reversal_id, param="id")
        return reversal

    def transfer_seq(self, object_id: str) -> int | None:
        transfer = self.transfers.get(object_id)
        return transfer.seq if transfer is not None else None

    def reversal_seq(self, object_id: str) -> int | None:
        reversal = self.reversals.get(object_id)
        return reversal.seq if reversal is not None else None


class Listed(Protocol):
    """What a Stripe list holds: an object with a place in time."""

    @property
    def seq(self) -> int: ...

    def as_json(self) -> dict[str, Any]: ...


def page(
    items: Sequence[Listed],
    params: Mapping[str, Any],
    *,
    url: str,
    kind: str,
    seq_of: Callable[[str], int | None],
) -> dict[str, Any]:
    """One page of a Stripe list, newest first, by cursor."""
    limit = list_limit(params)
    after = string(params, "starting_after")
    before = string(params, "ending_before")
    if after and before:
        raise invalid(
            "You may only specify one of these parameters: ending_before, starting_after."
        )
    newest_first = sorted(items, key=lambda item: item.seq, reverse=True)
    if after or before:
        cursor = after or before or ""
        param = "starting_after" if after else "ending_before"
        # The cursor may lie outside the filtered list; its place in time still counts.
        cursor_seq = seq_of(cursor)
        if cursor_seq is None:
            raise no_such(kind, cursor, param=param, status=400)
        if after:
            older = [i for i in newest_first if i.seq < cursor_seq]
            chosen, has_more = older[:limit], len(older) > limit
        else:
            newer = [i for i in newest_first if i.seq > cursor_seq]
            chosen, has_more = newer[-limit:], len(newer) > limit
    else:
        chosen, has_more = newest_first[:limit], len(newest_first) > limit
    return {
        "object": "list",
        "data": [item.as_json() for item in chosen],
        "has_more": has_more,
        "url": url,
    }
