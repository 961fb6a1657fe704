"""GET /v1/events: what the simulator's transfers went through, through the real stripe-python
client over HTTP."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tests.stripe_sim import (
    SteppedClock,
    create_transfer,
    running_simulator,
    sim_control,
    stripe_client,
)

DAY = 86_400


def _types(events: Any) -> list[str]:
    return [e.type for e in events.data]


def test_transfers_and_reversals_are_told_as_events_newest_first() -> None:
    clock = SteppedClock()
    with running_simulator(clock=clock) as (_, url):
        client = stripe_client(url)
        transfer = create_transfer(client, key="payout-1", amount=1000)
        clock.advance(10)
        reversal = client.v1.transfers.reversals.create(
            transfer.id, params={"amount": 400}, options={"idempotency_key": "refund-1"}
        )
        clock.advance(10)
        # Outside the ledger (the Dashboard): events all the same.
        sim_control(url, "/_sim/reverse", {"transfer": transfer.id})

        events = client.v1.events.list(params={"limit": 100})
        assert _types(events) == [
            "transfer.updated",
            "transfer.reversed",
            "transfer.updated",
            "transfer.reversed",
            "transfer.created",
        ]
        assert not events.has_more
        created = events.data[-1]
        for event in events.data:
            assert event.object == "event"
            assert event.id.startswith("evt_")
            assert event.livemode is False
            assert event.data.object.id == transfer.id

        # data.object is the transfer as it was when the event happened.
        told = {
            name: e.to_dict()
            for name, e in zip(
                ("full_update", "full_reversal", "partial_update", "partial_reversal", "created"),
                events.data,
                strict=True,
            )
        }
        assert told["created"]["created"] == 1_700_000_000
        assert told["created"]["data"]["object"]["amount_reversed"] == 0
        assert told["created"]["request"] == {
            "id": transfer.last_response.request_id,
            "idempotency_key": "payout-1",
        }
        assert "previous_attributes" not in told["created"]["data"]
        partial = told["partial_reversal"]["data"]["object"]
        assert partial["amount_reversed"] == 400
        assert partial["reversals"]["data"][0]["id"] == reversal.id
        assert told["partial_reversal"]["request"]["idempotency_key"] == "refund-1"
        assert told["partial_update"]["data"]["previous_attributes"] == {"amount_reversed": 0}
        full = told["full_reversal"]["data"]["object"]
        assert (full["amount_reversed"], full["reversed"]) == (1000, True)
        assert told["full_update"]["data"]["previous_attributes"] == {
            "amount_reversed": 400,
            "reversed": False,
        }
        assert told["full_update"]["created"] == 1_700_000_020
        assert told["full_update"]["request"] == {"id": None, "idempotency_key": None}

        assert client.v1.events.retrieve(created.id).to_dict() == created.to_dict()


def test_events_are_filtered_by_type_and_time_and_paged_by_cursor() -> None:
    clock = SteppedClock()
    with running_simulator(clock=clock) as (_, url):
        client = stripe_client(url)
        first = create_transfer(client, amount=1000)
        clock.advance(100)
        second = create_transfer(client, amount=1000)
        client.v1.transfers.reversals.create(second.id, params={"amount": 1})

        def listed(**params: Any) -> list[str]:
            found = client.v1.events.list(params=params)  # type: ignore[arg-type]
            return [f"{e.type}:{e.data.object.id}" for e in found.auto_paging_iter()]

        assert listed(type="transfer.created") == [
            f"transfer.created:{second.id}",
            f"transfer.created:{first.id}",
        ]
        assert listed(type="transfer.*", limit=1) == listed()
        assert len(listed()) == 4
        assert listed(types=["transfer.reversed", "transfer.updated"]) == [
            f"transfer.updated:{second.id}",
            f"transfer.reversed:{second.id}",
        ]
        assert listed(type="charge.*") == []
        assert listed(created={"lt": 1_700_000_100}) == [f"transfer.created:{first.id}"]
        assert len(listed(created={"gte": 1_700_000_100})) == 3
        assert len(listed(created=1_700_000_100)) == 3

        newest_first = client.v1.events.list(params={"limit": 2})
        assert newest_first.has_more
        older = client.v1.events.list(
            params={"limit": 2, "starting_after": newest_first.data[-1].id}
        )
        assert not older.has_more
        back = client.v1.events.list(params={"ending_before": older.data[0].id})
        assert [e.id for e in back.data] == [e.id for e in newest_first.data]

        with pytest.raises(stripe.InvalidRequestError) as both:
            client.v1.events.list(params={"type": "transfer.created", "types": ["x"]})
        assert both.value.http_status == 400
        with pytest.raises(stripe.InvalidRequestError) as unknown:
            client.v1.events.list(params={"delivery_success": True})
        assert unknown.value.code == "parameter_unknown"
        with pytest.raises(stripe.InvalidRequestError) as missing:
            client.v1.events.retrieve("evt_nothere")
        assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")


def test_only_the_last_30_days_of_events_are_listed() -> None:
    clock = SteppedClock()
    with running_simulator(clock=clock) as (_, url):
        client = stripe_client(url)
        old = create_transfer(client)
        [old_event] = client.v1.events.list().data
        clock.advance(30 * DAY)
        assert [e.id for e in client.v1.events.list().data] == [old_event.id]
        clock.advance(1)
        assert client.v1.events.list().data == []
        with pytest.raises(stripe.InvalidRequestError):
            client.v1.events.retrieve(old_event.id)
        # The transfer itself stays, as on Stripe.
        assert client.v1.transfers.retrieve(old.id).id == old.id
        new = create_transfer(client)
        assert [e.data.object.id for e in client.v1.events.list().data] == [new.id]


def test_editing_a_transfer_at_the_simulator_tells_no_event() -> None:
    with running_simulator() as (simulator, url):
        client = stripe_client(url)
        transfer = create_transfer(client)
        simulator.edit_transfer(transfer.id, amount=1)
        assert _types(client.v1.events.list()) == ["transfer.created"]
        assert [e["type"] for e in simulator.state()["events"]] == ["transfer.created"]
