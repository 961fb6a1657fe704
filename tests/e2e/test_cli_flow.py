"""The everyday CLI flow, end to end on SQLite and PostgreSQL: migrate, create,
show, list, reverse, set-status through the matrix, and the matrix itself."""

from __future__ import annotations

import json
import re
from pathlib import Path
from uuid import UUID

import pytest

from tests.design_matrix import ALLOWED, STATUSES
from tests.e2e.support import (
    CONTRACT_FIELDS,
    PATH_TO,
    Cli,
    LedgerCli,
    assert_ok,
    assert_one_line_error,
    is_legal,
    parse_time,
    run_script,
    script_result,
    sqlite_path,
    stored_event_count,
    write_jsonl,
)


def completed_transfer(cli: LedgerCli, order: str = "order-1", amount: int = 1250) -> str:
    """A transfer paid out at Stripe (as the daemon records it)."""
    transfer_id = cli.create(order, amount=amount)
    cli.pay_out(transfer_id)
    return transfer_id


# ----- migrate ------------------------------------------------------------------


def test_migrating_a_database_twice_is_safe_and_the_second_run_has_nothing_to_do(
    fresh_cli: LedgerCli,
) -> None:
    first = assert_ok(fresh_cli.migrate())
    assert "applied" in first.out

    second = assert_ok(fresh_cli.migrate())
    assert second.out.strip() == "database is up to date"
    again_json = assert_ok(fresh_cli.cli("migrate", "--database-url", fresh_cli.url, "--json"))
    assert again_json.json() == {"applied": []}

    assert fresh_cli.list_json() == []
    assert fresh_cli.events() == 0


BEFORE_MIGRATE_COMMANDS = {
    "list": ["list"],
    "create": [
        "create",
        "--seller",
        "acct_1",
        "--amount",
        "100",
        "--currency",
        "usd",
        "--order",
        "o-1",
    ],
    "show": ["show", "00000000-0000-4000-8000-000000000001"],
    "set-status": [
        "set-status",
        "00000000-0000-4000-8000-000000000001",
        "completed",
        "--actor",
        "alice",
        "--reason",
        "r",
    ],
    "reverse": ["reverse", "00000000-0000-4000-8000-000000000001", "--reason", "refund"],
    "import": ["import", "rows.jsonl"],
}


@pytest.mark.parametrize("command", sorted(BEFORE_MIGRATE_COMMANDS))
def test_commands_on_a_database_that_was_never_migrated_fail_and_say_to_run_migrate(
    fresh_cli: LedgerCli, tmp_path: Path, command: str
) -> None:
    write_jsonl(
        tmp_path / "rows.jsonl",
        [
            {
                "id": "00000000-0000-4000-8000-000000000002",
                "seller_account_id": "acct_1",
                "order_ref": "legacy-2",
                "amount": 100,
                "currency": "usd",
                "status": "pending",
            }
        ],
    )
    sub, *rest = BEFORE_MIGRATE_COMMANDS[command]

    result = fresh_cli.transfer(sub, *rest)

    assert result.code == 1
    assert result.out == ""
    assert "ledger migrate" in assert_one_line_error(result)
    path = sqlite_path(fresh_cli.url)
    if path is not None:
        assert not path.exists(), "a failed command must not create the database file"
    # Nothing was recorded: once migrated, the database is empty.
    assert_ok(fresh_cli.migrate())
    assert fresh_cli.events() == 0
    assert fresh_cli.list_json() == []


# ----- create -------------------------------------------------------------------


def test_creating_a_transfer_prints_its_id_and_records_a_pending_transfer(
    cli: LedgerCli,
) -> None:
    result = assert_ok(
        cli.transfer(
            "create",
            "--seller",
            "acct_1A2b3C",
            "--amount",
            "1250",
            "--currency",
            "EUR",
            "--order",
            "order-42",
        )
    )

    transfer_id = result.out.strip()
    assert result.out == transfer_id + "\n"
    assert str(UUID(transfer_id)) == transfer_id
    assert cli.events() == 1
    shown = cli.show(transfer_id)
    assert shown["status"] == "pending"
    assert shown["seller_account_id"] == "acct_1A2b3C"
    assert shown["order_ref"] == "order-42"
    assert shown["amount"] == 1250
    assert shown["currency"] == "eur"  # stored lowercase
    assert shown["version"] == 1


def test_creating_a_transfer_with_json_prints_an_object_with_its_id(cli: LedgerCli) -> None:
    result = assert_ok(
        cli.transfer(
            "create",
            "--seller",
            "acct_9",
            "--amount",
            "1",
            "--currency",
            "usd",
            "--order",
            "order-json",
            "--json",
        )
    )

    data = result.json()
    assert set(data) == {"id"}
    assert cli.show(data["id"])["order_ref"] == "order-json"


