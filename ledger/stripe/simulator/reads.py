"""Answers to the /v1 reads: lists and retrievals of transfers, reversals and events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ledger.stripe.simulator.events import EventLog
from ledger.stripe.simulator.objects import Book, page
from ledger.stripe.simulator.params import (
    RETRIEVE_PARAMS,
    REVERSAL_LIST_PARAMS,
    TRANSFER_LIST_PARAMS,
    created_filter,
    reject_unknown,
    string,
)
from ledger.stripe.simulator.routes import Route


def read(
    book: Book, events: EventLog, target: Route, params: Mapping[str, Any], now: float
) -> dict[str, Any]:
    """The answer to a read endpoint; raises StripeErrorResponse as Stripe would answer."""
    if target.kind == "list_events":
        return events.list_page(params, now)
    if target.kind == "retrieve_event":
        return events.retrieve(target.object_id, params, now)
    if target.kind == "list_transfers":
        reject_unknown(params, TRANSFER_LIST_PARAMS)
        destination = string(params, "destination")
        group = string(params, "transfer_group")
        created = created_filter(params)
        transfers = [
            t
            for t in book.transfers.values()
            if (destination is None or t.destination == destination)
            and (group is None or t.transfer_group == group)
            and created(t.created)
        ]
        return page(
            transfers, params, url="/v1/transfers", kind="transfer", seq_of=book.transfer_seq
        )
    if target.kind == "retrieve_transfer":
        reject_unknown(params, RETRIEVE_PARAMS)
        return book.transfer(target.object_id).as_json()
    if target.kind == "list_reversals":
        transfer = book.transfer(target.object_id)
        reject_unknown(params, REVERSAL_LIST_PARAMS)
        url = f"/v1/transfers/{transfer.id}/reversals"
        return page(
            transfer.reversals,
            params,
            url=url,
            kind="transfer reversal",
            seq_of=book.reversal_seq,
        )
    reject_unknown(params, RETRIEVE_PARAMS)
    return book.reversal(target.object_id, target.child_id).as_json()
