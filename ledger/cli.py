"""The `ledger` command line.

Errors are one line on stderr and an exit code from the contract:
0 ok; 2 bad input; 3 transition refused by the matrix; 4 transfer not found;
1 anything else. Set LEDGER_DEBUG=1 to get a traceback for unexpected errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sqlite3
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

import psycopg
from eventsourcing.persistence import PersistenceError

from ledger import logs, matrix, values
from ledger.api import open_ledger
from ledger.audit.chain import head
from ledger.audit.history import Audit, export
from ledger.audit.rebuild import rebuild
from ledger.audit.verify import verify
from ledger.bootstrap import CLI_ACTOR, Ledger, build_daemon, migrate_database, work_store
from ledger.config import database_url, env_number
from ledger.errors import (
    InvalidInput,
    LedgerError,
    TransferNotFound,
    TransitionRefused,
    first_line,
)
from ledger.health import Thresholds, health_report
from ledger.processing.clock import DatabaseClock
from ledger.processing.daemon import DaemonOptions
from ledger.processing.heartbeat import BEAT_SECONDS
from ledger.processing.observer import NO_OBSERVER, Observer
from ledger.processing.policy import RetryPolicy
from ledger.signals import stop_on_signals
from ledger.storage import describe_database_error
from ledger.stripe import simulator
from projections.seller_transfers import TransferView

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3
EXIT_NOT_FOUND = 4


class UsageError(Exception):
    """argparse found the command line malformed."""


class _Parser(argparse.ArgumentParser):
    # argparse prints usage plus an error and exits; the contract wants one line
    # and exit 2, raised so main() reports it like every other bad input. The
    # line starts "ledger: error:" once: only the subcommand is named here.
    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("ledger").strip()
        raise UsageError(f"{command}: {message}" if command else message)


class _PrintableOutput:
    """Standard output that never carries a raw control character to the
    terminal: text the ledger prints may hold values stored before the ledger
    refused them, or Stripe's words; each such character is written escaped
    (\\x1b). JSON output is already escaped by the encoder."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write("\n".join(values.printable(line) for line in text.split("\n")))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=None, separators=(", ", ": "))
    sys.stdout.write("\n")


def _show_text(view: TransferView) -> None:
    data = view.as_json()
    width = max(len(k) for k in data)
    for key, value in data.items():
        print(f"{key.ljust(width)}  {'' if value is None else value}")


def _list_text(views: Sequence[TransferView]) -> None:
    header = ("id", "status", "seller_account_id", "amount", "currency", "order_ref", "retries")
    rows = [
        (
            str(v.id),
            v.status,
            v.seller_account_id,
            str(v.amount),
            v.currency,
            v.order_ref,
            str(v.retry_count),
        )
        for v in views
    ]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"({len(rows)} transfer{'s' if len(rows) != 1 else ''})")


# ----- commands ---------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    applied = migrate_database(args.database_url)
    if args.json:
        _print_json({"applied": [f"{m.version:04d}_{m.name}" for m in applied]})
    elif applied:
        for m in applied:
            print(f"applied {m.version:04d}_{m.name}")
    else:
        print("database is up to date")
    return EXIT_OK


def cmd_create(args: argparse.Namespace) -> int:
    with open_ledger(args.database_url) as ledger:
        transfer = ledger.create_transfer(
            seller=args.seller,
            order_ref=args.order,
            amount=args.amount,
            currency=args.currency,
            actor=args.actor,
        )
    if args.json:
        _print_json({"id": str(transfer.id)})
    else:
        print(transfer.id)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    transfer_id = values.transfer_id(args.id)
    with open_ledger(args.database_url) as ledger:
        view = ledger.get(transfer_id)
    if args.json:
        _print_json(view.as_json())
    else:
        _show_text(view)
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    status = values.status(args.status) if args.status is not None else None
    with open_ledger(args.database_url) as ledger:
        views = ledger.list_transfers(status)
    if args.json:
        _print_json([v.as_json() for v in views])
    else:
        _list_text(views)
    return EXIT_OK


def cmd_reverse(args: argparse.Namespace) -> int:
    transfer_id = values.transfer_id(args.id)
    amount = values.amount(args.amount) if args.amount is not None else None
    reason = values.reason(args.reason)
    with open_ledger(args.database_url) as ledger:
        request_ref = args.request
        if request_ref is None:
            # Without --request every call is a new request; the transfer's own
            # state then refuses a second one while the first is pending.
            request_ref = f"cli:{transfer_id}:{ledger.get(transfer_id).version + 1}"
        result = ledger.request_reversal(
            transfer_id, request_ref=request_ref, amount=amount, reason=reason, actor=args.actor
        )
    status = result.transfer.status
    if args.json:
        _print_json({"id": str(transfer_id), "recorded": result.recorded, "status": status})
    else:
        note = (
            "reversal requested"
            if result.recorded
            else "reversal already requested; nothing appended"
        )
        print(f"{transfer_id} {status} ({note})")
    return EXIT_OK


