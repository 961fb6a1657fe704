"""The ledger's errors: tiny classes under one base, each saying what went wrong.

The CLI maps them to the contract's exit codes; nothing here knows about exit codes.
"""

from __future__ import annotations


def first_line(text: str) -> str:
    """An error's message as one line for stderr or a log: drivers' messages
    (psycopg's, sqlite3's) run over several lines of detail."""
    return text.strip().splitlines()[0] if text.strip() else "(no message)"


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""


class InvalidInput(LedgerError, ValueError):
    """A value or request is malformed or contradicts an earlier one.

    A ValueError too, so validators (pydantic's among them) report it as bad input."""


class IdempotencyConflict(InvalidInput):
    """An idempotency key (order ref, reversal request ref) was reused with other values."""


class TransitionRefused(LedgerError):
    """The transition matrix does not allow this status change; nothing was appended."""

    def __init__(
        self, transfer_id: object, from_status: str, to_status: str, *, because: str = ""
    ) -> None:
        self.transfer_id = str(transfer_id)
        self.from_status = from_status
        self.to_status = to_status
        why = because or "is not allowed by the transition matrix"
        super().__init__(
            f"transition refused for transfer {self.transfer_id}:"
            f" {from_status} -> {to_status} {why}"
        )


class TransferNotFound(LedgerError):
    def __init__(self, transfer_id: object) -> None:
        self.transfer_id = str(transfer_id)
        super().__init__(f"transfer not found: {self.transfer_id}")


class DatabaseError(LedgerError):
    """The database failed a statement: its disk is full, a constraint, a
    value it cannot store. The message is the database's, on one line."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached, refuses the credentials, or the
    connection was lost."""


class NotMigrated(LedgerError):
    """The database lacks migrations this version of the ledger needs."""