def test_creating_the_same_order_again_with_the_same_values_returns_the_same_id_and_appends_nothing(
    cli: LedgerCli,
) -> None:
    first = cli.create("order-7", seller="acct_X1", amount=500, currency="usd")
    events = cli.events()

    again = cli.create("order-7", seller="acct_X1", amount=500, currency="USD")

    assert again == first
    assert cli.events() == events
    assert len(cli.list_json()) == 1
    assert cli.show(first)["version"] == 1


@pytest.mark.parametrize(
    ("changed", "seller", "amount", "currency"),
    [
        ("amount", "acct_X1", "501", "usd"),
        ("seller_account_id", "acct_Y2", "500", "usd"),
        ("currency", "acct_X1", "500", "eur"),
    ],
)
def test_creating_the_same_order_with_different_values_is_refused_and_appends_nothing(
    cli: LedgerCli, changed: str, seller: str, amount: str, currency: str
) -> None:
    first = cli.create("order-7", seller="acct_X1", amount=500, currency="usd")
    before = cli.show(first)
    events = cli.events()

    result = cli.transfer(
        "create",
        "--seller",
        seller,
        "--amount",
        amount,
        "--currency",
        currency,
        "--order",
        "order-7",
    )

    assert result.code == 2
    assert result.out == ""
    line = assert_one_line_error(result)
    assert "order-7" in line
    assert changed in line
    assert cli.events() == events
    assert cli.show(first) == before


# ----- show and list --------------------------------------------------------------


def test_show_as_json_returns_every_field_the_contract_names(cli: LedgerCli) -> None:
    transfer_id = cli.create("order-show", seller="acct_S1", amount=777, currency="gbp")

    shown = cli.show(transfer_id)

    assert set(CONTRACT_FIELDS) <= set(shown)
    assert shown["id"] == transfer_id
    assert shown["status"] == "pending"
    assert shown["seller_account_id"] == "acct_S1"
    assert shown["order_ref"] == "order-show"
    assert shown["amount"] == 777
    assert shown["currency"] == "gbp"
    assert shown["retry_count"] == 0
    assert shown["next_retry_at"] is None
    assert shown["stripe_transfer_id"] is None
    assert shown["amount_reversed"] == 0
    assert shown["version"] == 1


def test_show_as_text_lists_the_fields_with_their_values(cli: LedgerCli) -> None:
    transfer_id = cli.create("order-text", seller="acct_T1", amount=321, currency="usd")

    result = assert_ok(cli.transfer("show", transfer_id))

    fields: dict[str, str] = {}
    for line in result.out.splitlines():
        key, _, value = line.partition(" ")
        fields[key] = value.strip()
    assert fields["id"] == transfer_id
    assert fields["status"] == "pending"
    assert fields["seller_account_id"] == "acct_T1"
    assert fields["amount"] == "321"
    assert fields["next_retry_at"] == ""


def test_list_as_json_is_an_array_of_objects_shaped_like_show(cli: LedgerCli) -> None:
    first = cli.create("order-a", amount=100)
    second = cli.create("order-b", amount=200)
    assert_ok(cli.set_status(second, "failed"))

    listed = cli.list_json()

    assert {row["id"] for row in listed} == {first, second}
    for row in listed:
        assert row == cli.show(row["id"])


def test_list_as_text_shows_one_row_per_transfer_and_a_count(cli: LedgerCli) -> None:
    first = cli.create("order-a", seller="acct_L1", amount=100)
    second = cli.create("order-b", seller="acct_L2", amount=200)

    result = assert_ok(cli.transfer("list"))

    lines = result.out.splitlines()
    assert lines[0].split()[:2] == ["id", "status"]
    assert lines[-1] == "(2 transfers)"
    body = "\n".join(lines[1:-1])
    assert re.search(rf"^{first}\s+pending\s+acct_L1\s+100\b", body, re.MULTILINE)
    assert re.search(rf"^{second}\s+pending\s+acct_L2\s+200\b", body, re.MULTILINE)


def test_listing_by_status_shows_only_the_transfers_in_that_status(cli: LedgerCli) -> None:
    pending = cli.create("order-p")
    failed = cli.create("order-f")
    assert_ok(cli.set_status(failed, "failed"))

    assert [r["id"] for r in cli.list_json("--status", "failed")] == [failed]
    assert [r["id"] for r in cli.list_json("--status", "pending")] == [pending]
    assert cli.list_json("--status", "reversed") == []
    text = assert_ok(cli.transfer("list", "--status", "failed")).out
    assert failed in text
    assert pending not in text
    assert text.splitlines()[-1] == "(1 transfer)"


