"""One simulated schedule: the ledger's real code against the simulator's
Stripe engine, in virtual time, with every decision drawn from `Choices`.

What runs is the product's: the Python API (`TransferLedger`) for the
marketplace's commands, `handle_delivery` for webhooks, `rebuild`, and
daemons built by `ledger.bootstrap.build_daemon` (their dispatch, process
managers, work store, gateway on stripe-python, recorders, projection and
chain), over one SQLite file. The harness supplies only what the world
would: a clock, the network (tests/simulation/transport.py), the order in
which things happen, and deaths.

A schedule has two phases. In the first, anything may happen at any step:
commands, webhooks (late, twice, for reversals made at Stripe by someone
else), a rebuild, daemons dispatching, workers taking a step, faults on
Stripe requests, daemons crashing and new ones starting, time passing. In the
second, faults and crashes stop (Stripe's rate limits do not: a request is
answered 429 now and then) and the daemons run until nothing is left to do
(time jumping to the next retry or claim expiry, while requests a gone client
left at Stripe finish there): every transfer must then settle within a
bounded virtual time. The invariants are checked after
every step (the cheap ones: Stripe's side) and all of them at the end.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Final
from uuid import UUID, uuid5

import eventsourcing.domain

from ledger import failpoints
from ledger.api import TransferLedger
from ledger.audit.verify import verify
from ledger.bootstrap import build_daemon, migrate_database, open_backend
from ledger.errors import LedgerError
from ledger.import_records import ImportRecord
from ledger.matrix import TERMINAL_STATUSES
from ledger.processing.daemon import Daemon, DaemonOptions
from ledger.processing.manager import STRIPE_FINISHES_WITHIN
from ledger.processing.policy import RetryPolicy
from ledger.processing.work import WorkStore
from ledger.projections.rebuild import rebuild
from ledger.reconcile import reconcile
from ledger.stripe.gateway import StripeSettings
from ledger.stripe.listing import StripeReader
from ledger.stripe.simulator import OFF, SimulatorConfig, StripeSimulator
from ledger.stripe.simulator.api import ApiRequest, ApiResponse, StripeErrorResponse
from ledger.stripe.simulator.engine import Call
from ledger.stripe.simulator.faults import BEFORE_FAULTS
from ledger.stripe.simulator.webhooks import Delivery
from ledger.webhooks import handle_delivery
from tests.ramdisk import ram_temp_dir
from tests.simulation.grouping import ScheduledGroupCommit, answer_lost_once
from tests.simulation.scheduler import Actor, Choices, Scheduler
from tests.simulation.transport import FAULTS, InProcessStripe

# Failpoints inside a database transaction (ledger/storage/recorders.py).
IN_TRANSACTION: Final = frozenset({"mid_append", "append_before_commit"})
SUBSCRIBED: Final = frozenset({"transfer.reversed", "transfer.updated"})
EPOCH: Final = datetime(2026, 1, 1, tzinfo=UTC)
API_KEY: Final = "sk_test_simulation0000"
WEBHOOK_SECRET: Final = "whsec_simulation"
# Stripe knows the first two; the third does not exist (a permanent refusal).
SELLERS: Final = ("acct_1Alpha", "acct_1Beta", "acct_1unknownGamma")
NAMESPACE: Final = UUID("5b1f0c1e-3f7e-4c53-9a39-6f2b1f1f0a01")
# A request Stripe has begun is finished there within this long, whether or
# not its client still waits (a killed daemon's, a timed-out client's): long
# enough for the killed daemon's claim to run out and another daemon to take
# its work over meanwhile, as in the real world.
STRIPE_ANSWERS_WITHIN: Final = 300.0
# The daemons count on Stripe finishing a request within STRIPE_FINISHES_WITHIN:
# this world's Stripe must not take longer.
assert timedelta(seconds=STRIPE_ANSWERS_WITHIN) <= STRIPE_FINISHES_WITHIN
# Chaos: at most this many steps; then the settling phase.
MAX_CHAOS_STEPS: Final = 50
MAX_DAEMONS: Final = 2
WORKERS_PER_DAEMON: Final = 2
# Under faults, one append in this many (a group commit's, a client
# command's) commits and loses its answer.
ANSWER_LOST_ONE_IN: Final = 6
# Settling: time may run this far past the last chaos step, and no further.
SETTLE_WITHIN: Final = timedelta(days=2)
MAX_SETTLE_ROUNDS: Final = 400
# Why a person may be asked to look (parked work), as the process manager says it.
PARK_REASONS: Final = (
    "UnresolvedOutcome",
    "NothingToReverse",
    "StripeCallFailed",
    "NotWhatWasAsked",
)


class Violation(Exception):
    """An invariant that did not hold: `kind` names it (the broken-variant
    tests look for it), the message says what was seen."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message

    def __reduce__(self) -> tuple[type[Violation], tuple[str, str]]:
        # Sent between the processes of a sweep (scripts/simulate --workers).
        return (Violation, (self.kind, self.message))


