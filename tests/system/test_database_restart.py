"""A PostgreSQL restart (every session killed, as a restart or a failover
does to the pooled connections) costs the marketplace nothing: the next API
call and the next webhook delivery go through (red-team items 10 and 11),
and whatever fails leaves the API as one of the ledger's own errors."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from ledger.api import DatabaseUnavailable, LedgerError, open_ledger
from ledger.config import DatabaseConfig
from ledger.webhooks import handle_delivery
from tests.paying import pay_out
from tests.system.test_webhooks import SECRET, event_of, stripe_signature, stripe_transfer
from tests.system.world import World

pytestmark = pytest.mark.postgres


@pytest.fixture
def world(migrated_postgres_url: str, sim: Any) -> World:
    return World(url=migrated_postgres_url, sim=sim)


def restart(url: str, admin_url: str) -> int:
    """Kill every session of the ledger's database; returns how many."""
    name = DatabaseConfig.from_url(url).dbname
    with psycopg.connect(admin_url, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
    return int(killed[0]) if killed else 0


def test_every_api_call_goes_through_after_the_database_restarts(
    world: World, postgres_admin_url: str
) -> None:
    with open_ledger(world.url, pool_size=3) as ledger:
        first = ledger.create_transfer(
            seller="acct_1Restart", amount=500, currency="usd", order_ref="order-r1"
        )
        assert restart(world.url, postgres_admin_url) >= 1
        second = ledger.create_transfer(
            seller="acct_1Restart", amount=600, currency="usd", order_ref="order-r2"
        )
        assert restart(world.url, postgres_admin_url) >= 1
        assert ledger.get(first.id).amount == 500
        assert restart(world.url, postgres_admin_url) >= 1
        assert {v.id for v in ledger.list_transfers()} == {first.id, second.id}
        pay_out(ledger.core, first.id)
        assert restart(world.url, postgres_admin_url) >= 1
        reversal = ledger.request_reversal(first.id, request_ref="re_1", reason="refund")
        assert reversal.transfer.status == "reversal_pending"
        assert restart(world.url, postgres_admin_url) >= 1
        assert ledger.set_status(second.id, "failed", actor="alice", reason="r").status == "failed"
        assert restart(world.url, postgres_admin_url) >= 1
        assert [e.version for e in ledger.history(first.id).entries] == [1, 2, 3]


def test_a_webhook_delivery_after_a_restart_is_recorded_not_answered_500(
    world: World, postgres_admin_url: str
) -> None:
    with open_ledger(world.url) as ledger:
        created = ledger.create_transfer(
            seller="acct_1Seller", amount=5000, currency="usd", order_ref="order-wh"
        )
    world.run_daemon_once()
    paid = world.show(created.id).stripe_transfer_id or ""
    world.simulator.reverse_outside(paid, 700)
    _, payload = event_of(stripe_transfer(world, paid))
    with open_ledger(world.url) as ledger:
        assert ledger.get(created.id).status == "completed"  # the pool holds connections now
        assert restart(world.url, postgres_admin_url) >= 1
        answer = handle_delivery(ledger, payload, stripe_signature(payload, SECRET), SECRET)
    assert (answer.status, answer.outcome) == (200, "recorded")
    assert world.show(created.id).amount_reversed == 700


def test_an_unreachable_database_is_the_ledgers_own_error() -> None:
    with pytest.raises(DatabaseUnavailable) as raised:
        open_ledger("postgresql://ledger:secret@127.0.0.1:1/ledger")
    assert isinstance(raised.value, LedgerError) and "secret" not in str(raised.value)
