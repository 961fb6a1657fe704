"""Named points in the money path where a process may die.

The crash tests set `LEDGER_FAILPOINTS=before_stripe_call` to make a real
daemon SIGKILL itself there (`LEDGER_FAILPOINTS_STOP`: SIGSTOP, to freeze).
The deterministic simulation (tests/simulation) installs a hook instead,
called with the point's name: it may switch to another simulated daemon
there, or crash this one. Unset (always, in
production) a failpoint is a set lookup and a None check, nothing else.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Final

_ACTIVE: Final = frozenset(
    name.strip() for name in os.environ.get("LEDGER_FAILPOINTS", "").split(",") if name.strip()
)
# Points where the process freezes itself instead (SIGSTOP: a suspended VM,
# a stopped container): the failover tests wake it with SIGCONT.
_FREEZING: Final = frozenset(
    name.strip() for name in os.environ.get("LEDGER_FAILPOINTS_STOP", "").split(",") if name.strip()
)
NAMES: Final = (
    "before_stripe_call",
    "stripe_try",
    "after_stripe_call",
    "after_record",
    # Inside an append's transaction: after the events, before their rows and
    # links; and after everything, before the commit.
    "mid_append",
    "append_before_commit",
)

_hook: Callable[[str], None] | None = None


def failpoint(name: str) -> None:
    if name in _ACTIVE:
        os.kill(os.getpid(), signal.SIGKILL)
    if name in _FREEZING:
        os.kill(os.getpid(), signal.SIGSTOP)
        # The stop lands asynchronously: make sure it lands here, not a few
        # statements further on (the sleep is cut short by nothing: it ends
        # at once after SIGCONT, its time having passed).
        time.sleep(0.2)
    if _hook is not None:
        _hook(name)


def armed(name: str) -> bool:
    """True when `failpoint(name)` may stop or hand over here: a caller that
    would otherwise batch the work around the point (one round trip) does it
    in two, so that the point falls where its name says."""
    return name in _ACTIVE or name in _FREEZING or _hook is not None


def install_hook(hook: Callable[[str], None] | None) -> None:
    """Call `hook(name)` at every failpoint (None: stop). For the simulation."""
    global _hook  # noqa: PLW0603 - one hook per process, by design
    _hook = hook
