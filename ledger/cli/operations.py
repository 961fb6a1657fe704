"""`ledger daemon`, `ledger health` and `ledger parked ...`: running the
process side and watching it."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
from datetime import UTC, datetime
from typing import Final

from ledger import logs, values
from ledger.bootstrap import (
    build_daemon,
    build_metrics_server,
    health_report,
    open_backend,
    work_store,
)
from ledger.cli.output import EXIT_FAILURE, EXIT_OK, print_json, whole_number
from ledger.config import env_number
from ledger.errors import InvalidInput, LedgerError
from ledger.health import Thresholds
from ledger.processing.daemon import DaemonOptions
from ledger.processing.heartbeat import BEAT_SECONDS
from ledger.processing.observer import NO_OBSERVER, Observer
from ledger.processing.policy import RetryPolicy
from ledger.signals import stop_on_signals

MAX_CONCURRENCY: Final = 256
# Workers spend their time waiting on sockets (Stripe, the database) and each
# wake-up must re-take the GIL: a shorter switch interval than the default
# 5 ms gets a woken worker going sooner.
DAEMON_SWITCH_INTERVAL_SECONDS: Final = 0.0005


def cmd_daemon(args: argparse.Namespace) -> int:
    # Imported here: stripe-python costs every other command ~40 ms of start-up.
    from ledger.stripe.gateway import StripeSettings  # noqa: PLC0415

    # Configuration first: a missing key or a bad policy is bad input (exit 2)
    # before anything is opened.
    concurrency = whole_number(args.concurrency, "--concurrency", 1, MAX_CONCURRENCY)
    metrics_port = (
        whole_number(args.metrics_port, "--metrics-port", 1, 65535)
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
    sys.setswitchinterval(DAEMON_SWITCH_INTERVAL_SECONDS)
    stop = threading.Event()
    # Signals are caught from here on, so a stop during start-up is clean too.
    # A second signal interrupts the wait for in-flight calls: they are left
    # for the next daemon to look up at Stripe.
    # One database connection per Stripe call in flight (a worker holds one
    # only for a database step, never across its call, and the workers beyond
    # `concurrency` are there for those steps), plus the loop's, the
    # metrics', the outcome recorder's and the heartbeat thread's.
    with (
        stop_on_signals(stop, log),
        contextlib.suppress(KeyboardInterrupt),
        open_backend(args.database_url, pool_size=concurrency + 4) as backend,
        contextlib.ExitStack() as cleanup,
    ):
        observer: Observer = NO_OBSERVER
        if metrics_port is not None:
            try:
                server = build_metrics_server(backend, metrics_port, args.metrics_host, thresholds)
            except OSError as error:
                raise LedgerError(
                    f"cannot serve metrics on {args.metrics_host}:{metrics_port}: {error.strerror}"
                ) from None
            cleanup.callback(server.close)
            observer = server.observer
            log.info("metrics on http://%s:%d/metrics", args.metrics_host, server.port)
        daemon = build_daemon(
            backend,
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
            backend.db.dialect,
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
        print_json(report.as_json())
    else:
        for item in report.checks:
            label = "FAIL" if not item.ok else "WARN" if item.warning else "ok"
            print(f"{label:<5} {item.name:<11} {item.detail}")
        failing = [c.name for c in report.checks if not c.ok]
        print("healthy" if report.ok else f"unhealthy: {', '.join(failing)}")
    return EXIT_OK if report.ok else EXIT_FAILURE


def cmd_parked_list(args: argparse.Namespace) -> int:
    with open_backend(args.database_url) as backend:
        parked = work_store(backend).parked()
    if args.json:
        print_json([p.as_json() for p in parked])
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
    with open_backend(args.database_url) as backend:
        backend.service.get(transfer_id)  # exit 4 for an unknown transfer
        if not work_store(backend).unpark(transfer_id, datetime.now(UTC)):
            raise InvalidInput(f"transfer {transfer_id} has no parked work")
    print(f"{transfer_id}: parked work put back; the daemon takes it on its next turn")
    return EXIT_OK
