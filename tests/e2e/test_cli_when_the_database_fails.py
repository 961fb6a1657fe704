"""A command's outcome is the truth about its append (red-team F6).

Before, `create` on a full disk appended its event, then failed to project
it and exited 1: a transfer the caller thought refused was paid later. List
and verify failed too, because reads wrote (they caught the projection up).
Now the read row is written in the append's own transaction: a command either
committed everything (exit 0) or nothing (exit 1, one clear line), and reads
never write, so they work while writes cannot."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from tests.e2e.support import LedgerCli, assert_one_line_error
from tests.ledgers import Ledger


@contextmanager
def disk_full_for_the_read_table(url: str) -> Iterator[None]:
    """Every write to seller_transfers fails as a full disk makes it fail
    (PostgreSQL's SQLSTATE 53100; SQLite's "database or disk is full")."""
    if url.startswith("sqlite"):
        with Ledger.open(url) as ledger, ledger.db.transaction() as cursor:
            for when in ("INSERT", "UPDATE"):
                cursor.execute(
                    f"CREATE TRIGGER disk_full_{when.lower()} BEFORE {when} ON seller_transfers"
                    " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
                )
        yield
        with Ledger.open(url) as ledger, ledger.db.transaction() as cursor:
            cursor.execute("DROP TRIGGER disk_full_insert")
            cursor.execute("DROP TRIGGER disk_full_update")
        return
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " RAISE EXCEPTION 'could not extend file: No space left on device'"
            " USING ERRCODE = 'disk_full'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE ON seller_transfers"
            " FOR EACH ROW EXECUTE FUNCTION disk_full()"
        )
        try:
            yield
        finally:
            conn.execute("DROP TRIGGER disk_full ON seller_transfers")
            conn.execute("DROP FUNCTION disk_full()")


def test_a_create_that_cannot_write_its_row_appends_nothing_and_says_the_disk_is_full(
    cli: LedgerCli,
) -> None:
    existing = cli.create("order-before")
    events = cli.events()

    with disk_full_for_the_read_table(cli.url):
        result = cli.transfer(
            "create", "--seller", "acct_1A2b3C", "--amount", "100", "--currency", "usd",
            "--order", "order-on-a-full-disk",
        )  # fmt: skip
        line = assert_one_line_error(result)
        assert result.code == 1 and "disk is full" in line
        assert cli.events() == events, "an event without its row would be paid later"

        # Reads never write: they work while writes cannot.
        assert [row["id"] for row in cli.list_json()] == [existing]
        assert cli.show(existing)["status"] == "pending"
        assert cli.cli("audit", "verify", "--database-url", cli.url).code == 0

    # Once there is room again, the same command goes through, once.
    created = cli.create("order-on-a-full-disk")
    assert cli.create("order-on-a-full-disk") == created
    assert cli.events() == events + 1