def cmd_set_status(args: argparse.Namespace) -> int:
    transfer_id = values.transfer_id(args.id)
    status = values.status(args.status)
    actor = values.actor(args.actor)
    reason = values.reason(args.reason)
    with open_ledger(args.database_url) as ledger:
        view = ledger.set_status(transfer_id, status, actor=actor, reason=reason)
    if args.json:
        _print_json(view.as_json())
    else:
        print(f"{transfer_id} {view.status}")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    # Imported here: pydantic costs every other command ~40 ms of start-up.
    from ledger.importing import ImportFile  # noqa: PLC0415

    source = ImportFile(Path(args.file))
    actor = values.actor(args.actor)
    with Ledger.open(args.database_url) as ledger:
        result = ledger.import_from(source.records, actor=actor)
    if args.json:
        _print_json({"imported": result.imported, "already_present": result.already_present})
    else:
        print(f"imported {result.imported}, already present {result.already_present}")
    return EXIT_OK


# `ledger audit` takes a transfer id or one of these (DESIGN section 8).
def cmd_audit(args: argparse.Namespace) -> int:
    if args.target == "export":
        return _audit_export(args)
    if args.target in ("verify", "head"):
        if args.version is not None or args.at is not None:
            raise InvalidInput("--version and --at go with `ledger audit ID`")
        return _audit_verify(args) if args.target == "verify" else _audit_head(args)
    if args.since is not None or args.status is not None:
        raise InvalidInput("--since and --status go with `ledger audit export`")
    if args.head is not None:
        raise InvalidInput("--head goes with `ledger audit verify`")
    transfer_id = values.transfer_id(args.target)
    if args.version is not None and args.at is not None:
        raise InvalidInput("give --version or --at, not both")
    version = (
        _whole_number(args.version, "--version", 1, 2**31 - 1) if args.version is not None else None
    )
    at = values.timestamp(args.at, "--at") if args.at is not None else None
    with open_ledger(args.database_url) as ledger:
        result = ledger.history(transfer_id, version=version, at=at)
    if args.json:
        _print_json(result.as_json())
        return EXIT_OK
    _audit_text(result)
    return EXIT_OK


def _audit_head(args: argparse.Namespace) -> int:
    with Ledger.open(args.database_url) as ledger:
        # Every append links its events itself: the head covers all of them.
        newest = head(ledger.db)
    if newest is None:
        raise LedgerError("the event log is empty: there is no head yet")
    if args.json:
        _print_json(newest.as_json())
    else:
        print(f"{newest.link.hex()} at position {newest.position}")
    return EXIT_OK


def _audit_verify(args: argparse.Namespace) -> int:
    recorded: bytes | None = None
    if args.head is not None:
        try:
            recorded = bytes.fromhex(args.head)
        except ValueError:
            recorded = b""
        if len(recorded) != 32:
            raise InvalidInput(
                "invalid --head: expected the 64 hex digits `ledger audit head` prints"
            )
    with Ledger.open(args.database_url) as ledger:
        report = verify(ledger.db, ledger.transfers.mapper.to_domain_event, recorded)
    if args.json:
        _print_json(report.as_json())
    else:
        for finding in report.findings:
            print(f"{finding['transfer_id'] or '-'}  {finding['check']}: {finding['problem']}")
        data = report.as_json()
        verdict = "clean" if report.ok else f"{len(report.findings)} finding(s)"
        lagging = (
            f", {data['unprojected']} not in the read table yet" if data["unprojected"] else ""
        )
        print(
            f"{verdict}: {data['transfers']} transfers, {data['events']} events,"
            f" {data['sealed']} linked in the chain, {data['unsealed']} without a link{lagging}"
        )
    return EXIT_OK if report.ok else EXIT_FAILURE


def cmd_rebuild(args: argparse.Namespace) -> int:
    with Ledger.open(args.database_url) as ledger:
        result = rebuild(ledger.db, ledger.transfers.mapper.to_domain_event, verify=args.verify)
    if args.json:
        _print_json({"rows": result.rows, "events": result.events, "seconds": result.seconds})
    else:
        print(
            f"rebuilt seller_transfers: {result.rows} rows from {result.events} events"
            f" in {result.seconds:.1f} s, and switched over"
        )
    return EXIT_OK


