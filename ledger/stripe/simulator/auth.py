"""API keys: who is asking, and how a key may be shown (never in full)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from typing import Final

from ledger.stripe.simulator.api import StripeErrorResponse

_KEY_PREFIXES: Final = ("sk_test_", "sk_live_", "rk_test_", "rk_live_", "pk_test_", "pk_live_")


def mask_api_key(key: str) -> str:
    """The key as Stripe shows it in errors: its kind and its last four characters only."""
    prefix = next((p for p in _KEY_PREFIXES if key.startswith(p)), "")
    rest = key[len(prefix) :]
    # A short secret would be half revealed by four characters.
    if len(rest) < 12:
        return f"{prefix}****"
    return f"{prefix}****{rest[-4:]}"


def api_key_from(authorization: str | None) -> str:
    if not authorization:
        return ""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    if scheme.lower() == "basic":
        # curl -u sk_test_...: sends the key as the user name.
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[0]
    return ""


def authenticate(authorization: str | None, expected: str | None) -> str:
    """The scope (of idempotency keys and rate limits) of the request's API key, or a
    401/403 answer."""
    key = api_key_from(authorization)
    if not key:
        raise StripeErrorResponse(
            401,
            "invalid_request_error",
            "You did not provide an API key. You need to provide your API key in the"
            " Authorization header, using Bearer auth (e.g. 'Authorization: Bearer"
            " YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details.",
        )
    if expected is not None and not secrets.compare_digest(key.encode(), expected.encode()):
        raise StripeErrorResponse(
            401, "invalid_request_error", f"Invalid API Key provided: {mask_api_key(key)}"
        )
    if key.startswith("rk_"):
        raise StripeErrorResponse(
            403,
            "permission_error",
            f"The provided key '{mask_api_key(key)}' does not have the required permissions"
            " for this endpoint. Having the 'rak_transfer_write' permission would allow"
            " this request to continue.",
        )
    # Scoped by a digest so the state never holds keys in a form one could print.
    return hashlib.sha256(key.encode()).hexdigest()
