"""`ledger rebuild`: recompute seller_transfers from the events and switch over.

1. Project every event into a new table, `seller_transfers_rebuild` (made
   with migration 0001's own statement), under a tracking name of its own:
   memory stays flat, and readers and the daemon go on using the live table
   meanwhile. On PostgreSQL the events are streamed by transfer, each history
   is folded into its final row, and the rows are COPYed straight in (see
   `_bulk_load`); SQLite projects batch after batch, as the live projection
   does.
2. Build the due queries' partial indexes on it after the bulk load
   (PostgreSQL; SQLite builds them in the switch, where it can name them).
3. Catch up with the events that arrived meanwhile.
4. Switch in ONE transaction that holds the live projection's tracking row:
   a last catch-up, the `--verify` comparison, then the old table dropped and
   the new one renamed into its place with its indexes, and the live tracking
   position set to the rebuild's. Readers wait for that transaction at most;
   none sees a missing or half-built table.

An interrupted rebuild has only touched its own table: the live one is intact
and a rerun starts over.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TextIO
from uuid import UUID

from ledger.errors import LedgerError
from ledger.failpoints import failpoint
from ledger.migrate import available_migrations
from ledger.progress import Progress
from ledger.projections.projection import SellerTransfersProjection, set_aside
from ledger.projections.rows import (
    TABLE,
    TRACKING_NAME,
    HistoryDecoder,
    ProjectionError,
    check_storable,
    copy_values,
    replay_history,
)
from ledger.storage import Cursor, Database
from ledger.views import COLUMNS

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

NEW_TABLE: Final = f"{TABLE}_rebuild"
REBUILD_LOCK_KEY: Final = 7_342_019_002
BATCH: Final = 5000
# How often the bulk load reports progress, in events.
PROGRESS_EVERY: Final = 10_000
# The bulk load splits the transfers between worker processes by id. Below this
# many events per worker, a fork and its connections cost more than they save.
EVENTS_PER_WORKER: Final = 25_000
# The database needs CPU too: its side of the streams, COPYs and index builds.
MAX_WORKERS: Final = 4
MAX_DIFFERENCES_SHOWN: Final = 20


class RebuildDiffers(LedgerError):
    """`--verify`: the rebuilt table differs from the live one; nothing switched."""


@dataclass(frozen=True)
class RebuildResult:
    rows: int
    events: int
    seconds: float


def _table_statements(db: Database) -> tuple[str, list[str]]:
    """(CREATE TABLE, CREATE INDEX...) for seller_transfers, from the migrations."""
    create_table = ""
    indexes = []
    for migration in available_migrations(db.dialect):
        for statement in migration.statements():
            flat = " ".join(statement.split())
            if flat.startswith(f"CREATE TABLE IF NOT EXISTS {TABLE} ("):
                create_table = flat
            elif flat.startswith("CREATE INDEX") and f" ON {TABLE} " in flat + " ":
                indexes.append(flat)
    if not create_table:
        raise LedgerError("no CREATE TABLE for seller_transfers in the migrations")
    return create_table, indexes


def _index_name(statement: str) -> str:
    found = re.search(r"INDEX (?:CONCURRENTLY )?(?:IF NOT EXISTS )?(idx_\w+)", statement)
    if found is None:
        raise LedgerError(f"cannot find the index name in: {statement}")
    return found[1]


def _on_new_table(statement: str, *, rename_index: bool) -> str:
    statement = statement.replace(" CONCURRENTLY", "").replace(" IF NOT EXISTS", "")
    statement = re.sub(rf"\b{TABLE} \(", f"{NEW_TABLE} (", statement, count=1)
    statement = statement.replace(f" ON {TABLE} ", f" ON {NEW_TABLE} ")
    if rename_index:
        statement = re.sub(r"INDEX (idx_\w+)", r"INDEX \1_rebuild", statement, count=1)
    return statement


def rebuild(
    db: Database,
    decode: Callable[[Any], Any],
    *,
    verify: bool = False,
    progress: TextIO = sys.stderr,
    workers: int | None = None,
) -> RebuildResult:
    """Rebuild seller_transfers and switch over. `workers` (PostgreSQL): how
    many processes share the bulk load; by default one per CPU, up to
    MAX_WORKERS, and one for a small log."""
    started = time.monotonic()
    create_table, indexes = _table_statements(db)
    with db.exclusive_session(REBUILD_LOCK_KEY):
        with db.transaction(write=True) as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {NEW_TABLE}")  # an interrupted run's
            cursor.execute(_on_new_table(create_table, rename_index=False))
            cursor.execute("DELETE FROM projection_tracking WHERE name = ?", (NEW_TABLE,))
            cursor.execute("DELETE FROM projection_quarantine WHERE name = ?", (NEW_TABLE,))
        new = SellerTransfersProjection(db, decode, table=NEW_TABLE, tracking_name=NEW_TABLE)
        live = SellerTransfersProjection(db, decode)
        total, newest = _log_extent(db)
        report = Progress(progress, total, label="rebuild", unit="events")
        if db.dialect == "postgresql":
            workers = workers or _worker_count(total)
            events = _bulk_load(db, decode, report, newest, workers)
        else:
            events = 0
            while processed := new.process_batch(BATCH):
                events += processed
                report.show(events)
        report.finish(
            f"{events:,} events projected in {report.elapsed():.1f} s;"
            " building indexes and switching over"
        )
        if db.dialect == "postgresql":
            _build_indexes(db, [_on_new_table(s, rename_index=True) for s in indexes])
        events += new.catch_up()
        failpoint("rebuild_before_switch")
        with db.transaction(write=True) as cursor:
            # The live projection's lock: no one projects into the old table now.
            while live.process_batch_in(cursor, BATCH):
                pass
            while processed := new.process_batch_in(cursor, BATCH):
                events += processed
            if verify:
                differences = _differences(cursor)
                if differences:
                    raise RebuildDiffers(
                        "the rebuilt table differs from the live one, not switched: "
                        + "; ".join(differences)
                    )
            rows = _switch(db, cursor, indexes)
    return RebuildResult(rows=rows, events=events, seconds=time.monotonic() - started)


def _bulk_load(
    db: Database, decode: Callable[[Any], Any], report: Progress, upto: int, workers: int
) -> int:
    """Every event up to position `upto` into the new table, PostgreSQL's fast
    way; returns how many.

    Each transfer's history is read in version order, folded into its final
    row with the events' own apply (`replay_history`, as the live projection
    builds rows) and COPYed straight into the new table: no row is written
    twice, nothing is looked up, and the table is still private, so there is
    no conflict to guard against. Because appends take the events table's
    EXCLUSIVE lock, every event up to `upto` was committed before `upto` was
    read: the new table then holds exactly the log up to there, its tracking
    position says so, and the catch-up after it projects whatever came later.

    Decoding is Python's work, so it is shared by `workers` processes, each
    with the transfers of one range of ids, its own stream and its own COPY.
    (A second thread would not help: decoding holds the GIL, and the
    database's side already overlaps it through the sockets' buffers.)
    """
    mine, *theirs = [_Share(upto, low, high) for low, high in _id_ranges(workers)]
    others: list[_Worker] = []
    try:
        for share in theirs:
            others.append(_Worker(db, decode, share))

        def show(done: int) -> None:
            report.show(done + sum(worker.done.value for worker in others))

        events = _load_share(db, decode, mine, show)
        for worker in others:
            events += worker.result()
    finally:
        for worker in others:
            worker.stop()
    with db.transaction(write=True) as cursor:
        cursor.execute(
            "INSERT INTO projection_tracking (name, position) VALUES (?, ?)", (NEW_TABLE, upto)
        )
    report.show(events)
    return events


@dataclass(frozen=True)
class _Share:
    """The events up to position `upto` of the transfers with ids in [low,
    high) (None: unbounded)."""

    upto: int
    low: UUID | None
    high: UUID | None


def _load_share(
    db: Database, decode: Callable[[Any], Any], share: _Share, show: Callable[[int], None]
) -> int:
    """A share's events, one row per transfer, COPYed into the new table in
    one transaction; returns how many events."""
    conditions = [f"{db.notification_id_column} <= ?"]
    params: list[Any] = [share.upto]
    if share.low is not None:
        conditions.append("originator_id >= ?")
        params.append(share.low)
    if share.high is not None:
        conditions.append("originator_id < ?")
        params.append(share.high)
    sql = (
        f"SELECT {db.notification_id_column},"
        f" {db.uuid_as_text('originator_id', 'transfer_id')}, originator_version,"
        f" topic, state FROM {db.events_table} WHERE {' AND '.join(conditions)}"
        " ORDER BY originator_id, originator_version"
    )
    decoder = HistoryDecoder(decode)
    events = 0
    # Transfers whose history cannot become a row: set aside, as the live
    # projection does, in the same transaction as the COPY.
    aside: list[tuple[UUID, int, int, str]] = []

    def rows() -> Generator[list[Any], None, None]:
        nonlocal events
        next_report = PROGRESS_EVERY
        history: list[Any] = []
        current: str | None = None
        first: tuple[int, int] = (0, 0)  # the history's first position and version
        broken: str | None = None
        stream = db.stream_rows(sql, params, index_order=True)
        for at, transfer_id, version, topic, state in itertools.chain(stream, [_END]):
            if transfer_id != current:
                if current is not None:
                    row = None if broken else _folded(history)
                    if isinstance(row, str) or broken:
                        aside.append((UUID(current), *first, broken or str(row)))
                    elif row is not None:
                        yield row
                    events += len(history)
                    if events >= next_report:
                        show(events)
                        next_report = events + PROGRESS_EVERY
                if at is None:
                    return
                history, current, first, broken = [], transfer_id, (at, version), None
            if broken is None:
                try:
                    history.append(decoder(transfer_id, version, topic, state))
                except Exception as error:
                    broken = f"v{version} cannot be read: {type(error).__name__}"

    def record_aside(cursor: Cursor) -> None:
        for transfer_id, at, version, problem in aside:
            set_aside(
                db,
                cursor,
                projection=NEW_TABLE,
                transfer_id=transfer_id,
                position=at,
                version=version,
                problem=problem,
            )

    # closing: a COPY that fails leaves the stream suspended; end it now, not
    # whenever the garbage collector gets to it (the pool may be closed by then).
    with closing(rows()) as stream:
        db.copy_rows_into(NEW_TABLE, COLUMNS, stream, then=record_aside)
    return events


# Ends the stream of events in `_load_share` (no position: no more events).
_END: Final = (None, None, 0, "", b"")


def _folded(history: list[Any]) -> list[Any] | str:
    """The COPY values of the row `history` leads to, or why there is none."""
    try:
        row = replay_history(history, strict=True)
        check_storable(row)
    except ProjectionError as error:
        return str(error)
    return copy_values(row)


def _build_indexes(db: Database, statements: list[str]) -> None:
    """Two at a time, each on a connection of its own: building an index is
    the database's work alone (a scan and a sort), and this process has
    nothing else to do meanwhile."""

    def build(statement: str) -> None:
        with db.transaction(write=True) as cursor:
            cursor.execute(statement)

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="rebuild-index") as pool:
        for _ in pool.map(build, statements):
            pass  # re-raises a failed build here


def _worker_count(events: int) -> int:
    # Imported here: every CLI command imports this module, few fork.
    import multiprocessing  # noqa: PLC0415

    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cpus or 1, MAX_WORKERS, events // EVENTS_PER_WORKER))


def _id_ranges(workers: int) -> list[tuple[UUID | None, UUID | None]]:
    """`workers` ranges of ids of about as many transfers each: transfer ids
    are uniformly spread (uuid5 of the order, or the old system's uuid4)."""
    cuts = [UUID(int=(share << 128) // workers) for share in range(1, workers)]
    return list(zip([None, *cuts], [*cuts, None], strict=True))


class _Worker:
    """One share of the bulk load, in a forked child process: forked, because
    it starts in milliseconds with everything already imported, where a new
    interpreter would take a third of a second."""

    def __init__(self, db: Database, decode: Callable[[Any], Any], share: _Share) -> None:
        import multiprocessing  # noqa: PLC0415 (see _worker_count)

        context = multiprocessing.get_context("fork")
        # Events loaded so far, for the progress bar; written by the child only.
        self.done = context.Value("q", 0, lock=False)
        self._answer, answer = context.Pipe(duplex=False)
        self._process = context.Process(
            target=self._run,
            args=(db, decode, share, answer),
            name="rebuild-worker",
            daemon=True,  # never outlives the rebuild
        )
        self._process.start()
        answer.close()  # the child's end: its copy here would keep recv() from ever failing

    def _run(
        self, db: Database, decode: Callable[[Any], Any], share: _Share, answer: Connection
    ) -> None:
        try:
            loaded = _load_share(db.for_forked_child(), decode, share, self._count)
        except BaseException as error:
            try:
                answer.send(error)
            except Exception:  # an error that does not pickle: its text does
                answer.send(LedgerError(f"{type(error).__name__}: {error}"))
        else:
            answer.send(loaded)

    def _count(self, events: int) -> None:
        self.done.value = events

    def result(self) -> int:
        """The events this worker loaded, once it has committed them."""
        try:
            answer = self._answer.recv()
        except EOFError:
            self._process.join()
            raise LedgerError(
                f"a rebuild worker stopped without answering (exit code"
                f" {self._process.exitcode}); nothing was switched"
            ) from None
        if isinstance(answer, BaseException):
            raise answer
        return int(answer)

    def stop(self) -> None:
        if self._process.is_alive():
            self._process.terminate()  # its COPY's transaction then rolls back
        self._process.join()
        self._answer.close()


def _switch(db: Database, cursor: Cursor, indexes: list[str]) -> int:
    cursor.execute(f"DROP TABLE {TABLE}")
    cursor.execute(f"ALTER TABLE {NEW_TABLE} RENAME TO {TABLE}")
    if db.dialect == "postgresql":
        for statement in indexes:
            name = _index_name(statement)
            cursor.execute(f"ALTER INDEX {name}_rebuild RENAME TO {name}")
        cursor.execute("SELECT conname FROM pg_constraint WHERE conrelid = ?::regclass", (TABLE,))
        for row in cursor.fetchall():
            old_name = str(row["conname"])
            if old_name.startswith(f"{NEW_TABLE}_"):
                canonical = TABLE + old_name[len(NEW_TABLE) :]
                cursor.execute(f"ALTER TABLE {TABLE} RENAME CONSTRAINT {old_name} TO {canonical}")
    else:
        for statement in indexes:
            cursor.execute(statement)
    cursor.execute(
        "UPDATE projection_tracking SET position ="
        " (SELECT position FROM projection_tracking WHERE name = ?) WHERE name = ?",
        (NEW_TABLE, TRACKING_NAME),
    )
    cursor.execute("DELETE FROM projection_tracking WHERE name = ?", (NEW_TABLE,))
    # What the rebuild set aside is what the table now lacks; what the live
    # projection had set aside was tried again.
    cursor.execute("DELETE FROM projection_quarantine WHERE name = ?", (TRACKING_NAME,))
    cursor.execute(
        "UPDATE projection_quarantine SET name = ? WHERE name = ?", (TRACKING_NAME, NEW_TABLE)
    )
    cursor.execute(f"SELECT COUNT(*) AS n FROM {TABLE}")
    count = cursor.fetchone()
    return 0 if count is None else int(count["n"])


def _differences(cursor: Cursor) -> list[str]:
    """Rows that differ between the live and the rebuilt table, named by id
    and column (both tables are at the same position here)."""
    columns = ", ".join(COLUMNS)
    cursor.execute(
        f"SELECT id FROM (SELECT {columns} FROM {TABLE} EXCEPT SELECT {columns} FROM {NEW_TABLE})"
        f" AS changed UNION SELECT id FROM (SELECT {columns} FROM {NEW_TABLE}"
        f" EXCEPT SELECT {columns} FROM {TABLE}) AS added"
    )
    ids = [row["id"] for row in cursor.fetchall()]
    found = []
    for row_id in ids[:MAX_DIFFERENCES_SHOWN]:
        cursor.execute(f"SELECT {columns} FROM {TABLE} WHERE id = ?", (row_id,))
        live = cursor.fetchone()
        cursor.execute(f"SELECT {columns} FROM {NEW_TABLE} WHERE id = ?", (row_id,))
        rebuilt = cursor.fetchone()
        if live is None or rebuilt is None:
            where = "live" if rebuilt is None else "rebuilt"
            found.append(f"transfer {row_id} is only in the {where} table")
            continue
        changed = [c for c in COLUMNS if live[c] != rebuilt[c]]
        found.append(
            f"transfer {row_id}: "
            + ", ".join(f"{c} {live[c]!r} live, {rebuilt[c]!r} from the events" for c in changed)
        )
    if len(ids) > MAX_DIFFERENCES_SHOWN:
        found.append(f"and {len(ids) - MAX_DIFFERENCES_SHOWN} more")
    return found


def _log_extent(db: Database) -> tuple[int, int]:
    """(about how many events, for the progress bar; the newest position).
    PostgreSQL counts by the newest position, which only the gaps that
    rolled-back appends leave make too high: its index answers at once, where
    COUNT(*) reads the whole table."""
    count = "NULL" if db.dialect == "postgresql" else "COUNT(*)"
    with db.transaction(write=False) as cursor:
        cursor.execute(
            f"SELECT {count} AS n, MAX({db.notification_id_column}) AS newest"
            f" FROM {db.events_table}"
        )
        row = cursor.fetchone()
    if row is None:
        return 0, 0
    newest = int(row["newest"] or 0)
    return (newest if row["n"] is None else int(row["n"])), newest
