"""Stripe's v1 idempotency: saved answers per API key and idempotency key.

The first request with a key that begins executing claims it; when it has executed, its
status and body are saved (500s included) and every later request with the key gets them back
with ``Idempotent-Replayed: true``. The same key with other parameters answers 400
``idempotency_error``; a key whose first request is still executing answers 409
``idempotency_key_in_use``. Saved answers are pruned once they are older than the lifetime
(a day on Stripe), by the engine's clock; a request with a pruned key runs anew.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from ledger.stripe.simulator.api import (
    ApiResponse,
    idempotency_key_in_use,
    idempotency_mismatch,
    invalid,
)

MAX_KEY_LENGTH: Final = 255

# (method, path, canonical parameters): what "the same request" means.
Fingerprint = tuple[str, str, str]
# (digest of the API key, idempotency key): keys are scoped per API key, as on Stripe.
Slot = tuple[str, str]


def check_key(key: str | None) -> None:
    if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
        raise invalid(f"Idempotency keys must be 1 to {MAX_KEY_LENGTH} characters long.")


def fingerprint(method: str, path: str, params: dict[str, Any]) -> Fingerprint:
    return (method, path, json.dumps(params, sort_keys=True))


@dataclass
class SavedResponse:
    """What an idempotency key stands for; status None while its first request executes."""

    fingerprint: Fingerprint
    request_id: str
    status: int | None = None
    body: dict[str, Any] = field(default_factory=dict)
    saved_at: float = 0.0


class IdempotencyStore:
    """Saved answers; not thread-safe (the engine holds its lock)."""

    def __init__(self, ttl_seconds: float) -> None:
        self._ttl = ttl_seconds
        self._saved: dict[Slot, SavedResponse] = {}
        # Saves in order, so that pruning looks at the oldest only instead of every key.
        self._order: deque[tuple[float, Slot]] = deque()

    def lookup(self, slot: Slot, now: float) -> SavedResponse | None:
        self.prune(now)
        saved = self._saved.get(slot)
        if saved is not None and saved.status is not None and self._expired(saved, now):
            # Pruning works from the oldest save; a clock that went back can leave one behind.
            del self._saved[slot]
            return None
        return saved

    def claim(self, slot: Slot, fp: Fingerprint, request_id: str) -> None:
        self._saved[slot] = SavedResponse(fp, request_id)

    def save(self, slot: Slot, answer: SavedResponse) -> None:
        # The whole answer given rather than completed from the claim: a reset() while the
        # request executed has forgotten the claim, and the answer is saved all the same.
        self._saved[slot] = answer
        self._order.append((answer.saved_at, slot))

    def release(self, slot: Slot) -> None:
        """Forget a claim whose request never finished executing (a simulator bug)."""
        saved = self._saved.get(slot)
        if saved is not None and saved.status is None:
            del self._saved[slot]

    def prune(self, now: float) -> None:
        while self._order and now - self._order[0][0] >= self._ttl:
            saved_at, slot = self._order.popleft()
            saved = self._saved.get(slot)
            # The slot may have been saved again since (after an expiry): keep the newer one.
            if saved is not None and saved.status is not None and saved.saved_at == saved_at:
                del self._saved[slot]

    def expire_all(self) -> int:
        """Forget every saved answer, as if a day had passed; returns how many.
        Keys whose first request is still executing stay: Stripe would not forget those."""
        done = [slot for slot, saved in self._saved.items() if saved.status is not None]
        for slot in done:
            del self._saved[slot]
        self._order.clear()
        return len(done)

    def _expired(self, saved: SavedResponse, now: float) -> bool:
        return now - saved.saved_at >= self._ttl


def replay(saved: SavedResponse, key: str, fp: Fingerprint) -> ApiResponse:
    """The answer for a request whose key is known: 409, 400, or the saved answer again."""
    if saved.status is None:
        raise idempotency_key_in_use(key)
    if saved.fingerprint != fp:
        raise idempotency_mismatch(key)
    headers = {
        "Idempotency-Key": key,
        "Idempotent-Replayed": "true",
        "Original-Request": saved.request_id,
    }
    # A copy: the saved body must stay as it was first answered.
    body = json.loads(json.dumps(saved.body))
    return ApiResponse(saved.status, body, headers, replayed=True)
