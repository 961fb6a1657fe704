"""`ledger stripe-sim` (and `python -m ledger.cli stripe-sim`): the simulator's
options, start-up and serving."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import Final

from ledger.errors import InvalidInput, LedgerError
from ledger.signals import stop_on_signals
from ledger.stripe.simulator.config import (
    DEFAULT_IDEMPOTENCY_TTL_SECONDS,
    DEFAULT_PORT,
    DEFAULT_SLOW_MS,
    SimulatorConfig,
)
from ledger.stripe.simulator.engine import StripeSimulator
from ledger.stripe.simulator.faults import FAULT_NAMES, format_faults, parse_faults
from ledger.stripe.simulator.http import SimulatorServer
from ledger.stripe.simulator.ratelimit import PRESETS, rate_limit_preset

DESCRIPTION: Final = (
    "Local Stripe-compatible simulator on 127.0.0.1 for trying the daemon without a Stripe "
    "account: transfers, transfer reversals and events (API v1 shapes) with Stripe's "
    "idempotency semantics, Stripe's rate limits (test-mode numbers unless --rate-limit says "
    "otherwise), signed webhook deliveries (--webhook-url), and injectable latency and faults. "
    "Point the ledger at it with STRIPE_API_BASE. Conventions: any acct_ id is a connected "
    "account except ids containing 'unknown' (400 resource_missing); ids containing 'nocap' "
    "lack the transfers capability (400 insufficient_capabilities_for_transfer); ids "
    "containing 'nobalance' cannot fund reversals (400 balance_insufficient); keys starting "
    "with rk_ get 403; without --api-key any key is accepted. Faults (name=probability, "
    "comma-separated): 500_before (500, nothing done), 500_after (done, 500 saved under the "
    "idempotency key), drop_after (done, connection closed unanswered), 429 (rate limited, "
    "nothing done), lock_timeout (429 with Stripe-Should-Retry: true, nothing done), slow "
    "(done, answer delayed by --slow-ms). Tests inspect and steer it under /_sim (state, "
    "faults, reset, accounts, platform-balance, topups, reverse, transfers)."
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add stripe-sim's options to a (sub)parser; `run_from_args` runs it."""
    if parser.description is None:
        parser.description = DESCRIPTION
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one and prints it)",
    )
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=0,
        metavar="MS",
        help="delay before answering each /v1 request (default 0)",
    )
    parser.add_argument(
        "--slow-ms",
        type=int,
        default=DEFAULT_SLOW_MS,
        metavar="MS",
        help=f"how long a 'slow' fault holds its answer (default {DEFAULT_SLOW_MS})",
    )
    parser.add_argument(
        "--faults",
        default="",
        metavar="SPEC",
        help="random faults on money-moving POSTs, e.g. '500_after=0.05,drop_after=0.05,429=0.1';"
        f" names: {', '.join(FAULT_NAMES)} (default none)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the fault draws and object ids: the same seed and requests give the"
        " same faults and ids (default 0)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="accept only this API key (default: STRIPE_SIM_API_KEY if set, else any key)",
    )
    parser.add_argument(
        "--platform-balance",
        type=int,
        default=None,
        metavar="MINOR",
        help="the platform's available balance, in minor units: a transfer larger than what"
        " is left answers 400 balance_insufficient unless it names a source_transaction;"
        " POST /_sim/topups adds funds (default unlimited)",
    )
    parser.add_argument(
        "--idempotency-ttl-seconds",
        type=float,
        default=DEFAULT_IDEMPOTENCY_TTL_SECONDS,
        metavar="S",
        help="how long idempotency keys are kept (default 86400, Stripe's 24 h)",
    )
    parser.add_argument(
        "--rate-limit",
        choices=sorted(PRESETS),
        default="test",
        help="Stripe's rate limits, answered with 429 rate_limit: 'test' (default; test mode:"
        " 25 requests/s per endpoint, 25/s in total), 'live' (live mode: 25/s per endpoint,"
        " 100/s in total) or 'off'. Counted per API key over a sliding second; /_sim is"
        " never limited",
    )
    parser.add_argument(
        "--rate-limit-per-endpoint",
        type=int,
        default=None,
        metavar="N",
        help="requests/s for each endpoint, in place of the --rate-limit preset's (0: none)",
    )
    parser.add_argument(
        "--rate-limit-total",
        type=int,
        default=None,
        metavar="N",
        help="requests/s in total, in place of the --rate-limit preset's (0: none)",
    )
    parser.add_argument(
        "--webhook-url",
        default=None,
        metavar="URL",
        help="POST each event here (as `ledger webhook serve` receives them), signed with"
        " --webhook-secret; failed deliveries are retried a few times with backoff",
    )
    parser.add_argument(
        "--webhook-secret",
        default=None,
        metavar="WHSEC",
        help="the endpoint's signing secret, whsec_... (default: STRIPE_SIM_WEBHOOK_SECRET"
        " if set); needed with --webhook-url",
    )


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The configuration the parsed options ask for; InvalidInput when they do not add up."""
    for name in ("rate_limit_per_endpoint", "rate_limit_total"):
        value = getattr(args, name)
        if value is not None and value < 0:
            option = "--" + name.replace("_", "-")
            raise InvalidInput(f"{option} must be a non-negative integer")
    rate_limit = rate_limit_preset(args.rate_limit).with_overrides(
        args.rate_limit_per_endpoint, args.rate_limit_total
    )
    return SimulatorConfig(
        port=args.port,
        latency_ms=args.latency_ms,
        slow_ms=args.slow_ms,
        faults=parse_faults(args.faults or ""),
        seed=args.seed,
        api_key=args.api_key or os.environ.get("STRIPE_SIM_API_KEY") or None,
        platform_balance=args.platform_balance,
        idempotency_ttl_seconds=args.idempotency_ttl_seconds,
        rate_limit=rate_limit,
        webhook_url=args.webhook_url or None,
        webhook_secret=args.webhook_secret or os.environ.get("STRIPE_SIM_WEBHOOK_SECRET") or None,
    )


def startup_line(config: SimulatorConfig, base_url: str) -> str:
    # Never the API key, the webhook secret or the webhook URL (it may hold a token).
    webhooks = ", webhooks on" if config.webhook_url else ""
    return (
        f"stripe-sim listening on {base_url} (latency {config.latency_ms} ms,"
        f" faults {format_faults(config.faults)}, seed {config.seed},"
        f" rate limit {config.rate_limit.describe()}{webhooks});"
        f" export STRIPE_API_BASE={base_url}"
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM, then stop cleanly and return 0."""
    config = config_from_args(args)
    simulator = StripeSimulator(config)
    server = SimulatorServer(simulator, port=config.port, access_log=sys.stderr)
    try:
        server.start()
    except OSError as error:
        reason = error.strerror or str(error)
        raise LedgerError(
            f"cannot listen on 127.0.0.1:{config.port}: {reason} (--port 0 picks a free port)"
        ) from None
    stop = threading.Event()
    with stop_on_signals(stop):
        try:
            print(startup_line(config, server.base_url), flush=True)
            # A timed wait: the signal handler runs in this thread between waits at the latest.
            while not stop.wait(0.5):
                pass
        finally:
            server.stop()
    return 0
