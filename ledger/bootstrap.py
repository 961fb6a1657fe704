"""The composition root: builds the ledger for one database URL.

Only this module (and the CLI above it) names concrete adapters. `Ledger` runs
each command, then brings the read table up to date before returning, so that a
command's effect is visible in `seller_transfers` as soon as it returns.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from ledger import orders
from ledger.application import ImportRecord, Transfers, batched, check_same_order
from ledger.audit.chain import InlineLinks, seal
from ledger.config import DatabaseConfig
from ledger.domain import Transfer
from ledger.errors import IdempotencyConflict, InvalidInput, NotMigrated, TransferNotFound
from ledger.importing import WithinFile
from ledger.migrate import Migration, apply_migrations, require_migrated
from ledger.processing.clock import DatabaseClock
from ledger.processing.daemon import Daemon, DaemonOptions
from ledger.processing.effects import ProcessManager
from ledger.processing.heartbeat import Heartbeat
from ledger.processing.observer import NO_OBSERVER, Observer
from ledger.processing.policy import RetryPolicy
from ledger.processing.work import WorkStore
from ledger.storage import Database, check_postgres_reachable, is_version_conflict, use_sqlite_wal
from projections import seller_transfers
from projections.seller_transfers import (
    InlineProjection,
    SellerTransfersProjection,
    TransferView,
)

if TYPE_CHECKING:
    from ledger.stripe.gateway import StripeSettings

IMPORT_BATCH_SIZE: Final = 2000
# A claim outlives the longest Stripe call by this much, so a slow call is
# never taken over while it may still be running.
CLAIM_MARGIN_SECONDS: Final = 30.0
CLI_ACTOR: Final = "system:cli"


@dataclass(frozen=True)
class ImportResult:
    imported: int
    already_present: int


class Ledger:
    def __init__(self, config: DatabaseConfig, *, pool_size: int = 2) -> None:
        if config.kind == "postgresql":
            check_postgres_reachable(config.libpq_params())
        elif Path(config.path).is_dir():
            raise InvalidInput(f"invalid database URL: {config.path} is a directory, not a file")
        else:
            use_sqlite_wal(config.path)
        self.config = config
        self.transfers = Transfers(env=config.eventsourcing_env(pool_size))
        self.db = Database(self.transfers.recorder)
        self.projection = SellerTransfersProjection(self.db, self.transfers.mapper.to_domain_event)
        # What every append writes in its own transaction, with its events:
        # their chain links and the read table's rows and position.
        self.transfers.recorder.append_hooks = [  # type: ignore[attr-defined]
            InlineLinks(self.db),
            InlineProjection(self.db),
        ]

    @classmethod
    def open(cls, url: str, *, pool_size: int = 2) -> Ledger:
        """For every command but `migrate`: refuses a database that is not migrated."""
        config = DatabaseConfig.from_url(url)
        if config.kind == "sqlite" and not Path(config.path).exists():
            # Opening would create an empty file: say what is wrong instead.
            raise NotMigrated(f"no ledger database at {config.path}: run `ledger migrate`")
        ledger = cls(config, pool_size=pool_size)
        try:
            require_migrated(ledger.db)
        except BaseException:
            ledger.close()
            raise
        return ledger

    def migrate(self) -> list[Migration]:
        return apply_migrations(self.db)

    def close(self) -> None:
        self.transfers.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- commands -----------------------------------------------------------

    def create_transfer(
        self,
        *,
        seller_account_id: str,
        order_ref: str,
        amount: int,
        currency: str,
        actor: str = CLI_ACTOR,
    ) -> tuple[UUID, bool]:
        transfer = Transfer.create(
            seller_account_id=seller_account_id,
            order_ref=order_ref,
            amount=amount,
            currency=currency,
            actor=actor,
        )
        # The order may be reserved already: by this very transfer (a retried
        # create), or by one imported from the old table under an id of its own.
        owner = orders.owners(self.db, [transfer.order_ref]).get(transfer.order_ref)
        if owner is None:
            reservation = orders.reserve(self.db, [(transfer.order_ref, transfer.id)])
            try:
                self.transfers.save(transfer, also_execute=reservation)
            except IntegrityError as error:
                if is_version_conflict(error):
                    # Created before reservations existed, and not yet in the read
                    # table when migration 0010 reserved its orders.
                    owner = transfer.id
                else:
                    # Reserved meanwhile, by a create of this order or an import.
                    owner = orders.owners(self.db, [transfer.order_ref]).get(transfer.order_ref)
                    if owner is None:
                        raise
            else:
                return transfer.id, True
        check_same_order(self.transfers.get(owner), transfer)
        return owner, False

    def request_reversal(
        self,
        transfer_id: UUID,
        *,
        request_ref: str,
        amount: int | None,
        reason: str | None,
        actor: str = CLI_ACTOR,
    ) -> bool:
        return self.transfers.request_reversal(
            transfer_id, request_ref=request_ref, amount=amount, actor=actor, reason=reason
        )

    def set_status(self, transfer_id: UUID, to_status: str, *, actor: str, reason: str) -> None:
        self.transfers.set_status(transfer_id, to_status, actor=actor, reason=reason)

    def import_transfers(
        self, records: Sequence[ImportRecord], actor: str = CLI_ACTOR
    ) -> ImportResult:
        """Bring these transfers into the ledger (see `import_from`)."""
        return self.import_from(lambda: records, actor)

    def import_from(
        self, records: Callable[[], Iterable[ImportRecord]], actor: str = CLI_ACTOR
    ) -> ImportResult:
        """Save every record not yet in the ledger, in batches of one append each.

        Two passes over `records()`. The first checks everything before anything
        is saved, so that one bad record refuses the whole import: within the
        records, an order and a Stripe transfer belong to one transfer each;
        against the ledger, a transfer already present must have the same values
        (then it appends nothing, so an interrupted import can be run again), an
        order must not be another transfer's, a Stripe transfer must not be
        recorded by another transfer. The second pass saves, each batch with the
        reservations of its orders in the same append.
        """
        within = WithinFile()
        for batch in batched(records(), IMPORT_BATCH_SIZE):
            for record in batch:
                within.add(record)
            self._check_against_ledger(batch)
        repeated = within.confirm(records)
        imported = present = 0
        for batch in batched(records(), IMPORT_BATCH_SIZE):
            fresh = [r for r in batch if (r.transfer_id, r.line) not in repeated]
            with self.db.transaction(write=False) as cursor:
                stored = self.db.first_stored_events(cursor, [r.transfer_id for r in fresh])
            new = [r for r in fresh if r.transfer_id not in stored]
            present += len(fresh) - len(new)
            if not new:
                continue
            # Checked in the first pass; a writer that got there since makes
            # this append fail on its reservations, and the import stops here.
            # The batch's rows are written in the same append (inline).
            reservations = orders.reserve(self.db, [(r.order_ref, r.transfer_id) for r in new])
            self.transfers.save_imported(new, actor, also_execute=reservations)
            imported += len(new)
        return ImportResult(imported=imported, already_present=present)

    def _check_against_ledger(self, batch: Sequence[ImportRecord]) -> None:
        """Refuse (IdempotencyConflict, naming the line) a record that the
        ledger contradicts; see `import_from`."""
        with self.db.transaction(write=False) as cursor:
            existing = self.db.first_stored_events(cursor, [r.transfer_id for r in batch])
        for record in batch:
            stored = existing.get(record.transfer_id)
            if stored is not None:
                _check_reimport(record, self.transfers.mapper.to_domain_event(stored))
        reserved = orders.owners(self.db, (r.order_ref for r in batch))
        for record in batch:
            owner = reserved.get(record.order_ref)
            if owner is not None and owner != record.transfer_id:
                raise IdempotencyConflict(
                    f"line {record.line}: order {record.order_ref!r} already has transfer"
                    f" {owner}: one order, one transfer"
                )
        recorded = seller_transfers.find_by_stripe_transfer_ids(
            self.db, (r.stripe_transfer_id for r in batch if r.stripe_transfer_id)
        )
        for record in batch:
            for other in recorded.get(record.stripe_transfer_id or "", []):
                if other.id != record.transfer_id:
                    raise IdempotencyConflict(
                        f"line {record.line}: Stripe transfer {record.stripe_transfer_id} is"
                        f" recorded by transfer {other.id} already"
                    )

    # ----- reads --------------------------------------------------------------

    def catch_up(self) -> int:
        """Project what was appended without its rows (by an older version, or
        another writer): the daemon's safety net, and `ledger migrate`'s."""
        return self.projection.catch_up()

    def ensure_current(self) -> int:
        """`catch_up` when the table is behind the log: two cheap queries when
        it is not. Returns how many events it projected."""
        if self.projection.position() < (self.transfers.recorder.max_notification_id() or 0):
            return self.catch_up()
        return 0

    # Reads never write: every append writes its rows itself.

    def show(self, transfer_id: UUID) -> TransferView:
        view = seller_transfers.get_transfer(self.db, transfer_id)
        if view is None:
            raise TransferNotFound(transfer_id)
        return view

    def list(self, status: str | None = None) -> list[TransferView]:
        return seller_transfers.list_transfers(self.db, status)


def _check_reimport(record: ImportRecord, first_event: object) -> None:
    if not (isinstance(first_event, Transfer.Imported) and record.same_as(first_event)):
        raise IdempotencyConflict(
            f"line {record.line}: transfer {record.transfer_id} is already in the"
            " ledger with other values"
        )


def migrate_database(url: str) -> list[Migration]:
    """Create the event store's tables (the library's) and apply our migrations."""
    with Ledger(DatabaseConfig.from_url(url)) as ledger:
        applied = ledger.migrate()
        ledger.catch_up()
        # What a database written before links were made in the append holds
        # (migration 0012): linked once, here, in log order.
        seal(ledger.db)
        return applied


def daemon_identity() -> str:
    """Names a daemon in its claims: which host and process holds a transfer."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def work_store(ledger: Ledger, *, claim_seconds: float = 0.0) -> WorkStore:
    """The Stripe work table; `claim_seconds` only matters to a daemon (the
    operator's `parked` commands and the tests' look-ups take no claims)."""
    return WorkStore(ledger.db, daemon_identity(), claim_seconds)


