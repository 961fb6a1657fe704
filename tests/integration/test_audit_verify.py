"""`ledger audit verify` against tampering done the way a database
administrator would: disable the triggers, then edit an event's bytes, delete
an event, swap two events, insert a forged one, edit a read-table row, or
rewrite the chain. Each is found and names the transfer; the untouched ledger
verifies clean (both databases)."""

from __future__ import annotations

import json
import sqlite3
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent

from ledger.audit.chain import (
    GENESIS,
    UNLINKED,
    check_chain,
    link,
    seal,
    stream_links,
    verify_chain,
)
from ledger.audit.verify import verify as verify_ledger
from ledger.cli import run
from ledger.config import DatabaseConfig
from ledger.domain import Transfer
from tests.integration.test_audit_export import import_pending
from tests.ledgers import Ledger
from tests.paying import pay_out


@contextmanager
def dba(url: str) -> Iterator[Any]:
    """A plain connection with the append-only triggers switched off."""
    config = DatabaseConfig.from_url(url)
    if config.kind == "sqlite":
        conn = sqlite3.connect(config.path)
        for trigger in (
            "stored_events_no_update",
            "stored_events_no_delete",
            "event_chain_no_update",
            "event_chain_no_delete",
        ):
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        try:
            yield conn
            conn.commit()
        finally:
            conn.close()
        return
    with psycopg.connect(url) as pg:
        pg.execute("ALTER TABLE transfers_events DISABLE TRIGGER USER")
        pg.execute("ALTER TABLE event_chain DISABLE TRIGGER USER")
        yield pg


def events_table(url: str) -> tuple[str, str]:
    """(table, position column) of the events."""
    if url.startswith("sqlite"):
        return "stored_events", "rowid"
    return "transfers_events", "notification_id"


def q(url: str, sql: str) -> str:
    return sql if url.startswith("sqlite") else sql.replace("?", "%s")


@pytest.fixture
def ledger_url(migrated_url: str) -> str:
    return three_transfers(migrated_url)


def three_transfers(url: str) -> str:
    """Three transfers with histories of 1, 2 and 3 events, all sealed, in the
    migrated database at `url`."""
    with Ledger.open(url) as ledger:
        ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="o-1", amount=100, currency="usd"
        )
        two, _ = ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="o-2", amount=200, currency="usd"
        )
        pay_out(ledger, two)
        three, _ = ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="o-3", amount=300, currency="usd"
        )
        pay_out(ledger, three)
        ledger.request_reversal(three, request_ref="r-1", amount=None, reason="refund", actor="bob")
    return url


def verify(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, Any]:
    capsys.readouterr()
    code = run(["audit", "verify", "--json", "--database-url", url, *args])
    return code, json.loads(capsys.readouterr().out)


def head(capsys: pytest.CaptureFixture[str], url: str) -> str:
    capsys.readouterr()
    assert run(["audit", "head", "--json", "--database-url", url]) == 0
    link: str = json.loads(capsys.readouterr().out)["link"]
    return link


def transfer_of_order(url: str, order: str) -> str:
    with Ledger.open(url) as ledger:
        [view] = [v for v in ledger.list() if v.order_ref == order]
        return str(view.id)


def position_of(url: str, transfer_id: str, version: int) -> int:
    table, position = events_table(url)
    key: Any = UUID(transfer_id).hex if url.startswith("sqlite") else UUID(transfer_id)
    with dba(url) as conn:
        row = conn.execute(
            q(
                url,
                f"SELECT {position} FROM {table}"
                " WHERE originator_id = ? AND originator_version = ?",
            ),
            (key, version),
        ).fetchone()
    return int(row[0])


def problems_of(report: Any, transfer_id: str) -> list[str]:
    return [
        f"{f['check']}: {f['problem']}"
        for f in report["findings"]
        if f["transfer_id"] == transfer_id
    ]


