"""The process side through the `ledger` command line, as an operator runs it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.stripe.simulator import SimulatorServer
from tests.e2e.support import (
    UNKNOWN_ID,
    LedgerCli,
    assert_ok,
    assert_one_line_error,
    run_script,
    script_result,
)
from tests.system.world import API_KEY, running_simulator


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with running_simulator() as server:
        yield server


def daemon(cli: LedgerCli, sim: SimulatorServer, cwd: Path, *args: str, **env: str) -> None:
    process = run_script(
        ["daemon", "--database-url", cli.url, *args],
        cwd=cwd,
        env={"STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": sim.base_url, **env},
    )
    assert process.returncode == 0, process.stderr


def test_the_seeds_smoke_probe_refund_to_reversal_pending_to_daemon_to_reversed(
    cli: LedgerCli, sim: SimulatorServer, tmp_path: Path
) -> None:
    transfer_id = cli.create("order-500", amount=12500)
    daemon(cli, sim, tmp_path, "--once")
    paid = cli.show(transfer_id)
    assert paid["status"] == "completed" and paid["stripe_transfer_id"].startswith("tr_")

    assert_ok(cli.transfer("reverse", transfer_id, "--reason", "refund", "--request", "r-1"))
    assert cli.show(transfer_id)["status"] == "reversal_pending"
    daemon(cli, sim, tmp_path, "--once")

    reversed_ = cli.show(transfer_id)
    assert reversed_["status"] == "reversed" and reversed_["amount_reversed"] == 12500
    [reversal] = sim.simulator.state()["reversals"]
    assert reversal["transfer"] == paid["stripe_transfer_id"]
    assert reversal["amount"] == 12500
    assert reversal["metadata"]["ledger_transfer_id"] == transfer_id


def test_the_daemon_refuses_to_start_without_an_api_key(cli: LedgerCli, tmp_path: Path) -> None:
    process = run_script(["daemon", "--once", "--database-url", cli.url], cwd=tmp_path)
    result = script_result(process)
    assert result.code == 2
    assert "STRIPE_API_KEY" in assert_one_line_error(result)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LEDGER_MAX_ATTEMPTS", "many"),
        ("LEDGER_MAX_ATTEMPTS", "0"),
        ("LEDGER_RETRY_BASE_SECONDS", "-1"),
        ("STRIPE_TIMEOUT_SECONDS", "soon"),
        ("LEDGER_CLAIM_SECONDS", "0"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(
    cli: LedgerCli, tmp_path: Path, variable: str, value: str
) -> None:
    process = run_script(
        ["daemon", "--once", "--database-url", cli.url],
        cwd=tmp_path,
        env={"STRIPE_API_KEY": API_KEY, variable: value},
    )
    result = script_result(process)
    assert result.code == 2
    assert variable in assert_one_line_error(result)


@pytest.mark.parametrize("concurrency", ["0", "-3", "many", "100000"])
def test_a_bad_concurrency_is_one_line_and_exit_2(cli: LedgerCli, concurrency: str) -> None:
    result = cli.cli("daemon", "--once", "--concurrency", concurrency, "--database-url", cli.url)
    assert result.code == 2
    assert "--concurrency" in assert_one_line_error(result)


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--metrics-port", "0"), ("--metrics-port", "http"), ("--log-format", "xml")],
)
def test_a_bad_metrics_port_or_log_format_is_one_line_and_exit_2(
    cli: LedgerCli, flag: str, value: str
) -> None:
    result = cli.cli("daemon", "--once", flag, value, "--database-url", cli.url)
    assert result.code == 2
    assert flag in assert_one_line_error(result)


def test_a_metrics_port_in_use_is_one_line_and_exit_1(
    cli: LedgerCli, sim: SimulatorServer, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        process = run_script(
            ["daemon", "--once", "--metrics-port", port, "--database-url", cli.url],
            cwd=tmp_path,
            env={"STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": sim.base_url},
        )
    result = script_result(process)
    assert result.code == 1
    assert "cannot serve metrics" in assert_one_line_error(result)


def test_parked_list_is_empty_on_a_healthy_ledger(cli: LedgerCli) -> None:
    assert assert_ok(cli.cli("parked", "list", "--json", "--database-url", cli.url)).json() == []
    assert "(0 parked)" in assert_ok(cli.cli("parked", "list", "--database-url", cli.url)).out


def test_parked_retry_names_its_refusals(cli: LedgerCli) -> None:
    transfer_id = cli.create("order-501")
    malformed = cli.cli("parked", "retry", "not-a-uuid", "--database-url", cli.url)
    assert malformed.code == 2 and assert_one_line_error(malformed)
    unknown = cli.cli("parked", "retry", UNKNOWN_ID, "--database-url", cli.url)
    assert unknown.code == 4 and assert_one_line_error(unknown)
    nothing = cli.cli("parked", "retry", transfer_id, "--database-url", cli.url)
    assert nothing.code == 2
    assert "no parked work" in assert_one_line_error(nothing)
