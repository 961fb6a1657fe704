"""Reading a `transfer import` file: JSON Lines, one transfer per line.

Each line has the fields of `ledger transfer show --json`; `status` may be any
of the six. The whole file is validated before anything is saved: one bad line
rejects the file, and the error names the line.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from ledger import values
from ledger.application import ImportRecord
from ledger.domain import imported_reversal_amount
from ledger.errors import InvalidInput


def _uuid(value: Any) -> UUID:
    return values.transfer_id(value)


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

    id: Annotated[UUID, BeforeValidator(_uuid)]
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
    if first["type"] == "json_invalid":
        return "not valid JSON"
    if first["type"] == "model_type":
        return "expected a JSON object"
    return message if where in message or not where else f"{where}: {message}"


def parse_line(line_number: int, text: str) -> ImportRecord:
    try:
        line = ImportLine.model_validate_json(text)
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
    )


def parse_lines(lines: Iterable[str]) -> list[ImportRecord]:
    """Every record of the file, or InvalidInput naming the first bad line.

    Blank lines are skipped. The same id twice with the same values counts once;
    with different values the file is refused.
    """
    records: list[ImportRecord] = []
    seen: dict[UUID, ImportRecord] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        record = parse_line(number, text)
        earlier = seen.get(record.transfer_id)
        if earlier is not None:
            if (earlier.state(), earlier.source_updated_at) != (
                record.state(),
                record.source_updated_at,
            ):
                raise InvalidInput(
                    f"line {number}: transfer {record.transfer_id} already appears on"
                    f" line {earlier.line} with other values"
                )
            continue
        seen[record.transfer_id] = record
        records.append(record)
    return records
