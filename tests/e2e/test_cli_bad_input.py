"""Bad input never changes the ledger: each is refused with the contract's exit code
and one line on stderr, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.support import (
    UNKNOWN_ID,
    Cli,
    CliResult,
    LedgerCli,
    assert_one_line_error,
    run_script,
    script_result,
    stored_event_count,
)

BAD_INPUT = 2
REFUSED = 3
NOT_FOUND = 4
PASSWORD = "s3cret"

# Placeholders in the argument lists below: the test's database URL, the id of
# an existing pending transfer, and a well-formed id no transfer has.
URL, ID, UNKNOWN = "{url}", "{id}", "{unknown}"


def create(
    *,
    seller: str | None = "acct_1A2b3C",
    amount: str | None = "1250",
    currency: str | None = "usd",
    order: str | None = "order-new",
) -> list[str]:
    argv = ["transfer", "create", "--database-url", URL]
    for flag, value in (
        ("--seller", seller),
        ("--amount", amount),
        ("--currency", currency),
        ("--order", order),
    ):
        if value is not None:
            argv += [flag, value]
    return argv


def transfer(command: str, *args: str) -> list[str]:
    return ["transfer", command, "--database-url", URL, *args]


def set_status(transfer_id: str, status: str, *flags: str) -> list[str]:
    return transfer("set-status", transfer_id, status, *flags)


ADMIN = ("--actor", "alice", "--reason", "ops ticket 7")


def case(name: str, argv: list[str], code: int) -> object:
    return pytest.param(argv, code, id=name)


CASES = [
    # amounts
    *(
        case(f"create-amount-{label}", create(amount=amount), BAD_INPUT)
        for label, amount in [
            ("zero", "0"),
            ("negative", "-5"),
            ("decimal", "12.5"),
            ("exponent", "1e3"),
            ("letters", "abc"),
            ("trailing-space", "12 "),
            ("empty", ""),
            ("over-max", "1000000000000"),
            ("ten-to-the-30", str(10**30)),
            ("five-thousand-digits", "9" * 5000),
        ]
    ),
    # currencies
    *(
        case(f"create-currency-{label}", create(currency=currency), BAD_INPUT)
        for label, currency in [("us", "us"), ("usdd", "usdd"), ("12a", "12a"), ("empty", "")]
    ),
    # sellers
    *(
        case(f"create-seller-{label}", create(seller=seller), BAD_INPUT)
        for label, seller in [("bob", "bob"), ("acct_", "acct_"), ("acct-123", "acct-123")]
    ),
    case("create-order-blank", create(order="   "), BAD_INPUT),
    # malformed transfer ids
    *(
        case(f"{command}-id-{label}", argv, BAD_INPUT)
        for label, bad_id in [("123", "123"), ("not-a-uuid", "not-a-uuid"), ("empty", "")]
        for command, argv in [
            ("show", transfer("show", bad_id)),
            ("reverse", transfer("reverse", bad_id, "--reason", "refund")),
            ("set-status", set_status(bad_id, "completed", *ADMIN)),
        ]
    ),
    # well-formed ids of no transfer
    case("show-unknown-id", transfer("show", UNKNOWN), NOT_FOUND),
    case("show-unknown-id-json", transfer("show", UNKNOWN, "--json"), NOT_FOUND),
    case("reverse-unknown-id", transfer("reverse", UNKNOWN, "--reason", "r"), NOT_FOUND),
    case(
        "reverse-unknown-id-with-request",
        transfer("reverse", UNKNOWN, "--reason", "r", "--request", "re_1"),
        NOT_FOUND,
    ),
    case("set-status-unknown-id", set_status(UNKNOWN, "completed", *ADMIN), NOT_FOUND),
    # statuses
    case("set-status-unknown-status", set_status(ID, "done", *ADMIN), BAD_INPUT),
    case("set-status-status-wrong-case", set_status(ID, "Completed", *ADMIN), BAD_INPUT),
    case("set-status-status-empty", set_status(ID, "", *ADMIN), BAD_INPUT),
    case("list-unknown-status", transfer("list", "--status", "done"), BAD_INPUT),
    case("list-empty-status", transfer("list", "--status", ""), BAD_INPUT),
    case("list-json-unknown-status", transfer("list", "--json", "--status", "paid"), BAD_INPUT),
    # text fields
    case(
        "set-status-blank-actor",
        set_status(ID, "completed", "--actor", " ", "--reason", "r"),
        BAD_INPUT,
    ),
    case(
        "set-status-empty-reason",
        set_status(ID, "completed", "--actor", "alice", "--reason", ""),
        BAD_INPUT,
    ),
    case("reverse-empty-reason", transfer("reverse", ID, "--reason", ""), BAD_INPUT),
    case(
        "reverse-amount-zero", transfer("reverse", ID, "--reason", "r", "--amount", "0"), BAD_INPUT
    ),
    case(
        "reverse-amount-decimal",
        transfer("reverse", ID, "--reason", "r", "--amount", "1.5"),
        BAD_INPUT,
    ),
    # refused by the matrix
    case("set-status-pending-to-reversed", set_status(ID, "reversed", *ADMIN), REFUSED),
    case(
        "set-status-pending-to-reversal-pending",
        set_status(ID, "reversal_pending", *ADMIN),
        REFUSED,
    ),
    case("reverse-a-pending-transfer", transfer("reverse", ID, "--reason", "refund"), REFUSED),
    # missing required flags and arguments
    case("create-without-order", create(order=None), BAD_INPUT),
    case("create-without-seller", create(seller=None), BAD_INPUT),
    case("create-without-amount", create(amount=None), BAD_INPUT),
    case(
        "set-status-without-actor",
        set_status(ID, "completed", "--reason", "ops"),
        BAD_INPUT,
    ),
    case(
        "set-status-without-reason",
        set_status(ID, "completed", "--actor", "alice"),
        BAD_INPUT,
    ),
    case("set-status-without-status", transfer("set-status", ID, *ADMIN), BAD_INPUT),
    case("reverse-without-reason", transfer("reverse", ID), BAD_INPUT),
    case("show-without-id", transfer("show"), BAD_INPUT),
    case("import-without-file", transfer("import"), BAD_INPUT),
    # unknown commands and flags
    case("unknown-command", ["frobnicate", "--database-url", URL], BAD_INPUT),
    case("unknown-transfer-command", transfer("frobnicate"), BAD_INPUT),
    case("no-command", [], BAD_INPUT),
    case("transfer-without-command", ["transfer"], BAD_INPUT),
    case("unknown-flag", transfer("list", "--colour"), BAD_INPUT),
    case("matrix-unknown-format", ["matrix", "--format", "dot"], BAD_INPUT),
    # malformed database URLs: refused before connecting, never echoing a password
    *(
        case(f"database-url-{label}", [*command, "--database-url", url], BAD_INPUT)
        for label, url in [
            ("mysql", "mysql://x"),
            ("mysql-with-password", f"mysql://u:{PASSWORD}@db.example/x"),
            ("sqlite-no-file", "sqlite:///"),
            ("empty", ""),
            ("postgresql-bad-port", f"postgresql://u:{PASSWORD}@127.0.0.1:notaport/db"),
            ("postgresql-no-database", f"postgresql://u:{PASSWORD}@127.0.0.1"),
        ]
        for command in (["transfer", "list"],)
    ),
    case(
        "migrate-database-url-mysql",
        ["migrate", "--database-url", f"mysql://u:{PASSWORD}@h/db"],
        BAD_INPUT,
    ),
]


def expand(argv: list[str], url: str, transfer_id: str) -> list[str]:
    values = {URL: url, ID: transfer_id, UNKNOWN: UNKNOWN_ID}
    return [values.get(arg, arg) for arg in argv]


def assert_refused_cleanly(result: CliResult, code: int) -> str:
    assert result.code == code, (result.code, result.err)
    assert result.out == ""
    line = assert_one_line_error(result)
    assert PASSWORD not in result.err
    return line


@pytest.mark.parametrize(("argv", "code"), CASES)
def test_bad_input_is_refused_with_its_exit_code_one_line_and_no_change(
    cli: LedgerCli, argv: list[str], code: int
) -> None:
    transfer_id = cli.create("order-existing", amount=1000)
    events = cli.events()
    before = cli.list_json()

    result = cli.cli(*expand(argv, cli.url, transfer_id))

    line = assert_refused_cleanly(result, code)
    if code == NOT_FOUND:
        assert UNKNOWN_ID in line
    if code == REFUSED:
        assert transfer_id in line
        assert "pending" in line
    assert cli.events() == events
    assert cli.list_json() == before


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("mysql://x", id="mysql"),
        pytest.param("sqlite:///", id="sqlite-no-file"),
        pytest.param(f"postgresql://u:{PASSWORD}@127.0.0.1:notaport/db", id="bad-port"),
        pytest.param(f"postgresql://u:{PASSWORD}@/db", id="no-host"),
    ],
)
def test_a_malformed_database_url_in_the_environment_is_refused_as_bad_input(
    run_cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str
) -> None:
    monkeypatch.setenv("LEDGER_DATABASE_URL", url)

    result = run_cli("transfer", "list")

    assert_refused_cleanly(result, BAD_INPUT)
    assert list(tmp_path.iterdir()) == []  # no database file appeared anywhere


def test_the_database_url_flag_overrides_a_malformed_environment_value(
    cli: LedgerCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    transfer_id = cli.create("order-env")
    monkeypatch.setenv("LEDGER_DATABASE_URL", "mysql://x")

    listed = cli.list_json()

    assert [row["id"] for row in listed] == [transfer_id]
    assert cli.cli("transfer", "list").code == BAD_INPUT


# ----- through the real console script -------------------------------------------


def test_the_console_script_refuses_a_bad_amount_with_exit_2_and_one_line(
    cli: LedgerCli, tmp_path: Path
) -> None:
    events = cli.events()

    done = run_script(
        [
            "transfer",
            "create",
            "--database-url",
            cli.url,
            "--seller",
            "acct_1",
            "--amount",
            "12.5",
            "--currency",
            "usd",
            "--order",
            "order-float",
        ],
        cwd=tmp_path,
    )

    line = assert_refused_cleanly(script_result(done), BAD_INPUT)
    assert "amount" in line
    assert stored_event_count(cli.url) == events


def test_the_console_script_reports_usage_errors_in_one_line_with_exit_2(
    cli: LedgerCli, tmp_path: Path
) -> None:
    transfer_id = cli.create("order-usage")
    events = cli.events()

    done = run_script(
        ["transfer", "set-status", "--database-url", cli.url, transfer_id, "completed"],
        cwd=tmp_path,
    )

    line = assert_refused_cleanly(script_result(done), BAD_INPUT)
    assert "--actor" in line
    assert stored_event_count(cli.url) == events
    assert cli.show(transfer_id)["status"] == "pending"


def test_the_console_script_reports_an_unknown_transfer_with_exit_4(
    cli: LedgerCli, tmp_path: Path
) -> None:
    done = run_script(["transfer", "show", "--database-url", cli.url, UNKNOWN_ID], cwd=tmp_path)

    assert UNKNOWN_ID in assert_refused_cleanly(script_result(done), NOT_FOUND)


def test_the_console_script_refuses_a_malformed_url_from_the_environment_without_the_password(
    tmp_path: Path,
) -> None:
    done = run_script(
        ["transfer", "list"],
        cwd=tmp_path,
        env={"LEDGER_DATABASE_URL": f"postgresql://u:{PASSWORD}@127.0.0.1:99999999/db"},
    )

    assert_refused_cleanly(script_result(done), BAD_INPUT)
    assert list(tmp_path.iterdir()) == []


def test_a_database_that_cannot_be_reached_fails_with_exit_1_without_echoing_the_password(
    tmp_path: Path,
) -> None:
    # Port 1 on localhost: nothing listens there, the connection is refused.
    done = run_script(
        ["transfer", "list", "--database-url", f"postgresql://u:{PASSWORD}@127.0.0.1:1/db"],
        cwd=tmp_path,
    )

    assert_refused_cleanly(script_result(done), 1)
