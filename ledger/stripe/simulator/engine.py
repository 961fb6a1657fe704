"""`StripeSimulator`: Stripe's behaviour for transfers, reversals and events, in-process.

No HTTP, no threads, no sleeping: every answer is computed at once under one lock, and says
what a transport is to do with it (`ApiResponse.drop`, `ApiResponse.delay_seconds`). Time
comes from an injectable clock and every id and fault from an injectable `random.Random`, so
that the same seed, clock and requests give byte-identical answers.

A request runs in two phases, `begin` and `finish`: `begin` authenticates, rate-limits, draws
its fault, validates and claims its idempotency key; `finish` executes and saves. A transport
spends the request's latency between the two, with the key held, so that a concurrent
request with the key gets 409 meanwhile. `handle` is both at once.
"""

from __future__ import annotations

import copy
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from ledger.errors import InvalidInput
from ledger.stripe.simulator.api import (
    ApiRequest,
    ApiResponse,
    StripeErrorResponse,
    api_error,
    rate_limited,
)
from ledger.stripe.simulator.auth import authenticate
from ledger.stripe.simulator.config import SimulatorConfig
from ledger.stripe.simulator.events import EventLog, EventSource
from ledger.stripe.simulator.faults import BEFORE_FAULTS, FaultDraw, FaultPlan, before_fault_error
from ledger.stripe.simulator.idempotency import (
    Fingerprint,
    IdempotencyStore,
    SavedResponse,
    Slot,
    check_key,
    fingerprint,
    replay,
)
from ledger.stripe.simulator.objects import Book, Capability
from ledger.stripe.simulator.objects import Transfer as StripeTransfer
from ledger.stripe.simulator.params import (
    ACCOUNT_ID,
    CURRENCY,
    CreateReversal,
    CreateTransfer,
    decode_form,
    validate_reversal_create,
    validate_transfer_create,
)
from ledger.stripe.simulator.ratelimit import RateLimiter
from ledger.stripe.simulator.reads import read
from ledger.stripe.simulator.routes import RequestRecord, Route, route
from ledger.stripe.simulator.webhooks import MAX_QUEUED_DELIVERIES, Delivery

Clock = Callable[[], float]

# A benchmark can send hundreds of thousands of requests; the log keeps the newest.
MAX_LOGGED_REQUESTS: Final = 100_000


@dataclass
class Call:
    """One /v1 request between `begin` and `finish`."""

    request: ApiRequest
    request_id: str
    record: RequestRecord
    # Decided by `begin` already (an error, a replay, a limit, a before fault).
    response: ApiResponse | None = None
    route: Route | None = None
    draw: FaultDraw = field(default_factory=FaultDraw)
    params: dict[str, Any] = field(default_factory=dict)
    command: CreateTransfer | CreateReversal | None = None
    # The idempotency key this request holds while it executes, and what it stands for.
    slot: Slot | None = None
    fingerprint: Fingerprint | None = None
    finished: bool = False