def _audit_export(args: argparse.Namespace) -> int:
    if args.version is not None or args.at is not None:
        raise InvalidInput("--version and --at go with `ledger audit ID`")
    since = values.timestamp(args.since, "--since") if args.since is not None else None
    status = values.status(args.status) if args.status is not None else None
    with Ledger.open(args.database_url) as ledger:
        decode = ledger.transfers.mapper.to_domain_event
        stored = ledger.db.stream_stored_events()
        for result in export((decode(e) for _, e in stored), since=since, status=status):
            sys.stdout.write(json.dumps(result.as_json(), separators=(", ", ": ")) + "\n")
    return EXIT_OK


def _audit_text(result: Audit) -> None:
    header = ("version", "at", "event", "from -> to", "actor", "reason", "details")
    rows = [
        (
            str(e.version),
            e.as_json()["at"],
            e.type,
            f"{e.from_status or '(new)'} -> {e.to_status}",
            e.actor,
            e.reason or "",
            ", ".join(
                f"{k}={v}"
                for k, v in {**e.as_json(), "caused_by": e.caused_by}.items()
                if k in e.details or k == "caused_by"
                if v is not None
            ),
        )
        for e in result.entries
    ]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    state = result.state
    print(
        f"state at version {state.version}: {state.status}, amount {state.amount}"
        f" {state.currency}, reversed {state.amount_reversed}, retries {state.retry_count}"
    )


MAX_CONCURRENCY = 256
DAEMON_SWITCH_INTERVAL_SECONDS = 0.0005


def cmd_daemon(args: argparse.Namespace) -> int:
    # Imported here: stripe-python costs every other command ~40 ms of start-up.
    from ledger.stripe.gateway import StripeSettings  # noqa: PLC0415

    # Configuration first: a missing key or a bad policy is bad input (exit 2)
    # before anything is opened.
    concurrency = _whole_number(args.concurrency, "--concurrency", 1, MAX_CONCURRENCY)
    metrics_port = (
        _whole_number(args.metrics_port, "--metrics-port", 1, 65535)
        if args.metrics_port is not None
        else None
    )
    stripe_settings = StripeSettings.from_env()
    policy = RetryPolicy.from_env()
    claim_seconds = env_number(
        os.environ, "LEDGER_CLAIM_SECONDS", None, minimum=0, exclusive=True, maximum=86400
    )
    heartbeat_seconds = env_number(
        os.environ,
        "LEDGER_HEARTBEAT_SECONDS",
        BEAT_SECONDS,
        minimum=0,
        exclusive=True,
        maximum=3600,
    )
    assert heartbeat_seconds is not None
    thresholds = Thresholds.from_env()
    logs.configure(
        args.log_format,
        secrets=[stripe_settings.api_key, *os.environ.get("STRIPE_WEBHOOK_SECRET", "").split(",")],
    )
    log = logging.getLogger("ledger.daemon")
    # Workers spend their time waiting on sockets (Stripe, the database) and
    # each wake-up must re-take the GIL: a shorter switch interval than the
    # default 5 ms gets a woken worker going sooner.
    sys.setswitchinterval(DAEMON_SWITCH_INTERVAL_SECONDS)
    stop = threading.Event()
    # Signals are caught from here on, so a stop during start-up is clean too.
    # A second signal interrupts the wait for in-flight calls: they are left
    # for the next daemon to look up at Stripe.
    # One database connection per worker, plus the loop's and the metrics'.
    with (
        stop_on_signals(stop, log),
        contextlib.suppress(KeyboardInterrupt),
        Ledger.open(args.database_url, pool_size=concurrency + 3) as ledger,
        contextlib.ExitStack() as cleanup,
    ):
        observer: Observer = NO_OBSERVER
        if metrics_port is not None:
            # Imported here: prometheus-client is for the daemon only.
            from ledger.metrics import MetricsServer  # noqa: PLC0415

            try:
                server = MetricsServer(
                    metrics_port,
                    args.metrics_host,
                    ledger.db,
                    ledger.transfers.mapper.to_domain_event,
                    DatabaseClock(ledger.db),
                    daemon_seen_seconds=thresholds.daemon_seen_seconds,
                )
            except OSError as error:
                raise LedgerError(
                    f"cannot serve metrics on {args.metrics_host}:{metrics_port}: {error.strerror}"
                ) from None
            cleanup.callback(server.close)
            observer = server.observer
            log.info("metrics on http://%s:%d/metrics", args.metrics_host, server.port)
        daemon = build_daemon(
            ledger,
            stripe_settings,
            policy,
            DaemonOptions(
                concurrency=concurrency,
                once=args.once,
                claim_seconds=claim_seconds,
                heartbeat_seconds=heartbeat_seconds,
            ),
            stop,
            observer=observer,
        )
        log.info(
            "daemon started: %s, concurrency %d%s",
            ledger.db.dialect,
            concurrency,
            ", draining what is due now" if args.once else "",
        )
        daemon.run()
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    # Thresholds first: a malformed one is bad input (exit 2), not "unhealthy".
    thresholds = Thresholds.from_env()
    report = health_report(args.database_url, thresholds)
    if args.json:
        _print_json(report.as_json())
    else:
        for item in report.checks:
            print(f"{'ok' if item.ok else 'FAIL':<5} {item.name:<11} {item.detail}")
        failing = [c.name for c in report.checks if not c.ok]
        print("healthy" if report.ok else f"unhealthy: {', '.join(failing)}")
    return EXIT_OK if report.ok else EXIT_FAILURE


