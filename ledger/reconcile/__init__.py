"""`ledger reconcile`: does Stripe agree with the ledger?

`comparison` walks both sides (see its docstring for the passes); `report`
holds what it found and prints it.
"""

from ledger.reconcile.comparison import (
    EXIT_AGREE,
    EXIT_DIFFERENCES,
    Reconciliation,
    StripeSide,
    reconcile,
)
from ledger.reconcile.report import Checked, Difference, Report

__all__ = [
    "EXIT_AGREE",
    "EXIT_DIFFERENCES",
    "Checked",
    "Difference",
    "Reconciliation",
    "Report",
    "StripeSide",
    "reconcile",
]
