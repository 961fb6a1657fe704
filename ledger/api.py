"""The ledger for the marketplace's own code: one small, typed entry point.

    from ledger.api import TransitionRefused, open_ledger

    with open_ledger("postgresql://ledger:secret@db:5432/ledger") as ledger:
        transfer = ledger.create_transfer(
            seller="acct_1Nv0", amount=1250, currency="usd", order_ref="order-8812"
        )
        print(transfer.status)  # pending: `ledger daemon` pays it out

    # Later, once it is paid out (completed), the refund handler:
    with open_ledger(url) as ledger:
        ledger.request_reversal(transfer.id, request_ref="re_3Pq", reason="customer refund")
        print(ledger.get(transfer.id).status)  # reversal_pending: the daemon reverses it

Every call validates its arguments, goes through the transition matrix, and
returns once its effect is visible in the `seller_transfers` read table. The
daemon (`ledger daemon`) then does the Stripe side. Errors are the named ones
re-exported here; the CLI maps each to its exit code:

    InvalidInput (and IdempotencyConflict)  2   malformed value, reused key
    TransitionRefused                       3   the matrix said no; nothing appended
    TransferNotFound                        4   well-formed id, no such transfer
    DatabaseError (DatabaseUnavailable)     1   the database failed or cannot be reached
    LedgerError (NotMigrated, ...)          1   anything else the ledger raises

One `TransferLedger` may be shared by the threads of a process (`pool_size`
connections on PostgreSQL); open it once at start-up, not per request.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Concatenate, Final, ParamSpec, TypeVar
from uuid import UUID

from ledger import values
from ledger.audit.history import Audit, audit
from ledger.backend import Backend
from ledger.bootstrap import open_backend
from ledger.config import database_url
from ledger.errors import (
    DatabaseError,
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidInput,
    LedgerError,
    NotMigrated,
    TransferNotFound,
    TransitionRefused,
)
from ledger.importing import ImportRecord
from ledger.service import ImportResult, ReversalRequest
from ledger.storage import DATABASE_FAILURES, as_ledger_error, connection_lost
from ledger.views import TransferView

if TYPE_CHECKING:
    from ledger.webhooks import WebhookResponse

__all__ = [
    "API_ACTOR",
    "Audit",
    "DatabaseError",
    "DatabaseUnavailable",
    "IdempotencyConflict",
    "InvalidInput",
    "LedgerError",
    "NotMigrated",
    "ReversalRequest",
    "TransferLedger",
    "TransferNotFound",
    "TransferView",
    "TransitionRefused",
    "open_ledger",
]

# Who acted, when the caller does not say: the marketplace's own code.
API_ACTOR: Final = "system:api"


P = ParamSpec("P")
R = TypeVar("R")


def _ledger_errors(
    *, safe_to_repeat: bool
) -> Callable[
    [Callable[Concatenate[TransferLedger, P], R]], Callable[Concatenate[TransferLedger, P], R]
]:
    """Only the ledger's own errors leave the API: a database's failure is a
    DatabaseError (DatabaseUnavailable when the connection was lost), never
    the driver's or the library's exception. A call that is `safe_to_repeat`
    (a read, or a command whose idempotency key makes a second run append
    nothing) is made once more after a lost connection (a server restart
    between the pool's check and the statement); set_status is not."""

    def decorate(
        method: Callable[Concatenate[TransferLedger, P], R],
    ) -> Callable[Concatenate[TransferLedger, P], R]:
        @functools.wraps(method)
        def wrapper(self: TransferLedger, /, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(self, *args, **kwargs)
            except DATABASE_FAILURES as error:
                if not (safe_to_repeat and connection_lost(error)):
                    raise as_ledger_error(error) from error
            try:
                return method(self, *args, **kwargs)
            except DATABASE_FAILURES as error:
                raise as_ledger_error(error) from error

        return wrapper

    return decorate


class TransferLedger:
    """Seller transfers for one database. Use `open_ledger(url)`. A thin face
    over the application service (`ledger.service.LedgerService`), which the
    CLI and the webhook handler use too: the same rules, the same errors."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def __enter__(self) -> TransferLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._backend.close()

    @property
    def backend(self) -> Backend:
        """What the URL opened (`ledger.backend.Backend`): for the ledger's own
        modules (`ledger.webhooks.handle_delivery` takes either)."""
        return self._backend

    # The name this had before the backend had one.
    core = backend

    # ----- changes --------------------------------------------------------------

    @_ledger_errors(safe_to_repeat=True)
    def create_transfer(
        self,
        *,
        seller: str,
        amount: int,
        currency: str,
        order_ref: str,
        actor: str = API_ACTOR,
        source_transaction: str | None = None,
    ) -> TransferView:
        """A new `pending` transfer of `amount` minor units to `seller` (a Stripe
        connected account). `order_ref` is the idempotency key: the same order
        again with the same values returns the same transfer and appends
        nothing; with other values it raises IdempotencyConflict.
        `source_transaction`: the charge (`ch_...`) whose funds pay it out;
        Stripe then waits for that charge to settle instead of taking the
        platform's available balance (no `balance_insufficient`)."""
        return self._backend.service.create_transfer(
            seller=seller,
            amount=amount,
            currency=currency,
            order_ref=order_ref,
            actor=actor,
            source_transaction=source_transaction,
        ).transfer

    @_ledger_errors(safe_to_repeat=True)
    def request_reversal(
        self,
        transfer_id: UUID | str,
        *,
        request_ref: str,
        reason: str,
        amount: int | None = None,
        actor: str = API_ACTOR,
    ) -> ReversalRequest:
        """After a refund: `completed -> reversal_pending`, recording a
        ReversalRequested for `amount` (default: all that is not reversed yet).
        `request_ref` (the refund's id) is the idempotency key. The daemon then
        asks Stripe for the reversal."""
        return self._backend.service.request_reversal(
            transfer_id, request_ref=request_ref, reason=reason, amount=amount, actor=actor
        )

    @_ledger_errors(safe_to_repeat=False)
    def set_status(
        self, transfer_id: UUID | str, status: str, *, actor: str, reason: str
    ) -> TransferView:
        """An administrator's change, through the matrix, with who and why.
        To `reversal_pending` it records a full-amount reversal request."""
        return self._backend.service.set_status(transfer_id, status, actor=actor, reason=reason)

    @_ledger_errors(safe_to_repeat=True)
    def import_transfers(
        self, records: Sequence[ImportRecord], *, actor: str = API_ACTOR
    ) -> ImportResult:
        """Bulk-load transfers from an existing table (see `ledger.importing`)."""
        return self._backend.service.import_transfers(records, actor=actor)

    def handle_stripe_webhook(
        self,
        payload: bytes,
        signature_header: str | None,
        secret: str | Sequence[str],
        *,
        # ledger.webhooks.DEFAULT_TOLERANCE_SECONDS, written out: importing it
        # would load stripe-python for every API user. A test keeps them equal.
        tolerance_seconds: int = 300,
    ) -> WebhookResponse:
        """One Stripe webhook delivery, for a marketplace that mounts the
        handler in its own web framework: answer with the returned status,
        body and content type. A delivery signed more than `tolerance_seconds`
        ago (or dated further ahead) is refused. Never raises for what Stripe
        sent. See `ledger.webhooks.handle_delivery`."""
        # Imported here: stripe-python is for webhook handling only.
        from ledger.webhooks import handle_delivery  # noqa: PLC0415

        return handle_delivery(
            self._backend, payload, signature_header, secret, tolerance_seconds=tolerance_seconds
        )

    # ----- reads ----------------------------------------------------------------

    @_ledger_errors(safe_to_repeat=True)
    def get(self, transfer_id: UUID | str) -> TransferView:
        """The transfer's current state (its `seller_transfers` row)."""
        return self._backend.service.get(transfer_id)

    @_ledger_errors(safe_to_repeat=True)
    def list_transfers(self, status: str | None = None) -> list[TransferView]:
        """Rows of the read table, all or those in one status."""
        return self._backend.service.list_transfers(status)

    @_ledger_errors(safe_to_repeat=True)
    def history(
        self,
        transfer_id: UUID | str,
        *,
        version: int | None = None,
        at: datetime | None = None,
    ) -> Audit:
        """Every event of the transfer (who, why, from -> to, Stripe ids,
        caused_by) and the state they lead to; with `version` or `at` (an aware
        datetime) only up to that point. TransferNotFound when there is no such
        transfer, or when it did not exist yet at that point."""
        transfer_id = values.transfer_id(transfer_id)
        if version is not None and at is not None:
            raise InvalidInput("give version or at, not both")
        if at is not None and at.tzinfo is None:
            raise InvalidInput("invalid at: a time with no UTC offset is ambiguous")
        events = list(self._backend.transfers.events.get(transfer_id))
        return audit(events, transfer_id, version=version, at=at)


def open_ledger(url: str | None = None, *, pool_size: int = 2) -> TransferLedger:
    """The ledger at `url` (`sqlite:///PATH` or `postgresql://user:pass@host:port/db`;
    default LEDGER_DATABASE_URL, else `sqlite:///ledger.db`). The database must
    have been migrated (`ledger migrate`): NotMigrated otherwise."""
    url = url if url is not None else database_url()
    try:
        return TransferLedger(open_backend(url, pool_size=pool_size))
    except DATABASE_FAILURES as error:
        raise as_ledger_error(error) from error
