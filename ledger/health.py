"""`ledger health` and the daemon's scrape-time metrics: how the ledger is doing.

`measure()` reads everything in a handful of cheap queries (the partial
indexes serve the due-work ones), so a probe can run it every few seconds.
`check()` turns the measurements into verdicts against thresholds taken from
the environment:

    LEDGER_HEALTH_MAX_LAG_EVENTS    events appended but not yet in seller_transfers (1000)
    LEDGER_HEALTH_MAX_LAG_SECONDS   age of the oldest of those events (60)
    LEDGER_HEALTH_MAX_DUE_SECONDS   how long the oldest due work has waited (300)
    LEDGER_HEALTH_DAEMON_SECONDS    a daemon's last heartbeat at most this old (60)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from ledger.config import env_number
from ledger.migrate import available_migrations, pending_migrations
from ledger.projections.queries import (
    DUE_FURTHER_REVERSAL_WHERE,
    DUE_PAYOUT_RETRY_WHERE,
    DUE_PAYOUT_WHERE,
    DUE_REVERSAL_WHERE,
)
from ledger.projections.rows import TRACKING_NAME
from ledger.storage import Database

# Each kind of due work (the daemon's due queries' conditions), the work
# row's kind, and the expression for when the transfer asked for it.
_DUE_SINCE: Final = (
    ("reversal", DUE_REVERSAL_WHERE, "reversal", "COALESCE(s.next_retry_at, s.updated_at)"),
    ("further_reversal", DUE_FURTHER_REVERSAL_WHERE, "reversal", "s.next_retry_at"),
    ("payout_retry", DUE_PAYOUT_RETRY_WHERE, "payout", "s.next_retry_at"),
    ("payout", DUE_PAYOUT_WHERE, "payout", "s.created_at"),
)
# What the `waiting` check calls work waiting for proof (its own condition).
PROOF: Final = "proof"
# Work waiting for proof: released, with no failure, until a look-up can
# prove that an earlier call whose outcome is unknown made nothing (the only
# release with a not_before: ProcessManager._wait_for_proof). It resolves on
# its own, within an hour and STRIPE_FINISHES_WITHIN of that call, and asks
# nothing of a person: it is not due before its not_before, and due from
# then. Work waiting for a condition (the platform's balance, a seller's
# account, the rate limit) stays due from when it was asked for, as any
# other work the daemons have not done: a payout that cannot go out for
# lack of balance goes overdue, and the `waiting` check says why. So does a
# handling failure's backoff.
# Such a row, its not_before aside; `{w}` is the work table's alias and dot.
_WAITING_FOR_PROOF: Final = (
    "({w}waiting_for IS NULL AND {w}handling_failures = 0 AND {w}outcome_unknown)"
)
_PROOF_W: Final = _WAITING_FOR_PROOF.format(w="w.")
# How many are due and since when, both `?` being now. Parked work is
# reported on its own: it is not waiting for a daemon.
DUE_WORK_SQL: Final[Mapping[str, str]] = {
    kind: "SELECT COUNT(*) AS n,"
    f" MIN(CASE WHEN w.not_before > {since} AND {_PROOF_W} THEN w.not_before"
    f" ELSE {since} END) AS since"
    f" FROM seller_transfers s LEFT JOIN stripe_work w"
    f" ON w.transfer_id = s.id AND w.kind = '{work_kind}'"
    f" WHERE {where}"
    f" AND (w.not_before IS NULL OR w.not_before <= ? OR NOT {_PROOF_W})"
    " AND NOT EXISTS (SELECT 1 FROM stripe_work p"
    " WHERE p.transfer_id = s.id AND p.parked_at IS NOT NULL)"
    for kind, where, work_kind, since in _DUE_SINCE
}
# The `waiting` check's waits for proof: kind, how many, since when (their release).
PROOF_WAITS_SQL: Final = (
    "SELECT kind, COUNT(*) AS n, MIN(updated_at) AS since FROM stripe_work"
    f" WHERE {_WAITING_FOR_PROOF.format(w='')} AND not_before > ?"
    " AND parked_at IS NULL AND claimed_by IS NULL GROUP BY kind"
)


# The largest threshold in seconds a variable may set.
WEEK: Final = 7 * 86400.0


@dataclass(frozen=True)
class Thresholds:
    max_lag_events: int = 1000
    max_lag_seconds: float = 60.0
    max_due_seconds: float = 300.0
    daemon_seen_seconds: float = 60.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Thresholds:
        def number(name: str, default: float, maximum: float, *, whole: bool = False) -> float:
            value = env_number(environ, name, default, minimum=0, maximum=maximum, whole=whole)
            assert value is not None
            return value

        return cls(
            max_lag_events=int(
                number("LEDGER_HEALTH_MAX_LAG_EVENTS", cls.max_lag_events, 10**12, whole=True)
            ),
            max_lag_seconds=number("LEDGER_HEALTH_MAX_LAG_SECONDS", cls.max_lag_seconds, WEEK),
            max_due_seconds=number("LEDGER_HEALTH_MAX_DUE_SECONDS", cls.max_due_seconds, WEEK),
            daemon_seen_seconds=number(
                "LEDGER_HEALTH_DAEMON_SECONDS", cls.daemon_seen_seconds, WEEK
            ),
        )


@dataclass(frozen=True)
class DueWork:
    count: int
    oldest_seconds: float  # 0 when nothing is due


@dataclass(frozen=True)
class DaemonSeen:
    daemon_id: str
    seen_seconds_ago: float
    stopped: bool


@dataclass(frozen=True)
class Measurements:
    log_position: int
    projected_position: int
    lag_events: int
    lag_seconds: float
    due: Mapping[str, DueWork]
    parked: int
    claims_held: int
    # Transfers the projection set aside (migration 0013).
    quarantined: int = 0
    daemons: list[DaemonSeen] = field(default_factory=list)
    # Work waiting for a condition outside the transfer (migration 0014):
    # (condition, kind) -> (how many, seconds since the earliest began).
    waiting: Mapping[tuple[str, str], tuple[int, float]] = field(default_factory=dict)


def measure(db: Database, decode: Callable[[Any], Any], now: datetime) -> Measurements:
    """Everything health and the metrics report, read in one snapshot."""
    with db.transaction(write=False) as cursor:
        cursor.execute(f"SELECT MAX({db.notification_id_column}) AS n FROM {db.events_table}")
        row = cursor.fetchone()
        log_position = int(row["n"] or 0) if row else 0
        cursor.execute("SELECT position FROM projection_tracking WHERE name = ?", (TRACKING_NAME,))
        row = cursor.fetchone()
        projected = int(row["position"]) if row else 0
        lag_events = db.count_events_between(cursor, projected, log_position)
        lag_seconds = 0.0
        if lag_events:
            oldest = db.select_stored_events_after(cursor, projected, 1)
            if oldest:
                appended_at: datetime = decode(oldest[0][1]).timestamp
                lag_seconds = max((now - appended_at).total_seconds(), 0.0)
        due = {}
        for kind, sql in DUE_WORK_SQL.items():
            cursor.execute(sql, (db.to_db_time(now), db.to_db_time(now)))
            row = cursor.fetchone()
            since = db.from_db_time(row["since"]) if row else None
            due[kind] = DueWork(
                count=int(row["n"]) if row else 0,
                oldest_seconds=max((now - since).total_seconds(), 0.0) if since else 0.0,
            )
        cursor.execute("SELECT COUNT(*) AS n FROM stripe_work WHERE parked_at IS NOT NULL")
        row = cursor.fetchone()
        parked = int(row["n"]) if row else 0
        cursor.execute(
            "SELECT COUNT(*) AS n FROM projection_quarantine WHERE name = ?", (TRACKING_NAME,)
        )
        row = cursor.fetchone()
        quarantined = int(row["n"]) if row else 0
        cursor.execute(
            "SELECT COUNT(*) AS n FROM stripe_work"
            " WHERE claimed_by IS NOT NULL AND claim_expires_at > ?",
            (db.to_db_time(now),),
        )
        row = cursor.fetchone()
        claims = int(row["n"]) if row else 0
        cursor.execute(
            "SELECT waiting_for, kind, COUNT(*) AS n, MIN(waiting_since) AS since"
            " FROM stripe_work WHERE waiting_for IS NOT NULL AND parked_at IS NULL"
            " GROUP BY waiting_for, kind"
        )
        waiting = {}
        for r in cursor.fetchall():
            began = db.from_db_time(r["since"])
            waiting[(str(r["waiting_for"]), str(r["kind"]))] = (
                int(r["n"]),
                max((now - began).total_seconds(), 0.0) if began else 0.0,
            )
        cursor.execute(PROOF_WAITS_SQL, (db.to_db_time(now),))
        for r in cursor.fetchall():
            began = db.from_db_time(r["since"])
            waiting[(PROOF, str(r["kind"]))] = (
                int(r["n"]),
                max((now - began).total_seconds(), 0.0) if began else 0.0,
            )
        cursor.execute(
            "SELECT daemon_id, seen_at, stopped_at FROM daemon_heartbeats ORDER BY seen_at DESC"
        )
        daemons = []
        for r in cursor.fetchall():
            seen = db.from_db_time(r["seen_at"])
            assert seen is not None
            daemons.append(
                DaemonSeen(
                    daemon_id=str(r["daemon_id"]),
                    seen_seconds_ago=max((now - seen).total_seconds(), 0.0),
                    stopped=r["stopped_at"] is not None,
                )
            )
    return Measurements(
        log_position=log_position,
        projected_position=projected,
        lag_events=lag_events,
        lag_seconds=lag_seconds,
        due=due,
        parked=parked,
        claims_held=claims,
        quarantined=quarantined,
        daemons=daemons,
        waiting=waiting,
    )


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    values: Mapping[str, Any] = field(default_factory=dict)
    # Healthy, but a person should know (work waiting on a condition).
    warning: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "warning": self.warning,
            "detail": self.detail,
            **self.values,
        }


@dataclass(frozen=True)
class HealthReport:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.as_json() for c in self.checks]}


def check_migrations(db: Database) -> Check:
    pending = pending_migrations(db)
    total = len(available_migrations(db.dialect))
    if pending:
        first = pending[0]
        return Check(
            "migrations",
            False,
            f"{len(pending)} pending, first {first.version:04d}_{first.name}: run `ledger migrate`",
            {"pending": len(pending)},
        )
    return Check("migrations", True, f"all {total} applied", {"pending": 0})


_WAITING_FOR: Final = {
    "rate_limit": "Stripe's rate limit (429s)",
    "platform_balance": "the platform's Stripe balance",
    "seller_capability": "sellers' accounts that cannot receive transfers yet",
    PROOF: "a look-up that can prove an earlier call made nothing (it comes on its own;"
    " `ledger reconcile` says when)",
}


def _waiting(m: Measurements) -> Check:
    """Work waiting for a condition outside the transfer: healthy (nothing is
    lost, no attempt is spent), but said, with since when, as a warning."""
    if not m.waiting:
        return Check("waiting", True, "nothing waits on Stripe's conditions", {"waiting": {}})
    parts = [
        f"{count} {kind}(s) wait for {_WAITING_FOR.get(condition, condition)},"
        f" since {seconds:.0f} s"
        for (condition, kind), (count, seconds) in sorted(m.waiting.items())
    ]
    return Check(
        "waiting",
        True,
        "; ".join(parts),
        {
            "waiting": {
                f"{condition}:{kind}": {"count": count, "since_seconds": round(seconds, 3)}
                for (condition, kind), (count, seconds) in sorted(m.waiting.items())
            }
        },
        warning=True,
    )


def judge(m: Measurements, t: Thresholds) -> list[Check]:
    """The verdicts after the database and migrations checks passed."""
    checks = []
    lag_ok = m.lag_events <= t.max_lag_events and m.lag_seconds <= t.max_lag_seconds
    checks.append(
        Check(
            "projection",
            lag_ok and m.quarantined == 0,
            (
                "up to date"
                if m.lag_events == 0
                else f"{m.lag_events} event(s) behind, the oldest {m.lag_seconds:.0f} s old"
            )
            + ("" if lag_ok else f" (limits {t.max_lag_events} events, {t.max_lag_seconds:g} s)")
            + (
                f"; {m.quarantined} transfer(s) set aside, their events not applied:"
                " see `ledger audit verify`"
                if m.quarantined
                else ""
            ),
            {
                "lag_events": m.lag_events,
                "lag_seconds": round(m.lag_seconds, 3),
                "quarantined": m.quarantined,
            },
        )
    )
    oldest_kind = max(m.due, key=lambda k: m.due[k].oldest_seconds)
    oldest = m.due[oldest_kind].oldest_seconds
    due_count = sum(d.count for d in m.due.values())
    due_ok = oldest <= t.max_due_seconds
    checks.append(
        Check(
            "due work",
            due_ok,
            (
                "nothing due"
                if due_count == 0
                else f"{due_count} due, the oldest ({oldest_kind}) waiting {oldest:.0f} s"
            )
            + ("" if due_ok else f" (limit {t.max_due_seconds:g} s)"),
            {
                "due": {k: d.count for k, d in m.due.items()},
                "oldest_seconds": round(oldest, 3),
            },
        )
    )
    alive = [d for d in m.daemons if not d.stopped and d.seen_seconds_ago <= t.daemon_seen_seconds]
    checks.append(
        Check(
            "daemons",
            bool(alive),
            f"{len(alive)} seen in the last {t.daemon_seen_seconds:g} s"
            if alive
            else f"no daemon seen in the last {t.daemon_seen_seconds:g} s",
            {"running": len(alive)},
        )
    )
    checks.append(_waiting(m))
    checks.append(
        Check(
            "parked",
            m.parked == 0,
            "nothing parked" if m.parked == 0 else f"{m.parked} parked: see `ledger parked list`",
            {"parked": m.parked},
        )
    )
    return checks
