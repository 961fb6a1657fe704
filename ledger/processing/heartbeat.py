"""A daemon says it is alive: one row in `daemon_heartbeats` (migration 0009).

`ledger health` reads these rows to tell whether anyone is doing the work. The
row is refreshed at most every BEAT_SECONDS, from the daemon's loop, so a loop
that is stuck (not just a process that is up) stops being seen.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

from ledger.storage import Database

# The default; LEDGER_HEARTBEAT_SECONDS overrides it.
BEAT_SECONDS: Final = 5.0
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
    ) -> None:
        self.interval = interval
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

    def beat(self) -> None:
        """From every turn of the loop; writes at most every `interval` seconds."""
        if time.monotonic() - self._last < self.interval:
            return
        self.db.execute_alone(
            "UPDATE daemon_heartbeats SET seen_at = ? WHERE daemon_id = ?",
            (self.db.to_db_time(self.clock()), self.daemon_id),
        )
        self._last = time.monotonic()

    def stopped(self) -> None:
        now = self.db.to_db_time(self.clock())
        self.db.execute_alone(
            "UPDATE daemon_heartbeats SET seen_at = ?, stopped_at = ? WHERE daemon_id = ?",
            (now, now, self.daemon_id),
        )
