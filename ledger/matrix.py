"""The authoritative transition matrix for seller-transfer statuses.

Every status change in the product goes through `can_transition` (via the
Transfer aggregate): this module is the one place where legal transitions are
defined, so behaviour can be argued against the matrix rather than implicitly
codified across call sites.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final


class Status(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    REVERSAL_PENDING = "reversal_pending"
    REVERSED = "reversed"
    PERMANENTLY_FAILED = "permanently_failed"


# The canonical list, in lifecycle order. A test keeps it in sync with the
# matrix's keys, so a status added to one but not the other fails loudly.
STATUSES: Final[tuple[str, ...]] = tuple(s.value for s in Status)

# from -> the statuses it may move to (same-state bumps are allowed separately).
# Terminal statuses map to an empty set on purpose: "no way out" is written in
# the map itself, not only enforced by callers.
ALLOWED_TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    Status.PENDING: frozenset({Status.COMPLETED, Status.FAILED}),
    Status.COMPLETED: frozenset({Status.REVERSAL_PENDING}),
    Status.FAILED: frozenset({Status.COMPLETED, Status.PERMANENTLY_FAILED}),
    Status.REVERSAL_PENDING: frozenset({Status.REVERSED, Status.PERMANENTLY_FAILED}),
    Status.REVERSED: frozenset(),
    Status.PERMANENTLY_FAILED: frozenset(),
}

TERMINAL_STATUSES: Final[frozenset[str]] = frozenset(
    status for status, targets in ALLOWED_TRANSITIONS.items() if not targets
)

# A transfer the payout manager may pay: not paid yet, or failed and due a retry.
AWAITING_PAYOUT: Final[frozenset[str]] = frozenset({Status.PENDING, Status.FAILED})


def is_known_status(status: str) -> bool:
    return status in ALLOWED_TRANSITIONS


def can_transition(from_status: str, to_status: str) -> bool:
    """True when a transfer in `from_status` may move to `to_status`.

    Same status to same status is allowed for known statuses: workers bump
    `retry_count` / `next_retry_at` without changing the status.

    An unknown `from_status` (or `to_status`) is always refused. A typo at a
    call site ("reversal-pending", "Completed") must surface as a refusal the
    caller sees, never silently pass as a legal change.
    """
    if not is_known_status(from_status) or not is_known_status(to_status):
        return False
    if from_status == to_status:
        return True
    return to_status in ALLOWED_TRANSITIONS[from_status]


def render_table() -> str:
    """The matrix as a plain-text table: one row per `from` status."""
    width = max(len(s) for s in STATUSES)
    lines = [f"{'from'.ljust(width)}  to"]
    for status in STATUSES:
        targets = [t for t in STATUSES if t in ALLOWED_TRANSITIONS[status]]
        lines.append(f"{status.ljust(width)}  {', '.join(targets) or '(terminal)'}")
    lines.append("")
    lines.append("Same status to same status is allowed for every known status.")
    return "\n".join(lines)


def render_mermaid() -> str:
    """The matrix as a Mermaid state diagram (the README's diagram is this output)."""
    lines = ["stateDiagram-v2", f"    [*] --> {Status.PENDING}"]
    for status in STATUSES:
        for target in STATUSES:
            if target in ALLOWED_TRANSITIONS[status]:
                lines.append(f"    {status} --> {target}")
    for status in STATUSES:
        if status in TERMINAL_STATUSES:
            lines.append(f"    {status} --> [*]")
    return "\n".join(lines)
