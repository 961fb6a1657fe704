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
from typing import Final

from ledger.storage import Database

log = logging.getLogger("ledger.daemon")

# The default; LEDGER_HEARTBEAT_SECONDS overrides it. Claims last
# LEASE_BEATS beats unless renewed (ledger.bootstrap.build_daemon).
BEAT_SECONDS: Final = 2.0
LEASE_BEATS: Final = 3
# Rows of daemons gone this long are deleted when a daemon starts.
FORGET_AFTER: Final = timedelta(days=7)


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
        peers: Callable[[int], None] | None = None,
    ) -> None:
        self.interval = interval
        self.renew = renew
        # Told how many daemons are alive (this one included) at every beat:
        # each takes its share of the Stripe rate budget.
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
        if self.peers is not None:
            self.peers(self._alive(now))

    def beat(self) -> None:
        """Writes at most every `interval` seconds; renews our claims first."""
        if time.monotonic() - self._last < self.interval:
            return
        now = self.clock()
        if self.renew is not None:
            self.renew(now)
        self.db.execute_alone(
            "UPDATE daemon_heartbeats SET seen_at = ? WHERE daemon_id = ?",
            (self.db.to_db_time(now), self.daemon_id),
        )
        if self.peers is not None:
            self.peers(self._alive(now))
        self._last = time.monotonic()

    def _alive(self, now: datetime) -> int:
        with self.db.transaction(write=False) as cursor:
            cursor.execute(
                "SELECT COUNT(*) AS n FROM daemon_heartbeats"
                " WHERE stopped_at IS NULL AND seen_at > ?",
                (self.db.to_db_time(now - timedelta(seconds=3 * self.interval)),),
            )
            row = cursor.fetchone()
        return max(1, int(row["n"]) if row else 1)

    def keep_beating(self, stop: threading.Event) -> threading.Thread:
        """Beat in a thread of its own until `stop`: the loop may be busy (a
        long catch-up, a slow database) without the claims running out."""

        def run() -> None:
            failing = False
            while not stop.wait(self.interval / 4):
                try:
                    self.beat()
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