def _whole_number(raw: str, name: str, minimum: int, maximum: int) -> int:
    if not (raw.isascii() and raw.isdigit()) or not minimum <= int(raw) <= maximum:
        raise InvalidInput(f"invalid {name} {raw!r}: expected a whole number {minimum}-{maximum}")
    return int(raw)


def cmd_parked_list(args: argparse.Namespace) -> int:
    with Ledger.open(args.database_url) as ledger:
        parked = work_store(ledger).parked()
    if args.json:
        _print_json([p.as_json() for p in parked])
        return EXIT_OK
    for item in parked:
        data = item.as_json()
        print(
            f"{data['transfer_id']}  {data['kind']}  parked {data['parked_at']}"
            f" after {data['failures']} failures: {data['last_failure']}"
        )
    print(f"({len(parked)} parked)")
    return EXIT_OK


def cmd_parked_retry(args: argparse.Namespace) -> int:
    transfer_id = values.transfer_id(args.id)
    with Ledger.open(args.database_url) as ledger:
        ledger.show(transfer_id)  # exit 4 for an unknown transfer
        if not work_store(ledger).unpark(transfer_id, datetime.now(UTC)):
            raise InvalidInput(f"transfer {transfer_id} has no parked work")
    print(f"{transfer_id}: parked work put back; the daemon takes it on its next turn")
    return EXIT_OK


def cmd_reconcile(args: argparse.Namespace) -> int:
    # Imported here: stripe-python costs every other command ~40 ms of start-up.
    from ledger.reconcile import run_from_args  # noqa: PLC0415

    return run_from_args(args)


def cmd_webhook_serve(args: argparse.Namespace) -> int:
    # Imported here: Starlette, uvicorn and stripe-python are for this command only.
    from ledger.webhooks import serve_from_args  # noqa: PLC0415

    return serve_from_args(args)


def cmd_matrix(args: argparse.Namespace) -> int:
    print(matrix.render_mermaid() if args.format == "mermaid" else matrix.render_table())
    return EXIT_OK


# ----- parser -----------------------------------------------------------------


def add_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=logs.LOG_FORMATS,
        default="auto",
        help="json: one object per line; text; auto (default): text on a terminal, else json",
    )


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
        description=simulator.DESCRIPTION,
    )
    stripe_sim.set_defaults(handler=simulator.run_from_args, database_url="")
    simulator.configure_parser(stripe_sim)

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
        help="only ledger transfers changed, and Stripe transfers made, at or after TIME; a"
        " reversal made at Stripe after TIME on an older transfer whose webhook was lost is"
        " not seen: a full run (no --since) also catches reversals made at Stripe later on"
        " older transfers",
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


def run(argv: Sequence[str] | None = None) -> int:
    stdout = sys.stdout
    sys.stdout = _PrintableOutput(stdout)
    try:
        return _run(argv)
    finally:
        sys.stdout = stdout


def _run(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.database_url is None:
            args.database_url = database_url()
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except UsageError as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    except TransitionRefused as error:
        return _fail(str(error), EXIT_REFUSED)
    except TransferNotFound as error:
        return _fail(str(error), EXIT_NOT_FOUND)
    except InvalidInput as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    except LedgerError as error:
        return _fail(str(error), EXIT_FAILURE)
    except (PersistenceError, sqlite3.Error, psycopg.Error) as error:
        # The message is the driver's; it names the problem, never the password.
        return _fail(describe_database_error(error), EXIT_FAILURE)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_FAILURE)
    except Exception as error:
        if os.environ.get("LEDGER_DEBUG"):
            traceback.print_exc()
        return _fail(f"internal error: {type(error).__name__}: {first_line(str(error))}", 1)


def _fail(message: str, code: int) -> int:
    print(f"ledger: error: {values.printable(first_line(message))}", file=sys.stderr)
    return code


def main() -> NoReturn:
    sys.exit(run())