class VirtualClock:
    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def seconds(self) -> float:
        return self._now.timestamp()

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    def until(self, moment: datetime) -> None:
        if moment > self._now:
            self._now = moment


@dataclass
class Order:
    """A marketplace order the simulation pays out and may refund."""

    ref: str
    seller: str
    amount: int
    transfer_id: UUID
    imported: bool = False
    refunds: list[str] = field(default_factory=list)


@dataclass
class Variant:
    """A deliberately broken ledger, for the tests that show the simulation
    finds what each breakage does (tests/simulation/variants.py). `install`
    is a context manager patching the product for one schedule."""

    name: str
    install: Callable[[SimWorld], Any]
    # What the simulation must report when it finds it.
    expected: tuple[str, ...]


_TEMPLATES: dict[str, Path] = {}


def _template() -> Path:
    """A migrated SQLite file, made once per process (copied per schedule)."""
    key = "sqlite"
    if key not in _TEMPLATES:
        root = Path(tempfile.mkdtemp(prefix="ledger-sim-", dir=ram_temp_dir()))
        path = root / "template.db"
        migrate_database(f"sqlite:///{path}")
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _TEMPLATES[key] = path
    return _TEMPLATES[key]


@contextmanager
def _virtual_event_time(clock: VirtualClock) -> Iterator[None]:
    # Events take their timestamps from the library's clock: make it ours, so
    # that histories and the read table's times are virtual and reproducible.
    real = eventsourcing.domain.datetime_now_with_tzinfo
    eventsourcing.domain.datetime_now_with_tzinfo = clock.now
    try:
        yield
    finally:
        eventsourcing.domain.datetime_now_with_tzinfo = real


