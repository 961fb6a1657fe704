"""Injected faults: the ``--faults`` spec, seeded random draws, and scripted FIFO faults.

Before faults (``500_before``, ``429``, ``lock_timeout``) answer at once, nothing executed,
nothing saved. After faults (``500_after``, ``drop_after``, ``slow``) hit a request that freshly
succeeded, after it committed and was saved. Each money-moving POST draws once from the
engine's random generator with the spec's probabilities; scripted faults are consumed first,
may target any method and path, and an "after" one waits for the next matching success.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ledger.errors import InvalidInput
from ledger.stripe.simulator.api import ApiRequest, StripeErrorResponse, api_error, lock_timeout
from ledger.stripe.simulator.api import rate_limited as rate_limited_error

# Fixed order: the one uniform draw per request maps onto these in this order, so a seed
# gives the same faults whatever order the --faults spec lists them in. New kinds go last,
# so that an existing spec and seed keep drawing what they drew.
FAULT_NAMES: Final = ("500_before", "500_after", "drop_after", "429", "slow", "lock_timeout")
BEFORE_FAULTS: Final = frozenset({"500_before", "429", "lock_timeout"})


def parse_faults(spec: str) -> dict[str, float]:
    """``"500_after=0.05,drop_after=0.05,429=0.1"`` -> ``{name: probability}``; "" -> {}."""
    faults: dict[str, float] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, value = (text.strip() for text in item.partition("="))
        if not sep:
            raise InvalidInput(f"invalid fault {item!r}: expected NAME=PROBABILITY")
        if name not in FAULT_NAMES:
            raise InvalidInput(f"unknown fault {name!r}: expected one of {', '.join(FAULT_NAMES)}")
        try:
            probability = float(value)
        except ValueError:
            raise InvalidInput(f"invalid probability {value!r} for fault {name}") from None
        if not 0.0 <= probability <= 1.0:
            raise InvalidInput(f"probability for fault {name} must be within [0, 1], not {value}")
        if name in faults:
            raise InvalidInput(f"fault {name} is given twice")
        faults[name] = probability
    check_fault_probabilities(faults)
    return faults


def check_fault_probabilities(faults: Mapping[str, float]) -> None:
    for name, probability in faults.items():
        if name not in FAULT_NAMES:
            raise InvalidInput(f"unknown fault {name!r}: expected one of {', '.join(FAULT_NAMES)}")
        # NaN compares false both ways: refused here too.
        if not 0.0 <= probability <= 1.0:
            raise InvalidInput(f"probability for fault {name} must be within [0, 1]")
    # One draw picks at most one fault per request, so the chances cannot add up past 1.
    if sum(faults.values()) > 1.0 + 1e-9:
        raise InvalidInput("fault probabilities add up to more than 1")


def format_faults(faults: Mapping[str, float]) -> str:
    """The --faults spec for these faults, or "none"."""
    spec = ",".join(f"{name}={faults[name]:g}" for name in FAULT_NAMES if faults.get(name))
    return spec or "none"


def before_fault_error(name: str) -> StripeErrorResponse:
    """The answer of a fault that strikes before executing."""
    note = f"stripe-sim fault {name}"
    if name == "429":
        return rate_limited_error(note)
    if name == "lock_timeout":
        return lock_timeout(note)
    return api_error(note)


@dataclass
class ScriptedFault:
    fault: str
    count: int
    path: str | None
    method: str

    def matches(self, request: ApiRequest) -> bool:
        return request.method == self.method and (self.path is None or self.path in request.path)

    def as_json(self) -> dict[str, Any]:
        return {"fault": self.fault, "count": self.count, "path": self.path, "method": self.method}


@dataclass(frozen=True)
class FaultDraw:
    """The fault a request drew: a random one by name, or the scripted queue's say."""

    name: str | None = None
    scripted: bool = False


class FaultPlan:
    """Which request gets which fault; not thread-safe (the engine holds its lock)."""

    def __init__(self, probabilities: Mapping[str, float], rng: random.Random) -> None:
        self._probabilities = dict(probabilities)
        self._random = rng
        self._scripted: deque[ScriptedFault] = deque()

    def add(
        self, fault: str, count: int = 1, path: str | None = None, method: str = "POST"
    ) -> None:
        if fault not in FAULT_NAMES:
            raise InvalidInput(f"unknown fault {fault!r}: expected one of {', '.join(FAULT_NAMES)}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidInput("fault count must be a positive integer")
        if path is not None and not isinstance(path, str):
            raise InvalidInput("fault path must be a string")
        if not isinstance(method, str) or not method.isalpha():
            raise InvalidInput("fault method must be an HTTP method such as POST")
        self._scripted.append(ScriptedFault(fault, count, path or None, method.upper()))

    def scripted(self) -> list[dict[str, Any]]:
        return [f.as_json() for f in self._scripted]

    def draw(self, request: ApiRequest, *, random_allowed: bool) -> FaultDraw:
        entry = next((f for f in self._scripted if f.matches(request)), None)
        if entry is not None:
            if entry.fault in BEFORE_FAULTS:
                self._consume(entry)
                return FaultDraw(entry.fault, scripted=True)
            # An "after" fault is only taken when the request succeeds.
            return FaultDraw(scripted=True)
        if not random_allowed or not self._probabilities:
            return FaultDraw()
        draw = self._random.random()
        threshold = 0.0
        for name in FAULT_NAMES:
            threshold += self._probabilities.get(name, 0.0)
            if draw < threshold:
                return FaultDraw(name)
        return FaultDraw()

    def take_after(self, draw: FaultDraw, request: ApiRequest) -> str | None:
        """For a request that succeeded: the "after" fault it gets, if any."""
        if not draw.scripted:
            return draw.name if draw.name not in BEFORE_FAULTS else None
        entry = next((f for f in self._scripted if f.matches(request)), None)
        if entry is None or entry.fault in BEFORE_FAULTS:
            return None
        self._consume(entry)
        return entry.fault

    def _consume(self, entry: ScriptedFault) -> None:
        entry.count -= 1
        if entry.count == 0:
            self._scripted.remove(entry)
