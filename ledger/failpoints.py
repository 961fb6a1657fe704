"""Named crash points for the crash tests: `LEDGER_FAILPOINTS=before_stripe_call`
makes this process SIGKILL itself there, so a test can kill a real daemon at an
exact step. Unset (always, in production) it is a set lookup and nothing else."""

from __future__ import annotations

import os
import signal
from typing import Final

_ACTIVE: Final = frozenset(
    name.strip() for name in os.environ.get("LEDGER_FAILPOINTS", "").split(",") if name.strip()
)
NAMES: Final = ("before_stripe_call", "after_stripe_call", "after_record")


def failpoint(name: str) -> None:
    if name in _ACTIVE:
        os.kill(os.getpid(), signal.SIGKILL)
