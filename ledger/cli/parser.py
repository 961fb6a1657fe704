"""The `ledger` command line's grammar: every command, its options, and the
function that runs it."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any, NoReturn

from ledger import logs
from ledger.cli import stripe_sim as simulator_command
from ledger.cli.audit import cmd_audit, cmd_rebuild
from ledger.cli.operations import (
    cmd_daemon,
    cmd_health,
    cmd_parked_list,
    cmd_parked_retry,
)
from ledger.cli.stripe import cmd_reconcile, cmd_webhook_serve
from ledger.cli.transfers import (
    cmd_create,
    cmd_import,
    cmd_list,
    cmd_matrix,
    cmd_migrate,
    cmd_reverse,
    cmd_set_status,
    cmd_show,
)

# Who acted, when a command does not say.
CLI_ACTOR = "system:cli"


class UsageError(Exception):
    """argparse found the command line malformed."""


class _Parser(argparse.ArgumentParser):
    # argparse prints usage plus an error and exits; the contract wants one line
    # and exit 2, raised so run() reports it like every other bad input. The
    # line starts "ledger: error:" once: only the subcommand is named here.
    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("ledger").strip()
        raise UsageError(f"{command}: {message}" if command else message)


def add_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=logs.LOG_FORMATS,
        default="auto",
        help="json: one object per line; text; auto (default): text on a terminal, else json",
    )


# Built once per process (parsing leaves it as it was): a program that runs many
# commands in-process, as the tests do, pays ~10 ms of argparse set-up once.
@functools.cache
def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--database-url",
        default=None,
        help="overrides LEDGER_DATABASE_URL (default sqlite:///ledger.db)",
    )
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")

    parser = _Parser(prog="ledger", description="Event-sourced ledger of seller transfers.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(
        group: Any, name: str, handler: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=help_text)
        sub.set_defaults(handler=handler)
        return sub

    add(commands, "migrate", cmd_migrate, "apply migrations; safe to run again")

    transfer = commands.add_parser("transfer", help="create, inspect and change transfers")
    transfer_commands = transfer.add_subparsers(
        dest="transfer_command", required=True, parser_class=_Parser
    )

    create = add(transfer_commands, "create", cmd_create, "new pending transfer; prints its id")
    create.add_argument("--seller", required=True, help="connected account, acct_...")
    create.add_argument("--amount", required=True, help="minor units, e.g. 1250 for 12.50")
    create.add_argument("--currency", required=True, help="ISO code, e.g. usd")
    create.add_argument("--order", required=True, help="order reference (idempotency key)")
    create.add_argument(
        "--source-transaction",
        help="the charge (ch_...) whose funds pay it out: Stripe waits for them to settle",
    )
    create.add_argument("--actor", default=CLI_ACTOR)

    show = add(transfer_commands, "show", cmd_show, "current state of one transfer")
    show.add_argument("id")

    listing = add(transfer_commands, "list", cmd_list, "rows of the read table")
    listing.add_argument("--status")

    reverse = add(
        transfer_commands, "reverse", cmd_reverse, "completed -> reversal_pending (after a refund)"
    )
    reverse.add_argument("id")
    reverse.add_argument("--reason", required=True)
    reverse.add_argument("--amount", help="minor units; default the whole outstanding amount")
    reverse.add_argument("--request", help="refund/request reference (idempotency key)")
    reverse.add_argument("--actor", default=CLI_ACTOR)

    set_status = add(
        transfer_commands, "set-status", cmd_set_status, "admin change through the matrix"
    )
    set_status.add_argument("id")
    set_status.add_argument("status")
    set_status.add_argument("--actor", required=True, help="who is making the change")
    set_status.add_argument("--reason", required=True, help="why")

    importing = add(
        transfer_commands, "import", cmd_import, "bulk-load existing transfers (JSON Lines)"
    )
    importing.add_argument("file")
    importing.add_argument("--actor", default=CLI_ACTOR)

    daemon = add(
        commands,
        "daemon",
        cmd_daemon,
        "run the process managers (payouts, reversals), retries and the projection",
    )
    daemon.add_argument("--once", action="store_true", help="drain what is due now, then exit")
    daemon.add_argument(
        "--concurrency", default="4", help="Stripe calls in flight at once (default 4)"
    )
    daemon.add_argument("--metrics-port", help="serve Prometheus metrics on this port")
    daemon.add_argument(
        "--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)"
    )
    add_log_format(daemon)

    add(
        commands,
        "health",
        cmd_health,
        "exit 0 when the database, migrations, projection, due work, daemons and parked"
        " work are all fine; else 1 with what is wrong",
    )

    parked = commands.add_parser("parked", help="work the daemon gave up on (not Stripe's answer)")
    parked_commands = parked.add_subparsers(
        dest="parked_command", required=True, parser_class=_Parser
    )
    add(parked_commands, "list", cmd_parked_list, "list parked work")
    parked_retry = add(parked_commands, "retry", cmd_parked_retry, "put a transfer's work back")
    parked_retry.add_argument("id")

    # No database options: the simulator stands in for Stripe, not the ledger.
    stripe_sim = commands.add_parser(
        "stripe-sim",
        help="local Stripe-compatible simulator (transfers, reversals, faults) on 127.0.0.1",
        description=simulator_command.DESCRIPTION,
    )
    stripe_sim.set_defaults(handler=simulator_command.run_from_args, database_url="")
    simulator_command.configure_parser(stripe_sim)

    audit_cmd = add(commands, "audit", cmd_audit, "a transfer's history, or its state at a point")
    audit_cmd.add_argument(
        "target",
        metavar="ID|export|verify|head",
        help="a transfer id; `export` every history; `verify` the whole ledger;"
        " `head` the newest link of the hash chain",
    )
    audit_cmd.add_argument("--version", help="the state as of this event version")
    audit_cmd.add_argument("--at", help="the state as of this time (ISO 8601, with offset)")
    audit_cmd.add_argument("--since", help="export: only transfers changed at or after TIME")
    audit_cmd.add_argument("--status", help="export: only transfers in this status now")
    audit_cmd.add_argument("--head", help="verify: a head recorded earlier by `audit head`")

    rebuild_cmd = add(
        commands, "rebuild", cmd_rebuild, "rebuild seller_transfers from the events and switch over"
    )
    rebuild_cmd.add_argument(
        "--verify",
        action="store_true",
        help="compare with the live table first; refuse to switch if they differ",
    )

    reconcile_cmd = add(
        commands,
        "reconcile",
        cmd_reconcile,
        "compare every transfer Stripe knows of with Stripe; exit 1 with the differences",
    )
    reconcile_cmd.add_argument(
        "--since",
        help="only ledger transfers changed, Stripe transfers made, and transfers Stripe's"
        " events say changed (reversed or updated), at or after TIME; Stripe keeps events"
        " 30 days, so for an older TIME run in full (no --since)",
    )

    webhook = commands.add_parser("webhook", help="Stripe webhook deliveries")
    webhook_commands = webhook.add_subparsers(
        dest="webhook_command", required=True, parser_class=_Parser
    )
    webhook_serve = add(
        webhook_commands,
        "serve",
        cmd_webhook_serve,
        "receive Stripe deliveries (STRIPE_WEBHOOK_SECRET) and record changes made outside",
    )
    webhook_serve.add_argument("--port", default="8740", help="port to listen on (default 8740)")
    webhook_serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    add_log_format(webhook_serve)

    matrix_cmd = add(commands, "matrix", cmd_matrix, "print the transition matrix")
    matrix_cmd.add_argument("--format", choices=("table", "mermaid"), default="table")
    return parser
