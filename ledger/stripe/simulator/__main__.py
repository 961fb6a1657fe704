"""`python -m ledger.stripe.simulator`, for when the `ledger` command is not at hand."""

from __future__ import annotations

import sys

from ledger.stripe.simulator.cli import main

if __name__ == "__main__":
    sys.exit(main())
