"""The Transfers application: commands on Transfer aggregates, saved as events.

Every status change in the product runs through `Transfers.change`, the one
place that loads a transfer, runs a command on it (which consults the
transition matrix) and saves what it decided, retrying when another process
saved the same transfer first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, Final, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import IntegrityError, Recording
from eventsourcing.utils import Environment, EnvType

from ledger.domain import Transfer
from ledger.errors import LedgerError, TransferNotFound
from ledger.storage import PreparedAppend, PreparingRecorder, Statement, is_version_conflict

T = TypeVar("T")

# How often a command is re-run when another writer saved the transfer first.
SAVE_CONFLICT_RETRIES: Final = 5


class ConcurrentUpdate(LedgerError):
    """Other writers kept saving the same transfer; the command gave up."""


class Transfers(Application[UUID]):
    """Seller transfers as event-sourced aggregates."""

    # Names the PostgreSQL events table: transfers_events.
    name = "Transfers"

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        """The library's settings as the ledger gives them, and nothing from the
        process environment: the library would otherwise read its variables
        (POSTGRES_ENABLE_DB_FUNCTIONS, PERSISTENCE_MODULE, CIPHER_TOPIC, ...)
        from os.environ, and one of them set for another program could change
        how the ledger appends (DatabaseConfig.eventsourcing_env pins them all)."""
        return Environment(name, {**type(self).env, **(env or {})})

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """Save as the library's Application.save does, handing the
        aggregates down to the recorder with their events: the append hooks
        write what depends on their state (the read table's rows) in the
        append's transaction.

        Its steps, with the events collected here: the library's
        ProcessingEvent.collect_events asks of every object whether it is a
        domain event and whether it can collect events, both runtime-checked
        Protocols, about 12 microseconds a save on this machine (the same
        cost `_replayed` avoids on loads), and a save is on every command.
        Only transfers are saved here."""
        for obj in objs:
            if not isinstance(obj, Transfer):
                # Before any events are collected: collecting takes them.
                raise TypeError(f"Transfers saves transfers, not {type(obj).__name__}")
        processing: ProcessingEvent[UUID] = ProcessingEvent()
        for transfer in objs:
            processing.events.extend(transfer.collect_events())
            processing.aggregates[transfer.id] = transfer
        processing.saved_kwargs.update(kwargs, aggregates=list(objs))
        recordings = self._record(processing)
        self._take_snapshots(processing)
        self._notify(recordings)
        self.notify(processing.events)  # the library's save calls it: subclasses may
        return recordings

    def get(self, transfer_id: UUID) -> Transfer:
        try:
            transfer: object = self.repository.get(transfer_id, projector_func=_replayed)
        except AggregateNotFoundError:
            raise TransferNotFound(transfer_id) from None
        assert isinstance(transfer, Transfer)
        return transfer

    def change(
        self,
        transfer_id: UUID,
        command: Callable[[Transfer], T],
        *,
        also_execute: Sequence[Statement] = (),
    ) -> T:
        """Run `command` on the current transfer and save the events it triggers.

        A command that raises (refused transition, bad value) saves nothing. When
        another process appended to the same transfer in the meantime, the save
        conflicts and the command is re-run against the newer state, where the
        matrix decides again. `also_execute`: the ledger's own statements,
        committed in the same transaction as the events.
        """
        for _ in range(SAVE_CONFLICT_RETRIES):
            transfer = self.get(transfer_id)
            result = command(transfer)
            pending = list(transfer.pending_events)
            try:
                self.save(transfer, also_execute=also_execute)
            except IntegrityError as error:
                # Only another writer's events at these versions are a conflict
                # to re-run the command for; any other constraint (one of
                # `also_execute`'s) is an error of its own.
                if not is_version_conflict(error):
                    raise
                if self.stored_already(transfer_id, pending):
                    # This very append committed, and only its answer was lost
                    # (the library tries an append again after a dropped
                    # connection): it is done, and must not be done twice.
                    return result
                continue
            return result
        raise ConcurrentUpdate(
            f"transfer {transfer_id} kept changing under this command; try again"
        )

    def stored_already(self, transfer_id: UUID, pending: Sequence[Any]) -> bool:
        """True when the log holds exactly these events (timestamps included):
        an append that committed although its caller saw it fail."""
        if not pending:
            return False
        first = pending[0].originator_version
        stored = list(self.events.get(transfer_id, gt=first - 1, lte=first + len(pending) - 1))
        return stored == pending

    def prepare_new(self, transfers: Sequence[Transfer]) -> PreparedAppend:
        """Brand-new transfers (an import's batch) saved in two steps: this
        one builds their append (their creation events stored as the mapper
        stores them, and the document), and can run while the database writes
        the batch before; `append_prepared` sends it. Straight to the recorder
        rather than through `save()`: for fresh aggregates' creation events
        save()'s per-object protocol checks cost more than the insert itself.
        The aggregates go down with their events, for the append hooks."""
        stored = [self.mapper.to_stored_event(e) for t in transfers for e in t.collect_events()]
        return self._preparing_recorder().prepare(stored, transfers)

    def append_prepared(self, prepared: PreparedAppend) -> int:
        """Send what `prepare_new` built, as one append; the number of
        transfers it saved."""
        self._preparing_recorder().append_prepared(prepared)
        return len(prepared.aggregates)

    def _preparing_recorder(self) -> PreparingRecorder:
        recorder = self.recorder
        if not isinstance(recorder, PreparingRecorder):
            raise TypeError(f"{type(recorder).__name__} cannot prepare an append")
        return recorder


def _replayed(transfer: Transfer | None, events: Iterable[Any]) -> Transfer | None:
    """A transfer from its events: the library's project_aggregate, without
    its `assert isinstance(event, CanMutateProtocol)` on every event. That is
    a runtime-checked Protocol, about 14 microseconds an event on this
    machine, paid on every command's load; the events here are the mapper's
    Transfer events, each with the library's own mutate()."""
    for event in events:
        transfer = event.mutate(transfer)
    return transfer


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last one shorter): itertools.batched,
    which Python 3.11 lacks."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
