"""Text and numbers the red team sent, refused at the boundary on SQLite and
PostgreSQL: NUL (which PostgreSQL cannot store and which wedged the ledger),
control and format characters (terminal escape injection), bytes that are not
UTF-8, over-long values, times outside what a calendar can hold, and numbers
in the environment that are infinite or absurd. Each is one line on stderr,
exit 2, and nothing appended; every command works afterwards."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.support import (
    LEDGER_SCRIPT,
    Cli,
    CliResult,
    LedgerCli,
    assert_one_line_error,
    run_script,
    script_result,
)

BAD_INPUT = 2

# Each refused inside any text field.
HOSTILE_TEXT = {
    "nul": "order\x00one",
    "escape": "order\x1b[2Jone",
    "tab": "order\tone",
    "vertical-tab": "order\x0bone",
    "newline": "order\none",
    "delete": "order\x7fone",
    "c1-control": "order\x9bone",
    "line-separator": "order\u2028one",
    "paragraph-separator": "order\u2029one",
    "right-to-left-override": "order\u202eeno",
    "zero-width-space": "order\u200bone",
    "byte-order-mark": "order\ufeffone",
}


def _refused(result: CliResult) -> str:
    assert result.code == BAD_INPUT, (result.code, result.err)
    assert result.out == ""
    line = assert_one_line_error(result)
    assert "\x1b" not in result.err and "\x00" not in result.err
    return line


def _create(cli: LedgerCli, **overrides: str) -> CliResult:
    values = {"--seller": "acct_1Hostile", "--amount": "100", "--currency": "usd"}
    values["--order"] = "order-hostile"
    values.update({f"--{k}": v for k, v in overrides.items()})
    return cli.transfer("create", *(x for pair in values.items() for x in pair))


@pytest.mark.parametrize("text", HOSTILE_TEXT.values(), ids=HOSTILE_TEXT.keys())
def test_a_control_or_format_character_in_any_text_is_refused_and_nothing_is_appended(
    cli: LedgerCli, text: str
) -> None:
    paid = cli.create("order-paid", amount=900)
    cli.set_status(paid, "completed", actor="alice", reason="paid by the daemon")
    events = cli.events()

    results = [
        _create(cli, order=text),
        _create(cli, order="order-actor", actor=text),
        cli.transfer("reverse", paid, "--reason", text),
        cli.transfer("reverse", paid, "--reason", "refund", "--request", text),
        cli.transfer("reverse", paid, "--reason", "refund", "--actor", text),
        cli.transfer("set-status", paid, "reversal_pending", "--actor", text, "--reason", "r"),
        cli.transfer("set-status", paid, "reversal_pending", "--actor", "alice", "--reason", text),
    ]

    for result in results:
        _refused(result)
    assert cli.events() == events
    assert [row["status"] for row in cli.list_json()] == ["completed"]


@pytest.mark.parametrize(
    ("flag", "limit"),
    [("order", 255), ("actor", 200)],
)
def test_text_longer_than_its_field_allows_is_refused_naming_the_limit(
    cli: LedgerCli, flag: str, limit: int
) -> None:
    def create(length: int, order: str) -> CliResult:
        if flag == "order":
            return _create(cli, order=order + "x" * (length - len(order)))
        return _create(cli, order=order, actor="a" * length)

    assert create(limit, "order-fits").code == 0
    events = cli.events()

    line = _refused(create(limit + 1, "order-too-long"))

    assert str(limit) in line
    assert cli.events() == events


def test_a_ten_thousand_character_seller_is_refused(cli: LedgerCli) -> None:
    line = _refused(_create(cli, seller="acct_" + "A" * 10_000))
    assert "255" in line
    assert cli.events() == 0


def test_an_amount_with_leading_zeros_is_its_value_and_a_long_one_is_named_as_typed(
    cli: LedgerCli,
) -> None:
    transfer_id = cli.create("order-zeros", seller="acct_1Hostile", amount=100)
    again = _create(cli, order="order-zeros", amount="00000000000000000000100")
    assert again.out.strip() == transfer_id

    line = _refused(_create(cli, order="order-long", amount="0" * 20 + "1" + "0" * 12))

    assert "0" * 20 + "1" in line
    assert "1000000000000" not in line.replace("0" * 20 + "1" + "0" * 12, "")


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_a_time_that_falls_outside_the_calendar_in_utc_is_bad_input_everywhere(
    cli: LedgerCli, at: str
) -> None:
    transfer_id = cli.create("order-times")

    for argv in (
        ["audit", transfer_id, "--at", at],
        ["audit", "export", "--since", at],
    ):
        line = _refused(cli.cli(*argv, "--database-url", cli.url))
        assert "out of range" in line


def test_a_time_outside_the_calendar_in_an_import_file_names_its_line(
    cli: LedgerCli, tmp_path: Path
) -> None:
    path = tmp_path / "extreme.jsonl"
    path.write_text(
        '{"id": "6f1c2b9e-3d4a-4b5c-8d6e-7f8091a2b3c4", "seller_account_id": "acct_1",'
        ' "order_ref": "legacy-1", "amount": 100, "currency": "usd", "status": "failed",'
        ' "next_retry_at": "0001-01-01T00:00:00+14:00"}\n',
        encoding="utf-8",
    )

    line = _refused(cli.import_file(path))

    assert "line 1" in line and "next_retry_at" in line
    assert cli.events() == 0


def test_a_command_line_argument_that_is_not_utf8_is_one_line_and_exit_2(
    cli: LedgerCli, tmp_path: Path
) -> None:
    done = subprocess.run(
        [
            str(LEDGER_SCRIPT).encode(),
            b"transfer",
            b"create",
            b"--database-url",
            cli.url.encode(),
            b"--seller",
            b"acct_1",
            b"--amount",
            b"100",
            b"--currency",
            b"usd",
            b"--order",
            b"order-\xff\xfe",
        ],
        cwd=tmp_path,
        capture_output=True,
        check=False,
        timeout=60,
    )

    assert done.returncode == BAD_INPUT
    assert done.stdout == b""
    assert len(done.stderr.decode("utf-8", "replace").strip().splitlines()) == 1
    assert b"Traceback" not in done.stderr
    assert cli.events() == 0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LEDGER_MAX_ATTEMPTS", "inf"),
        ("LEDGER_MAX_ATTEMPTS", "nan"),
        ("LEDGER_MAX_ATTEMPTS", "1e9"),
        ("LEDGER_MAX_ATTEMPTS", "2.5"),
        ("LEDGER_CLAIM_SECONDS", "inf"),
        ("LEDGER_CLAIM_SECONDS", "-1"),
        ("LEDGER_RETRY_BASE_SECONDS", "nan"),
        ("LEDGER_RETRY_MAX_SECONDS", "1e300"),
        ("LEDGER_HEARTBEAT_SECONDS", "inf"),
        ("STRIPE_TIMEOUT_SECONDS", "inf"),
        ("STRIPE_TIMEOUT_SECONDS", "0"),
    ],
)
def test_an_infinite_or_absurd_number_in_the_daemons_environment_is_exit_2_naming_it(
    cli: LedgerCli, tmp_path: Path, variable: str, value: str
) -> None:
    done = run_script(
        ["daemon", "--once", "--database-url", cli.url],
        cwd=tmp_path,
        env={"STRIPE_API_KEY": "sk_test_x", variable: value},
    )

    line = _refused(script_result(done))
    assert variable in line and "from" in line


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LEDGER_HEALTH_MAX_LAG_EVENTS", "inf"),
        ("LEDGER_HEALTH_MAX_LAG_SECONDS", "nan"),
        ("LEDGER_HEALTH_DAEMON_SECONDS", "-5"),
    ],
)
def test_an_absurd_health_threshold_is_exit_2_naming_it(
    cli: LedgerCli, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert variable in _refused(cli.cli("health", "--database-url", cli.url))


@pytest.mark.parametrize("tolerance", ["1e20", "inf", "0", "-3", "86401"])
def test_a_webhook_tolerance_outside_one_second_to_a_day_is_exit_2(
    cli: LedgerCli, monkeypatch: pytest.MonkeyPatch, tolerance: str
) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_test")
    monkeypatch.setenv("STRIPE_WEBHOOK_TOLERANCE_SECONDS", tolerance)
    line = _refused(cli.cli("webhook", "serve", "--database-url", cli.url, "--port", "0"))
    assert "STRIPE_WEBHOOK_TOLERANCE_SECONDS" in line


def test_stored_text_with_control_characters_is_printed_escaped(
    cli: LedgerCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value stored before these rules (written here past the validators,
    as an older version could) never reaches the terminal raw."""
    transfer_id = cli.create("order-legacy")
    from tests.ledgers import Ledger  # noqa: PLC0415

    with Ledger.open(cli.url) as ledger, ledger.db.transaction() as cursor:
        cursor.execute(
            "UPDATE seller_transfers SET last_error = ? WHERE order_ref = ?",
            ("boom\x1b[2J\u2028done", "order-legacy"),
        )

    for argv in (["transfer", "show", transfer_id], ["transfer", "list"]):
        result = cli.cli(*argv, "--database-url", cli.url)
        assert result.code == 0
        assert "\x1b" not in result.out and "\u2028" not in result.out
    assert (
        "boom\\x1b[2J\\u2028done"
        in cli.cli("transfer", "show", transfer_id, "--database-url", cli.url).out
    )


def test_a_usage_error_names_ledger_once(run_cli: Cli) -> None:
    result = run_cli("frobnicate")
    line = assert_one_line_error(result)
    assert line.startswith("ledger: error: ") and line.count("ledger:") == 1


def test_a_directory_as_the_sqlite_file_is_said_to_be_a_directory(
    run_cli: Cli, tmp_path: Path
) -> None:
    folder = tmp_path / "ledger.db"
    folder.mkdir()
    for argv in (["migrate"], ["transfer", "list"]):
        line = _refused(run_cli(*argv, "--database-url", f"sqlite:///{folder}"))
        assert "is a directory" in line
