"""Reading a `transfer import` file: JSON Lines, one transfer per line.

Each line has the fields of `ledger transfer show --json`; `status` may be any
of the six. The whole file is validated before anything is saved: one bad line
rejects the file, and the error names the line. A key given twice on a line is
a bad line. Within the file, an order and a Stripe transfer belong to one
transfer each (`WithinFile`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final
from uuid import UUID

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from ledger import values
from ledger.domain import imported_reversal_amount
from ledger.errors import InvalidInput
from ledger.import_records import ImportRecord, WithinFile

__all__ = ["ImportFile", "ImportLine", "ImportRecord", "WithinFile", "parse_line", "parse_lines"]

# Files up to this size keep their parsed records between the import's two
# passes (check everything, then save) instead of being read and parsed twice
# (parsing is a fifth of an import's time). Records take about twice their
# lines' size in memory (640 bytes for a 333-byte line), so at most about
# 130 MB; a larger file is read twice, a line at a time.
KEEP_RECORDS_BYTES: Final = 64 * 1024 * 1024


def _time_or_none(field: str) -> BeforeValidator:
    return BeforeValidator(lambda v: None if v is None else values.timestamp(v, field))


def _optional_text(field: str) -> AfterValidator:
    return AfterValidator(lambda v: None if v is None else values.text(v, field))


def _optional_ref(field: str) -> AfterValidator:
    return AfterValidator(lambda v: None if v is None else values.request_ref(v, field))


def _optional_stripe_id(field: str) -> AfterValidator:
    return AfterValidator(lambda v: None if v is None else values.stripe_id(v, field))


class ImportLine(BaseModel):
    """The `show --json` shape. Unknown fields are refused, so a typo in a
    column name is an error rather than a silently dropped value."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: Annotated[UUID, BeforeValidator(values.transfer_id)]
    seller_account_id: Annotated[str, AfterValidator(values.seller_account_id)]
    order_ref: Annotated[str, AfterValidator(lambda v: values.order_ref(v, "order_ref"))]
    # A JSON number, never a string: strict int first, then the range.
    amount: Annotated[int, AfterValidator(values.amount)]
    currency: Annotated[str, AfterValidator(values.currency)]
    status: Annotated[str, AfterValidator(values.status)]
    retry_count: Annotated[
        int, BeforeValidator(lambda v: values.non_negative_int(v, "retry_count"))
    ] = 0
    next_retry_at: Annotated[datetime | None, _time_or_none("next_retry_at")] = None
    stripe_transfer_id: Annotated[str | None, _optional_stripe_id("stripe_transfer_id")] = None
    amount_reversed: Annotated[
        int, BeforeValidator(lambda v: values.non_negative_int(v, "amount_reversed"))
    ] = 0
    last_error: Annotated[str | None, _optional_text("last_error")] = None
    updated_at: Annotated[datetime | None, _time_or_none("updated_at")] = None
    # A reversal in flight keeps its request and amount (default: the rest).
    reversal_request_ref: Annotated[str | None, _optional_ref("reversal_request_ref")] = None
    reversal_amount: Annotated[
        int | None, AfterValidator(lambda v: None if v is None else values.amount(v))
    ] = None
    # The charge funding a payout not made yet (Stripe's source_transaction).
    source_transaction: Annotated[
        str | None,
        AfterValidator(lambda v: None if v is None else values.source_transaction(v)),
    ] = None
    # Present in `show --json` output; accepted so that output can be re-imported,
    # but the ledger derives them itself.
    created_at: Annotated[datetime | None, _time_or_none("created_at")] = None
    version: int | None = None


def _one_line_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"unknown field {where!r}"
    if first["type"] == "missing":
        return f"missing field {where!r}"
    if first["type"] == "model_type":
        return "expected a JSON object"
    return message if where in message or not where else f"{where}: {message}"


class _DuplicateKey(ValueError):
    pass


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # JSON allows a key twice and most readers keep the last: which of two
    # amounts the old table meant is not for the ledger to guess.
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return found


_decode_json = json.JSONDecoder(object_pairs_hook=_object_without_duplicate_keys).decode


def parse_line(line_number: int, text: str) -> ImportRecord:
    try:
        data = _decode_json(text)
    except _DuplicateKey as key:
        raise InvalidInput(f"line {line_number}: field {str(key)!r} appears twice") from None
    except ValueError:
        raise InvalidInput(f"line {line_number}: not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"line {line_number}: expected a JSON object")
    try:
        line = ImportLine.model_validate(data)
    except ValidationError as error:
        raise InvalidInput(f"line {line_number}: {_one_line_error(error)}") from None
    try:
        reversal_amount = imported_reversal_amount(
            status=line.status,
            amount=line.amount,
            amount_reversed=line.amount_reversed,
            reversal_amount=line.reversal_amount,
        )
    except InvalidInput as error:
        raise InvalidInput(f"line {line_number}: {error}") from None
    return ImportRecord(
        line=line_number,
        transfer_id=line.id,
        seller_account_id=line.seller_account_id,
        order_ref=line.order_ref,
        amount=line.amount,
        currency=line.currency,
        status=line.status,
        retry_count=line.retry_count,
        next_retry_at=line.next_retry_at,
        stripe_transfer_id=line.stripe_transfer_id,
        amount_reversed=line.amount_reversed,
        last_error=line.last_error,
        reversal_request_ref=line.reversal_request_ref,
        reversal_amount=reversal_amount,
        source_updated_at=line.updated_at,
        source_transaction=line.source_transaction,
    )


def parse_lines(lines: Iterable[str]) -> list[ImportRecord]:
    """Every record of these lines (line numbers from 1; blank lines skipped),
    or InvalidInput naming the first bad line. The same transfer twice with
    the same values counts once; the rules of `WithinFile` apply."""
    numbered = [(n, text) for n, text in enumerate(lines, start=1) if text.strip()]
    records = [parse_line(n, text) for n, text in numbered]
    within = WithinFile()
    for record in records:
        within.add(record)
    repeated = within.confirm(lambda: iter(records))
    return [r for r in records if (r.transfer_id, r.line) not in repeated]


class ImportFile:
    """A `transfer import` file, read line by line: one line is in memory at
    a time, however large the file (a gigabyte of lines needs megabytes, not
    gigabytes). `records()` may be called again for a second pass; a small
    file's records are kept from the first pass rather than parsed twice."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._keep = path.stat().st_size <= KEEP_RECORDS_BYTES
        except OSError as error:
            raise InvalidInput(f"cannot read {path}: {error.strerror}") from None
        self._kept: list[ImportRecord] | None = None

    def records(self) -> Iterator[ImportRecord]:
        if self._kept is not None:
            yield from self._kept
            return
        kept: list[ImportRecord] = []
        for number, text in self._lines():
            record = parse_line(number, text)
            if self._keep:
                kept.append(record)
            yield record
        if self._keep:
            self._kept = kept

    def _lines(self) -> Iterator[tuple[int, str]]:
        try:
            stream = self.path.open("rb")
        except OSError as error:
            raise InvalidInput(f"cannot read {self.path}: {error.strerror}") from None
        with stream:
            for number, raw in enumerate(stream, start=1):
                try:
                    # utf-8-sig on the first line: a byte-order mark is not part of the JSON.
                    text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError:
                    raise InvalidInput(f"line {number}: not valid UTF-8") from None
                # The line's bytes go before it is parsed: one copy of a long
                # line at a time, not two.
                del raw
                if text and not text.isspace():
                    yield number, text
