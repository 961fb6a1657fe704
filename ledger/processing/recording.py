"""Group commit of process-manager outcomes.

Every append to the event store takes an EXCLUSIVE lock on the events table
and holds it through its commit's fsync (the eventsourcing recorder's way of
keeping the log gap-free). Sixteen workers each appending alone queue on that
lock. Here one thread saves the outcomes that arrive together in ONE append,
one lock and one fsync for all of them; each worker waits for its own result,
so a worker still knows its outcome is durable before it moves on.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Final

from eventsourcing.persistence import IntegrityError

from ledger.application import Transfers
from ledger.domain import Transfer
from ledger.storage import Statement

# At most this many outcomes in one append: a bound on one transaction's size.
MAX_BATCH: Final = 64


@dataclass
class Outcome:
    """One worker's outcome, waiting to be saved: `done` settles when it is."""

    transfer: Transfer
    command: Callable[[Transfer], None]
    also_execute: Sequence[Statement]
    # The event that asked for the work: the outcome's caused_by.
    cause: str
    done: Future[None] = field(default_factory=Future)
    loaded_version: int = field(init=False)

    def __post_init__(self) -> None:
        self.loaded_version = self.transfer.version


class OutcomeRecorder:
    def __init__(self, transfers: Transfers, *, group_commit: bool = True) -> None:
        """`group_commit=False`: each outcome is saved alone, in the caller's
        thread (no recorder thread at all). The deterministic simulation
        (tests/simulation/grouping.py) forms the batches itself, from its
        schedule, and saves each through `save_batch`, as the thread does."""
        self.transfers = transfers
        self._queue: queue.Queue[Outcome] = queue.Queue()
        self._group_commit = group_commit
        if group_commit:
            thread = threading.Thread(target=self._run, name="ledger-recorder", daemon=True)
            thread.start()

    def record(
        self,
        transfer: Transfer,
        command: Callable[[Transfer], None],
        also_execute: Sequence[Statement],
        cause: str,
    ) -> None:
        """Run `command` on `transfer` (loaded for this handling, unchanged) and
        save its events with `also_execute`, in one append with whatever else is
        waiting; returns once saved, or raises what the command or save raised."""
        outcome = Outcome(transfer, command, also_execute, cause)
        if self._group_commit:
            self._queue.put(outcome)
        else:
            self.save_batch([outcome])
        outcome.done.result()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self.save_batch(batch)
            except BaseException as error:  # this thread must outlive any batch
                for outcome in batch:
                    if not outcome.done.done():
                        outcome.done.set_exception(error)

    def save_batch(self, batch: Sequence[Outcome]) -> None:
        """Save `batch` in one append and settle each outcome's `done`: its
        command refused, or saved (with the others, or alone after a conflict),
        or the append's error."""
        ready: list[Outcome] = []
        for outcome in batch:
            try:
                outcome.command(outcome.transfer)
            except Exception as error:  # the command refused: that worker's answer
                outcome.done.set_exception(error)
            else:
                ready.append(outcome)
        if not ready:
            return
        try:
            self.transfers.save(
                *(o.transfer for o in ready),
                also_execute=[s for o in ready for s in o.also_execute],
            )
        except IntegrityError:
            # Someone else appended to one of these transfers meanwhile: save
            # each on its own, each command re-run against the current state.
            for outcome in ready:
                self._save_alone(outcome)
        except Exception as error:
            for outcome in ready:
                outcome.done.set_exception(error)
        else:
            for outcome in ready:
                outcome.done.set_result(None)

    def _save_alone(self, outcome: Outcome) -> None:
        try:
            if not self._already_recorded(outcome):
                self.transfers.change(
                    outcome.transfer.id, outcome.command, also_execute=outcome.also_execute
                )
        except Exception as error:
            outcome.done.set_exception(error)
        else:
            outcome.done.set_result(None)

    def _already_recorded(self, outcome: Outcome) -> bool:
        """A conflict can also mean the batch DID commit and only its answer was
        lost (the library retries an append after a dropped connection): then
        the transfer already holds an outcome of this cause, recorded after it
        was loaded, and re-running the command would record it twice."""
        return any(
            getattr(event, "caused_by", None) == outcome.cause
            for event in self.transfers.events.get(outcome.transfer.id, gt=outcome.loaded_version)
        )
