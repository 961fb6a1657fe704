"""The control API under ``/_sim``, for tests and the demo: JSON in, JSON out, no API key,
never rate-limited. Each endpoint is a thin decoding of one in-process call of the engine.

- ``GET /_sim/state``: objects, events, the request log, the knobs.
- ``POST /_sim/reset``: forget everything.
- ``POST /_sim/faults`` ``{"fault", "count"?, "path"?, "method"?}``: script a fault.
- ``POST /_sim/expire-idempotency-keys``: as if a day had passed.
- ``POST /_sim/accounts`` ``{"id", "exists"?, "reversal_balance"?, "transfers"?}``:
  override an account's conventions (``transfers``: "active" or "inactive").
- ``POST /_sim/platform-balance`` ``{"amount": N or null}``: set the available balance.
- ``POST /_sim/topups`` ``{"amount": N}``: add funds to it.
- ``POST /_sim/reverse`` ``{"transfer", "amount"?}``: a reversal made outside the API.
- ``POST /_sim/transfers/{id}`` with any of ``{"amount", "currency", "destination",
  "created"}``: edit a stored transfer in place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from ledger.errors import InvalidInput
from ledger.stripe.simulator.api import ApiResponse, StripeErrorResponse, invalid

if TYPE_CHECKING:
    from ledger.stripe.simulator.engine import StripeSimulator

_SIM_TRANSFER: Final = re.compile(r"/_sim/transfers/([^/]+)")


def answer_control(simulator: StripeSimulator, method: str, path: str, body: bytes) -> ApiResponse:
    try:
        if method == "GET" and path == "/_sim/state":
            return ApiResponse(200, simulator.state())
        if method != "POST":
            raise _unknown_control(method, path)
        payload = _json_object(body)
        if path == "/_sim/reset":
            simulator.reset()
            return ApiResponse(200, {"reset": True})
        if path == "/_sim/faults":
            simulator.add_fault(
                payload.get("fault", ""),
                payload.get("count", 1),
                payload.get("path"),
                payload.get("method", "POST"),
            )
            return ApiResponse(200, {"scripted_faults": simulator.scripted_faults()})
        if path == "/_sim/expire-idempotency-keys":
            return ApiResponse(200, {"expired": simulator.expire_idempotency_keys()})
        if path == "/_sim/accounts":
            account_id = payload.get("id", "")
            simulator.set_account(
                account_id,
                exists=payload.get("exists"),
                reversal_balance=payload.get("reversal_balance"),
                transfers=payload.get("transfers"),
            )
            return ApiResponse(200, {"id": account_id, "updated": True})
        if path == "/_sim/platform-balance":
            amount = _required_field(payload, "amount", '{"amount": N or null}')
            simulator.set_platform_balance(amount)
            return ApiResponse(200, {"platform_balance": amount})
        if path == "/_sim/topups":
            amount = _required_field(payload, "amount", '{"amount": N}')
            balance = simulator.top_up(amount)
            return ApiResponse(200, {"amount": amount, "platform_balance": balance})
        if path == "/_sim/reverse":
            transfer_id = _required_field(payload, "transfer", '{"transfer": "tr_..."}')
            if not isinstance(transfer_id, str):
                return invalid('expected {"transfer": "tr_...", "amount": N}').response()
            return ApiResponse(200, simulator.reverse_outside(transfer_id, payload.get("amount")))
        if match := _SIM_TRANSFER.fullmatch(path):
            edits = _transfer_edits(payload)
            return ApiResponse(200, simulator.edit_transfer(unquote(match.group(1)), **edits))
        raise _unknown_control(method, path)
    except InvalidInput as error:
        return invalid(str(error)).response()
    except StripeErrorResponse as error:
        return error.response()


def _unknown_control(method: str, path: str) -> StripeErrorResponse:
    return StripeErrorResponse(
        404, "invalid_request_error", f"Unrecognized stripe-sim control URL ({method}: {path})"
    )


def _transfer_edits(payload: Mapping[str, Any]) -> dict[str, Any]:
    fields = {"amount", "currency", "destination", "created"}
    if not payload or set(payload) - fields:
        raise InvalidInput(
            'expected a JSON object with any of "amount", "currency", "destination", "created"'
        )
    return dict(payload)


def _required_field(payload: Mapping[str, Any], name: str, shape: str) -> Any:
    if name not in payload:
        raise InvalidInput(f"expected a JSON object like {shape}")
    return payload[name]


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the request body is not JSON") from None
    if not isinstance(payload, dict):
        raise InvalidInput("the request body must be a JSON object")
    return payload
