"""Which /v1 endpoint a request is for, and the request log."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

from ledger.stripe.simulator.api import unrecognized_url

_TRANSFERS: Final = re.compile(r"/v1/transfers")
_TRANSFER: Final = re.compile(r"/v1/transfers/([^/]+)")
_REVERSALS: Final = re.compile(r"/v1/transfers/([^/]+)/reversals")
_REVERSAL: Final = re.compile(r"/v1/transfers/([^/]+)/reversals/([^/]+)")
_EVENTS: Final = re.compile(r"/v1/events")
_EVENT: Final = re.compile(r"/v1/events/([^/]+)")

MONEY_MOVING: Final = frozenset({"create_transfer", "create_reversal"})


@dataclass(frozen=True)
class Route:
    """An endpoint (one named API operation, as Stripe counts them for rate limits) and the
    ids its path names."""

    kind: str
    object_id: str = ""
    child_id: str = ""

    @property
    def moves_money(self) -> bool:
        return self.kind in MONEY_MOVING


_TABLE: Final[tuple[tuple[re.Pattern[str], dict[str, str]], ...]] = (
    (_TRANSFERS, {"POST": "create_transfer", "GET": "list_transfers"}),
    (_TRANSFER, {"GET": "retrieve_transfer"}),
    (_REVERSALS, {"POST": "create_reversal", "GET": "list_reversals"}),
    (_REVERSAL, {"GET": "retrieve_reversal"}),
    (_EVENTS, {"GET": "list_events"}),
    (_EVENT, {"GET": "retrieve_event"}),
)


def route(method: str, path: str) -> Route:
    """The endpoint, or a 404 "Unrecognized request URL" as Stripe answers."""
    for pattern, kinds in _TABLE:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        if method not in kinds:
            break
        ids = [unquote(part) for part in match.groups()]
        return Route(kinds[method], *ids)
    raise unrecognized_url(method, path)


@dataclass
class RequestRecord:
    at: float
    method: str
    path: str
    idempotency_key: str | None
    status: int | None = None
    fault: str | None = None
    replayed: bool = False
    rate_limited: bool = False
    # When its answer was ready (after the latency): with `at`, how many
    # requests were in flight at once.
    answered_at: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "method": self.method,
            "path": self.path,
            "idempotency_key": self.idempotency_key,
            "status": self.status,
            "fault": self.fault,
            "replayed": self.replayed,
            "rate_limited": self.rate_limited,
            "answered_at": self.answered_at,
        }
