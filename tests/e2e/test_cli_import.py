"""`ledger transfer import`: moving an existing mutable seller_transfers table into
the ledger, end to end on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from ledger import importing
from tests.design_matrix import STATUSES
from tests.e2e.support import (
    LedgerCli,
    assert_ok,
    assert_one_line_error,
    parse_time,
    run_script,
    script_result,
    stored_event_count,
    write_jsonl,
)


def legacy_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def six_rows() -> list[dict[str, Any]]:
    """One legacy row in each of the six statuses, with the columns that status uses."""
    return [
        {
            "id": legacy_id(1),
            "seller_account_id": "acct_A1",
            "order_ref": "legacy-1",
            "amount": 1000,
            "currency": "usd",
            "status": "pending",
        },
        {
            "id": legacy_id(2),
            "seller_account_id": "acct_A2",
            "order_ref": "legacy-2",
            "amount": 2000,
            "currency": "eur",
            "status": "completed",
            "stripe_transfer_id": "tr_1Completed",
        },
        {
            "id": legacy_id(3),
            "seller_account_id": "acct_A3",
            "order_ref": "legacy-3",
            "amount": 3000,
            "currency": "gbp",
            "status": "failed",
            "retry_count": 2,
            "next_retry_at": "2031-05-06T07:08:09Z",
            "last_error": "balance_insufficient",
        },
        {
            "id": legacy_id(4),
            "seller_account_id": "acct_A4",
            "order_ref": "legacy-4",
            "amount": 4000,
            "currency": "usd",
            "status": "reversal_pending",
            "stripe_transfer_id": "tr_4",
        },
        {
            "id": legacy_id(5),
            "seller_account_id": "acct_A5",
            "order_ref": "legacy-5",
            "amount": 5000,
            "currency": "usd",
            "status": "reversed",
            "stripe_transfer_id": "tr_5",
            "amount_reversed": 5000,
        },
        {
            "id": legacy_id(6),
            "seller_account_id": "acct_A6",
            "order_ref": "legacy-6",
            "amount": 6000,
            "currency": "usd",
            "status": "permanently_failed",
            "retry_count": 8,
            "last_error": "account_closed",
        },
    ]


DEFAULTS: dict[str, Any] = {
    "retry_count": 0,
    "next_retry_at": None,
    "stripe_transfer_id": None,
    "amount_reversed": 0,
    "last_error": None,
}


# What an imported row carries over (the rest the ledger derives itself).
STATE_KEYS = (
    "id",
    "status",
    "seller_account_id",
    "order_ref",
    "amount",
    "currency",
    *DEFAULTS,
)


def assert_row_matches(row: dict[str, Any], imported: dict[str, Any]) -> None:
    expected = {**DEFAULTS, **imported}
    for field, value in expected.items():
        if field == "next_retry_at" and value is not None:
            assert parse_time(row[field]) == parse_time(value), (row["id"], field)
        else:
            assert row[field] == value, (row["id"], field, row[field], value)
    assert row["version"] == 1


def test_importing_rows_in_every_status_shows_them_in_the_list_right_away(
    cli: LedgerCli, tmp_path: Path
) -> None:
    rows = six_rows()
    path = write_jsonl(tmp_path / "legacy.jsonl", rows)

    result = assert_ok(cli.import_file(path))

    assert "imported 6" in result.out
    listed = {row["id"]: row for row in cli.list_json()}
    assert set(listed) == {row["id"] for row in rows}
    assert {row["status"] for row in listed.values()} == set(STATUSES)
    for row in rows:
        assert_row_matches(listed[row["id"]], row)
        assert cli.show(row["id"]) == listed[row["id"]]
    assert cli.events() == 6


def test_a_failed_row_keeps_its_retry_time_as_the_same_instant_whatever_its_offset(
    cli: LedgerCli, tmp_path: Path
) -> None:
    row = {**six_rows()[2], "next_retry_at": "2031-05-06T09:08:09+02:00"}

    assert_ok(cli.import_file(write_jsonl(tmp_path / "one.jsonl", [row])))

    shown = cli.show(row["id"])
    assert shown["next_retry_at"] == "2031-05-06T07:08:09Z"
    assert [r["id"] for r in cli.list_json("--status", "failed")] == [row["id"]]


def test_importing_the_same_file_again_appends_nothing(cli: LedgerCli, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "legacy.jsonl", six_rows())
    assert_ok(cli.import_file(path))
    events = cli.events()
    listed = cli.list_json()

    again = assert_ok(cli.import_file(path, "--json"))

    assert again.json() == {"imported": 0, "already_present": 6}
    assert cli.events() == events
    assert cli.list_json() == listed


def test_a_file_that_repeats_a_line_word_for_word_imports_it_once(
    cli: LedgerCli, tmp_path: Path
) -> None:
    rows = six_rows()
    path = write_jsonl(tmp_path / "legacy.jsonl", [rows[0], rows[1], rows[0]])

    assert_ok(cli.import_file(path))

    assert cli.events() == 2
    assert len(cli.list_json()) == 2


def test_list_output_reimports_into_a_fresh_database(
    cli: LedgerCli, other_database_url: str, tmp_path: Path
) -> None:
    assert_ok(cli.import_file(write_jsonl(tmp_path / "legacy.jsonl", six_rows())))
    created = cli.create("order-native", seller="acct_N1", amount=999, currency="usd")
    assert_ok(cli.set_status(created, "failed"))
    source = cli.list_json()
    exported = write_jsonl(tmp_path / "exported.jsonl", source)

    fresh = LedgerCli(cli.cli, other_database_url)
    assert_ok(fresh.migrate())
    result = assert_ok(fresh.import_file(exported, "--json"))

    assert result.json() == {"imported": 7, "already_present": 0}
    copied = {row["id"]: row for row in fresh.list_json()}
    assert set(copied) == {row["id"] for row in source}
    for row in source:
        imported_state = {k: v for k, v in row.items() if k in STATE_KEYS}
        assert_row_matches(copied[row["id"]], imported_state)
    # And importing the same export again appends nothing there either.
    events = fresh.events()
    assert_ok(fresh.import_file(exported))
    assert fresh.events() == events


def test_a_partial_reversal_request_keeps_its_amount_when_list_output_is_reimported(
    cli: LedgerCli, other_database_url: str, tmp_path: Path
) -> None:
    transfer_id = cli.create("order-partial", amount=1000)
    cli.pay_out(transfer_id)
    assert_ok(
        cli.transfer(
            "reverse", transfer_id, "--reason", "refund", "--amount", "400", "--request", "re_1"
        )
    )
    exported = write_jsonl(tmp_path / "exported.jsonl", cli.list_json())

    fresh = LedgerCli(cli.cli, other_database_url)
    assert_ok(fresh.migrate())
    assert_ok(fresh.import_file(exported))

    assert fresh.show(transfer_id)["status"] == "reversal_pending"
    assert fresh.show(transfer_id)["reversal_amount"] == 400


# ----- one bad line rejects the whole file ------------------------------------------------


def good_row(n: int) -> dict[str, Any]:
    return {
        "id": legacy_id(100 + n),
        "seller_account_id": "acct_G1",
        "order_ref": f"legacy-good-{n}",
        "amount": 100 * n,
        "currency": "usd",
        "status": "completed",
        "stripe_transfer_id": f"tr_good{n}",
    }


def bad(**changes: Any) -> str:
    row = {**good_row(3), **changes}
    return json.dumps({k: v for k, v in row.items() if v is not _DROP})


_DROP = object()

BAD_LINES = [
    pytest.param('{"id": "00000000-0000-4000-8000-000000000103", ', id="invalid-json"),
    pytest.param("[1, 2, 3]", id="array-not-object"),
    pytest.param('"a string"', id="string-not-object"),
    pytest.param("42", id="number-not-object"),
    pytest.param(bad(currency=_DROP), id="missing-currency"),
    pytest.param(bad(id=_DROP), id="missing-id"),
    pytest.param(bad(colour="red"), id="unknown-field"),
    pytest.param(bad(amount=0), id="amount-zero"),
    pytest.param(bad(amount=-5), id="amount-negative"),
    pytest.param(bad(amount=1.5), id="amount-fraction"),
    pytest.param(bad(amount="12"), id="amount-as-string"),
    pytest.param(bad(amount=10**13), id="amount-too-large"),
    pytest.param(bad(amount=True), id="amount-boolean"),
    pytest.param(bad(currency="us"), id="currency-two-letters"),
    pytest.param(bad(currency="usdd"), id="currency-four-letters"),
    pytest.param(bad(currency="u5d"), id="currency-digit"),
    pytest.param(bad(seller_account_id="bob"), id="seller-not-acct"),
    pytest.param(bad(seller_account_id="acct_"), id="seller-empty-suffix"),
    pytest.param(bad(id="123"), id="id-not-uuid"),
    pytest.param(bad(id=123), id="id-number"),
    pytest.param(bad(status="done"), id="status-unknown"),
    pytest.param(bad(status="Completed"), id="status-wrong-case"),
    pytest.param(bad(amount=300, amount_reversed=301), id="amount-reversed-exceeds-amount"),
    pytest.param(bad(retry_count=-1), id="retry-count-negative"),
    pytest.param(bad(status="failed", next_retry_at="tomorrow"), id="retry-time-garbage"),
    pytest.param(bad(status="failed", next_retry_at="2031-01-01T00:00:00"), id="retry-time-naive"),
    pytest.param(bad(id=legacy_id(101), amount=1), id="same-id-as-line-1-other-values"),
    # Red-team F3: one order, one transfer; one Stripe transfer, one transfer.
    pytest.param(bad(order_ref="legacy-good-1"), id="order-of-line-1-under-another-id"),
    pytest.param(bad(stripe_transfer_id="tr_good2"), id="stripe-transfer-of-line-2"),
    pytest.param(
        '{"id": "00000000-0000-4000-8000-000000000103", "seller_account_id": "acct_G1",'
        ' "order_ref": "legacy-good-3", "amount": 300, "amount": 30000, "currency": "usd",'
        ' "status": "pending"}',
        id="a-key-twice",
    ),
    pytest.param(bad(order_ref="legacy\u0000nul"), id="order-with-nul"),
    pytest.param(bad(order_ref="legacy\u001b[2J"), id="order-with-escape"),
    pytest.param(bad(last_error="x\ny"), id="last-error-with-newline"),
    pytest.param(bad(stripe_transfer_id="tr x"), id="stripe-id-with-space"),
    pytest.param(bad(order_ref="o" * 256), id="order-too-long"),
    pytest.param(
        bad(status="failed", next_retry_at="0001-01-01T00:00:00+14:00"), id="retry-time-year-zero"
    ),
]


@pytest.mark.parametrize("bad_line", BAD_LINES)
def test_one_bad_line_rejects_the_whole_file_and_names_the_line(
    cli: LedgerCli, tmp_path: Path, bad_line: str
) -> None:
    path = write_jsonl(
        tmp_path / "legacy.jsonl", [good_row(1), good_row(2), bad_line, good_row(4), good_row(5)]
    )

    result = cli.import_file(path)

    assert result.code == 2
    assert result.out == ""
    assert "line 3" in assert_one_line_error(result)
    assert cli.events() == 0, "not even the good lines may be imported"
    assert cli.list_json() == []


def test_an_id_already_imported_with_other_values_rejects_the_file(
    cli: LedgerCli, tmp_path: Path
) -> None:
    assert_ok(cli.import_file(write_jsonl(tmp_path / "first.jsonl", [good_row(1)])))
    events = cli.events()
    changed = {**good_row(1), "amount": 12345}
    path = write_jsonl(tmp_path / "second.jsonl", [good_row(2), changed])

    result = cli.import_file(path)

    assert result.code == 2
    line = assert_one_line_error(result)
    assert "line 2" in line
    assert legacy_id(101) in line
    assert cli.events() == events
    assert [row["id"] for row in cli.list_json()] == [legacy_id(101)]
    assert cli.show(legacy_id(101))["amount"] == 100


def test_an_order_a_created_transfer_has_refuses_the_file_naming_line_and_transfer(
    cli: LedgerCli, tmp_path: Path
) -> None:
    """Red-team F3: the import skipped the order check, and the daemon paid
    the order twice."""
    created = cli.create("order-77", seller="acct_G1", amount=700)
    events = cli.events()
    path = write_jsonl(
        tmp_path / "legacy.jsonl", [good_row(1), {**good_row(2), "order_ref": "order-77"}]
    )

    result = cli.import_file(path)

    assert result.code == 2
    line = assert_one_line_error(result)
    assert "line 2" in line and created in line and "order-77" in line
    assert cli.events() == events
    assert [row["id"] for row in cli.list_json()] == [created]
    # A retried create still finds its own transfer.
    assert cli.create("order-77", seller="acct_G1", amount=700) == created


def test_a_stripe_transfer_another_transfer_records_refuses_the_file(
    cli: LedgerCli, tmp_path: Path
) -> None:
    assert_ok(cli.import_file(write_jsonl(tmp_path / "first.jsonl", [good_row(1)])))
    events = cli.events()
    again = {**good_row(2), "stripe_transfer_id": good_row(1)["stripe_transfer_id"]}

    result = cli.import_file(write_jsonl(tmp_path / "second.jsonl", [again]))

    assert result.code == 2
    line = assert_one_line_error(result)
    assert "line 1" in line and legacy_id(101) in line
    assert cli.events() == events


def test_a_create_for_an_order_an_import_took_returns_it_or_is_refused(
    cli: LedgerCli, tmp_path: Path
) -> None:
    assert_ok(cli.import_file(write_jsonl(tmp_path / "legacy.jsonl", [good_row(1)])))

    same = cli.transfer(
        "create",
        "--seller",
        "acct_G1",
        "--amount",
        "100",
        "--currency",
        "usd",
        "--order",
        "legacy-good-1",
    )
    other = cli.transfer(
        "create",
        "--seller",
        "acct_G1",
        "--amount",
        "999",
        "--currency",
        "usd",
        "--order",
        "legacy-good-1",
    )

    assert same.code == 0 and same.out.strip() == legacy_id(101)
    assert other.code == 2 and legacy_id(101) in assert_one_line_error(other)
    assert len(cli.list_json()) == 1


def test_an_import_holds_one_line_at_a_time_however_long_the_file(
    cli: LedgerCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory does not grow with the file: the import reads it line by line,
    twice (check everything, then save), and keeps only hashes in between."""
    monkeypatch.setattr(importing, "KEEP_RECORDS_BYTES", 0)

    def peak_importing(rows: int) -> int:
        path = write_jsonl(
            tmp_path / f"{rows}.jsonl",
            [
                {
                    **good_row(n + 1),
                    "id": legacy_id(10_000 + rows * 10 + n),
                    "order_ref": f"order-{rows}-{n}",
                    "stripe_transfer_id": f"tr_{rows}x{n}",
                }
                for n in range(rows)
            ],
        )
        tracemalloc.start()
        try:
            assert_ok(cli.import_file(path))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small = peak_importing(2_500)
    cli.transfer("list")  # nothing kept between the two runs
    large = peak_importing(10_000)
    assert large < small * 1.5, (small, large)