class SimWorld:
    def __init__(self, seed: int, choices: Choices, variant: Variant | None = None) -> None:
        self.seed = seed
        self.choices = choices
        self.variant = variant
        self.clock = VirtualClock(EPOCH)
        self.sched = Scheduler()
        self.trace: list[str] = []
        self.step_number = 0
        self.chaos = True
        self.fault_percent = 0
        self._last_faulted = False
        self.fault_mix: tuple[str, ...] = FAULTS
        self.engine = StripeSimulator(
            SimulatorConfig(
                api_key=API_KEY, rate_limit=OFF, webhook_secret=WEBHOOK_SECRET, seed=seed
            ),
            clock=self.clock.seconds,
            rng=random.Random(seed),
        )
        # The rate budget out of the way: its waits would spend the schedule's
        # steps on sleeping, not on requests meeting faults (the budget has
        # tests of its own: tests/unit/test_rate_budget.py, tests/system).
        self.settings = StripeSettings(
            api_key=API_KEY,
            http_client=InProcessStripe(self),
            network_retries=2,
            rate_per_endpoint=1e6,
            rate_total=1e6,
        )
        self.directory = Path(tempfile.mkdtemp(prefix="sim-", dir=_template().parent))
        path = self.directory / "ledger.db"
        shutil.copyfile(_template(), path)
        self.path = path
        self._events_seen = 0
        self._events_db: sqlite3.Connection | None = None
        self.url = f"sqlite:///{path}"
        self.backend = open_backend(self.url)
        self.api = TransferLedger(self.backend)
        self.decode = self.backend.transfers.mapper.to_domain_event
        self.daemons: dict[str, Daemon] = {}
        # Each daemon's recorder: its workers' outcomes wait there for a
        # group commit, which the schedule gives (grouping.py).
        self.recorders: dict[str, ScheduledGroupCommit] = {}
        self.daemons_started = 0
        self.orders: list[Order] = []
        self.deliveries: list[Delivery] = []
        self.refund_number = 0
        # Stripe transfers already checked, and the ledger transfer each pays.
        self._seen_stripe: dict[str, str] = {}
        # Requests Stripe has begun and not answered yet (and when each began),
        # answers kept for clients that were paused while Stripe finished their
        # request, and the begun requests no client waits for any more.
        self._at_stripe: dict[int, Call] = {}
        self._begun_at: dict[int, float] = {}
        self._answers: dict[int, ApiResponse] = {}
        self._orphaned: set[int] = set()
        # The fault a begun request takes when Stripe finishes it (500 after
        # commit, a dropped connection, a slow answer): its own, whichever
        # other requests finish first.
        self._after_fault: dict[int, str] = {}
        self._paid: dict[str, str] = {}
        # The ledger's reversals at Stripe: the one each ledger cause made.
        self._reversed_for: dict[str, str] = {}

    def close(self) -> None:
        for actor in list(self.sched.actors):
            self.sched.crash(actor.group)
        self.backend.close()
        if self._events_db is not None:
            self._events_db.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # ----- what the world provides -------------------------------------------------

    def note(self, line: str) -> None:
        actor = self.sched.current()
        who = actor.name if actor is not None else "world"
        self.trace.append(f"{self.step_number:3d} {self.clock.now():%d %H:%M:%S} {who}: {line}")

    def yield_point(self, at: str) -> None:
        self.sched.yield_point(at)

    def sleep(self, seconds: float) -> None:
        # A retry's wait: time passes, and others may act meanwhile.
        self._time_passes(seconds)
        self.yield_point(f"sleeping {seconds:.1f} s")

    def _time_passes(self, seconds: float) -> None:
        """Virtual time moves on. Each live daemon's heartbeat renews its
        claims through it, unless its whole process was suspended meanwhile
        (drawn): then its claims run out and another daemon may take over."""
        before = self.clock.now()
        self._stripe_catches_up(seconds)
        self.clock.advance(seconds)
        for name, daemon in sorted(self.daemons.items()):
            if self.choices.percent(85):
                daemon.work.renew(self.clock.now(), beating_since=before)
            else:
                self.note(f"daemon {name} was suspended for {seconds:g} s")

    def send_to_stripe(self, request: ApiRequest, fault: str | None = None) -> Call:
        """Stripe begins the request, with `fault` (one of the engine's) if
        drawn. The engine's scripted faults are a queue per path; each is
        queued only around its own request's begin and finish, so that no
        other request finishing meanwhile takes it."""
        if fault is not None:
            self.engine.add_fault(fault, path=request.path, method=request.method)
        call = self.engine.begin(request)
        self.engine.clear_scripted_faults()
        self._at_stripe[id(call)] = call
        self._begun_at[id(call)] = self.clock.seconds()
        if fault is not None and fault not in BEFORE_FAULTS:
            self._after_fault[id(call)] = fault
        return call

    def still_at_stripe(self, call: Call) -> bool:
        return id(call) in self._at_stripe

    def finish_at_stripe(self, call: Call) -> ApiResponse:
        """The call's answer: finished now, or earlier while time passed."""
        if id(call) in self._at_stripe:
            self._finish(id(call))
        return self._answers.pop(id(call))

    def leave_at_stripe(self, call: Call) -> None:
        """Its client is gone (killed, or gave up waiting): Stripe finishes
        the request on its own, later, within STRIPE_ANSWERS_WITHIN of its
        start (a step of its own, or as time passes). Meanwhile its key is
        taken: another request with it gets 409."""
        if id(call) in self._at_stripe:
            self._orphaned.add(id(call))
        else:
            self._answers.pop(id(call), None)

    def _finish(self, key: int) -> None:
        call = self._at_stripe.pop(key)
        del self._begun_at[key]
        fault = self._after_fault.pop(key, None)
        if fault is not None:
            self.engine.add_fault(fault, path=call.request.path, method=call.request.method)
        answer = self.engine.finish(call)
        self.engine.clear_scripted_faults()
        if key in self._orphaned:
            self._orphaned.discard(key)
            what = f"{call.request.method} {call.request.path}"
            # Stripe's doing, whichever actor's step it happened in.
            self.trace.append(
                f"{self.step_number:3d} {self.clock.now():%d %H:%M:%S} stripe: finishes {what}"
                f" key={call.request.idempotency_key or '-'} -> {answer.status}"
                + (f" [{answer.fault}]" if answer.fault else "")
                + " (its client is gone)"
            )
        else:
            self._answers[key] = answer

    def _stripe_catches_up(self, seconds: float) -> None:
        """Before `seconds` pass: every request begun at Stripe that must be
        finished by then is, and each other one may be (drawn)."""
        later = self.clock.seconds() + seconds
        for key in list(self._at_stripe):
            if later - self._begun_at[key] >= STRIPE_ANSWERS_WITHIN or self.choices.percent(15):
                self._finish(key)

    def _finish_all_at_stripe(self) -> None:
        for key in list(self._at_stripe):
            self._finish(key)

    def _stripe_finishes_one(self) -> None:
        # In the order they began (an id() order would differ run to run).
        self._finish(self.choices.pick(list(self._at_stripe)))

    def draw_fault(self, request: ApiRequest) -> str | None:
        if self.sched.current() is None:
            return None
        if not self.chaos:
            # Faults have stopped; Stripe's rate limits have not: while the
            # daemons settle, a request now and then is answered 429 (when
            # this schedule's weather has them at all).
            return "429" if "429" in self.fault_mix and self.choices.percent(5) else None
        # Faults come in bursts, as outages do: after a fault, the next
        # request (often the same call's retry) meets one more often.
        chance = 70 if self._last_faulted else self.fault_percent
        self._last_faulted = self.choices.percent(chance)
        if not self._last_faulted:
            return None
        return self.choices.pick(self.fault_mix)

    # ----- running a schedule --------------------------------------------------------

    def _draw_weather(self) -> None:
        """How often requests fail in this schedule, and how: each schedule
        favours some faults and leaves others out, so that rare pairs (a
        dropped connection, then a 429 on the retry) are common in some
        schedules instead of rare in all of them."""
        self.fault_percent = self.choices.pick((5, 20, 40))
        mix = [fault for fault in FAULTS for _ in range(self.choices.pick((0, 1, 4)))]
        self.fault_mix = tuple(mix) or FAULTS
        self.note(f"faults: {self.fault_percent}% of requests, drawn from {sorted(set(mix))}")

    def run(self) -> None:
        failpoints.install_hook(self._failpoint)
        try:
            with _virtual_event_time(self.clock), self._variant():
                random.seed(self.seed)  # the retry policy's jitter
                self._draw_weather()
                self._start_daemon()
                steps = 1 + self.choices.below(MAX_CHAOS_STEPS)
                for _ in range(steps):
                    self.step_number += 1
                    self._chaos_step()
                    self._after_step()
                self.note("--- no new work or crash; the workers finish (faults go on)")
                self._finish_workers()
                self.note("--- each daemon takes one more turn (faults go on)")
                self._one_turn_each()
                self.chaos = False
                self.note("--- faults stop; the daemons settle")
                self._settle()
                self.check_all()
        finally:
            failpoints.install_hook(None)

    @contextmanager
    def _variant(self) -> Iterator[None]:
        if self.variant is None:
            yield
            return
        with self.variant.install(self):
            yield

    def _failpoint(self, name: str) -> None:
        # Not inside an append's transaction: a paused thread there would hold
        # SQLite's write lock. (A death mid-append is the SIGKILL test's, in
        # tests/integration/test_inline_write_path.py: the database rolls back.)
        if name not in IN_TRANSACTION:
            self.yield_point(name)

    def _chaos_step(self) -> None:
        options: list[tuple[int, str, Callable[[], None]]] = []
        paused = [a for a in self.sched.runnable() if not self._blocked(a)]
        if paused:
            options.append((30, "step", lambda: self._step_actor(paused)))
        for name, daemon in self.daemons.items():
            options.append((6, f"dispatch {name}", partial(self._dispatch, name, daemon)))
            options.append((6, f"work {name}", partial(self._start_worker, name, daemon)))
            if self.recorders[name].waiting:
                options.append((3, f"commit {name}", partial(self._group_commit, name)))
        options += [
            (8, "create", self._create),
            (5, "refund", self._refund),
            (4, "clock", self._advance_clock),
            (2, "deliver", self._deliver),
            (2, "import", self._import),
            (1, "admin", self._admin_reversal),
            (1, "outside", self._outside_reversal),
            (1, "rebuild", self._rebuild),
        ]
        if self._at_stripe:
            options.append((1, "stripe", self._stripe_finishes_one))
        if self.daemons:
            options.append((2, "crash", self._crash_daemon))
        if len(self.daemons) < MAX_DAEMONS:
            options.append((2, "start", self._start_daemon))
        total = sum(weight for weight, _, _ in options)
        draw = self.choices.below(total)
        for weight, _, action in options:
            if draw < weight:
                action()
                return
            draw -= weight

    # ----- daemons -------------------------------------------------------------------

    def _start_daemon(self) -> None:
        self.daemons_started += 1
        name = f"d{self.daemons_started}"
        recorder = ScheduledGroupCommit(self.backend.transfers, self.sched)
        self.recorders[name] = recorder
        self.daemons[name] = build_daemon(
            self.backend,
            self.settings,
            RetryPolicy(),
            DaemonOptions(concurrency=WORKERS_PER_DAEMON),
            clock=self.clock.now,
            identity=f"sim-{name}",
            sleep=self.sleep,
            rng=random.Random(self.seed * 31 + self.daemons_started),
            one_thread_at_a_time=True,
            outcome_recorder=recorder,
        )
        self.note(f"daemon {name} starts")

    def _dispatch(self, name: str, daemon: Daemon) -> None:
        handed = daemon.dispatch()
        if handed:
            self.note(f"{name} claims {handed} item(s)")

    def _start_worker(self, name: str, daemon: Daemon) -> None:
        busy = sum(1 for a in self.sched.actors if a.group == name)
        if busy >= WORKERS_PER_DAEMON:
            return
        claim = daemon.next_claim()
        if claim is None:
            return
        label = f"{name}.{claim.kind}.{self._order_of(claim.transfer_id)}"
        actor = self.sched.spawn(label, name, lambda: daemon.work_on(claim))
        self._step(actor)

    def _blocked(self, actor: Actor) -> bool:
        recorder = self.recorders.get(actor.group)
        return recorder is not None and recorder.blocked(actor)

    def _group_commit(self, name: str) -> None:
        """Daemon `name`'s recorder takes its turn: the first few outcomes
        waiting (how many is drawn) saved in one append."""
        recorder = self.recorders[name]
        count = 1 + self.choices.below(len(recorder.waiting))
        # Under faults, now and then the append commits and its answer is
        # lost (the library then sends it again: see ScheduledGroupCommit).
        answer_lost = self.chaos and self.choices.below(ANSWER_LOST_ONE_IN) == 0
        saved = recorder.commit(count, answer_lost=answer_lost)
        self.note(
            f"{name} commits {len(saved)} outcome(s) in one append"
            + (" (committed, its answer lost: sent again)" if answer_lost else "")
            + ": "
            + ", ".join(a.name for a in saved)
        )

    def _run_until_waiting(self, actor: Actor, *, limit: int = 10_000) -> None:
        """Run `actor` to its end, or until it waits for a group commit."""
        for _ in range(limit):
            if actor.done or self._blocked(actor):
                return
            self.sched.step(actor)
        raise RuntimeError(f"{actor.name} did not finish in {limit} steps")

    def _step_actor(self, paused: list[Actor]) -> None:
        self._step(self.choices.pick(paused))

    def _step(self, actor: Actor) -> None:
        self.sched.step(actor)
        if actor.error is not None:
            raise Violation("daemon error", f"{actor.name} raised:\n{actor.error}")

    def _crash_daemon(self) -> None:
        name = self.choices.pick(sorted(self.daemons))
        dying = self.sched.crash(name)
        del self.daemons[name]
        # Its workers died waiting, if they were: their outcomes with them.
        recorder = self.recorders.pop(name)
        assert not recorder.waiting
        where = ", ".join(f"{a.name} at {a.at or 'its start'}" for a in dying) or "idle"
        self.note(f"daemon {name} CRASHES ({where})")
        for actor in dying:
            if actor.error is not None:
                raise Violation("daemon error", f"{actor.name} raised:\n{actor.error}")

    def _advance_clock(self) -> None:
        seconds = self.choices.pick((1, 5, 30, 120, 900, 4 * 3600, 25 * 3600))
        self.note(f"{seconds} s pass")
        self._time_passes(seconds)

    # ----- the marketplace's side -------------------------------------------------

    def _order_of(self, transfer_id: UUID) -> str:
        for order in self.orders:
            if order.transfer_id == transfer_id:
                return order.ref
        return str(transfer_id)[:8]

    @contextmanager
    def _maybe_answer_lost(self) -> Iterator[list[bool]]:
        """Under faults, now and then a client's append commits and its answer
        is lost (the library then sends it again: see answer_lost_once).
        Yields a list that holds True once that has happened."""
        if self.chaos and self.choices.below(ANSWER_LOST_ONE_IN) == 0:
            with answer_lost_once(self.backend.transfers) as lost:
                yield lost
        else:
            yield []

    def _command(self, what: str, run: Callable[[], object]) -> None:
        lost: list[bool] = []
        try:
            with self._maybe_answer_lost() as lost:
                result = run()
        except LedgerError as refused:
            if lost:
                what += " (its append committed, its answer lost: sent again)"
            self.note(f"{what}: refused: {type(refused).__name__}: {refused}")
            return
        if lost:
            what += " (its append committed, its answer lost: sent again)"
        self.note(f"{what}: {result}")

    def _create(self) -> None:
        if self.orders and self.choices.percent(20):
            order = self.choices.pick(self.orders)  # a retried create
            if order.imported:
                return
        else:
            number = len(self.orders) + 1
            ref = f"order-{number}"
            order = Order(
                ref=ref,
                seller=self.choices.pick(SELLERS),
                amount=100 * (1 + self.choices.below(50)),
                transfer_id=uuid5(NAMESPACE, ref),
            )
            with self._maybe_answer_lost() as lost:
                created = self.api.create_transfer(
                    seller=order.seller, amount=order.amount, currency="usd", order_ref=order.ref
                )
            order.transfer_id = created.id
            self.orders.append(order)
            self.note(
                f"create {order.ref} {order.amount} to {order.seller}"
                + (" (its append committed, its answer lost: sent again)" if lost else "")
                + f": {created.id}"
            )
            return
        self._command(
            f"create {order.ref} again",
            lambda: (
                self.api.create_transfer(
                    seller=order.seller, amount=order.amount, currency="usd", order_ref=order.ref
                ).status
            ),
        )

    def _refund(self) -> None:
        if not self.orders:
            return
        order = self.choices.pick(self.orders)
        if order.refunds and self.choices.percent(30):
            ref = self.choices.pick(order.refunds)  # a retried refund handler
        else:
            self.refund_number += 1
            ref = f"re_{self.refund_number}"
            order.refunds.append(ref)
        amount = None if self.choices.percent(40) else 100 * (1 + self.choices.below(10))
        self._command(
            f"refund {order.ref} {amount or 'all'} as {ref}",
            lambda: (
                self.api.request_reversal(
                    order.transfer_id,
                    request_ref=ref,
                    amount=amount,
                    reason=f"refund {ref}",
                    actor="refund-handler",
                ).transfer.status
            ),
        )

    def _admin_reversal(self) -> None:
        if not self.orders:
            return
        order = self.choices.pick(self.orders)
        self._command(
            f"admin reverses {order.ref}",
            lambda: (
                self.api.set_status(
                    order.transfer_id, "reversal_pending", actor="ops", reason="chargeback"
                ).status
            ),
        )

    def _import(self) -> None:
        """An order the old system paid (its Stripe transfer made outside the
        ledger, without the ledger's metadata), or one it never paid."""
        number = len(self.orders) + 1
        ref = f"legacy-{number}"
        order = Order(
            ref=ref,
            seller=SELLERS[number % 2],
            amount=100 * (1 + self.choices.below(50)),
            transfer_id=uuid5(NAMESPACE, ref),
            imported=True,
        )
        paid = self.choices.percent(50)
        stripe_id: str | None = None
        if paid:
            # The world's own request (the old system paying an order): no
            # fault is queued between steps (send_to_stripe, _finish).
            answer = self.engine.handle(
                ApiRequest(
                    method="POST",
                    path="/v1/transfers",
                    body=f"amount={order.amount}&currency=usd&destination={order.seller}".encode(),
                    authorization=f"Bearer {API_KEY}",
                    idempotency_key=f"old-system-{ref}",
                )
            )
            stripe_id = answer.body["id"]
        record = ImportRecord(
            line=1,
            transfer_id=order.transfer_id,
            status="completed" if paid else "pending",
            seller_account_id=order.seller,
            order_ref=ref,
            amount=order.amount,
            currency="usd",
            retry_count=0,
            next_retry_at=None,
            stripe_transfer_id=stripe_id,
            amount_reversed=0,
            last_error=None,
            reversal_request_ref=None,
            reversal_amount=None,
            source_updated_at=None,
        )
        self.orders.append(order)
        self._command(
            f"import {ref} ({'paid as ' + str(stripe_id) if paid else 'not paid'})",
            lambda: self.api.import_transfers([record], actor="system:import"),
        )

    def _outside_reversal(self) -> None:
        transfers = [t for t in self.engine.transfers() if t.amount_reversed < t.amount]
        if not transfers:
            return
        target = self.choices.pick(transfers)
        amount = min(target.amount - target.amount_reversed, 100 * (1 + self.choices.below(5)))
        try:
            self.engine.reverse_outside(target.id, amount)
        except StripeErrorResponse as refused:
            self.note(f"someone reverses {amount} of {target.id} at Stripe: refused ({refused})")
            return
        self.note(f"someone reverses {amount} of {target.id} at Stripe (the Dashboard)")

    def _subscribed(self) -> list[Delivery]:
        """What Stripe would send the ledger's endpoint: the event types it is
        registered for (README: transfer.reversed, transfer.updated)."""
        return [d for d in self.engine.take_deliveries() if d.event_type in SUBSCRIBED]

    def _deliver(self) -> None:
        self.deliveries.extend(self._subscribed())
        if not self.deliveries:
            return
        delivery = self.choices.pick(self.deliveries)
        if not self.choices.percent(30):  # else it comes again later
            self.deliveries.remove(delivery)
        self._handle_delivery(delivery)

    def _handle_delivery(self, delivery: Delivery) -> None:
        # Signed now (wall time): the handler checks the signature's age
        # against its own clock; the event inside carries virtual time.
        import time  # noqa: PLC0415

        answer = handle_delivery(
            self.backend,
            delivery.payload,
            delivery.signature(int(time.time())),
            WEBHOOK_SECRET,
        )
        self.note(
            f"webhook {delivery.event_type} {delivery.event_id}: {answer.status} {answer.outcome}"
        )
        if answer.status == 500:
            # Stripe delivers it again later (for up to three days).
            self.deliveries.append(delivery)
        elif answer.status != 200:
            raise Violation("webhook refused", f"{delivery.event_type}: {answer.body!r}")

    def _rebuild(self) -> None:
        result = rebuild(self.backend.db, self.decode, progress=io.StringIO())
        self.note(f"rebuild: {result.rows} rows from {result.events} events")

    # ----- settling ------------------------------------------------------------------

    def _finish_workers(self) -> None:
        """Every worker runs to its end. A daemon's recorder takes its turn
        once each of its workers is done or waiting for it, so that outcomes
        arriving together may be saved together, as its thread saves them."""
        while self.sched.actors:
            for actor in list(self.sched.actors):
                self._run_until_waiting(actor)
                self._after_step()
                if actor.error is not None:
                    raise Violation("daemon error", f"{actor.name} raised:\n{actor.error}")
            for name, recorder in sorted(self.recorders.items()):
                if recorder.waiting:
                    self._group_commit(name)

    def _one_turn_each(self) -> None:
        """Every daemon hands out what is due and its workers run it through,
        while Stripe still fails at random: most schedules' calls would
        otherwise come only after the faults stopped."""
        for name, daemon in sorted(self.daemons.items()):
            daemon.dispatch()
            self._work_through_claims(name, daemon)

    def _work_through_claims(self, name: str, daemon: Daemon) -> bool:
        """Daemon `name` works through what it has claimed, as many at once
        as it has workers, their outcomes saved as they arrive together.
        Whether there was anything."""
        worked = False
        while True:
            started = 0
            while started < WORKERS_PER_DAEMON and (claim := daemon.next_claim()) is not None:
                self.sched.spawn(
                    f"{name}.{claim.kind}.{self._order_of(claim.transfer_id)}",
                    name,
                    partial(daemon.work_on, claim),
                )
                started += 1
            if not started:
                return worked
            worked = True
            self._finish_workers()

    def _settle(self) -> None:
        if not self.daemons:
            self._start_daemon()
        deadline = self.clock.now() + SETTLE_WITHIN
        for _ in range(MAX_SETTLE_ROUNDS):
            self.step_number += 1
            waiting = [*self.deliveries, *self._subscribed()]
            self.deliveries.clear()
            for delivery in waiting:
                self._handle_delivery(delivery)
            worked = False
            for name, daemon in sorted(self.daemons.items()):
                if daemon.dispatch():
                    worked = True
                if self._work_through_claims(name, daemon):
                    worked = True
            self._after_step()
            if worked:
                continue
            upcoming = self._next_due()
            if upcoming is None:
                return
            if upcoming > deadline:
                break
            # Requests still at Stripe (a killed daemon's, a timed-out one's)
            # may finish before then, and must if their time is up.
            self._stripe_catches_up((upcoming - self.clock.now()).total_seconds())
            self.clock.until(upcoming)
        raise Violation(
            "stranded work",
            f"work still due {SETTLE_WITHIN} after faults stopped: {self._unsettled()}",
        )

    def _next_due(self) -> datetime | None:
        """The next moment some work comes due: a retry, a backoff's end, a
        claim's expiry. None when nothing waits."""
        db = self.backend.db
        times: list[datetime] = []
        with db.transaction(write=False) as cursor:
            cursor.execute(
                "SELECT claim_expires_at, not_before FROM stripe_work WHERE parked_at IS NULL"
            )
            for row in cursor.fetchall():
                for column in ("claim_expires_at", "not_before"):
                    moment = db.from_db_time(row[column])
                    if moment is not None and moment > self.clock.now():
                        times.append(moment)
            cursor.execute(
                "SELECT next_retry_at FROM seller_transfers WHERE next_retry_at IS NOT NULL"
            )
            for row in cursor.fetchall():
                moment = db.from_db_time(row["next_retry_at"])
                if moment is not None and moment > self.clock.now():
                    times.append(moment)
        # A request still at Stripe must be finished by then: the daemons
        # settle what it did too.
        for begun in self._begun_at.values():
            times.append(datetime.fromtimestamp(begun + STRIPE_ANSWERS_WITHIN, UTC))
        if not times:
            return None
        return min(times) + timedelta(seconds=1)

    def _unsettled(self) -> list[str]:
        parked = self._parked()
        return [
            f"{self._order_of(v.id)} {v.status}"
            for v in self.api.list_transfers()
            if not self._settled(v.status, v.next_retry_at, v.id, parked)
        ]

    def _parked(self) -> dict[UUID, str]:
        work = WorkStore(self.backend.db, "simulation", 0)
        return {p.transfer_id: p.last_failure or "" for p in work.parked()}

    def _settled(
        self,
        status: str,
        next_retry_at: datetime | None,
        transfer_id: UUID,
        parked: Collection[UUID] = (),
    ) -> bool:
        if transfer_id in parked:
            return True
        if status == "completed":
            return True
        if status == "reversed" and next_retry_at is not None:
            return False  # a further refund waits for its reversal
        return status in TERMINAL_STATUSES

    # ----- invariants ----------------------------------------------------------------

    def _after_step(self) -> None:
        self._note_events()
        self.check_stripe()

    def _note_events(self) -> None:
        """The events appended since the last step, in the trace."""
        if self._events_db is None:
            self._events_db = sqlite3.connect(self.path, check_same_thread=False)
        rows = self._events_db.execute(
            "SELECT rowid, originator_id, originator_version, topic FROM stored_events"
            " WHERE rowid > ? ORDER BY rowid",
            (self._events_seen,),
        ).fetchall()
        for rowid, originator, version, topic in rows:
            self._events_seen = rowid
            name = topic.rsplit(".", 1)[-1]
            self.trace.append(
                f"{self.step_number:3d} {self.clock.now():%d %H:%M:%S}   event:"
                f" {self._order_of(UUID(originator))} v{version} {name}"
            )

    def check_stripe(self) -> None:
        """After every step: at most one Stripe transfer pays a ledger transfer,
        at most one Stripe reversal carries out a ledger reversal request (its
        cause), and no transfer is reversed by more than it paid."""
        for transfer in self.engine.transfers():
            if transfer.amount_reversed > transfer.amount:
                raise Violation(
                    "reversed more than paid",
                    f"{transfer.id}: {transfer.amount_reversed} of {transfer.amount}",
                )
            for reversal in transfer.reversals:
                cause = reversal.metadata.get("ledger_cause")
                if cause is None:  # someone's in the Dashboard
                    continue
                earlier_reversal = self._reversed_for.setdefault(cause, reversal.id)
                if earlier_reversal != reversal.id:
                    raise Violation(
                        "money moved twice",
                        f"{transfer.id}: one reversal request ({cause}) reversed as"
                        f" {earlier_reversal} and {reversal.id}",
                    )
            if transfer.id in self._seen_stripe:
                continue
            ledger_id = transfer.metadata.get("ledger_transfer_id")
            self._seen_stripe[transfer.id] = ledger_id or ""
            if ledger_id is None:
                continue
            earlier = self._paid.get(ledger_id)
            if earlier is not None:
                raise Violation(
                    "money moved twice",
                    f"transfer {self._order_of(UUID(ledger_id))} paid as {earlier} and"
                    f" {transfer.id}",
                )
            self._paid[ledger_id] = transfer.id

    def check_all(self) -> None:
        self._finish_all_at_stripe()
        self._after_step()
        parked = self._parked()
        for transfer_id, failure in parked.items():
            if not failure.startswith(PARK_REASONS):
                raise Violation(
                    "parked without cause",
                    f"{self._order_of(transfer_id)}: {failure or '(no failure recorded)'}",
                )
        at_stripe = {t.id: t for t in self.engine.transfers()}
        for view in self.api.list_transfers():
            name = self._order_of(view.id)
            if view.id in parked:
                continue
            if not self._settled(view.status, view.next_retry_at, view.id, parked):
                raise Violation("stranded work", f"{name} is {view.status} after settling")
            paid_as = self._paid.get(str(view.id))
            if view.stripe_transfer_id is None:
                if paid_as is not None:
                    raise Violation(
                        "money moved the ledger does not know",
                        f"{name} is {view.status} with no Stripe transfer; Stripe paid {paid_as}",
                    )
                continue
            stripe = at_stripe.get(view.stripe_transfer_id)
            if stripe is None:
                raise Violation(
                    "unknown Stripe transfer", f"{name} records {view.stripe_transfer_id}"
                )
            if paid_as is not None and paid_as != view.stripe_transfer_id:
                raise Violation(
                    "money moved twice",
                    f"{name} records {view.stripe_transfer_id}, Stripe paid {paid_as}",
                )
            if stripe.amount_reversed != view.amount_reversed:
                raise Violation(
                    "reversals disagree",
                    f"{name}: ledger {view.amount_reversed} reversed, Stripe"
                    f" {stripe.amount_reversed}",
                )
        self._check_attempts()
        report = verify(self.backend.db, self.decode)
        if not report.ok:
            raise Violation("audit verify", json.dumps(report.findings[:3], default=str))
        before = [v.as_json() for v in self.api.list_transfers()]
        rebuild(self.backend.db, self.decode, progress=io.StringIO())
        after = [v.as_json() for v in self.api.list_transfers()]
        if before != after:
            raise Violation("rebuild differs", _first_difference(before, after))
        differences = reconcile(self.backend, StripeReader(self.settings)).differences
        if differences:
            raise Violation("reconcile difference", "; ".join(str(d) for d in differences[:3]))

    def _check_attempts(self) -> None:
        """No attempt is spent on a condition outside the transfer: a 429 is
        back-pressure (unless an earlier try may have reached Stripe: then
        the outcome is unknown, and that attempt counts)."""
        for view in self.api.list_transfers():
            for event in self.backend.transfers.events.get(view.id):
                error = str(getattr(event, "error", None) or "")
                if error.startswith("outcome unknown") or not error:
                    continue
                if error.startswith("429") or "rate_limit" in error:
                    raise Violation(
                        "attempt spent on back-pressure",
                        f"{self._order_of(view.id)} v{event.originator_version}"
                        f" {type(event).__name__}: {error}",
                    )


def _first_difference(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    for old, new in zip(before, after, strict=False):
        if old != new:
            changed = {k: (old.get(k), new.get(k)) for k in old if old.get(k) != new.get(k)}
            return f"{old.get('order_ref')}: {changed}"
    return f"{len(before)} rows before, {len(after)} after"