def build_daemon(
    ledger: Ledger,
    stripe: StripeSettings,
    policy: RetryPolicy,
    options: DaemonOptions,
    stop: threading.Event | None = None,
    *,
    observer: Observer = NO_OBSERVER,
) -> Daemon:
    longest_call = stripe.longest_call_seconds()
    # begin_attempt renews the claim, but a reversal may still look its Stripe
    # transfer up after that, before the call: room for two calls.
    claim_seconds = options.claim_seconds or 2 * longest_call + CLAIM_MARGIN_SECONDS
    if claim_seconds <= longest_call:
        # Another daemon could take the work over while this one's call is
        # still running, and its look-up would not see that call's result yet.
        logging.getLogger("ledger.daemon").warning(
            "LEDGER_CLAIM_SECONDS=%g is shorter than the longest Stripe call can take"
            " (%g s with STRIPE_TIMEOUT_SECONDS and retries): a slow call may be taken"
            " over by another daemon",
            claim_seconds,
            longest_call,
        )
    # Imported here: stripe-python costs every other command ~40 ms of start-up.
    from ledger.stripe.gateway import StripeGateway  # noqa: PLC0415

    work = work_store(ledger, claim_seconds=claim_seconds)
    clock = DatabaseClock(ledger.db)
    gateway = StripeGateway(stripe, observer)
    manager = ProcessManager(ledger.transfers, work, gateway, policy, clock, observer=observer)
    heartbeat = Heartbeat(
        ledger.db, work.owner, options.concurrency, clock, options.heartbeat_seconds
    )
    return Daemon(ledger, manager, work, options, stop, heartbeat=heartbeat, observer=observer)
