"""`ledger daemon`: the projection, both process managers and the retry
scheduling, in one small loop.

The loop waits on "new work OR poll interval OR stop". New work wakes it at
once: on PostgreSQL a LISTEN on the events table's channel (the recorder
NOTIFYs on every append); on SQLite, which cannot notify, a short poll. Each
turn projects new events into `seller_transfers`, asks the seed's due queries
for work, claims it (one statement for all of it; what another daemon holds is
not returned) and queues it for a pool of `concurrency` worker threads. A
transfer is handed to one worker at a time, so its steps stay in order.

Stopping (SIGTERM/SIGINT, or `--once` with nothing left): no new work is
taken; in-flight calls get SHUTDOWN_GRACE_SECONDS to finish and be recorded.
A call still running then is abandoned, which is safe: its attempt was
recorded as started before the call, so whoever runs next looks the object
up at Stripe before calling again.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final
from uuid import UUID

import psycopg
from psycopg import sql

from ledger.backend import Backend
from ledger.errors import first_line
from ledger.logs import Problems, log_context
from ledger.processing.effects import NOTHING_DUE, PAYOUT, REVERSAL, OperatorProblem
from ledger.processing.heartbeat import BEAT_SECONDS, Heartbeat
from ledger.processing.manager import ProcessManager
from ledger.processing.observer import NO_OBSERVER, Observer
from ledger.processing.work import Claim, WorkStore
from ledger.projections.queries import (
    DUE_FURTHER_REVERSALS_SQL,
    DUE_PAYOUT_RETRIES_SQL,
    DUE_PAYOUTS_SQL,
    DUE_REVERSALS_SQL,
    due_ids,
)
from ledger.storage import liveness

log = logging.getLogger("ledger.daemon")

SQLITE_POLL_SECONDS: Final = 0.1
# On PostgreSQL notifications bring new work; the poll only finds retries
# whose time has come.
POSTGRES_POLL_SECONDS: Final = 1.0
SHUTDOWN_GRACE_SECONDS: Final = 5.0
# Stopping waits this long at most for a heartbeat under way to end before
# the daemon writes its last rows and its caller closes the database. A
# stopped beat runs no further statement: this is the one it is in, which
# on SQLite may wait out the file's lock timeout (SQLITE_LOCK_TIMEOUT, 30 s).
HEARTBEAT_END_SECONDS: Final = 45.0
# On PostgreSQL a late beat harms nothing (a connection in use is closed
# only once handed back): the wait only keeps a healthy beat before the
# stop row, and must not add a pool timeout to a stop with the database gone.
HEARTBEAT_END_SECONDS_POSTGRES: Final = 5.0
# While workers are busy, the loop takes at most one turn per this long. An idle
# daemon still answers a NOTIFY at once.
BUSY_TURN_SECONDS: Final = 0.02
# How often a loop waiting for room in its backlog looks whether to stop.
ROOM_WAIT_SLICE_SECONDS: Final = 0.1
# Worker threads per Stripe call in flight (`--concurrency`). A handling is a
# Stripe call plus the daemon's own steps around it (loading the transfer,
# recording the attempt, then the outcome: about a tenth of it at 100 ms a
# call); the gateway lets `concurrency` calls through at once, and the other
# threads do their database steps meanwhile, so those steps cost no place
# among the calls in flight.
WORKERS_PER_CALL: Final = 2
# Items in hand per call in flight: one per worker thread, plus one queued
# behind each call, so a worker that finishes starts the next item at once
# instead of waiting for a turn.
BACKLOG_PER_CALL: Final = WORKERS_PER_CALL + 1
# After a failing turn (database down), wait this long before the next.
ERROR_PAUSE_SECONDS: Final = 1.0
LISTEN_RECONNECT_SECONDS: Final = 1.0
# `--once` waits out a rate limit's back-off this long at most.
ONCE_WAITS_FOR_RATE_LIMIT: Final = timedelta(seconds=30)
# How often the listener looks up from waiting to see whether to stop.
LISTEN_TIMEOUT_SECONDS: Final = 0.2

# The due queries, in the order their work is taken when there is more work
# than free workers: reversals (money owed back) first.
DUE_QUERIES: Final = (
    (DUE_REVERSALS_SQL, REVERSAL),
    (DUE_FURTHER_REVERSALS_SQL, REVERSAL),
    (DUE_PAYOUT_RETRIES_SQL, PAYOUT),
    (DUE_PAYOUTS_SQL, PAYOUT),
)
WorkItem = tuple[UUID, str]


@dataclass(frozen=True)
class DaemonOptions:
    concurrency: int = 4
    once: bool = False
    poll_seconds: float | None = None  # None: the database's default
    # How long a claim lasts before another daemon may take the work over.
    # None: longer than the longest Stripe call can take (see build_daemon).
    claim_seconds: float | None = None
    # How often the loop writes its heartbeat (LEDGER_HEARTBEAT_SECONDS).
    heartbeat_seconds: float = BEAT_SECONDS


class Daemon:
    def __init__(
        self,
        backend: Backend,
        manager: ProcessManager,
        work: WorkStore,
        options: DaemonOptions,
        stop: threading.Event | None = None,
        *,
        heartbeat: Heartbeat | None = None,
        observer: Observer = NO_OBSERVER,
    ) -> None:
        self.backend = backend
        self.heartbeat = heartbeat
        self.observer = observer
        self.manager = manager
        self.work = work
        self.options = options
        self.stop = stop or threading.Event()
        self.wake = threading.Event()
        self.poll_seconds = options.poll_seconds or (
            POSTGRES_POLL_SECONDS if backend.db.dialect == "postgresql" else SQLITE_POLL_SECONDS
        )
        self._queue: queue.Queue[Claim] = queue.Queue()
        self._in_flight: set[UUID] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        # Work that turned out not due (the read table lagged the events) is
        # not handed out again until the projection moves.
        self._not_due: dict[WorkItem, int] = {}
        self._fatal: OperatorProblem | None = None
        self._reported_dead: set[str] = set()
        # One log line when a step starts failing, not a traceback every turn.
        self.problems = Problems(log)
        self._backlog_limit = options.concurrency * BACKLOG_PER_CALL
        # When the loop last began a turn (time.monotonic()): the heartbeat
        # beats only while it keeps turning.
        self._turned_at = time.monotonic()

    # ----- the loop -------------------------------------------------------------

    def run(self) -> None:
        """Until stopped (or, with `once`, until nothing is due). Raises
        OperatorProblem when Stripe refused our credentials."""
        for number in range(self.options.concurrency * WORKERS_PER_CALL):
            threading.Thread(
                target=self._worker, name=f"ledger-worker-{number}", daemon=True
            ).start()
        beating = threading.Event()
        beater: threading.Thread | None = None
        if self.heartbeat is not None:
            self._turned_at = time.monotonic()
            self.heartbeat.follow(lambda: self._turned_at)
            self.heartbeat.start()
            beater = self.heartbeat.keep_beating(beating)
        try:
            self._loop()
        finally:
            beating.set()
            self._wait_for_heartbeat(beater)
        if self._database_reachable():
            with contextlib.suppress(Exception):
                # What the last outcomes recorded, visible on exit.
                self.observer.events_projected(self.backend.catch_up())
            if self.heartbeat is not None:
                with contextlib.suppress(Exception):
                    self.heartbeat.stopped()
        if self._fatal is not None:
            raise self._fatal

    def _loop(self) -> None:
        """Turns until stopped, then hands back queued work and gives calls
        in flight their grace."""
        with self._alive(), self._listening():
            while not self.stop.is_set():
                self._turned_at = time.monotonic()
                self.wake.clear()
                # Sampled before the turn: work finishing during it may have
                # left more due work that this turn's queries did not see.
                was_busy = self._busy()
                # Each step on its own: the process managers decide on the
                # aggregate, not the read table, so a stale table only delays
                # new work. Every append writes its rows and chain links
                # itself; the projection here is the safety net for events
                # written otherwise, and quarantines what it cannot apply.
                with self.problems.step("projection"):
                    self.observer.events_projected(self.backend.ensure_current())
                handed_out = 0
                with self.problems.step("dispatch"):
                    handed_out = self.dispatch()
                if self.problems.failing("dispatch"):
                    self.stop.wait(ERROR_PAUSE_SECONDS)
                    continue
                if self._fatal is not None:
                    break
                if (
                    self.options.once
                    and not (handed_out or was_busy or self._busy())
                    and not self._rate_limit_ends_soon()
                ):
                    break
                if self._busy():
                    # Workers have a backlog queued: a turn per NOTIFY (one per
                    # recorded outcome) would only compete with them for the GIL.
                    self.stop.wait(BUSY_TURN_SECONDS)
                    self._wait_for_room()
                self.wake.wait(self.poll_seconds)
            self.stop.set()
            self._hand_back_queued()
            self._drain()

    def _wait_for_heartbeat(self, beater: threading.Thread | None) -> None:
        """A beat under way ends before the daemon goes on: its caller closes
        the database next, and on SQLite the library closes connections in
        use, which kills the process (signal 11) when another thread is in a
        statement on one (seen in test_failover). On PostgreSQL a connection
        in use is closed only once handed back: the daemon waits a little,
        and not at all with the database gone."""
        if beater is None:
            return
        sqlite = self.backend.db.dialect == "sqlite"
        if not sqlite and not self._database_reachable():
            return
        bound = HEARTBEAT_END_SECONDS if sqlite else HEARTBEAT_END_SECONDS_POSTGRES
        beater.join(bound)
        if beater.is_alive():
            log.warning(
                "stopping while a heartbeat is still under way after %.0f s: the database is slow",
                bound,
            )

    def dispatch(self) -> int:
        """Hand due work to free workers; returns how many items were handed out."""
        now = self.manager.clock()
        position = self.backend.projection.position()
        with self._lock:
            free = self._backlog_limit - len(self._in_flight)
            busy = set(self._in_flight)
            # Marks from older positions are stale: those rows may be due now.
            self._not_due = {item: at for item, at in self._not_due.items() if at == position}
            not_due = set(self._not_due)
        dead = self._dead_holders(now)
        skip = busy | self.work.unavailable(now, dead)
        wanted: list[WorkItem] = []
        for query, kind in DUE_QUERIES:
            # Ask for enough rows that the ones to skip cannot crowd out the rest.
            limit = free + len(skip) + len(not_due)
            for transfer_id in due_ids(self.backend.db, query, now, limit):
                if len(wanted) == free:
                    break
                if transfer_id in skip or (transfer_id, kind) in not_due:
                    continue
                skip.add(transfer_id)
                wanted.append((transfer_id, kind))
        # Claimed in one statement; what another daemon holds is not returned.
        claims = self.work.claim_many(wanted, now, dead)
        with self._lock:
            self._in_flight.update(c.transfer_id for c in claims)
        for claim in claims:
            self._queue.put(claim)
        return len(claims)

    def _wait_for_room(self) -> None:
        """While the backlog still holds a place's worth of work for every
        call in flight, a turn would find no room to fill: wait until it
        does not (or the poll interval passes, or the daemon stops). A turn
        is a handful of queries; fewer of them leave the workers more of the
        process's time."""
        deadline = time.monotonic() + self.poll_seconds
        room = self.options.concurrency
        with self._idle:
            while (
                self._backlog_limit - len(self._in_flight) < room
                and not self.stop.is_set()
                and (left := deadline - time.monotonic()) > 0
            ):
                # In slices: a stop (a signal) does not notify this condition.
                self._idle.wait(min(left, ROOM_WAIT_SLICE_SECONDS))

    def _rate_limit_ends_soon(self) -> bool:
        """`--once` runs until nothing is due, and waits out a 429's short
        back-off (work waiting for the rate limit, due within seconds): a
        rate limit is no reason to leave work for the next run."""
        now = self.manager.clock()
        until = self.work.rate_limited_until()
        return until is not None and until - now <= ONCE_WAITS_FOR_RATE_LIMIT

    def _dead_holders(self, now: datetime) -> set[str]:
        """Daemons holding claims that are known dead (ledger.storage.liveness):
        their work is taken over now, not when their leases run out."""
        holders = self.work.holders(now)
        found = liveness.dead(self.backend.db, holders) if holders else set()
        for owner in found - self._reported_dead:
            log.warning("daemon %s is gone: taking over its work", owner)
        self._reported_dead = found
        return found

    @contextlib.contextmanager
    def _alive(self) -> Iterator[None]:
        """Say "alive" for as long as this runs (PostgreSQL: a session lock
        the server drops when this process dies)."""
        if not self.work.owner.endswith(liveness.LIFE_LOCK_MARK):
            yield
            return
        with liveness.life_lock(self.backend.db, self.work.owner):
            yield

    def _hand_back_queued(self) -> None:
        """Stopping: work claimed but not started goes back at once, for the
        next daemon, rather than waiting in the queue until a worker is free
        (every worker may be in a slow Stripe call) or its claim expires."""
        while True:
            try:
                claim = self._queue.get_nowait()
            except queue.Empty:
                return
            if self._database_reachable():
                try:
                    self.work.release(
                        claim, outcome_unknown=claim.outcome_unknown, now=self.manager.clock()
                    )
                except Exception as error:
                    self.problems.report("hand back", error)
            with self._idle:
                self._in_flight.discard(claim.transfer_id)
                self._idle.notify_all()

    def _database_reachable(self) -> bool:
        """False while the loop's last database steps failed: stopping then
        writes nothing more, since each write would wait out the pool's
        timeout (10 s, one after another: a SIGTERM took half a minute with
        the database down). Claims not handed back run out on their own."""
        return not any(
            self.problems.failing(step) for step in ("dispatch", "projection", "hand back")
        )

    def _busy(self) -> bool:
        with self._lock:
            return bool(self._in_flight)

    def _drain(self) -> None:
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        with self._idle:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "stopping with %d call(s) in flight; they will be looked up"
                        " at Stripe by the next daemon",
                        len(self._in_flight),
                    )
                    return
                self._idle.wait(remaining)

    # ----- workers --------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            self.work_on(self._queue.get())

    def next_claim(self) -> Claim | None:
        """The next claim `dispatch` queued, if any, without waiting (for a
        caller that drives the daemon step by step: the simulation)."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def work_on(self, claim: Claim) -> None:
        """One worker's handling of one claim that `dispatch` handed out."""
        transfer_id, kind = claim.transfer_id, claim.kind
        try:
            if self.stop.is_set():
                # Stopping: queued work is handed back for the next daemon.
                if self._database_reachable():
                    with contextlib.suppress(Exception):
                        self.work.release(
                            claim, outcome_unknown=claim.outcome_unknown, now=self.manager.clock()
                        )
                return
            outcome = self._handle(claim)
            # The read table said due, the transfer said no: it lags the
            # events. Not again until the projection moves. (Work another
            # daemon holds is skipped through its claim instead.)
            position = self.backend.projection.position() if outcome == NOTHING_DUE else None
            with self._lock:
                if position is not None:
                    self._not_due[(transfer_id, kind)] = position
                else:
                    self._not_due.pop((transfer_id, kind), None)
        finally:
            with self._idle:
                self._in_flight.discard(transfer_id)
                self._idle.notify_all()
            self.wake.set()

    def _handle(self, claim: Claim) -> str:
        # Every line logged while handling it names the transfer and the work;
        # the Stripe adapter adds the request id of each call.
        with log_context(transfer_id=str(claim.transfer_id), event=claim.kind):
            return self._handle_in_context(claim)

    def _handle_in_context(self, claim: Claim) -> str:
        transfer_id, kind = claim.transfer_id, claim.kind
        try:
            outcome = self.manager.handle(claim)
        except OperatorProblem as problem:
            self._fatal = problem
            self.stop.set()
            return "stopped"
        except Exception as error:
            # The process manager handles everything that is not a database
            # failure while it records one: one line, the traceback at debug.
            if not self.stop.is_set():
                log.error(  # noqa: TRY400
                    "%s of transfer %s: unexpected error: %s: %s",
                    kind,
                    transfer_id,
                    type(error).__name__,
                    first_line(str(error)),
                )
                log.debug("%s of transfer %s", kind, transfer_id, exc_info=error)
            return "error"
        if outcome != NOTHING_DUE:
            log.info("%s of transfer %s: %s", kind, transfer_id, outcome)
        return outcome

    # ----- waking up on new events ----------------------------------------------

    @contextlib.contextmanager
    def _listening(self) -> Iterator[None]:
        if self.backend.db.dialect != "postgresql":
            yield  # SQLite cannot notify: the short poll finds new work.
            return
        listener = threading.Thread(target=self._listen, name="ledger-listen", daemon=True)
        listener.start()
        try:
            yield
        finally:
            self.stop.set()
            listener.join(timeout=LISTEN_TIMEOUT_SECONDS * 2)

    def _listen(self) -> None:
        config = self.backend.config
        channel = self.backend.transfers.recorder.channel_name  # type: ignore[attr-defined]
        while not self.stop.is_set():
            try:
                with psycopg.connect(**config.libpq_params(), autocommit=True) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self.problems.clear("listening for new events")
                    self.wake.set()  # anything appended before LISTEN is found now
                    while not self.stop.is_set():
                        for _ in conn.notifies(timeout=LISTEN_TIMEOUT_SECONDS, stop_after=1):
                            self.wake.set()
            except psycopg.Error as error:
                self.problems.report("listening for new events", error)
                self.stop.wait(LISTEN_RECONNECT_SECONDS)
