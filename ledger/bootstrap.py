"""The composition root: the one place that names concrete parts and wires
them. Only the entry points (the CLI, the Python API, the servers) import it.

- `open_backend(url)`: what a database URL opens (`ledger.backend.Backend`),
  with the append hooks that make every append write its chain links and
  read-table rows in its own transaction;
- `migrate_database(url)`;
- `build_daemon`, `build_metrics_server`, `build_webhook_app`,
  `build_reconciliation`, `health_report`: the long-running parts, each on a
  backend.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import psycopg
from eventsourcing.persistence import PersistenceError

from ledger.application import Transfers
from ledger.audit.chain import InlineLinks, seal
from ledger.backend import Backend
from ledger.config import DatabaseConfig
from ledger.errors import DatabaseUnavailable, InvalidInput, NotMigrated, first_line
from ledger.health import Check, HealthReport, Thresholds, check_migrations, judge, measure
from ledger.migrate import Migration, apply_migrations, require_migrated
from ledger.orders import OrderReservations
from ledger.processing.clock import DatabaseClock
from ledger.processing.daemon import Daemon, DaemonOptions
from ledger.processing.heartbeat import LEASE_BEATS, Heartbeat
from ledger.processing.manager import ProcessManager
from ledger.processing.observer import NO_OBSERVER, Observer
from ledger.processing.policy import RetryPolicy
from ledger.processing.recording import OutcomeRecorder
from ledger.processing.work import WorkStore
from ledger.projections.inline import InlineProjection
from ledger.projections.projection import SellerTransfersProjection
from ledger.projections.queries import SellerTransfers
from ledger.service import LedgerService
from ledger.storage import Database, check_postgres_reachable, use_sqlite_wal
from ledger.storage.liveness import LIFE_LOCK_MARK

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from ledger.metrics import MetricsServer
    from ledger.reconcile import Reconciliation
    from ledger.stripe.gateway import StripeSettings
    from ledger.webhooks.server import WebhookSettings


def open_backend(url: str, *, pool_size: int = 1, migrated: bool = True) -> Backend:
    """The ledger's database at `url`. `migrated` (every command but `migrate`
    and `health`): a database that is not migrated is refused (NotMigrated).
    `pool_size`: PostgreSQL connections kept open. One is what a command uses;
    more are opened when wanted (up to four over), and a process with several
    threads (the daemon, a web app) asks for as many as it keeps busy."""
    config = DatabaseConfig.from_url(url)
    if config.kind == "sqlite":
        if migrated and not Path(config.path).exists():
            # Opening would create an empty file: say what is wrong instead.
            raise NotMigrated(f"no ledger database at {config.path}: run `ledger migrate`")
        if Path(config.path).is_dir():
            raise InvalidInput(f"invalid database URL: {config.path} is a directory, not a file")
        use_sqlite_wal(config.path)
    else:
        check_postgres_reachable(config.libpq_params())
    transfers = Transfers(env=config.eventsourcing_env(pool_size))
    db = Database(transfers.recorder)
    # What every append writes in its own transaction, with its events: the
    # orders of the transfers it creates, their chain links, and the read
    # table's rows and position.
    transfers.recorder.append_hooks = [  # type: ignore[attr-defined]
        OrderReservations(db),
        InlineLinks(db),
        InlineProjection(db),
    ]
    backend = Backend(
        config=config,
        transfers=transfers,
        db=db,
        projection=SellerTransfersProjection(db, transfers.mapper.to_domain_event),
        service=LedgerService(transfers, db, SellerTransfers(db)),
    )
    if migrated:
        try:
            require_migrated(db)
        except BaseException:
            backend.close()
            raise
    return backend


def migrate_database(url: str) -> list[Migration]:
    """Create the event store's tables (the library's) and apply our migrations;
    then bring the read table up to date and link, once, what a database
    written before links were made in the append holds (migration 0012)."""
    with open_backend(url, migrated=False) as backend:
        applied = apply_migrations(backend.db)
        backend.catch_up()
        seal(backend.db)
        return applied


def health_report(url: str, thresholds: Thresholds) -> HealthReport:
    """Every check of `ledger health`, stopping early where the rest could not be read."""
    config = DatabaseConfig.from_url(url)
    if config.kind == "sqlite" and not Path(config.path).exists():
        return HealthReport([Check("database", False, f"no ledger database at {config.path}")])
    try:
        backend = open_backend(url, migrated=False)
    except (DatabaseUnavailable, PersistenceError, psycopg.Error, sqlite3.Error) as error:
        return HealthReport([Check("database", False, f"unreachable: {first_line(str(error))}")])
    with backend:
        checks = [Check("database", True, f"{config.kind} answers")]
        migrations = check_migrations(backend.db)
        checks.append(migrations)
        if not migrations.ok:
            return HealthReport(checks)
        now = DatabaseClock(backend.db)()
        measured = measure(backend.db, backend.transfers.mapper.to_domain_event, now)
        return HealthReport(checks + judge(measured, thresholds))


def daemon_identity(*, life_lock: bool = False) -> str:
    """Names a daemon in its claims: which host and process holds a transfer
    (ledger.storage.liveness reads it; `life_lock`: it holds one)."""
    name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    return name + LIFE_LOCK_MARK if life_lock else name


def work_store(backend: Backend, *, claim_seconds: float = 0.0) -> WorkStore:
    """The Stripe work table; `claim_seconds` only matters to a daemon (the
    operator's `parked` commands and the tests' look-ups take no claims)."""
    return WorkStore(backend.db, daemon_identity(), claim_seconds)


def build_daemon(
    backend: Backend,
    stripe: StripeSettings,
    policy: RetryPolicy,
    options: DaemonOptions,
    stop: threading.Event | None = None,
    *,
    observer: Observer = NO_OBSERVER,
    clock: Callable[[], datetime] | None = None,
    identity: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    one_thread_at_a_time: bool = False,
    outcome_recorder: OutcomeRecorder | None = None,
) -> Daemon:
    """`ledger daemon`'s daemon. The defaults are what it runs; the
    deterministic simulation (tests/simulation) gives its own clock, sleep
    and randomness (virtual time, a seeded generator), a fixed identity, and
    runs one thread at a time (`one_thread_at_a_time`: no limit on the calls
    in flight), with an `outcome_recorder` whose group commits it schedules
    itself (one thread at a time without one: each outcome saved alone, in
    its worker's thread)."""
    # A claim lives as long as its holder: a lease of a few heartbeats, which
    # every beat renews (ledger/processing/work.py). A killed daemon's work is
    # taken over when its lease runs out, or at once when it is known dead.
    claim_seconds = options.claim_seconds or LEASE_BEATS * options.heartbeat_seconds
    if claim_seconds < 2 * options.heartbeat_seconds:
        logging.getLogger("ledger.daemon").warning(
            "LEDGER_CLAIM_SECONDS=%g is under two heartbeats (%g s each): claims may run"
            " out between beats and be taken over while their calls run",
            claim_seconds,
            options.heartbeat_seconds,
        )
    # Shared with the gateway: once the daemon stops, no request is sent.
    stop = stop or threading.Event()
    # Imported here: stripe-python costs every other command ~40 ms of start-up.
    from ledger.stripe.gateway import StripeGateway  # noqa: PLC0415

    owner = identity or daemon_identity(life_lock=backend.db.dialect == "postgresql")
    work = WorkStore(backend.db, owner, claim_seconds)
    simulated_clock = clock is not None
    clock = clock or DatabaseClock(backend.db)
    # Imported here, as the gateway is.
    from ledger.stripe.budget import RateBudget  # noqa: PLC0415

    budget = RateBudget(
        stripe.rate_per_endpoint,
        stripe.rate_total,
        sleep=sleep,
        clock=(lambda: clock().timestamp()) if simulated_clock else time.monotonic,
    )
    gateway = StripeGateway(
        stripe,
        observer,
        sleep=sleep,
        rng=rng,
        budget=budget,
        # `--concurrency` calls in flight at once, however many worker threads
        # there are. Not when one thread runs at a time: a thread waiting for
        # a place would never come to a point where it yields to the others.
        calls_at_once=None if one_thread_at_a_time else options.concurrency,
        stopping=stop,
    )
    manager = ProcessManager(
        backend.transfers,
        work,
        gateway,
        policy,
        clock,
        observer=observer,
        # One thread at a time cannot wait for a recorder thread's batch: the
        # simulation gives a recorder whose batches its schedule forms.
        recorder=outcome_recorder
        or OutcomeRecorder(backend.transfers, group_commit=not one_thread_at_a_time),
        # A try is sent only while the claim holds at least half a lease
        # longer: a process paused between checking and sending has that long.
        send_margin=timedelta(seconds=claim_seconds / 2),
    )
    heartbeat = Heartbeat(
        backend.db,
        work.owner,
        options.concurrency,
        clock,
        options.heartbeat_seconds,
        renew=work.renew,
        peers=budget,
    )
    return Daemon(backend, manager, work, options, stop, heartbeat=heartbeat, observer=observer)


def build_metrics_server(
    backend: Backend, port: int, host: str, thresholds: Thresholds
) -> MetricsServer:
    """`/metrics` for a daemon; its `observer` counts what the daemon does."""
    # Imported here: prometheus-client is for the daemon only.
    from ledger.metrics import MetricsServer  # noqa: PLC0415

    return MetricsServer(
        port,
        host,
        backend.db,
        backend.transfers.mapper.to_domain_event,
        DatabaseClock(backend.db),
        daemon_seen_seconds=thresholds.daemon_seen_seconds,
    )


def build_webhook_app(backend: Backend, settings: WebhookSettings) -> Starlette:
    # Imported here: Starlette and stripe-python are for the webhook server only.
    from ledger.webhooks.server import build_app  # noqa: PLC0415

    return build_app(backend, settings)


def build_reconciliation(
    backend: Backend,
    stripe: StripeSettings,
    *,
    since: datetime | None = None,
    progress_out: TextIO | None = None,
) -> Reconciliation:
    # Imported here: stripe-python costs every other command ~40 ms of start-up.
    from ledger.reconcile import Reconciliation  # noqa: PLC0415
    from ledger.stripe.listing import StripeReader  # noqa: PLC0415

    return Reconciliation(backend, StripeReader(stripe), since=since, progress_out=progress_out)
