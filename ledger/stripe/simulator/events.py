"""Stripe events: what the simulator's objects went through, for ``GET /v1/events`` and
webhook deliveries.

Each event is stored as the JSON text it was first written as, so that ``data.object`` stays
the object as it was then, whatever happens to the object later.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ledger.stripe.simulator.api import invalid, no_such
from ledger.stripe.simulator.objects import page
from ledger.stripe.simulator.params import (
    EVENT_LIST_PARAMS,
    MAX_EVENT_TYPES,
    RETRIEVE_PARAMS,
    created_filter,
    reject_unknown,
    string,
    string_list,
)

# Stripe lists the events of the last 30 days.
EVENT_RETENTION_SECONDS: Final = 30 * 86_400
# A benchmark can make hundreds of thousands of objects; the log keeps the newest.
MAX_STORED_EVENTS: Final = 100_000


@dataclass(frozen=True)
class StoredEvent:
    id: str
    seq: int
    type: str
    created: int
    text: str

    def as_json(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.text)
        return event


@dataclass(frozen=True)
class EventSource:
    """The API request that caused an event; both None for a change made outside the API."""

    request_id: str | None = None
    idempotency_key: str | None = None
    api_version: str | None = None


class EventLog:
    """Events, oldest first; not thread-safe (the engine holds its lock)."""

    def __init__(self) -> None:
        self._events: deque[StoredEvent] = deque(maxlen=MAX_STORED_EVENTS)
        self._by_id: dict[str, StoredEvent] = {}
        self._seq = 0

    def record(
        self,
        event_type: str,
        obj: Mapping[str, Any],
        *,
        event_id: str,
        created: int,
        source: EventSource,
        previous: Mapping[str, Any] | None = None,
    ) -> StoredEvent:
        data: dict[str, Any] = {"object": dict(obj)}
        if previous is not None:
            data["previous_attributes"] = dict(previous)
        event = {
            "id": event_id,
            "object": "event",
            "api_version": source.api_version,
            "created": created,
            "data": data,
            "livemode": False,
            "pending_webhooks": 0,
            "request": {"id": source.request_id, "idempotency_key": source.idempotency_key},
            "type": event_type,
        }
        self._seq += 1
        stored = StoredEvent(event_id, self._seq, event_type, created, json.dumps(event))
        if len(self._events) == self._events.maxlen:
            del self._by_id[self._events[0].id]
        self._events.append(stored)
        self._by_id[event_id] = stored
        return stored

    def summary(self) -> list[dict[str, Any]]:
        return [{"id": e.id, "type": e.type, "created": e.created} for e in self._events]

    def retrieve(self, event_id: str, params: Mapping[str, Any], now: float) -> dict[str, Any]:
        reject_unknown(params, RETRIEVE_PARAMS)
        event = self._by_id.get(event_id)
        if event is None or not _recent(event, now):
            raise no_such("event", event_id, param="id")
        return event.as_json()

    def list_page(self, params: Mapping[str, Any], now: float) -> dict[str, Any]:
        reject_unknown(params, EVENT_LIST_PARAMS)
        wanted = _type_filter(params)
        created = created_filter(params)
        chosen = [
            e for e in self._events if _recent(e, now) and wanted(e.type) and created(e.created)
        ]
        return page(chosen, params, url="/v1/events", kind="event", seq_of=self._seq_of)

    def _seq_of(self, event_id: str) -> int | None:
        event = self._by_id.get(event_id)
        return event.seq if event is not None else None


def _recent(event: StoredEvent, now: float) -> bool:
    return event.created >= now - EVENT_RETENTION_SECONDS


def _type_filter(params: Mapping[str, Any]) -> Callable[[str], bool]:
    """``type`` (``*`` a wildcard, as in ``transfer.*``) or ``types`` (exact names)."""
    single = string(params, "type")
    several = string_list(params, "types")
    if single is not None and several is not None:
        raise invalid("You may only specify one of these parameters: type, types.")
    if single is not None:
        pattern = re.compile(".*".join(re.escape(part) for part in single.split("*")))
        return lambda event_type: pattern.fullmatch(event_type) is not None
    if several is not None:
        if len(several) > MAX_EVENT_TYPES:
            raise invalid(f"You may pass at most {MAX_EVENT_TYPES} types.", param="types")
        names = frozenset(several)
        return lambda event_type: event_type in names
    return lambda event_type: True
