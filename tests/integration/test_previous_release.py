"""A database written by the previous release (commit 39f1bc3, before the
inline write path, the chain's running count, order reservations and the
projection's quarantine) opens, migrates, links every event its daemons had
not sealed yet, and verifies clean; then works as any other. Made by
tests/fixtures/previous_release/make.py, on both databases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest

from ledger.bootstrap import migrate_database
from ledger.cli import run
from ledger.migrate import available_migrations
from tests.ledgers import Ledger

FIXTURES = Path(__file__).parent.parent / "fixtures" / "previous_release"
# What that release left: 12 transfers, 25 events, 19 of them sealed.
STATUSES = {
    "completed": 5,
    "failed": 1,
    "pending": 1,
    "permanently_failed": 2,
    "reversal_pending": 1,
    "reversed": 2,
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def previous_release(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The previous release's database: a copy of its SQLite file, or its
    PostgreSQL dump restored into a fresh database."""
    if request.param == "sqlite":
        copy = tmp_path / "ledger.db"
        shutil.copy(FIXTURES / "ledger.db", copy)
        return f"sqlite:///{copy}"
    url: str = request.getfixturevalue("postgres_url")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute((FIXTURES / "postgresql.sql").read_text())  # a script of many statements
    return url


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = run(list(args))
    return code, capsys.readouterr().out


def test_a_database_the_previous_release_wrote_migrates_links_and_verifies_clean(
    previous_release: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = previous_release
    assert cli(capsys, "transfer", "list", "--database-url", url)[0] == 1  # not migrated yet

    applied = migrate_database(url)

    newest = available_migrations("postgresql")[-1].version
    assert [m.version for m in applied] == list(range(10, newest + 1))
    code, out = cli(capsys, "audit", "verify", "--json", "--database-url", url)
    report = json.loads(out)
    assert code == 0, report["findings"]
    assert (report["transfers"], report["events"]) == (12, 25)
    assert (report["sealed"], report["unsealed"]) == (25, 0)
    with Ledger.open(url) as ledger:
        rows = ledger.list()
        counts: dict[str, int] = {}
        for view in rows:
            counts[view.status] = counts.get(view.status, 0) + 1
        assert counts == STATUSES
        # Its orders are reserved: an order it has cannot get a second transfer.
        [pending] = [v for v in rows if v.status == "pending"]
        again, created = ledger.create_transfer(
            seller_account_id=pending.seller_account_id,
            order_ref=pending.order_ref,
            amount=pending.amount,
            currency=pending.currency,
        )
        assert (again, created) == (pending.id, False)
        ledger.create_transfer(
            seller_account_id="acct_1New", order_ref="order-after-the-upgrade", amount=5,
            currency="usd",
        )  # fmt: skip
    code, out = cli(capsys, "audit", "verify", "--json", "--database-url", url)
    assert code == 0 and json.loads(out)["events"] == 26
    assert cli(capsys, "rebuild", "--verify", "--database-url", url)[0] == 0
