"""The daemons' shared clock: the database's.

Claims expire, retries come due and backoffs end at times that daemons on
several hosts compare. Each host's own clock may drift; the database's is one
for all. Reading it for every decision would cost a round trip, so a daemon
reads its own clock plus an offset measured against the database, refreshed
every REFRESH_SECONDS. On SQLite (one file, one host) the offset is zero.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Final

from ledger.storage import Database

REFRESH_SECONDS: Final = 60.0


class DatabaseClock:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._offset = timedelta(0)
        self._measured_at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        if self.db.dialect == "postgresql" and (
            time.monotonic() - self._measured_at > REFRESH_SECONDS
        ):
            self._measure()
        return datetime.now(UTC) + self._offset

    def _measure(self) -> None:
        with self._lock:
            before = datetime.now(UTC)
            with self.db.transaction(write=False) as cursor:
                # clock_timestamp(), not now(): now() is the transaction's start.
                cursor.execute("SELECT clock_timestamp() AS at")
                row = cursor.fetchone()
            after = datetime.now(UTC)
            assert row is not None
            # The database read its clock somewhere in between; take the middle.
            self._offset = row["at"] - (before + (after - before) / 2)
            self._measured_at = time.monotonic()
