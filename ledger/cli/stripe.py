"""`ledger reconcile` and `ledger webhook serve`: the commands that talk to
Stripe or hear from it."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import threading

from ledger import logs, values
from ledger.bootstrap import build_reconciliation, build_webhook_app, open_backend
from ledger.cli.output import EXIT_FAILURE, EXIT_OK
from ledger.errors import InvalidInput, LedgerError
from ledger.signals import stop_on_signals

log = logging.getLogger("ledger.webhooks")


def cmd_reconcile(args: argparse.Namespace) -> int:
    """`ledger reconcile [--json] [--since TIME]`: exit 0 when the ledger and
    Stripe agree, 1 with the differences."""
    # Imported here: stripe-python costs every other command ~40 ms of start-up.
    from ledger.stripe.gateway import StripeSettings  # noqa: PLC0415

    since = values.timestamp(args.since, "--since") if args.since is not None else None
    if not os.environ.get("STRIPE_API_KEY", "").strip():
        raise InvalidInput(
            "STRIPE_API_KEY is not set: reconcile reads Stripe with the platform's secret key"
        )
    settings = StripeSettings.from_env()
    with open_backend(args.database_url) as backend:
        report = build_reconciliation(backend, settings, since=since, progress_out=sys.stderr).run()
    if args.json:
        json.dump(report.as_json(), sys.stdout, separators=(", ", ": "))
        sys.stdout.write("\n")
    else:
        for line in report.lines():
            print(line)
    return EXIT_OK if report.ok else EXIT_FAILURE


def cmd_webhook_serve(args: argparse.Namespace) -> int:
    """`ledger webhook serve [--port P] [--host H]`: Starlette on uvicorn."""
    # Imported here: Starlette, uvicorn and stripe-python are for this command only.
    import uvicorn  # noqa: PLC0415

    from ledger.webhooks.handler import signing_secrets  # noqa: PLC0415
    from ledger.webhooks.server import (  # noqa: PLC0415
        CONCURRENT_DELIVERIES,
        WEBHOOK_PATH,
        WebhookSettings,
    )

    # Configuration first: a missing secret or a bad port is bad input (exit 2)
    # before anything is opened.
    settings = WebhookSettings.from_env()
    port = _port(args.port)
    # Text on a terminal, one JSON object per line otherwise, as the daemon's;
    # both secrets scrubbed from every line as a last line of defence.
    logs.configure(
        getattr(args, "log_format", "auto"),
        secrets=[*signing_secrets(settings.secret), os.environ.get("STRIPE_API_KEY", "")],
    )
    listener = _listen(args.host, port)
    stop = threading.Event()
    with (
        contextlib.closing(listener),
        # uvicorn stops on these signals itself, then raises them again once
        # it is done: this handler then takes them, and the command exits 0.
        stop_on_signals(stop),
        open_backend(args.database_url, pool_size=CONCURRENT_DELIVERIES + 1) as backend,
    ):
        host, bound_port = listener.getsockname()[:2]
        server = uvicorn.Server(
            uvicorn.Config(
                build_webhook_app(backend, settings),
                # The ledger's own log line per delivery says what matters;
                # uvicorn's access lines would double it, and its dictConfig
                # would replace ours.
                log_config=None,
                access_log=False,
                log_level="warning",
                lifespan="off",
            )
        )
        log.info(
            "webhook server listening on http://%s:%d%s (%s)",
            host,
            bound_port,
            WEBHOOK_PATH,
            backend.db.dialect,
        )
        server.run(sockets=[listener])
        log.info("webhook server stopped")
    return 0


def _port(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or not 0 <= int(raw) <= 65535:
        raise InvalidInput(f"invalid --port {raw!r}: expected a whole number 0-65535")
    return int(raw)


def _listen(host: str, port: int) -> socket.socket:
    """Bind before serving, so that the log line names the port really bound
    (`--port 0` picks a free one) and connections wait in the backlog."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = info[0]
        listener = socket.socket(family, kind, proto)
    except OSError as error:
        raise LedgerError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError as error:
        listener.close()
        raise LedgerError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return listener