# ----- reverse --------------------------------------------------------------------


def test_reversing_a_completed_transfer_makes_it_reversal_pending_at_once_in_the_read_table(
    cli: LedgerCli,
) -> None:
    transfer_id = completed_transfer(cli, amount=1250)
    events = cli.events()

    result = assert_ok(
        cli.transfer("reverse", transfer_id, "--reason", "customer refund", "--request", "re_1")
    )

    assert "reversal_pending" in result.out
    assert cli.events() == events + 1
    [row] = cli.list_json("--status", "reversal_pending")
    assert row["id"] == transfer_id
    assert row["reversal_amount"] == 1250
    assert row["reversal_request_ref"] == "re_1"
    assert row["next_retry_at"] is None  # due now: the reversal worker's first pass


def test_reversing_part_of_a_transfer_records_the_requested_amount(cli: LedgerCli) -> None:
    transfer_id = completed_transfer(cli, amount=1000)

    assert_ok(
        cli.transfer(
            "reverse", transfer_id, "--reason", "partial", "--amount", "400", "--request", "re_2"
        )
    )

    shown = cli.show(transfer_id)
    assert shown["status"] == "reversal_pending"
    assert shown["reversal_amount"] == 400


# The domain's reversal rules (more than is outstanding, the same request for
# another amount, nothing left to reverse) are tests/unit/test_transfer.py's;
# here, what the command line makes of them.


def test_repeating_a_reversal_request_succeeds_and_appends_nothing(cli: LedgerCli) -> None:
    transfer_id = completed_transfer(cli)
    assert_ok(cli.transfer("reverse", transfer_id, "--reason", "refund", "--request", "re_1"))
    events = cli.events()
    before = cli.show(transfer_id)

    again = assert_ok(
        cli.transfer("reverse", transfer_id, "--reason", "refund", "--request", "re_1")
    )

    assert "nothing appended" in again.out
    assert cli.events() == events
    assert cli.show(transfer_id) == before


def test_a_different_reversal_request_while_one_is_pending_is_refused_as_bad_input(
    cli: LedgerCli,
) -> None:
    transfer_id = completed_transfer(cli)
    assert_ok(cli.transfer("reverse", transfer_id, "--reason", "refund", "--request", "re_1"))
    events = cli.events()

    result = cli.transfer("reverse", transfer_id, "--reason", "second", "--request", "re_2")

    assert result.code == 2
    assert result.out == ""
    assert "re_1" in assert_one_line_error(result)
    assert cli.events() == events
    assert cli.show(transfer_id)["reversal_request_ref"] == "re_1"


# ----- set-status through the matrix ---------------------------------------------------


@pytest.mark.parametrize("from_status", STATUSES)
def test_admin_status_changes_follow_the_transition_matrix(
    cli: LedgerCli, from_status: str
) -> None:
    problems: list[str] = []
    for to_status in STATUSES:
        transfer_id = cli.create(f"order-{from_status}-{to_status}")
        for step in PATH_TO[from_status]:
            assert_ok(cli.set_status(transfer_id, step))
        before = cli.show(transfer_id)
        assert before["status"] == from_status
        events = cli.events()

        result = cli.set_status(transfer_id, to_status, actor="alice", reason="ops ticket 9")
        after = cli.show(transfer_id)
        pair = f"{from_status} -> {to_status}"

        if is_legal(from_status, to_status):
            if result.code != 0 or result.err:
                problems.append(f"{pair}: legal but exit {result.code} {result.err!r}")
            elif result.out.strip() != f"{transfer_id} {to_status}":
                problems.append(f"{pair}: unexpected output {result.out!r}")
            if after["status"] != to_status:
                problems.append(f"{pair}: status is {after['status']} afterwards")
            if from_status != to_status and after["version"] != before["version"] + 1:
                problems.append(f"{pair}: version {before['version']} -> {after['version']}")
        else:
            if result.code != 3:
                problems.append(f"{pair}: illegal but exit {result.code}")
            lines = result.err.splitlines()
            if len(lines) != 1 or not all(
                part in result.err for part in (from_status, to_status, transfer_id)
            ):
                problems.append(f"{pair}: stderr should name from, to and id: {result.err!r}")
            if result.out:
                problems.append(f"{pair}: stdout not empty: {result.out!r}")
            if cli.events() != events:
                problems.append(f"{pair}: refused change appended events")
            if after != before:
                problems.append(f"{pair}: refused change altered the row")

    assert not problems, "\n".join(problems)


