"""The design's transition matrix, written out for the tests (DESIGN.md section 2).

Deliberately not read from ledger.matrix: the product is checked against the
contract, not against itself. test_matrix.py also spells out all 36 pairs.
"""

from __future__ import annotations

from typing import Final

STATUSES: Final = (
    "pending",
    "completed",
    "failed",
    "reversal_pending",
    "reversed",
    "permanently_failed",
)

# from -> the other statuses it may move to.
ALLOWED: Final[dict[str, frozenset[str]]] = {
    "pending": frozenset({"completed", "failed"}),
    "completed": frozenset({"reversal_pending"}),
    "failed": frozenset({"completed", "permanently_failed"}),
    "reversal_pending": frozenset({"reversed", "permanently_failed"}),
    "reversed": frozenset(),
    "permanently_failed": frozenset(),
}

# The seven edges between different statuses.
EDGES: Final = frozenset((a, b) for a, targets in ALLOWED.items() for b in targets)

# Every legal (from, to): same-state bumps plus the edges.
LEGAL: Final = frozenset({(s, s) for s in STATUSES} | EDGES)
