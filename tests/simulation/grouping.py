"""The daemon's group commit, with its batches formed by the schedule.

A real daemon's workers hand their outcomes to one recorder thread, which
saves whatever has arrived together in one append (ledger/processing/
recording.py) while each worker waits for its own. Here a worker's outcome
waits in `waiting`, the worker paused at a yield point, until the world
gives the recorder its turn: then the recorder saves the first few waiting
outcomes (how many is drawn) through `OutcomeRecorder.save_batch`, the very
step the thread runs, and their workers may go on. Meanwhile anything may
happen: time passes, claims run out, another daemon takes the work over and
appends to the same transfer, the daemon dies. A daemon that dies takes its
waiting outcomes with it, unsaved, as the recorder thread's queue dies with
its process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Final

from ledger.application import Transfers
from ledger.domain import Transfer
from ledger.processing.recording import Outcome, OutcomeRecorder
from ledger.storage import Statement
from tests.simulation.scheduler import Actor, Scheduler

# Where a worker waits for its outcome to be saved.
WAITING_FOR_GROUP_COMMIT: Final = "waiting for the group commit"


class ScheduledGroupCommit(OutcomeRecorder):
    def __init__(self, transfers: Transfers, sched: Scheduler) -> None:
        super().__init__(transfers, group_commit=False)
        self._sched = sched
        # Each waiting worker's outcome, in the order they arrived.
        self.waiting: dict[Actor, Outcome] = {}

    def record(
        self,
        transfer: Transfer,
        command: Callable[[Transfer], None],
        also_execute: Sequence[Statement],
        cause: str,
    ) -> None:
        actor = self._sched.current()
        if actor is None:  # not a worker: nothing to wait with
            super().record(transfer, command, also_execute, cause)
            return
        outcome = Outcome(transfer, command, also_execute, cause)
        self.waiting[actor] = outcome
        try:
            while not outcome.done.done():
                self._sched.yield_point(WAITING_FOR_GROUP_COMMIT)
        finally:
            # Saved, or its daemon died first (Crash): either way not waiting.
            self.waiting.pop(actor, None)
        outcome.done.result()

    def blocked(self, actor: Actor) -> bool:
        """Waiting for a group commit that has not come yet: stepping it
        would only bring it back here."""
        outcome = self.waiting.get(actor)
        return outcome is not None and not outcome.done.done()

    def commit(self, count: int, *, answer_lost: bool = False) -> list[Actor]:
        """The recorder's turn: the first `count` waiting outcomes saved in
        one append. Returns their workers. `answer_lost`: the append commits,
        the connection drops before its answer comes back, and the library
        sends the same append again (its retry after a lost connection),
        which meets the events' primary key: the recorder sees a conflict
        for a batch that is in the log."""
        batch = list(self.waiting.items())[:count]
        for actor, _ in batch:
            del self.waiting[actor]
        outcomes = [outcome for _, outcome in batch]
        try:
            with answer_lost_once(self.transfers) if answer_lost else nullcontext():
                self.save_batch(outcomes)
        except BaseException as error:
            # As the recorder thread does: every worker hears of it.
            for outcome in outcomes:
                if not outcome.done.done():
                    outcome.done.set_exception(error)
        return [actor for actor, _ in batch]


@contextmanager
def answer_lost_once(transfers: Transfers) -> Iterator[list[bool]]:
    """The next append commits, and the connection drops before its answer
    comes back: the library sends the same append again (its retry after a
    lost connection), which meets the events' primary key, and that error
    is what the caller sees, for an append that is in the log. Yields a list
    that holds True once that has happened. Only the world's own thread runs
    meanwhile (no actor reaches a yield point)."""
    recorder: Any = transfers.recorder
    insert_events = recorder.insert_events
    lost: list[bool] = []

    def committed_then_sent_again(stored_events: Any, **kwargs: Any) -> Any:
        if lost:
            return insert_events(stored_events, **kwargs)
        insert_events(stored_events, **kwargs)
        lost.append(True)
        return insert_events(stored_events, **kwargs)

    recorder.insert_events = committed_then_sent_again
    try:
        yield lost
    finally:
        del recorder.insert_events