def test_an_untouched_ledger_verifies_clean_with_and_without_a_recorded_head(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded = head(capsys, ledger_url)
    code, report = verify(capsys, ledger_url)
    assert code == 0 and report["ok"] and report["findings"] == []
    assert (report["transfers"], report["events"], report["sealed"]) == (3, 6, 6)
    assert verify(capsys, ledger_url, "--head", recorded)[0] == 0


def test_an_edited_event_is_found(ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    head(capsys, ledger_url)
    victim = transfer_of_order(ledger_url, "o-2")
    table, position = events_table(ledger_url)
    at = position_of(ledger_url, victim, 2)
    with dba(ledger_url) as conn:
        (state,) = conn.execute(
            q(ledger_url, f"SELECT state FROM {table} WHERE {position} = ?"), (at,)
        ).fetchone()
        # Same length, still valid JSON.
        forged = bytes(state).replace(b"payout-manager", b"payout-mangler")
        assert forged != bytes(state)
        conn.execute(
            q(ledger_url, f"UPDATE {table} SET state = ? WHERE {position} = ?"), (forged, at)
        )
    code, report = verify(capsys, ledger_url)
    assert code == 1
    assert any("edited or moved" in p for p in problems_of(report, victim)), report


def test_a_deleted_event_is_found(ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    head(capsys, ledger_url)
    victim = transfer_of_order(ledger_url, "o-3")
    table, position = events_table(ledger_url)
    at = position_of(ledger_url, victim, 2)
    with dba(ledger_url) as conn:
        conn.execute(q(ledger_url, f"DELETE FROM {table} WHERE {position} = ?"), (at,))
    code, report = verify(capsys, ledger_url)
    assert code == 1
    problems = problems_of(report, victim)
    assert any("event deleted" in p for p in problems), report
    assert any("not contiguous" in p for p in problems), report


def test_two_swapped_events_are_found(ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    head(capsys, ledger_url)
    first, second = transfer_of_order(ledger_url, "o-1"), transfer_of_order(ledger_url, "o-2")
    table, position = events_table(ledger_url)
    a, b = position_of(ledger_url, first, 1), position_of(ledger_url, second, 1)
    with dba(ledger_url) as conn:
        conn.execute(
            q(ledger_url, f"UPDATE {table} SET {position} = -1 WHERE {position} = ?"), (a,)
        )
        conn.execute(
            q(ledger_url, f"UPDATE {table} SET {position} = ? WHERE {position} = ?"), (a, b)
        )
        conn.execute(
            q(ledger_url, f"UPDATE {table} SET {position} = ? WHERE {position} = -1"), (b,)
        )
    code, report = verify(capsys, ledger_url)
    assert code == 1
    assert any("edited or moved" in p for p in problems_of(report, first)), report
    assert any("edited or moved" in p for p in problems_of(report, second)), report


def test_a_forged_event_is_found(ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    head(capsys, ledger_url)
    victim = transfer_of_order(ledger_url, "o-3")
    with Ledger.open(ledger_url) as ledger:
        # reversal_pending -> pending: not in the matrix. (The event classes'
        # fields are dataclass fields the type checker does not see.)
        forged = Transfer.StatusSetByAdmin(  # type: ignore[call-arg]
            originator_id=UUID(victim),
            originator_version=4,
            timestamp=datetime.now(UTC),
            from_status="reversal_pending",
            to_status="pending",
            actor="mallory",
            reason="nobody will notice",
            caused_by=None,
        )
        ledger.transfers.events.put([forged])
    code, report = verify(capsys, ledger_url)
    assert code == 1
    assert any("refused by the transition matrix" in p for p in problems_of(report, victim)), report


def test_a_hand_edited_read_table_row_is_found(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = transfer_of_order(ledger_url, "o-1")
    key: Any = victim if ledger_url.startswith("sqlite") else UUID(victim)
    with dba(ledger_url) as conn:
        conn.execute(q(ledger_url, "UPDATE seller_transfers SET amount = 1 WHERE id = ?"), (key,))
    code, report = verify(capsys, ledger_url)
    assert code == 1
    assert problems_of(report, victim) == [
        "read table: amount is 1 in the table, 100 by the events"
    ], report


def test_a_rewritten_chain_no_longer_holds_the_recorded_head(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded = head(capsys, ledger_url)
    victim = transfer_of_order(ledger_url, "o-2")
    table, position = events_table(ledger_url)
    at = position_of(ledger_url, victim, 2)
    with dba(ledger_url) as conn:
        (state,) = conn.execute(
            q(ledger_url, f"SELECT state FROM {table} WHERE {position} = ?"), (at,)
        ).fetchone()
        conn.execute(
            q(ledger_url, f"UPDATE {table} SET state = ? WHERE {position} = ?"),
            (bytes(state).replace(b"payout-manager", b"payout-mangler"), at),
        )
        conn.execute("DELETE FROM event_chain")
    with Ledger.open(ledger_url) as ledger:
        seal(ledger.db)  # and the chain made again over the edit
    assert verify(capsys, ledger_url)[0] == 0  # consistent with itself...
    code, report = verify(capsys, ledger_url, "--head", recorded)
    assert code == 1  # ...but not with what the operator wrote down
    assert any("recorded head" in f["problem"] for f in report["findings"]), report


def test_verify_refuses_a_malformed_head(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["audit", "verify", "--head", "xyz", "--database-url", ledger_url]) == 2


def test_a_row_without_events_and_events_without_a_row_are_found(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = transfer_of_order(ledger_url, "o-1")
    stray = "0b9e8f7a-6c5d-4e3f-8a1b-2c3d4e5f6a7b"
    sqlite = ledger_url.startswith("sqlite")
    with dba(ledger_url) as conn:
        conn.execute(
            q(ledger_url, "DELETE FROM seller_transfers WHERE id = ?"),
            (victim if sqlite else UUID(victim),),
        )
        conn.execute(
            q(
                ledger_url,
                "INSERT INTO seller_transfers (id, seller_account_id, order_ref, amount,"
                " currency, status, retry_count, amount_reversed, version, created_at,"
                " updated_at) SELECT ?, seller_account_id, 'o-stray', amount, currency, status,"
                " retry_count, amount_reversed, version, created_at, updated_at"
                " FROM seller_transfers LIMIT 1",
            ),
            (stray if sqlite else UUID(stray),),
        )
    code, report = verify(capsys, ledger_url)
    assert code == 1
    assert problems_of(report, victim) == ["read table: events without a row"], report
    assert problems_of(report, stray) == ["read table: a row without events"], report


def test_the_database_checks_the_chain_as_verify_chain_does(
    migrated_postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL recomputes the chain in SQL; SQLite (and this test) walk it
    in Python. Both must find the same things, with the same words."""
    url = three_transfers(migrated_postgres_url)
    recorded = head(capsys, url)
    edited, deleted = transfer_of_order(url, "o-2"), transfer_of_order(url, "o-3")
    at_edit, at_delete = position_of(url, edited, 2), position_of(url, deleted, 2)
    at_unlinked = position_of(url, deleted, 1)
    with dba(url) as conn:
        (state,) = conn.execute(
            "SELECT state FROM transfers_events WHERE notification_id = %s", (at_edit,)
        ).fetchone()
        conn.execute(
            "UPDATE transfers_events SET state = %s WHERE notification_id = %s",
            (bytes(state).replace(b"payout-manager", b"payout-mangler"), at_edit),
        )
        conn.execute("DELETE FROM transfers_events WHERE notification_id = %s", (at_delete,))
        # An event whose link is gone inside the chain reads as one inserted there.
        conn.execute("DELETE FROM event_chain WHERE position = %s", (at_unlinked,))
    with Ledger.open(url) as ledger:
        ledger.create_transfer(  # linked in its own append
            seller_account_id="acct_1A", order_ref="o-4", amount=400, currency="usd"
        )
        db = ledger.db
        for recorded_head in (None, bytes.fromhex(recorded), bytes(32)):
            in_sql = check_chain(db, recorded_head)
            in_python = verify_chain(
                db.stream_stored_events(order="log"), stream_links(db), recorded_head
            )
            assert in_sql == in_python
    assert [(f.transfer_id, f.problem.split(":")[0]) for f in in_sql.findings] == [
        (edited, "event edited or moved"),
        (deleted, "event without a link"),
        (deleted, "event deleted"),
    ]
    assert (in_sql.sealed, in_sql.unsealed) == (5, 1)


def test_ledger_append_links_events_byte_for_byte_as_the_python_chain_does(
    migrated_postgres_url: str,
) -> None:
    """PostgreSQL's ledger_append makes the links in SQL, from the rows its
    INSERT returns; `ledger.audit.chain.link` is the definition. Several
    transfers in one append, in the document's order, with what could trip a
    byte-level difference: a non-ASCII topic, an empty state, a large
    version, and a link before them to chain on."""
    first = [["0" * 31 + "1", 1, "ledger.domain:Transfer.Created", "7b7d"]]
    many = [
        ["0" * 31 + "2", 1, "ledger.domain:Transfer.Créé", "7b22c3a9223a317d"],
        ["0" * 31 + "3", 2**40, "ledger.domain:Transfer.Imported", ""],
        ["0" * 31 + "2", 2, "t", "00ff" * 300],
        ["0" * 31 + "1", 2, "ledger.domain:Transfer.PayoutSucceeded", "7b7d"],
    ]
    with psycopg.connect(migrated_postgres_url, autocommit=True) as conn:
        returned = []
        for events in (first, many):
            document = json.dumps({"events": events, "link": True, "lock_timeout": "5s"})
            row = conn.execute("SELECT ledger_append(%s::jsonb)", (document,)).fetchone()
            assert row is not None
            returned += row[0]
        stored = conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state"
            " FROM transfers_events ORDER BY notification_id"
        ).fetchall()
        chain = conn.execute(
            "SELECT position, transfer_id, version, link, seq FROM event_chain ORDER BY seq"
        ).fetchall()
    assert returned == [row[0] for row in stored]
    # The document's order is the log's order.
    assert [
        (str(row[1]).replace("-", ""), row[2], row[3], bytes(row[4]).hex()) for row in stored
    ] == [tuple(e) for e in first + many]
    previous = GENESIS
    expected = []
    for seq, (position, originator_id, version, topic, state) in enumerate(stored, start=1):
        event = StoredEvent(originator_id, version, topic, bytes(state))
        previous = link(previous, position, event)
        expected.append((position, originator_id, version, previous, seq))
    assert [(p, t, v, bytes(lk), s) for p, t, v, lk, s in chain] == expected


def test_the_table_is_compared_at_its_own_position(ledger_url: str) -> None:
    """An event appended without its row (by another writer) and not projected
    yet is not a difference: the table is compared with the events up to the
    position it has reached, and the rest waits for the next run. It is
    checked against the matrix all the same."""
    victim = UUID(transfer_of_order(ledger_url, "o-1"))
    with Ledger.open(ledger_url) as ledger:
        transfer = ledger.transfers.get(victim)
        transfer.set_status_by_admin("completed", actor="alice", reason="paid by hand")
        ledger.transfers.events.put(transfer.collect_events())
        report = verify_ledger(ledger.db, ledger.transfers.mapper.to_domain_event)
    assert report.ok, report.findings
    assert (report.transfers, report.events, report.unprojected) == (3, 7, 1)


def test_an_event_whose_fields_were_edited_away_is_a_finding(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = transfer_of_order(ledger_url, "o-2")
    table, position = events_table(ledger_url)
    at = position_of(ledger_url, victim, 2)
    with dba(ledger_url) as conn:
        conn.execute(
            q(ledger_url, f"UPDATE {table} SET state = ? WHERE {position} = ?"),
            (b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-11-26T12:00:00+00:00"}}', at),
        )
    code, report = verify(capsys, ledger_url)
    assert code == 1
    assert "history: cannot be replayed: AttributeError" in problems_of(report, victim), report


def peak_memory_verifying(url: str) -> int:
    with Ledger.open(url) as ledger:
        tracemalloc.start()
        try:
            report = verify_ledger(ledger.db, ledger.transfers.mapper.to_domain_event)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert report.ok, report.findings[:5]
    return peak


def test_verify_memory_stays_flat_as_the_log_grows(migrated_postgres_url: str) -> None:
    """PostgreSQL's one pass. (SQLite walks the chain as before: a batch of
    links at a time.)"""
    with Ledger.open(migrated_postgres_url) as ledger:
        import_pending(ledger, 1500, "small")
    small = peak_memory_verifying(migrated_postgres_url)
    with Ledger.open(migrated_postgres_url) as ledger:
        import_pending(ledger, 10500, "more")
    large = peak_memory_verifying(migrated_postgres_url)
    # Eight times the transfers; one history and one row at a time.
    assert large < small * 1.5 + 256 * 1024, (small, large)


# ----- tampering right after a command: no daemon ran, no head was recorded ----------


def test_an_event_inserted_by_hand_is_found_with_its_transfer(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Red-team (issue 16): an event added past the ledger used to pass as
    "not sealed yet", and the next seal wrote it into the chain for good."""
    victim = transfer_of_order(ledger_url, "o-1")
    table, _ = events_table(ledger_url)
    key: Any = UUID(victim).hex if ledger_url.startswith("sqlite") else UUID(victim)
    with dba(ledger_url) as conn:
        (state, topic) = conn.execute(
            q(ledger_url, f"SELECT state, topic FROM {table} WHERE originator_id = ?"), (key,)
        ).fetchone()
        conn.execute(
            q(
                ledger_url,
                f"INSERT INTO {table} (originator_id, originator_version, topic, state)"
                " VALUES (?, 2, ?, ?)",
            ),
            (key, topic, state),
        )
    code, report = verify(capsys, ledger_url)
    assert code == 1
    assert any("event without a link" in p for p in problems_of(report, victim)), report
    # A command afterwards links only its own events: the hand-made one stays a finding.
    with Ledger.open(ledger_url) as ledger:
        ledger.create_transfer(
            seller_account_id="acct_1A", order_ref="o-after", amount=5, currency="usd"
        )
    after = verify(capsys, ledger_url)[1]
    assert any("event without a link" in p for p in problems_of(after, victim))


@pytest.mark.parametrize("with_head", [False, True])
def test_a_link_deleted_from_the_middle_names_its_event_not_the_next_one(
    ledger_url: str, capsys: pytest.CaptureFixture[str], with_head: bool
) -> None:
    recorded = head(capsys, ledger_url)
    victim, neighbour = transfer_of_order(ledger_url, "o-2"), transfer_of_order(ledger_url, "o-3")
    at = position_of(ledger_url, victim, 2)
    with dba(ledger_url) as conn:
        conn.execute(q(ledger_url, "DELETE FROM event_chain WHERE position = ?"), (at,))
    code, report = verify(capsys, ledger_url, *(["--head", recorded] if with_head else []))
    assert code == 1
    assert any("event without a link" in p for p in problems_of(report, victim)), report
    assert problems_of(report, neighbour) == [], report
    gaps = [f for f in report["findings"] if f["transfer_id"] is None and "missing" in f["problem"]]
    assert len(gaps) == 1 and f"between positions {at - 1} and {at + 1}" in gaps[0]["problem"]


@pytest.mark.parametrize("with_head", [False, True])
def test_a_truncated_chain_leaves_every_event_named_without_its_link(
    ledger_url: str, capsys: pytest.CaptureFixture[str], with_head: bool
) -> None:
    recorded = head(capsys, ledger_url)
    with dba(ledger_url) as conn:
        conn.execute("DELETE FROM event_chain")
    code, report = verify(capsys, ledger_url, *(["--head", recorded] if with_head else []))
    assert code == 1
    for order, events in (("o-1", 1), ("o-2", 2), ("o-3", 3)):
        problems = problems_of(report, transfer_of_order(ledger_url, order))
        assert problems.count("chain: " + UNLINKED) == events, report
    assert report["sealed"] == 0 and report["unsealed"] == 6
    if with_head:
        assert any("recorded head" in f["problem"] for f in report["findings"]), report


def test_a_chain_cut_short_names_the_events_after_the_cut(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    last = transfer_of_order(ledger_url, "o-3")
    cut = position_of(ledger_url, last, 2)
    with dba(ledger_url) as conn:
        conn.execute(q(ledger_url, "DELETE FROM event_chain WHERE position >= ?"), (cut,))
    code, report = verify(capsys, ledger_url)
    assert code == 1
    assert problems_of(report, last).count("chain: " + UNLINKED) == 2, report
    for order in ("o-1", "o-2"):
        assert problems_of(report, transfer_of_order(ledger_url, order)) == [], report


def test_an_event_deleted_with_its_link_names_the_deleted_transfer_not_its_neighbour(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    victim, before = transfer_of_order(ledger_url, "o-3"), transfer_of_order(ledger_url, "o-2")
    table, position = events_table(ledger_url)
    at = position_of(ledger_url, victim, 2)
    with dba(ledger_url) as conn:
        conn.execute(q(ledger_url, f"DELETE FROM {table} WHERE {position} = ?"), (at,))
        conn.execute(q(ledger_url, "DELETE FROM event_chain WHERE position = ?"), (at,))
    code, report = verify(capsys, ledger_url)
    assert code == 1
    assert any("not contiguous" in p for p in problems_of(report, victim)), report
    assert problems_of(report, before) == [], report
    assert not any("edited or moved" in f["problem"] for f in report["findings"]), report
    assert any(
        f["transfer_id"] is None and "link 5 of the chain missing" in f["problem"]
        for f in report["findings"]
    ), report
