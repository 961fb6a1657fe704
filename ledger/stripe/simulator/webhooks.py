"""Webhook deliveries, signed exactly as Stripe signs them.

``Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<payload>" keyed with the
endpoint's secret>``, so that ``stripe.Webhook.construct_event(payload, header, secret)``
accepts them. The engine only queues deliveries; `WebhookSender` (the HTTP server's) posts
them from a thread of its own, retrying with backoff, so that no API answer ever waits for a
webhook endpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import hmac
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

# Waits before the 2nd, 3rd, ... attempt. Stripe retries for days; a local simulator for
# tests and demos gives up after a few seconds so that nothing lingers.
DEFAULT_RETRY_DELAYS: Final = (0.5, 1.0, 2.0, 4.0)
DELIVERY_TIMEOUT_SECONDS: Final = 5.0
# Deliveries nobody takes (a secret configured in-process, no URL) are kept up to this many.
MAX_QUEUED_DELIVERIES: Final = 10_000


def signature_header(payload: bytes, secret: str, timestamp: int) -> str:
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(frozen=True)
class Delivery:
    """One event, for one endpoint; sign it when sending (Stripe signs each attempt anew)."""

    event_id: str
    event_type: str
    payload: bytes
    # repr=False: a delivery printed in a log or a test failure must not show the secret.
    secret: str = field(repr=False)

    def signature(self, timestamp: int) -> str:
        return signature_header(self.payload, self.secret, timestamp)

    def headers(self, timestamp: int) -> dict[str, str]:
        return {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": self.signature(timestamp),
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks) stripe-sim",
        }


@dataclass(frozen=True)
class DeliveryAttempt:
    event_id: str
    event_type: str
    attempt: int
    # The endpoint's HTTP status, or None when it could not be reached.
    status: int | None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def as_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "type": self.event_type,
            "attempt": self.attempt,
            "status": self.status,
            "error": self.error,
        }


def post_delivery(url: str, delivery: Delivery, timestamp: int) -> int:
    """POST one signed delivery; the endpoint's status, or OSError when unreachable."""
    # The URL is the operator's own configured endpoint (checked to be http or https).
    request = urllib.request.Request(  # noqa: S310
        url, data=delivery.payload, headers=delivery.headers(timestamp), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=DELIVERY_TIMEOUT_SECONDS) as response:  # noqa: S310
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code)


class WebhookSender:
    """Posts deliveries taken from ``take`` to ``url`` from one background thread.

    Deliveries go out in the order they are taken; one that fails waits its backoff while
    later ones go ahead, so an endpoint can see them out of order, as from Stripe."""

    def __init__(
        self,
        url: str,
        take: Callable[[], list[Delivery]],
        *,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        log: TextIO | None = None,
        log_lock: threading.Lock | None = None,
    ) -> None:
        self._url = url
        self._take = take
        self._retry_delays = tuple(retry_delays)
        self._log = log
        self._log_lock = log_lock or threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._attempts: list[DeliveryAttempt] = []
        self._attempts_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # (due at, order, attempt number, delivery): retries waiting for their time.
        self._waiting: list[tuple[float, int, int, Delivery]] = []
        self._order = 0

    def wake(self) -> None:
        """New deliveries are queued: called by the engine, under its lock, so it only sets
        an event."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stripe-sim-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def attempts(self) -> list[DeliveryAttempt]:
        with self._attempts_lock:
            return list(self._attempts)

    def _run(self) -> None:
        while not self._stopping.is_set():
            # Cleared before taking: a wake that comes after the take is seen by the wait.
            self._wake.clear()
            for delivery in self._take():
                self._schedule(delivery, attempt=1, due=0.0)
            now = time.monotonic()
            if self._waiting and self._waiting[0][0] <= now:
                _, _, attempt, delivery = heapq.heappop(self._waiting)
                self._attempt(delivery, attempt)
                continue
            timeout = self._waiting[0][0] - now if self._waiting else None
            self._wake.wait(timeout)

    def _schedule(self, delivery: Delivery, *, attempt: int, due: float) -> None:
        self._order += 1
        heapq.heappush(self._waiting, (due, self._order, attempt, delivery))

    def _attempt(self, delivery: Delivery, attempt: int) -> None:
        try:
            # Signed at sending time, with the wall clock the endpoint checks tolerance by.
            status: int | None = post_delivery(self._url, delivery, int(time.time()))
            error = None
        except (OSError, ValueError) as failure:
            status, error = None, type(failure).__name__
        result = DeliveryAttempt(delivery.event_id, delivery.event_type, attempt, status, error)
        with self._attempts_lock:
            self._attempts.append(result)
        self._write_log(result)
        if not result.succeeded and attempt <= len(self._retry_delays):
            due = time.monotonic() + self._retry_delays[attempt - 1]
            self._schedule(delivery, attempt=attempt + 1, due=due)

    def _write_log(self, attempt: DeliveryAttempt) -> None:
        if self._log is None:
            return
        # Event and outcome only: never the URL (it may hold a token) nor the secret.
        outcome = attempt.status if attempt.status is not None else attempt.error
        line = (
            f"stripe-sim webhook {attempt.event_type} {attempt.event_id} {outcome}"
            f" (attempt {attempt.attempt})\n"
        )
        with self._log_lock, contextlib.suppress(OSError, ValueError):
            self._log.write(line)
            self._log.flush()
