"""`python -m ledger.cli ...`, for when the `ledger` command is not at hand."""

from ledger.cli import main

main()