def test_a_fifty_megabyte_line_needs_little_more_than_itself(
    cli: LedgerCli, tmp_path: Path
) -> None:
    padding = " " * (50 * 1024 * 1024)
    path = tmp_path / "wide.jsonl"
    path.write_text(json.dumps(good_row(1))[:-1] + padding + "}\n", encoding="utf-8")

    tracemalloc.start()
    try:
        assert_ok(cli.import_file(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 2.5 * len(padding), peak
    assert [row["id"] for row in cli.list_json()] == [legacy_id(101)]


def test_an_empty_file_imports_nothing(cli: LedgerCli, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n   \n\n", encoding="utf-8")

    assert assert_ok(cli.import_file(empty, "--json")).json() == {
        "imported": 0,
        "already_present": 0,
    }
    assert "imported 0" in assert_ok(cli.import_file(blank)).out
    assert cli.events() == 0


def test_a_missing_file_is_refused_as_bad_input(cli: LedgerCli, tmp_path: Path) -> None:
    result = cli.import_file(tmp_path / "nowhere.jsonl")

    assert result.code == 2
    assert result.out == ""
    assert "nowhere.jsonl" in assert_one_line_error(result)
    assert cli.events() == 0


def test_a_file_that_is_not_utf8_is_refused_naming_the_line(cli: LedgerCli, tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(good_row(1)).encode()
    # An order ref written in Latin-1 (the old table's encoding), not UTF-8.
    latin1 = json.dumps({**good_row(2), "order_ref": "caf\u00e9"}, ensure_ascii=False)
    latin1_bytes = latin1.encode("latin-1")
    path.write_bytes(good + b"\n" + latin1_bytes + b"\n")

    result = cli.import_file(path)

    assert result.code == 2
    line = assert_one_line_error(result)
    assert "line 2" in line
    assert "UTF-8" in line
    assert cli.events() == 0


def test_creating_a_transfer_for_an_imported_order_returns_the_imported_transfer(
    cli: LedgerCli, tmp_path: Path
) -> None:
    assert_ok(cli.import_file(write_jsonl(tmp_path / "legacy.jsonl", [good_row(1)])))
    events = cli.events()

    same = cli.create("legacy-good-1", seller="acct_G1", amount=100, currency="usd")
    other = cli.transfer(
        "create",
        "--seller",
        "acct_G1",
        "--amount",
        "101",
        "--currency",
        "usd",
        "--order",
        "legacy-good-1",
    )

    assert same == legacy_id(101)
    assert other.code == 2
    assert_one_line_error(other)
    assert cli.events() == events


def test_a_large_import_lands_fully_in_the_read_table(cli: LedgerCli, tmp_path: Path) -> None:
    total = 5000
    rows = [
        {
            "id": legacy_id(10_000 + n),
            "seller_account_id": f"acct_Bulk{n % 97}",
            "order_ref": f"bulk-{n}",
            "amount": 1 + n,
            "currency": "usd",
            "status": STATUSES[n % len(STATUSES)],
            **({"next_retry_at": "2031-01-01T00:00:00Z"} if n % len(STATUSES) == 2 else {}),
        }
        for n in range(total)
    ]
    path = write_jsonl(tmp_path / "bulk.jsonl", rows)

    result = assert_ok(cli.import_file(path, "--json"))

    assert result.json() == {"imported": total, "already_present": 0}
    assert cli.rows() == total
    assert cli.events() == total
    per_status = {s: len(cli.list_json("--status", s)) for s in STATUSES}
    assert per_status == {
        s: total // 6 + (1 if i < total % 6 else 0) for i, s in enumerate(STATUSES)
    }
    last = cli.show(legacy_id(10_000 + total - 1))
    assert last["amount"] == total
    assert last["order_ref"] == f"bulk-{total - 1}"


def test_the_console_script_rejects_a_file_with_a_bad_line_with_exit_2(
    cli: LedgerCli, tmp_path: Path
) -> None:
    path = write_jsonl(
        tmp_path / "legacy.jsonl",
        [good_row(1), good_row(2), bad(currency="dollars"), good_row(4), good_row(5)],
    )

    result = script_result(
        run_script(["transfer", "import", "--database-url", cli.url, str(path)], cwd=tmp_path)
    )

    assert result.code == 2
    assert result.out == ""
    line = assert_one_line_error(result)
    assert "line 3" in line
    assert "currency" in line
    assert stored_event_count(cli.url) == 0


def test_a_file_saved_by_a_windows_editor_imports_like_any_other(
    cli: LedgerCli, tmp_path: Path
) -> None:
    """A byte-order mark and CRLF line ends are how such files arrive."""
    rows = six_rows()
    text = "\r\n".join(json.dumps(row) for row in rows) + "\r\n"
    path = tmp_path / "legacy-windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))

    assert assert_ok(cli.import_file(path, "--json")).json() == {
        "imported": len(rows),
        "already_present": 0,
    }
