"""A RAM-backed directory for the tests' throwaway databases, when the machine has one.

On a disk, creating files and syncing them is most of what a fresh database costs:
``CREATE DATABASE`` writes some 300 files (~0.25 s on the build machine's disk,
~0.02 s in RAM), and SQLite syncs on commit. Databases that the test session throws
away need none of that durability, so they go to RAM when there is room.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Linux's shared-memory tmpfs: every Linux has it, writable by everyone (mode 1777).
RAM_DIR = Path("/dev/shm")
# A container's /dev/shm is often 64 MB: too small for a PostgreSQL cluster whose
# WAL alone may grow to max_wal_size (1 GB by default). Use the disk then.
MIN_FREE_BYTES = 2 * 1024**3


def ram_temp_dir() -> str | None:
    """``RAM_DIR`` if it is a directory that anyone may use with ``MIN_FREE_BYTES``
    free, else None (the caller uses its usual temporary directory)."""
    try:
        info = os.statvfs(RAM_DIR)
        if not RAM_DIR.is_dir() or info.f_bavail * info.f_frsize < MIN_FREE_BYTES:
            return None
        # Others must reach it too: the local PostgreSQL cluster runs as another user
        # when the tests run as root.
        for directory in (RAM_DIR, *RAM_DIR.parents):
            if not directory.stat().st_mode & stat.S_IXOTH:
                return None
    except OSError:
        return None
    if not os.access(RAM_DIR, os.W_OK | os.X_OK):
        return None
    return str(RAM_DIR)
