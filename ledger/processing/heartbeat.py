"""A daemon says it is alive: one row in `daemon_heartbeats` (migration 0009).

`ledger health` reads these rows to tell whether anyone is doing the work.
The heartbeat runs in a thread of its own, every BEAT_SECONDS, and each beat
also renews the daemon's claims (`WorkStore.renew`): a claim lives as long
as the daemon that holds it, however long its Stripe call takes, and runs
out within a lease (a few beats) once the daemon is gone.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final, Protocol

from ledger.storage import Database

log = logging.getLogger("ledger.daemon")


class SharedRate(Protocol):
    """The daemon's part of the Stripe rate budget (ledger/stripe/budget.py),
    as the heartbeat shares it with the other daemons on the database."""

    def share(self, daemons_alive: int) -> None: ...

    def paused_for(self) -> float:
        """Seconds this daemon still pauses after its own 429 (0: none)."""
        ...

    def pause(self, seconds: float) -> None: ...


# The default; LEDGER_HEARTBEAT_SECONDS overrides it. Claims last
# LEASE_BEATS beats unless renewed (ledger.bootstrap.build_daemon).
BEAT_SECONDS: Final = 2.0
LEASE_BEATS: Final = 3
# Rows of daemons gone this long are deleted when a daemon starts.
FORGET_AFTER: Final = timedelta(days=7)
# A daemon whose loop has not turned for this long is stuck (a turn comes at
# least every poll interval, a second or less, plus its queries): it stops
# beating and renewing its claims until the loop turns again, so that its
# work runs out to the other daemons and `ledger health` reports it, instead
# of a live heartbeat thread vouching for a dead loop. A daemon wrongly taken
# for stuck (a catch-up this long) only loses its claims: a try is sent only
# while its claim holds.
STUCK_AFTER_SECONDS: Final = 120.0
# Never set: a beat nobody stops (Heartbeat.beat's default).
_NEVER: Final = threading.Event()


class Heartbeat:
    def __init__(
        self,
        db: Database,
        daemon_id: str,
        concurrency: int,
        clock: Callable[[], datetime],
        interval: float = BEAT_SECONDS,
        *,
        renew: Callable[[datetime], int] | None = None,
        peers: SharedRate | None = None,
        stuck_after: float = STUCK_AFTER_SECONDS,
    ) -> None:
        self.interval = interval
        self.renew = renew
        self.stuck_after = stuck_after
        # When the daemon's loop last turned (time.monotonic()), once `follow`ed.
        self._loop_turned: Callable[[], float] | None = None
        self._stuck = False
        # At every beat: how many daemons are alive (this one included), so
        # that each takes its share of the Stripe rate budget; and whether any
        # of them met a 429 lately, so that all of them pause (migration 0016).
        self.peers = peers
        self.db = db
        self.daemon_id = daemon_id
        self.concurrency = concurrency
        self.clock = clock
        self._last = float("-inf")

    def start(self) -> None:
        now = self.clock()
        self.db.execute_alone(
            "DELETE FROM daemon_heartbeats WHERE seen_at < ?",
            (self.db.to_db_time(now - FORGET_AFTER),),
        )
        self.db.execute_alone(
            "INSERT INTO daemon_heartbeats"
            " (daemon_id, host, pid, concurrency, started_at, seen_at, stopped_at)"
            " VALUES (?, ?, ?, ?, ?, ?, NULL)"
            " ON CONFLICT (daemon_id) DO UPDATE SET seen_at = excluded.seen_at,"
            " stopped_at = NULL",
            (
                self.daemon_id,
                socket.gethostname(),
                os.getpid(),
                self.concurrency,
                self.db.to_db_time(now),
                self.db.to_db_time(now),
            ),
        )
        self._last = time.monotonic()
        self._share_rate(now)

    def follow(self, loop_turned: Callable[[], float]) -> None:
        """Beat only while the daemon's loop turns: `loop_turned()` says when
        it last did (time.monotonic())."""
        self._loop_turned = loop_turned

    def beat(self, stopping: threading.Event = _NEVER) -> None:
        """Writes at most every `interval` seconds; renews our claims first.
        Neither while the loop it follows is stuck. Once `stopping` is set,
        no further statement: a stopping daemon waits for a beat under way,
        and then only for the statement it is in."""
        if time.monotonic() - self._last < self.interval or self._loop_stuck():
            return
        if stopping.is_set():
            return
        now = self.clock()
        if self.renew is not None:
            self.renew(now)
        if stopping.is_set():
            return
        paused = self.peers.paused_for() if self.peers is not None else 0.0
        limited_until = now + timedelta(seconds=paused) if paused > 0 else None
        self.db.execute_alone(
            "UPDATE daemon_heartbeats SET seen_at = ?, rate_limited_until = ? WHERE daemon_id = ?",
            (self.db.to_db_time(now), self.db.to_db_time(limited_until), self.daemon_id),
        )
        if stopping.is_set():
            return
        self._share_rate(now)
        self._last = time.monotonic()

    def _loop_stuck(self) -> bool:
        if self._loop_turned is None:
            return False
        quiet = time.monotonic() - self._loop_turned()
        if quiet <= self.stuck_after:
            if self._stuck:
                log.warning("the daemon's loop turns again: heartbeats and claim renewals resume")
                self._stuck = False
            return False
        if not self._stuck:
            log.error(
                "the daemon's loop has not turned for %.0f s: no heartbeat and no claim"
                " renewed until it does (its claims run out to the other daemons)",
                quiet,
            )
            self._stuck = True
        return True

    def _share_rate(self, now: datetime) -> None:
        if self.peers is None:
            return
        with self.db.transaction(write=False) as cursor:
            cursor.execute(
                "SELECT COUNT(*) AS n, MAX(rate_limited_until) AS limited FROM daemon_heartbeats"
                " WHERE stopped_at IS NULL AND seen_at > ?",
                (self.db.to_db_time(now - timedelta(seconds=3 * self.interval)),),
            )
            row = cursor.fetchone()
        self.peers.share(max(1, int(row["n"]) if row else 1))
        limited = self.db.from_db_time(row["limited"]) if row else None
        if limited is not None and limited > now:
            # Another daemon met a 429: every daemon slows down.
            self.peers.pause((limited - now).total_seconds())

    def keep_beating(self, stop: threading.Event) -> threading.Thread:
        """Beat in a thread of its own until `stop`: the loop may be busy (a
        long catch-up, a slow database) without the claims running out."""

        def run() -> None:
            failing = False
            while not stop.wait(self.interval / 4):
                try:
                    self.beat(stop)
                    if failing:
                        log.info("heartbeat: working again")
                    failing = False
                except Exception as error:  # the database is down: try again
                    if not failing:
                        log.warning("heartbeat failed (claims run out if this lasts): %s", error)
                    failing = True

        thread = threading.Thread(target=run, name="ledger-heartbeat", daemon=True)
        thread.start()
        return thread

    def stopped(self) -> None:
        now = self.db.to_db_time(self.clock())
        self.db.execute_alone(
            "UPDATE daemon_heartbeats SET seen_at = ?, stopped_at = ? WHERE daemon_id = ?",
            (now, now, self.daemon_id),
        )
