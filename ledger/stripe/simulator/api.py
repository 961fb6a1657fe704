"""The engine's vocabulary: a request as it arrives, the answer it gets, and Stripe's errors.

Every error message here is Stripe's own where we know it, so that code written against the
simulator reads the same text it will read from Stripe. Faults the simulator injects say so
("stripe-sim fault NAME") so that nobody mistakes them for a bug of the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

RATE_LIMIT_MESSAGE: Final = (
    "Too many requests hit the API too quickly. We recommend an exponential backoff of your"
    " requests."
)
LOCK_TIMEOUT_MESSAGE: Final = (
    "This object cannot be accessed right now because another API request or Stripe process"
    " is currently accessing it. If you see this error intermittently, retry the request. If"
    " you see this error frequently and are making multiple concurrent requests to a single"
    " object, make your requests serially or at a lower rate."
)
PLATFORM_BALANCE_MESSAGE: Final = (
    "You have insufficient available funds in your Stripe account. Try adding funds directly"
    " to your available balance by creating Top-ups: https://stripe.com/docs/connect/top-ups."
)
CAPABILITIES_MESSAGE: Final = (
    "Your destination account needs to have at least one of the following capabilities"
    " enabled: transfers, crypto_transfers, legacy_payments"
)
API_ERROR_MESSAGE: Final = (
    "Sorry, something went wrong. We've already been notified of the problem."
)


@dataclass(frozen=True)
class ApiRequest:
    """One /v1 request as the simulator sees it; the HTTP layer (or an in-process caller)
    fills it in."""

    method: str
    path: str
    query: str = ""
    body: bytes = b""
    authorization: str | None = None
    idempotency_key: str | None = None
    # The caller's Stripe-Version header: events it causes carry it as their api_version.
    stripe_version: str | None = None


@dataclass
class ApiResponse:
    """The engine's answer, and what the transport is to do with it.

    In-process there is no transport: a caller models ``drop`` (the client hears nothing,
    although the request was committed) and ``delay_seconds`` (the answer comes that much
    later) itself."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    request_id: str = ""
    fault: str | None = None
    replayed: bool = False
    # Refused by the rate limiter: nothing executed, nothing saved under the key.
    rate_limited: bool = False
    # drop_after: close the connection without sending a byte of this answer.
    drop: bool = False
    # slow: hold the answer this long before sending it.
    delay_seconds: float = 0.0


class StripeErrorResponse(Exception):
    """A Stripe error answer: ``{"error": {"type", "message", "code"?, "param"?}}``."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}

    def response(self) -> ApiResponse:
        return ApiResponse(self.status, self.body(), dict(self.headers))


def invalid(
    message: str, *, param: str | None = None, code: str | None = None
) -> StripeErrorResponse:
    return StripeErrorResponse(400, "invalid_request_error", message, code=code, param=param)


def no_such(kind: str, object_id: str, *, param: str, status: int = 404) -> StripeErrorResponse:
    return StripeErrorResponse(
        status,
        "invalid_request_error",
        f"No such {kind}: '{object_id}'",
        code="resource_missing",
        param=param,
    )


def api_error(note: str) -> StripeErrorResponse:
    # Stripe-Should-Retry is added to every 5xx answer by the engine, replays included.
    return StripeErrorResponse(500, "api_error", f"{API_ERROR_MESSAGE} ({note})")


def rate_limited(note: str | None = None) -> StripeErrorResponse:
    # No Stripe-Should-Retry: Stripe leaves the backoff to the caller, and stripe-python
    # does not retry a 429 on its own without it.
    message = RATE_LIMIT_MESSAGE if note is None else f"{RATE_LIMIT_MESSAGE} ({note})"
    return StripeErrorResponse(429, "invalid_request_error", message, code="rate_limit")


def lock_timeout(note: str) -> StripeErrorResponse:
    # The one 429 Stripe asks to be retried: the object was busy, nothing was done.
    return StripeErrorResponse(
        429,
        "invalid_request_error",
        f"{LOCK_TIMEOUT_MESSAGE} ({note})",
        code="lock_timeout",
        headers={"Stripe-Should-Retry": "true"},
    )


def balance_insufficient(message: str) -> StripeErrorResponse:
    return invalid(message, code="balance_insufficient")


def insufficient_capabilities() -> StripeErrorResponse:
    # Stripe names no param: the destination is well-formed, it just cannot receive yet.
    return invalid(CAPABILITIES_MESSAGE, code="insufficient_capabilities_for_transfer")


def idempotency_key_in_use(key: str) -> StripeErrorResponse:
    return StripeErrorResponse(
        409,
        "idempotency_error",
        "There is currently another in-progress request using this Stripe-Idempotency-Key"
        " (that probably means you submitted twice, and the other request is still going"
        f" through): '{key}'. Please try again later.",
        code="idempotency_key_in_use",
    )


def idempotency_mismatch(key: str) -> StripeErrorResponse:
    return StripeErrorResponse(
        400,
        "idempotency_error",
        "Keys for idempotent requests can only be used with the same parameters they were"
        f" first used with. Try using a key other than '{key}' if you meant to execute a"
        " different request.",
    )


def unrecognized_url(method: str, path: str) -> StripeErrorResponse:
    return StripeErrorResponse(
        404,
        "invalid_request_error",
        f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs"
        " or we can help at https://support.stripe.com/.",
    )
