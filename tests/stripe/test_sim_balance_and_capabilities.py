"""The platform's balance, top-ups, source_transaction, and the transfers capability, through
the real stripe-python client over HTTP."""

from __future__ import annotations

import json

import pytest
import stripe

from ledger.errors import InvalidInput
from tests.stripe_sim import (
    create_transfer,
    raw_request,
    running_simulator,
    sim_control,
    stripe_client,
)

PLATFORM_SHORT = (
    "You have insufficient available funds in your Stripe account. Try adding funds directly"
    " to your available balance by creating Top-ups"
)
NO_CAPABILITY = (
    "Your destination account needs to have at least one of the following capabilities"
    " enabled: transfers, crypto_transfers, legacy_payments"
)


def test_a_payout_larger_than_the_available_balance_waits_for_a_top_up() -> None:
    with running_simulator(platform_balance=1000) as (simulator, url):
        client = stripe_client(url)
        create_transfer(client, amount=800)
        with pytest.raises(stripe.InvalidRequestError) as short:
            create_transfer(client, key="payout-short", amount=300)
        assert (short.value.http_status, short.value.code) == (400, "balance_insufficient")
        assert str(short.value.user_message).startswith(PLATFORM_SHORT)
        assert simulator.state()["platform_balance"] == 200

        topped = sim_control(url, "/_sim/topups", {"amount": 500})
        assert topped == {"amount": 500, "platform_balance": 700}
        assert simulator.top_up(100) == 800
        # The refusal came from executing: saved under its key, as on Stripe.
        with pytest.raises(stripe.InvalidRequestError) as replayed:
            create_transfer(client, key="payout-short", amount=300)
        assert (replayed.value.headers or {}).get("Idempotent-Replayed") == "true"
        assert create_transfer(client, key="payout-topped-up", amount=300).amount == 300
        assert simulator.state()["platform_balance"] == 500


def test_top_ups_refuse_bad_amounts_and_leave_an_unlimited_balance_unlimited() -> None:
    with running_simulator() as (simulator, url):
        for payload in ({}, {"amount": 0}, {"amount": -5}, {"amount": "5"}, {"amount": True}):
            status, _, body = raw_request(
                f"{url}/_sim/topups", {}, method="POST", data=json.dumps(payload).encode()
            )
            assert status == 400, payload
            assert body["error"]["type"] == "invalid_request_error"
        assert sim_control(url, "/_sim/topups", {"amount": 5}) == {
            "amount": 5,
            "platform_balance": None,
        }
        with pytest.raises(InvalidInput):
            simulator.top_up(0)


def test_a_transfer_from_a_charge_never_fails_for_balance() -> None:
    with running_simulator(platform_balance=0) as (simulator, url):
        client = stripe_client(url)
        with pytest.raises(stripe.InvalidRequestError) as short:
            create_transfer(client, amount=5000)
        assert short.value.code == "balance_insufficient"

        tied = create_transfer(client, amount=5000, source_transaction="ch_1OrderCharge")
        assert tied.source_transaction == "ch_1OrderCharge"
        assert client.v1.transfers.retrieve(tied.id).source_transaction == "ch_1OrderCharge"
        # Paid from the charge's funds, not the available balance.
        assert simulator.state()["platform_balance"] == 0
        # A reversal gives back to the platform's balance, whatever funded the transfer.
        client.v1.transfers.reversals.create(tied.id, params={"amount": 1200})
        assert simulator.state()["platform_balance"] == 1200

        with pytest.raises(stripe.InvalidRequestError) as not_a_charge:
            create_transfer(client, key="tied-2", source_transaction="py_1NotACharge")
        assert not_a_charge.value.param == "source_transaction"
        # A malformed request is refused before executing: the key stays free.
        assert create_transfer(client, key="tied-2", source_transaction="ch_1Other").amount
        untied = create_transfer(client, source_transaction="", amount=1)
        assert untied.source_transaction is None


def test_a_destination_without_the_transfers_capability_is_refused_until_granted() -> None:
    with running_simulator() as (simulator, url):
        client = stripe_client(url)
        with pytest.raises(stripe.InvalidRequestError) as refused:
            create_transfer(client, key="payout-nocap", destination="acct_nocapShop")
        error = refused.value
        assert (error.http_status, error.code, error.param) == (
            400,
            "insufficient_capabilities_for_transfer",
            None,
        )
        assert error.user_message == NO_CAPABILITY
        assert simulator.state()["transfers"] == []

        assert sim_control(url, "/_sim/accounts", {"id": "acct_nocapShop", "transfers": "active"})
        # Saved under its key like any refusal that comes from executing.
        with pytest.raises(stripe.InvalidRequestError):
            create_transfer(client, key="payout-nocap", destination="acct_nocapShop")
        granted = create_transfer(client, key="payout-granted", destination="acct_nocapShop")
        assert granted.destination == "acct_nocapShop"

        # Any account can lose it, in-process or over the control API.
        simulator.set_account("acct_1Kettle", transfers="inactive")
        with pytest.raises(stripe.InvalidRequestError) as lost:
            create_transfer(client)
        assert lost.value.code == "insufficient_capabilities_for_transfer"
        status, _, body = raw_request(
            f"{url}/_sim/accounts",
            {},
            method="POST",
            data=b'{"id": "acct_1Kettle", "transfers": "maybe"}',
        )
        assert status == 400
        assert "transfers must be" in body["error"]["message"]


def test_an_unknown_destination_is_reported_before_its_capability() -> None:
    with running_simulator(platform_balance=0) as (_, url):
        client = stripe_client(url)
        with pytest.raises(stripe.InvalidRequestError) as unknown:
            create_transfer(client, destination="acct_unknown_nocap")
        assert (unknown.value.code, unknown.value.param) == ("resource_missing", "destination")
        assert unknown.value.user_message == "No such destination: 'acct_unknown_nocap'"
        # And the capability before the balance.
        with pytest.raises(stripe.InvalidRequestError) as no_capability:
            create_transfer(client, destination="acct_nocap2")
        assert no_capability.value.code == "insufficient_capabilities_for_transfer"