class StripeSimulator:
    """Stripe's state and behaviour for transfers, reversals and events; thread-safe."""

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        clock: Clock = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or SimulatorConfig()
        self._clock = clock
        # S311: faults and ids need reproducibility from a seed, not unpredictability.
        self._random = rng if rng is not None else random.Random(self.config.seed)  # noqa: S311
        # reset() starts the draws again from here, whoever seeded the generator.
        self._initial_random_state = self._random.getstate()
        self._lock = threading.Lock()
        self._delivery_listener: Callable[[], None] | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._random.setstate(self._initial_random_state)
        self._book = Book(self.config.platform_balance)
        self._events = EventLog()
        self._keys = IdempotencyStore(self.config.idempotency_ttl_seconds)
        self._faults = FaultPlan(self.config.faults, self._random)
        self._limiter = RateLimiter(self.config.rate_limit)
        self._requests: deque[RequestRecord] = deque(maxlen=MAX_LOGGED_REQUESTS)
        self._deliveries: deque[Delivery] = deque(maxlen=MAX_QUEUED_DELIVERIES)

    def _new_id(self, prefix: str, bits: int = 96) -> str:
        return f"{prefix}_{self._random.getrandbits(bits):0{bits // 4}x}"

    # --- the API ---

    def handle(self, request: ApiRequest) -> ApiResponse:
        """Answer one /v1 request at once (begin and finish with no latency between)."""
        return self.finish(self.begin(request))

    def begin(self, request: ApiRequest) -> Call:
        """Everything up to executing; a money-moving request holds its key until `finish`."""
        with self._lock:
            now = self._clock()
            record = RequestRecord(
                at=now,
                method=request.method,
                path=request.path,
                idempotency_key=request.idempotency_key,
            )
            self._requests.append(record)
            call = Call(request, self._new_id("req", bits=56), record)
            try:
                call.response = self._begin(call, now)
            except StripeErrorResponse as error:
                call.response = error.response()
            except Exception as error:
                call.response = _internal_error(error)
            return call

    def finish(self, call: Call) -> ApiResponse:
        """Execute (unless `begin` answered already), save under the key, answer."""
        with self._lock:
            if call.finished:
                raise RuntimeError("this stripe-sim call is finished already")
            call.finished = True
            response = call.response
            if response is None:
                try:
                    response = self._execute(call, self._clock())
                except StripeErrorResponse as error:
                    response = error.response()
                except Exception as error:
                    response = _internal_error(error)
                finally:
                    # Saved by now, unless executing broke: then the key is free again.
                    if call.slot is not None:
                        self._keys.release(call.slot)
            response.request_id = call.request_id
            if response.status >= 500:
                # Stripe's idempotency layer would replay a 500, so Stripe asks not to retry.
                response.headers.setdefault("Stripe-Should-Retry", "false")
            call.record.status = response.status
            call.record.fault = response.fault
            call.record.replayed = response.replayed
            call.record.rate_limited = response.rate_limited
            call.record.answered_at = self._clock()
            return response

    def _begin(self, call: Call, now: float) -> ApiResponse | None:
        request = call.request
        scope = authenticate(request.authorization, self.config.api_key)
        call.route = target = route(request.method, request.path)
        # The limiter runs before anything else: a limited request is neither executed nor
        # saved under its key, and draws no fault.
        if not self._limiter.admit(scope, target.kind, now):
            limited = rate_limited().response()
            limited.rate_limited = True
            return limited
        call.draw = self._faults.draw(request, random_allowed=target.moves_money)
        if call.draw.name in BEFORE_FAULTS:
            early = before_fault_error(call.draw.name).response()
            early.fault = call.draw.name
            return early
        if not target.moves_money:
            call.params = decode_form(request.query, where="query string")
            return None
        key = request.idempotency_key
        check_key(key)
        params = decode_form(request.body)
        fp = fingerprint(request.method, request.path, params)
        refusal: StripeErrorResponse | None = None
        try:
            if target.kind == "create_transfer":
                call.command = validate_transfer_create(params)
            else:
                call.command = validate_reversal_create(target.object_id, params)
        except StripeErrorResponse as error:
            refusal = error
        if key is not None:
            saved = self._keys.lookup((scope, key), now)
            if saved is not None:
                return replay(saved, key, fp)
        if refusal is not None:
            # Validation comes before executing: nothing is saved under the key.
            raise refusal
        if key is not None:
            call.slot, call.fingerprint = (scope, key), fp
            self._keys.claim(call.slot, fp, call.request_id)
        return None

    def _execute(self, call: Call, now: float) -> ApiResponse:
        request, target = call.request, call.route
        assert target is not None
        if not target.moves_money:
            found = read(self._book, self._events, target, call.params, now)
            read_fault = self._faults.take_after(call.draw, request)
            response = (
                api_error("stripe-sim fault 500_after").response()
                if read_fault == "500_after"
                else ApiResponse(200, found)
            )
            return self._with_after_fault(response, read_fault)
        source = EventSource(call.request_id, request.idempotency_key, request.stripe_version)
        fault: str | None = None
        try:
            if isinstance(call.command, CreateTransfer):
                body = self._create_transfer(call.command, now, source)
            else:
                assert call.command is not None
                body = self._create_reversal(call.command, now, source, check_balance=True)
            status = 200
            fault = self._faults.take_after(call.draw, request)
        except StripeErrorResponse as error:
            # State-dependent refusals come from executing and are saved, as on Stripe.
            status, body = error.status, error.body()
        if fault == "500_after":
            failure = api_error("stripe-sim fault 500_after")
            status, body = failure.status, failure.body()
        headers: dict[str, str] = {}
        if call.slot is not None and call.fingerprint is not None:
            # A copy: an in-process caller may change its answer; the saved one stays.
            answer = SavedResponse(
                call.fingerprint, call.request_id, status, copy.deepcopy(body), now
            )
            self._keys.save(call.slot, answer)
            headers["Idempotency-Key"] = call.slot[1]
        return self._with_after_fault(ApiResponse(status, body, headers), fault)

    def _with_after_fault(self, response: ApiResponse, fault: str | None) -> ApiResponse:
        response.fault = fault
        if fault == "drop_after":
            response.drop = True
        elif fault == "slow":
            response.delay_seconds = self.config.slow_ms / 1000
        return response

    # --- executing, under the lock ---

    def _create_transfer(
        self, command: CreateTransfer, now: float, source: EventSource
    ) -> dict[str, Any]:
        transfer = self._book.create_transfer(command, created=int(now), new_id=self._new_id)
        body = transfer.as_json()
        self._emit("transfer.created", body, now, source)
        return body

    def _create_reversal(
        self, command: CreateReversal, now: float, source: EventSource, *, check_balance: bool
    ) -> dict[str, Any]:
        made = self._book.create_reversal(
            command, created=int(now), new_id=self._new_id, check_balance=check_balance
        )
        transfer = made.transfer.as_json()
        self._emit("transfer.reversed", transfer, now, source)
        self._emit("transfer.updated", transfer, now, source, previous=made.previous)
        return made.reversal.as_json()

    def _emit(
        self,
        event_type: str,
        obj: dict[str, Any],
        now: float,
        source: EventSource,
        previous: dict[str, Any] | None = None,
    ) -> None:
        event = self._events.record(
            event_type,
            obj,
            event_id=self._new_id("evt"),
            created=int(now),
            source=source,
            previous=previous,
        )
        secret = self.config.webhook_secret
        if secret is None:
            return
        self._deliveries.append(Delivery(event.id, event.type, event.text.encode(), secret))
        if self._delivery_listener is not None:
            self._delivery_listener()

    # --- control, in-process ---

    def reset(self) -> None:
        """Forget everything: objects, events, keys, the request log, faults, account
        settings, rate-limit windows; the random draws start again from the seed."""
        with self._lock:
            self._reset_state()

    def transfers(self) -> list[StripeTransfer]:
        """Every transfer, oldest first, as the engine holds it (do not change them)."""
        with self._lock:
            return list(self._book.transfers.values())

    def state(self) -> dict[str, Any]:
        """Transfers and reversals (oldest first), events (oldest first, in brief), the
        request log, and the knobs' state."""
        with self._lock:
            return {
                "transfers": [t.as_json() for t in self._book.transfers.values()],
                "reversals": [r.as_json() for r in self._book.reversals.values()],
                "events": self._events.summary(),
                "requests": [r.as_json() for r in self._requests],
                "platform_balance": self._book.platform_balance,
                "scripted_faults": self._faults.scripted(),
                "rate_limit": self.config.rate_limit.describe(),
                "queued_deliveries": len(self._deliveries),
            }

    def add_fault(
        self, fault: str, count: int = 1, path: str | None = None, method: str = "POST"
    ) -> None:
        """Queue a fault for the next `count` matching /v1 requests (path is a substring)."""
        with self._lock:
            self._faults.add(fault, count, path, method)

    def scripted_faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return self._faults.scripted()

    def clear_scripted_faults(self) -> None:
        """Forget every scripted fault not taken yet (an "after" fault waits for
        a success: a caller scripting one per request clears what was left)."""
        with self._lock:
            self._faults = FaultPlan(self.config.faults, self._random)

    def expire_idempotency_keys(self) -> int:
        """Expire every saved key at once, as if a day had passed; returns how many.

        Keys whose first request is still executing stay: Stripe would not forget those."""
        with self._lock:
            return self._keys.expire_all()

    def set_account(
        self,
        account_id: str,
        *,
        exists: bool | None = None,
        reversal_balance: bool | None = None,
        transfers: Capability | None = None,
    ) -> None:
        """Override the naming conventions for one account; None leaves a setting as it is.
        ``transfers``: "active" or "inactive", the account's transfers capability."""
        if not isinstance(account_id, str) or not ACCOUNT_ID.fullmatch(account_id):
            raise InvalidInput(f"invalid account id {account_id!r}: expected acct_...")
        for name, value in (("exists", exists), ("reversal_balance", reversal_balance)):
            if value is not None and not isinstance(value, bool):
                raise InvalidInput(f"{name} must be true or false")
        if transfers is not None and transfers not in ("active", "inactive"):
            raise InvalidInput('transfers must be "active" or "inactive"')
        with self._lock:
            account = self._book.account(account_id)
            if exists is not None:
                account.exists = exists
            if reversal_balance is not None:
                account.reversal_balance = reversal_balance
            if transfers is not None:
                account.transfers = transfers

    def set_platform_balance(self, amount: int | None) -> None:
        """What the platform has available to transfer from now on; None: unlimited."""
        if amount is not None and not _is_count(amount, minimum=0):
            raise InvalidInput("platform balance must be a non-negative integer or null")
        with self._lock:
            self._book.platform_balance = amount

    def top_up(self, amount: int) -> int | None:
        """Add funds to the platform's available balance, as a Stripe top-up does; returns
        the new balance (None: unlimited, which a top-up leaves unlimited)."""
        if not _is_count(amount, minimum=1):
            raise InvalidInput("a top-up amount must be a positive integer")
        with self._lock:
            if self._book.platform_balance is not None:
                self._book.platform_balance += amount
            return self._book.platform_balance

    def reverse_outside(self, transfer_id: str, amount: int | None = None) -> dict[str, Any]:
        """A reversal made outside the ledger (as from the Dashboard): no request, no key,
        no fault, and the connected account's balance is not checked. Its events are
        recorded (and delivered) like any other.

        Raises StripeErrorResponse as the API would (unknown transfer, too much, done)."""
        if amount is not None and not _is_count(amount, minimum=1):
            raise InvalidInput("amount must be a positive integer")
        with self._lock:
            command = CreateReversal(transfer_id=transfer_id, amount=amount, metadata={})
            return self._create_reversal(command, self._clock(), EventSource(), check_balance=False)

    def edit_transfer(
        self,
        transfer_id: str,
        *,
        amount: int | None = None,
        currency: str | None = None,
        destination: str | None = None,
        created: int | None = None,
    ) -> dict[str, Any]:
        """Change a stored transfer in place, as Stripe never would: for tests of a
        Stripe that disagrees with the ledger (`ledger reconcile`), or of a transfer
        made long ago (`created`, Unix seconds). None leaves a field as it is. No event
        tells of it: on Stripe it never happened.

        Raises StripeErrorResponse 404 for an unknown transfer."""
        for name, value in (("amount", amount), ("created", created)):
            if value is not None and not _is_count(value, minimum=1):
                raise InvalidInput(f"{name} must be a positive integer")
        if currency is not None and (
            not isinstance(currency, str) or not CURRENCY.fullmatch(currency)
        ):
            raise InvalidInput("currency must be three letters")
        if destination is not None and (
            not isinstance(destination, str) or not ACCOUNT_ID.fullmatch(destination)
        ):
            raise InvalidInput("destination must be an account id (acct_...)")
        with self._lock:
            transfer = self._book.transfer(transfer_id)
            if amount is not None:
                transfer.amount = amount
            if currency is not None:
                transfer.currency = currency.lower()
            if destination is not None:
                transfer.destination = destination
            if created is not None:
                transfer.created = created
            return transfer.as_json()

    def take_deliveries(self) -> list[Delivery]:
        """The webhook deliveries queued since the last take, oldest first (queued only
        with a webhook secret configured). The HTTP server's sender takes them itself."""
        with self._lock:
            taken = list(self._deliveries)
            self._deliveries.clear()
            return taken

    def set_delivery_listener(self, listener: Callable[[], None] | None) -> None:
        """Called, under the engine's lock, whenever a delivery is queued: it must only
        signal (set an event), never block or call back into the engine."""
        with self._lock:
            self._delivery_listener = listener


def _is_count(value: object, *, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _internal_error(error: Exception) -> ApiResponse:
    # A simulator bug answers a readable 500 rather than a dropped connection.
    return StripeErrorResponse(
        500, "api_error", f"stripe-sim internal error: {type(error).__name__}: {error}"
    ).response()
