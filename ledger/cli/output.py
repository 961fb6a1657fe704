"""What the CLI prints: one line on stderr for an error, JSON or text on
stdout, and never a raw control character from stored data."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ledger import values
from ledger.audit.history import Audit
from ledger.errors import InvalidInput, first_line
from ledger.views import TransferView

# The contract's exit codes (DESIGN section 8).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3
EXIT_NOT_FOUND = 4


class PrintableOutput:
    """Standard output that never carries a raw control character to the
    terminal: text the ledger prints may hold values stored before the ledger
    refused them, or Stripe's words; each such character is written escaped
    (\\x1b). JSON output is already escaped by the encoder."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write("\n".join(values.printable(line) for line in text.split("\n")))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def fail(message: str, code: int) -> int:
    print(f"ledger: error: {values.printable(first_line(message))}", file=sys.stderr)
    return code


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=None, separators=(", ", ": "))
    sys.stdout.write("\n")


def whole_number(raw: str, name: str, minimum: int, maximum: int) -> int:
    if not (raw.isascii() and raw.isdigit()) or not minimum <= int(raw) <= maximum:
        raise InvalidInput(f"invalid {name} {raw!r}: expected a whole number {minimum}-{maximum}")
    return int(raw)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def show_transfer(view: TransferView) -> None:
    data = view.as_json()
    width = max(len(k) for k in data)
    for key, value in data.items():
        print(f"{key.ljust(width)}  {'' if value is None else value}")


def list_transfers(views: Sequence[TransferView]) -> None:
    table(
        ("id", "status", "seller_account_id", "amount", "currency", "order_ref", "retries"),
        [
            (
                str(v.id),
                v.status,
                v.seller_account_id,
                str(v.amount),
                v.currency,
                v.order_ref,
                str(v.retry_count),
            )
            for v in views
        ],
    )
    print(f"({len(views)} transfer{'s' if len(views) != 1 else ''})")


def history(result: Audit) -> None:
    table(
        ("version", "at", "event", "from -> to", "actor", "reason", "details"),
        [
            (
                str(e.version),
                e.as_json()["at"],
                e.type,
                f"{e.from_status or '(new)'} -> {e.to_status}",
                e.actor,
                e.reason or "",
                ", ".join(
                    f"{k}={v}"
                    for k, v in {**e.as_json(), "caused_by": e.caused_by}.items()
                    if k in e.details or k == "caused_by"
                    if v is not None
                ),
            )
            for e in result.entries
        ],
    )
    state = result.state
    print(
        f"state at version {state.version}: {state.status}, amount {state.amount}"
        f" {state.currency}, reversed {state.amount_reversed}, retries {state.retry_count}"
    )
