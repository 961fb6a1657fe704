"""`ledger webhook serve`: `handle_delivery` served over HTTP by Starlette on uvicorn.

    POST /stripe/webhooks   a Stripe delivery (the endpoint to register with Stripe)
    GET  /healthz           200 when the database answers, else 503
    GET  /metrics           Prometheus text: ledger_webhook_deliveries_total{type,outcome}

A thin layer: it reads the raw body and the Stripe-Signature header, runs the
handler on a worker thread (it talks to the database), and sends its answer
back. SIGTERM or SIGINT stop it cleanly: uvicorn finishes the requests in
flight, then the command exits 0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import anyio
import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ledger.backend import Backend
from ledger.config import env_number
from ledger.errors import InvalidInput
from ledger.webhooks.handler import (
    DEFAULT_TOLERANCE_SECONDS,
    MAX_TOLERANCE_SECONDS,
    MIN_TOLERANCE_SECONDS,
    handle_delivery,
)

log = logging.getLogger("ledger.webhooks")

WEBHOOK_PATH: Final = "/stripe/webhooks"
# Stripe's payloads are a few kilobytes; this bounds what one request may make
# the server hold in memory.
MAX_BODY_BYTES: Final = 1024 * 1024
# Deliveries handled at once: each holds a database connection while it runs.
CONCURRENT_DELIVERIES: Final = 4


@dataclass(frozen=True)
class WebhookSettings:
    secret: str = field(repr=False)
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> WebhookSettings:
        secret = environ.get("STRIPE_WEBHOOK_SECRET", "").strip()
        if not secret:
            raise InvalidInput(
                "STRIPE_WEBHOOK_SECRET is not set: `ledger webhook serve` needs the"
                " endpoint's signing secret (whsec_...) to check deliveries"
            )
        tolerance = env_number(
            environ,
            "STRIPE_WEBHOOK_TOLERANCE_SECONDS",
            DEFAULT_TOLERANCE_SECONDS,
            minimum=MIN_TOLERANCE_SECONDS,
            maximum=MAX_TOLERANCE_SECONDS,
            whole=True,
        )
        assert tolerance is not None
        return cls(secret=secret, tolerance_seconds=int(tolerance))


def build_app(backend: Backend, settings: WebhookSettings) -> Starlette:
    """The ASGI app; `backend` stays open for as long as the app serves."""
    limiter = anyio.CapacityLimiter(CONCURRENT_DELIVERIES)

    async def receive(request: Request) -> Response:
        body = await _body(request)
        if body is None:
            return JSONResponse({"error": "the body is too large"}, status_code=413)
        answer = await anyio.to_thread.run_sync(
            lambda: handle_delivery(
                backend,
                body,
                request.headers.get("stripe-signature"),
                settings.secret,
                tolerance_seconds=settings.tolerance_seconds,
            ),
            limiter=limiter,
        )
        return Response(answer.body, status_code=answer.status, media_type=answer.content_type)

    async def healthz(_request: Request) -> Response:
        try:
            await anyio.to_thread.run_sync(lambda: _ping(backend), limiter=limiter)
        except Exception as error:  # The probe's answer is the point.
            return JSONResponse(
                {"status": "unavailable", "error": type(error).__name__}, status_code=503
            )
        return JSONResponse({"status": "ok"})

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route(WEBHOOK_PATH, receive, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


async def _body(request: Request) -> bytes | None:
    """The raw body, or None when it is larger than MAX_BODY_BYTES."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _ping(backend: Backend) -> None:
    with backend.db.transaction(write=False) as cursor:
        cursor.execute("SELECT 1 AS ok")
        cursor.fetchone()
