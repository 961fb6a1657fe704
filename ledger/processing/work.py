"""The `stripe_work` table: which daemon works on what, how many Stripe calls
were started, whether the last one's outcome is unknown, and what is parked.

Every method is one short transaction, and none is open while Stripe is
called: a claim is taken, the attempt is recorded as started (committed), the
call is made, the outcome is recorded as events, and the claim is released.
See migrations/*/0005_stripe_work.sql for the columns.
The hot path's writes (claim, begin_attempt, release) are single statements,
each its own transaction (`execute_alone`); a release usually rides in the
outcome's own append instead (`release_statement`). Every `now` comes from the
daemons' shared clock (`ledger.processing.clock`), so that daemons on several
hosts agree on when a claim expires.

A claim lives as long as its holder: it is taken for a short lease, which the
holder's heartbeat renews every few seconds (`renew`), so a live daemon keeps
it however long a Stripe call takes, and a dead one's runs out within the
lease. A holder known dead (ledger.storage.liveness) loses its claims at once.
The store remembers until when each of its own claims surely holds, so that a
worker sends nothing to Stripe once its claim may be another daemon's (`holds`).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID

from ledger import values
from ledger.storage import Database, Row, Statement

# A handling failure (not Stripe's answer) this many times in a row parks the work.
PARK_AFTER_FAILURES: Final = 5
# Five parameters a claim: stays under SQLite's 999 bound parameters.
CLAIMS_PER_STATEMENT: Final = 150
_MAX_FAILURE_TEXT: Final = 500


class LostClaim(Exception):
    """Another daemon took this work over (our claim expired): stop touching it."""


@dataclass(frozen=True)
class Claim:
    transfer_id: UUID
    kind: str
    owner: str
    # What the row said when the claim was taken:
    cause: str
    attempts: int
    outcome_unknown: bool
    handling_failures: int
    # Refusals in a row for a condition outside the transfer (0: not waiting),
    # and since when (migration 0014).
    waits: int = 0
    waiting_for: str | None = None
    waiting_since: datetime | None = None
    # When the current attempt's call began (None: no attempt yet).
    attempt_started_at: datetime | None = None


@dataclass(frozen=True)
class WorkState:
    """A row as an operator's tool reads it (`ledger reconcile` says what the
    daemons are doing about a difference that may be in flight)."""

    attempts: int
    outcome_unknown: bool
    claimed_by: str | None
    claim_expires_at: datetime | None
    parked_at: datetime | None
    # Not due again before then (a backoff, a wait), and why, if known.
    not_before: datetime | None = None
    last_failure: str | None = None


@dataclass(frozen=True)
class ParkedWork:
    transfer_id: UUID
    kind: str
    cause: str
    handling_failures: int
    last_failure: str | None
    parked_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "transfer_id": str(self.transfer_id),
            "kind": self.kind,
            "cause": self.cause,
            "failures": self.handling_failures,
            "last_failure": self.last_failure,
            "parked_at": values.iso(self.parked_at),
        }


class WorkStore:
    def __init__(self, db: Database, owner: str, claim_seconds: float) -> None:
        self.db = db
        self.owner = owner
        self.claim_seconds = claim_seconds
        # (transfer id, kind) -> until when our claim surely holds. Renewed only
        # while unbroken: a claim whose lease ran out may be another's already.
        self._held: dict[tuple[UUID, str], datetime] = {}
        self._held_lock = threading.Lock()

    def _lease(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.claim_seconds)

    def _hold(self, items: Sequence[tuple[UUID, str]], now: datetime) -> None:
        with self._held_lock:
            for item in items:
                self._held[item] = self._lease(now)

    def holds(self, claim: Claim, now: datetime, margin: timedelta) -> bool:
        """Our claim holds at least `margin` longer (a Stripe try sent now is
        answered while it does)."""
        with self._held_lock:
            until = self._held.get((claim.transfer_id, claim.kind))
        return until is not None and now + margin < until

    def renew(self, now: datetime, *, beating_since: datetime | None = None) -> int:
        """The heartbeat: extend every claim we hold whose lease has not run
        out; returns how many. `beating_since`: the heartbeat ran without a
        gap from then until `now` (the simulation's virtual time jumps; a
        real heartbeat renews at `now` itself)."""
        alive_at = beating_since or now
        rows = self.db.execute_alone(
            "UPDATE stripe_work SET claim_expires_at = ?"
            " WHERE claimed_by = ? AND claim_expires_at > ?"
            " RETURNING transfer_id, kind",
            (self.db.to_db_time(self._lease(now)), self.owner, self.db.to_db_time(alive_at)),
            returning=True,
        )
        renewed = {(values.as_uuid(r["transfer_id"]), str(r["kind"])) for r in rows}
        with self._held_lock:
            for item in renewed:
                until = self._held.get(item)
                if until is not None and until > alive_at:
                    self._held[item] = self._lease(now)
            # Forget claims long gone (released, or lost): no unbounded growth.
            for item, until in list(self._held.items()):
                if until < now - timedelta(minutes=1):
                    del self._held[item]
        return len(renewed)

    def holders(self, now: datetime) -> set[str]:
        """Who holds live claims now (other than us)."""
        with self.db.transaction(write=False) as cursor:
            cursor.execute(
                "SELECT DISTINCT claimed_by FROM stripe_work"
                " WHERE claimed_by IS NOT NULL AND claim_expires_at > ? AND claimed_by <> ?",
                (self.db.to_db_time(now), self.owner),
            )
            return {str(r["claimed_by"]) for r in cursor.fetchall()}

    def _key(self, transfer_id: UUID, kind: str) -> tuple[Any, str]:
        return (self.db.to_db_id(transfer_id), kind)

    # ----- claims -------------------------------------------------------------

    def claim_many(
        self, items: Sequence[tuple[UUID, str]], now: datetime, dead: Collection[str] = ()
    ) -> list[Claim]:
        """Take each (transfer, kind) that nobody holds (or a daemon in `dead`
        held) and that is neither parked nor backing off, in one statement;
        returns the claims it got (what another daemon holds is simply not
        among them)."""
        if len(items) > CLAIMS_PER_STATEMENT:
            return [
                claim
                for start in range(0, len(items), CLAIMS_PER_STATEMENT)
                for claim in self.claim_many(items[start : start + CLAIMS_PER_STATEMENT], now, dead)
            ]
        if not items:
            return []
        t = self.db.to_db_time
        expires = t(self._lease(now))
        dead = sorted(dead)[:50]
        of_the_dead = (
            " OR stripe_work.claimed_by IN (" + ", ".join("?" * len(dead)) + ")" if dead else ""
        )
        rows = self.db.execute_alone(
            "INSERT INTO stripe_work (transfer_id, kind, cause, claimed_by,"
            " claim_expires_at, updated_at) VALUES "
            + ", ".join(["(?, ?, '', ?, ?, ?)"] * len(items))
            + " ON CONFLICT (transfer_id, kind) DO UPDATE SET"
            " claimed_by = excluded.claimed_by,"
            " claim_expires_at = excluded.claim_expires_at,"
            # A row whose outcome is unknown but which says nothing of when its
            # attempt began was written by a release before migration 0014.
            # Every write sets updated_at to the shared clock's now, the
            # attempt's own start included, so its last write is no earlier
            # than that start: taken for the start, it errs late, the safe
            # way. A look-up that finds nothing proves nothing until an hour
            # and STRIPE_FINISHES_WITHIN after it (manager.py), where with no
            # start at all any look-up was taken for proof; and a resend under
            # the attempt's key within the hour after it is safe even if the
            # real start was days before (Stripe then answers afresh, and the
            # earlier request finished long ago).
            " attempt_started_at = CASE WHEN stripe_work.outcome_unknown"
            " AND stripe_work.attempt_started_at IS NULL THEN stripe_work.updated_at"
            " ELSE stripe_work.attempt_started_at END,"
            " updated_at = excluded.updated_at"
            " WHERE (stripe_work.claimed_by IS NULL OR stripe_work.claim_expires_at <= ?"
            + of_the_dead
            + ")"
            " AND stripe_work.parked_at IS NULL"
            " AND (stripe_work.not_before IS NULL OR stripe_work.not_before <= ?)"
            " RETURNING transfer_id, kind, cause, attempts, outcome_unknown, handling_failures,"
            " waits, waiting_for, waiting_since, attempt_started_at",
            [
                *(
                    value
                    for transfer_id, kind in items
                    for value in (*self._key(transfer_id, kind), self.owner, expires, t(now))
                ),
                t(now),
                *dead,
                t(now),
            ],
            returning=True,
        )
        claims = [
            Claim(
                transfer_id=values.as_uuid(row["transfer_id"]),
                kind=str(row["kind"]),
                owner=self.owner,
                cause=str(row["cause"]),
                attempts=int(row["attempts"]),
                outcome_unknown=bool(row["outcome_unknown"]),
                handling_failures=int(row["handling_failures"]),
                waits=int(row["waits"]),
                waiting_for=row["waiting_for"],
                waiting_since=self.db.from_db_time(row["waiting_since"]),
                attempt_started_at=self.db.from_db_time(row["attempt_started_at"]),
            )
            for row in rows
        ]
        self._hold([(c.transfer_id, c.kind) for c in claims], now)
        return claims

    def begin_attempt(
        self, claim: Claim, cause: str, now: datetime, *, same_key: bool = False
    ) -> int:
        """Record, committed, that a Stripe call for `cause` is about to start;
        returns its attempt number (the idempotency key's suffix). From here
        until `release`, a crash leaves outcome_unknown set for the next daemon.
        `same_key`: the last attempt again, under its key (its outcome is
        unknown): the number and the time it began stay."""
        # The claim is renewed too: the call gets the whole claim time, however
        # long the look-ups before it took.
        rows = self.db.execute_alone(
            "UPDATE stripe_work SET"
            " attempts = CASE WHEN cause = ? AND ? THEN attempts"
            " WHEN cause = ? THEN attempts + 1 ELSE 1 END,"
            " attempt_started_at = CASE WHEN cause = ? AND ? THEN attempt_started_at ELSE ? END,"
            " cause = ?, outcome_unknown = ?, claim_expires_at = ?, updated_at = ?"
            " WHERE transfer_id = ? AND kind = ? AND claimed_by = ?"
            " RETURNING attempts",
            (
                cause,
                same_key,
                cause,
                cause,
                same_key,
                self.db.to_db_time(now),
                cause,
                True,
                self.db.to_db_time(now + timedelta(seconds=self.claim_seconds)),
                self.db.to_db_time(now),
                *self._key(claim.transfer_id, claim.kind),
                claim.owner,
            ),
            returning=True,
        )
        row = rows[0] if rows else None
        if row is None:
            raise LostClaim(f"{claim.kind} of transfer {claim.transfer_id} was taken over")
        self._hold([(claim.transfer_id, claim.kind)], now)
        return int(row["attempts"])

    def release(
        self,
        claim: Claim,
        *,
        outcome_unknown: bool,
        now: datetime,
        until: datetime | None = None,
        reason: str | None = None,
    ) -> None:
        """Done with this work for now; handling went through (no failure to
        count). `until`: not due again before then, for `reason` (what
        `ledger reconcile` tells of it)."""
        self.db.execute_alone(*self.release_statement(claim, outcome_unknown, now, until, reason))

    def release_statement(
        self,
        claim: Claim,
        outcome_unknown: bool,
        now: datetime,
        until: datetime | None = None,
        reason: str | None = None,
    ) -> Statement:
        """`release` as a statement, to commit in the same transaction as the
        outcome's events: the outcome and "nothing unknown any more" together."""
        return (
            "UPDATE stripe_work SET claimed_by = NULL, claim_expires_at = NULL,"
            " outcome_unknown = ?, handling_failures = 0, not_before = ?,"
            " last_failure = ?, waiting_for = NULL, waiting_since = NULL, waits = 0,"
            " updated_at = ?"
            " WHERE transfer_id = ? AND kind = ? AND claimed_by = ?",
            (
                outcome_unknown,
                None if until is None else self.db.to_db_time(until),
                None if reason is None else reason[:_MAX_FAILURE_TEXT],
                self.db.to_db_time(now),
                *self._key(claim.transfer_id, claim.kind),
                claim.owner,
            ),
        )

    def apply(self, statement: Statement) -> None:
        """One of this store's statements on its own (`wait_statement`, say)."""
        self.db.execute_alone(*statement)

    def wait_statement(
        self,
        claim: Claim,
        *,
        condition: str,
        failure: str,
        outcome_unknown: bool,
        until: datetime,
        now: datetime,
    ) -> Statement:
        """Stripe refused for a condition outside the transfer (our rate, the
        platform's balance, the seller's account): release the claim, and wait
        until `until` spending no attempt (migration 0014). A statement, to
        commit alone (`apply`) or with an event saying so."""
        t = self.db.to_db_time
        return (
            "UPDATE stripe_work SET claimed_by = NULL, claim_expires_at = NULL,"
            " outcome_unknown = ?, not_before = ?, last_failure = ?, waiting_for = ?,"
            " waiting_since = CASE WHEN waiting_for = ? THEN waiting_since ELSE ? END,"
            " waits = CASE WHEN waiting_for = ? THEN waits + 1 ELSE 1 END, updated_at = ?"
            " WHERE transfer_id = ? AND kind = ? AND claimed_by = ?",
            (
                outcome_unknown,
                t(until),
                failure[:_MAX_FAILURE_TEXT],
                condition,
                condition,
                t(now),
                condition,
                t(now),
                *self._key(claim.transfer_id, claim.kind),
                claim.owner,
            ),
        )

    def rate_limited_until(self) -> datetime | None:
        """When the first work waiting for the rate limit comes due, if any."""
        with self.db.transaction(write=False) as cursor:
            cursor.execute(
                "SELECT MIN(not_before) AS until FROM stripe_work"
                " WHERE waiting_for = 'rate_limit' AND parked_at IS NULL"
            )
            row = cursor.fetchone()
        return self.db.from_db_time(row["until"]) if row else None

    def waiting(self) -> list[tuple[str, str, int, datetime | None]]:
        """What waits for a condition: (condition, kind, how many, waiting since
        the earliest), for `ledger health`."""
        with self.db.transaction(write=False) as cursor:
            cursor.execute(
                "SELECT waiting_for, kind, COUNT(*) AS n, MIN(waiting_since) AS since"
                " FROM stripe_work WHERE waiting_for IS NOT NULL AND parked_at IS NULL"
                " GROUP BY waiting_for, kind ORDER BY waiting_for, kind"
            )
            rows = cursor.fetchall()
        return [
            (str(r["waiting_for"]), str(r["kind"]), int(r["n"]), self.db.from_db_time(r["since"]))
            for r in rows
        ]

    def handling_failed(
        self,
        claim: Claim,
        *,
        failure: str,
        outcome_unknown: bool,
        retry_at: datetime,
        now: datetime,
        park_now: bool = False,
    ) -> bool:
        """Handling failed for a reason that is not Stripe's answer: back off,
        and park after PARK_AFTER_FAILURES in a row (or at once). Returns True
        when parked."""
        failures = claim.handling_failures + 1
        parked = park_now or failures >= PARK_AFTER_FAILURES
        t = self.db.to_db_time
        with self.db.transaction(write=True) as cursor:
            cursor.execute(
                "UPDATE stripe_work SET claimed_by = NULL, claim_expires_at = NULL,"
                " outcome_unknown = ?, handling_failures = ?, not_before = ?,"
                " last_failure = ?, parked_at = ?, updated_at = ?"
                " WHERE transfer_id = ? AND kind = ? AND claimed_by = ?",
                (
                    outcome_unknown,
                    failures,
                    t(retry_at),
                    failure[:_MAX_FAILURE_TEXT],
                    t(now) if parked else None,
                    t(now),
                    *self._key(claim.transfer_id, claim.kind),
                    claim.owner,
                ),
            )
        return parked

    def unavailable(self, now: datetime, dead: Collection[str] = ()) -> set[UUID]:
        """Transfers the dispatcher must skip: claimed by a live claim (of a
        holder not in `dead`), backing off, or parked. Served by
        idx_stripe_work_unavailable (a handful of rows)."""
        with self.db.transaction(write=False) as cursor:
            cursor.execute(
                "SELECT transfer_id, claimed_by, claim_expires_at, not_before, parked_at"
                " FROM stripe_work"
                " WHERE claimed_by IS NOT NULL OR not_before IS NOT NULL OR parked_at IS NOT NULL"
            )
            rows = cursor.fetchall()
        return {values.as_uuid(r["transfer_id"]) for r in rows if self._unavailable(r, now, dead)}

    def _unavailable(self, row: Row, now: datetime, dead: Collection[str]) -> bool:
        claim_expires_at = self.db.from_db_time(row["claim_expires_at"])
        not_before = self.db.from_db_time(row["not_before"])
        return (
            row["parked_at"] is not None
            or (
                claim_expires_at is not None
                and claim_expires_at > now
                and row["claimed_by"] not in dead
            )
            or (not_before is not None and not_before > now)
        )

    def state(self, transfer_id: UUID, kind: str) -> WorkState | None:
        """The row for this work, or None when no daemon has taken it yet."""
        with self.db.transaction(write=False) as cursor:
            cursor.execute(
                "SELECT attempts, outcome_unknown, claimed_by, claim_expires_at, parked_at,"
                " not_before, last_failure"
                " FROM stripe_work WHERE transfer_id = ? AND kind = ?",
                self._key(transfer_id, kind),
            )
            row = cursor.fetchone()
        if row is None:
            return None
        return WorkState(
            attempts=int(row["attempts"]),
            outcome_unknown=bool(row["outcome_unknown"]),
            claimed_by=row["claimed_by"],
            claim_expires_at=self.db.from_db_time(row["claim_expires_at"]),
            parked_at=self.db.from_db_time(row["parked_at"]),
            not_before=self.db.from_db_time(row["not_before"]),
            last_failure=row["last_failure"],
        )

    # ----- parked work (`ledger parked ...`) ------------------------------------

    def parked(self) -> list[ParkedWork]:
        with self.db.transaction(write=False) as cursor:
            cursor.execute(
                "SELECT transfer_id, kind, cause, handling_failures, last_failure, parked_at"
                " FROM stripe_work WHERE parked_at IS NOT NULL ORDER BY parked_at, transfer_id"
            )
            rows = cursor.fetchall()
        return [
            ParkedWork(
                transfer_id=values.as_uuid(r["transfer_id"]),
                kind=str(r["kind"]),
                cause=str(r["cause"]),
                handling_failures=int(r["handling_failures"]),
                last_failure=r["last_failure"],
                parked_at=self.db.from_db_time(r["parked_at"]) or datetime.min,
            )
            for r in rows
        ]

    def unpark(self, transfer_id: UUID, now: datetime) -> int:
        """Put a transfer's parked work back in line; returns how many items."""
        with self.db.transaction(write=True) as cursor:
            cursor.execute(
                "UPDATE stripe_work SET parked_at = NULL, handling_failures = 0,"
                " not_before = NULL, updated_at = ?"
                " WHERE transfer_id = ? AND parked_at IS NOT NULL RETURNING kind",
                (self.db.to_db_time(now), self.db.to_db_id(transfer_id)),
            )
            return len(cursor.fetchall())