def test_setting_a_completed_transfer_to_reversal_pending_requests_a_full_amount_reversal(
    cli: LedgerCli,
) -> None:
    transfer_id = completed_transfer(cli, amount=4321)
    events = cli.events()

    assert_ok(cli.set_status(transfer_id, "reversal_pending", actor="bob", reason="chargeback"))

    shown = cli.show(transfer_id)
    assert shown["status"] == "reversal_pending"
    assert shown["reversal_amount"] == shown["amount"] == 4321
    assert shown["reversal_request_ref"]
    assert shown["next_retry_at"] is None
    assert cli.events() == events + 1
    # The recorded request is pending: a reverse with another request is refused.
    other = cli.transfer("reverse", transfer_id, "--reason", "again", "--request", "re_9")
    assert other.code == 2


# ----- version and updated_at -------------------------------------------------------


def test_each_appended_event_increments_version_and_moves_updated_at(cli: LedgerCli) -> None:
    transfer_id = cli.create("order-v")
    created = cli.show(transfer_id)
    assert created["version"] == 1
    assert parse_time(created["updated_at"]) == parse_time(created["created_at"])

    cli.pay_out(transfer_id)
    completed = cli.show(transfer_id)
    assert completed["version"] == 2
    assert parse_time(completed["updated_at"]) > parse_time(created["updated_at"])
    assert completed["created_at"] == created["created_at"]

    assert_ok(cli.transfer("reverse", transfer_id, "--reason", "refund", "--request", "re_1"))
    reversing = cli.show(transfer_id)
    assert reversing["version"] == 3
    assert parse_time(reversing["updated_at"]) > parse_time(completed["updated_at"])

    # Nothing appended (a repeated request, a repeated create): nothing moves.
    assert_ok(cli.transfer("reverse", transfer_id, "--reason", "refund", "--request", "re_1"))
    assert cli.create("order-v") == transfer_id
    assert cli.show(transfer_id) == reversing


# ----- the matrix ---------------------------------------------------------------------


def test_matrix_prints_every_status_with_the_statuses_it_may_move_to(run_cli: Cli) -> None:
    result = assert_ok(run_cli("matrix"))

    rows = {}
    for line in result.out.splitlines():
        parts = line.split(None, 1)
        if parts and parts[0] in STATUSES:
            rows[parts[0]] = parts[1] if len(parts) > 1 else ""
    assert set(rows) == set(STATUSES)
    for status, targets in ALLOWED.items():
        listed = {t.strip() for t in rows[status].split(",")} & set(STATUSES)
        assert listed == targets, status
    assert assert_ok(run_cli("matrix", "--format", "table")).out == result.out


def test_matrix_as_mermaid_draws_exactly_the_allowed_transitions(run_cli: Cli) -> None:
    result = assert_ok(run_cli("matrix", "--format", "mermaid"))

    lines = [line.strip() for line in result.out.splitlines()]
    assert lines[0] == "stateDiagram-v2"
    edges = {
        (a, b)
        for a, _, b in (line.partition(" --> ") for line in lines)
        if a in STATUSES and b in STATUSES
    }
    assert edges == {(a, b) for a, targets in ALLOWED.items() for b in targets}


# ----- through the real console script -------------------------------------------


def test_the_console_script_runs_the_flow_and_reports_a_refused_change_with_exit_3(
    database_url: str, tmp_path: Path
) -> None:
    def ledger(*args: str) -> tuple[int, str, str]:
        done = run_script(args, cwd=tmp_path)
        return done.returncode, done.stdout, done.stderr

    code, _, err = ledger("migrate", "--database-url", database_url)
    assert (code, err) == (0, "")
    code, out, err = ledger(
        "transfer",
        "create",
        "--database-url",
        database_url,
        "--seller",
        "acct_Z9",
        "--amount",
        "900",
        "--currency",
        "usd",
        "--order",
        "order-script",
        "--json",
    )
    assert (code, err) == (0, "")
    transfer_id = json.loads(out)["id"]

    done = run_script(
        [
            "transfer",
            "set-status",
            "--database-url",
            database_url,
            transfer_id,
            "reversed",
            "--actor",
            "alice",
            "--reason",
            "typo",
        ],
        cwd=tmp_path,
    )

    result = script_result(done)
    assert result.code == 3
    assert result.out == ""
    line = assert_one_line_error(result)
    assert transfer_id in line
    assert "pending" in line
    assert "reversed" in line
    assert stored_event_count(database_url) == 1
