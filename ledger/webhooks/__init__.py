"""Stripe webhooks: reversals made outside the ledger, recorded through the matrix.

`handle_delivery` is the whole of it, as a plain function a marketplace can
mount in its own web framework; `ledger webhook serve` serves it with
Starlette on uvicorn (`ledger.webhooks.server`, imported only when asked for,
so that mounting the handler needs neither).
"""

from __future__ import annotations

from ledger.webhooks.deliveries import Outcome
from ledger.webhooks.handler import (
    DEFAULT_TOLERANCE_SECONDS,
    WEBHOOK_ACTOR,
    WebhookResponse,
    handle_delivery,
)

__all__ = [
    "DEFAULT_TOLERANCE_SECONDS",
    "WEBHOOK_ACTOR",
    "Outcome",
    "WebhookResponse",
    "handle_delivery",
]
