"""Is the daemon named in a claim alive? Asked so that a dead daemon's work is
taken over at once, rather than when its claim's lease runs out.

A daemon's identity is `host:pid:token` (ledger.bootstrap.daemon_identity).

- PostgreSQL: a daemon holds a session advisory lock, keyed by its identity,
  on a connection of its own for as long as it runs (`life_lock`). The server
  releases it the moment that connection dies: the process was killed, its
  host went away (once TCP notices). Whoever can take the lock knows the
  holder is dead. Identities of daemons holding one end in LIFE_LOCK_MARK; a
  claim by anyone else (an older version) is left to its lease.
- SQLite: the database is a file on this host, so its daemons are local: a
  holder on this host whose process id no longer exists is dead. (A reused
  pid looks alive: the lease decides, as before.)

Neither is trusted to say "alive" for long: the heartbeat renews a live
daemon's claims, and a claim nobody renews expires with its lease.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import psycopg

from ledger.storage.database import Database

# The advisory locks' first key: daemons' life locks, apart from the
# migrations' lock (a one-key lock, another space).
LIFE_LOCK_CLASS: Final = 0x1ED6
LIFE_LOCK_MARK: Final = "+life"


def _key(identity: str) -> int:
    return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:4], "big", signed=True)


@contextmanager
def life_lock(db: Database, identity: str) -> Iterator[None]:
    """Held while the daemon runs (PostgreSQL; nothing to hold on SQLite)."""
    if db.dialect != "postgresql":
        yield
        return
    with psycopg.connect(**db.connection_params(), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s, %s)", (LIFE_LOCK_CLASS, _key(identity)))
        yield


def dead(db: Database, owners: Iterable[str]) -> set[str]:
    """The owners among `owners` known to be dead now."""
    found: set[str] = set()
    if db.dialect == "postgresql":
        marked = [o for o in owners if o.endswith(LIFE_LOCK_MARK)]
        if not marked:
            return found
        with db.transaction(write=False) as cursor:
            for owner in marked:
                key = (LIFE_LOCK_CLASS, _key(owner))
                # Transaction-level: let go of at commit, never held by us.
                cursor.execute("SELECT pg_try_advisory_xact_lock(?, ?) AS got", key)
                row: Any = cursor.fetchone()
                if row is not None and row["got"]:
                    found.add(owner)
        return found
    here = socket.gethostname()
    for owner in owners:
        host, _, rest = owner.partition(":")
        pid_text = rest.partition(":")[0]
        if host != here or not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            found.add(owner)
        except PermissionError:
            pass  # alive, someone else's
    return found
