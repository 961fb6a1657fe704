"""The `ledger` command line (`python -m ledger.cli` too).

Errors are one line on stderr and an exit code from the contract:
0 ok; 2 bad input; 3 transition refused by the matrix; 4 transfer not found;
1 anything else. Set LEDGER_DEBUG=1 to get a traceback for unexpected errors.

- `parser.py`: the grammar; `output.py`: what is printed, and how;
- `transfers.py`, `audit.py`, `operations.py`, `stripe.py`, `stripe_sim.py`:
  the commands, by group.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from ledger.cli.output import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    PrintableOutput,
    fail,
)
from ledger.cli.parser import UsageError, build_parser
from ledger.config import database_url
from ledger.errors import InvalidInput, LedgerError, TransferNotFound, TransitionRefused, first_line
from ledger.storage import DATABASE_FAILURES, describe_database_error

__all__ = ["main", "run"]


def run(argv: Sequence[str] | None = None) -> int:
    stdout = sys.stdout
    sys.stdout = PrintableOutput(stdout)
    try:
        return _run(argv)
    finally:
        sys.stdout = stdout


def _run(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.database_url is None:
            args.database_url = database_url()
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except UsageError as error:
        return fail(str(error), EXIT_BAD_INPUT)
    except TransitionRefused as error:
        return fail(str(error), EXIT_REFUSED)
    except TransferNotFound as error:
        return fail(str(error), EXIT_NOT_FOUND)
    except InvalidInput as error:
        return fail(str(error), EXIT_BAD_INPUT)
    except LedgerError as error:
        return fail(str(error), EXIT_FAILURE)
    except DATABASE_FAILURES as error:
        # The message is the driver's; it names the problem, never the password.
        return fail(describe_database_error(error), EXIT_FAILURE)
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_FAILURE)
    except Exception as error:
        if os.environ.get("LEDGER_DEBUG"):
            traceback.print_exc()
        return fail(f"internal error: {type(error).__name__}: {first_line(str(error))}", 1)


def main() -> NoReturn:
    sys.exit(run())
