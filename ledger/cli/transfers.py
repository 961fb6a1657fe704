"""`ledger transfer ...`, `ledger migrate` and `ledger matrix`: the transfer
commands, each through the application service."""

from __future__ import annotations

import argparse
import contextlib
import gc
from collections.abc import Iterator
from pathlib import Path

from ledger import matrix, values
from ledger.bootstrap import migrate_database, open_backend
from ledger.cli.output import (
    EXIT_OK,
    list_transfers,
    print_json,
    show_transfer,
)


def cmd_migrate(args: argparse.Namespace) -> int:
    applied = migrate_database(args.database_url)
    if args.json:
        print_json({"applied": [f"{m.version:04d}_{m.name}" for m in applied]})
    elif applied:
        for m in applied:
            print(f"applied {m.version:04d}_{m.name}")
    else:
        print("database is up to date")
    return EXIT_OK


def cmd_create(args: argparse.Namespace) -> int:
    with open_backend(args.database_url) as backend:
        transfer = backend.service.create_transfer(
            seller=args.seller,
            order_ref=args.order,
            amount=args.amount,
            currency=args.currency,
            actor=args.actor,
            source_transaction=args.source_transaction,
        ).transfer
    if args.json:
        print_json({"id": str(transfer.id)})
    else:
        print(transfer.id)
    return EXIT_OK


# Each command checks its arguments before it opens the database: bad input is
# bad input (exit 2) whatever state the database is in.


def cmd_show(args: argparse.Namespace) -> int:
    transfer_id = values.transfer_id(args.id)
    with open_backend(args.database_url) as backend:
        view = backend.service.get(transfer_id)
    if args.json:
        print_json(view.as_json())
    else:
        show_transfer(view)
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    status = values.status(args.status) if args.status is not None else None
    with open_backend(args.database_url) as backend:
        views = backend.service.list_transfers(status)
    if args.json:
        print_json([v.as_json() for v in views])
    else:
        list_transfers(views)
    return EXIT_OK


def cmd_reverse(args: argparse.Namespace) -> int:
    transfer_id = values.transfer_id(args.id)
    amount = values.amount(args.amount) if args.amount is not None else None
    reason = values.reason(args.reason)
    actor = values.actor(args.actor)
    if args.request is not None:
        values.request_ref(args.request)
    with open_backend(args.database_url) as backend:
        service = backend.service
        request_ref = args.request
        if request_ref is None:
            # Without --request every call is a new request; the transfer's own
            # state then refuses a second one while the first is pending.
            request_ref = f"cli:{transfer_id}:{service.get(transfer_id).version + 1}"
        result = service.request_reversal(
            transfer_id, request_ref=request_ref, amount=amount, reason=reason, actor=actor
        )
    transfer = result.transfer
    if args.json:
        print_json({"id": str(transfer.id), "recorded": result.recorded, "status": transfer.status})
    else:
        note = (
            "reversal requested"
            if result.recorded
            else "reversal already requested; nothing appended"
        )
        print(f"{transfer.id} {transfer.status} ({note})")
    return EXIT_OK


def cmd_set_status(args: argparse.Namespace) -> int:
    transfer_id = values.transfer_id(args.id)
    status = values.status(args.status)
    actor = values.actor(args.actor)
    reason = values.reason(args.reason)
    with open_backend(args.database_url) as backend:
        view = backend.service.set_status(transfer_id, status, actor=actor, reason=reason)
    if args.json:
        print_json(view.as_json())
    else:
        print(f"{view.id} {view.status}")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    # Imported here: pydantic costs every other command ~40 ms of start-up.
    from ledger.importing import ImportFile  # noqa: PLC0415

    source = ImportFile(Path(args.file))
    actor = values.actor(args.actor)
    with open_backend(args.database_url) as backend, _cyclic_collection_paused():
        result = backend.service.import_transfers(source.records, actor=actor)
    if args.json:
        print_json({"imported": result.imported, "already_present": result.already_present})
    else:
        print(f"imported {result.imported}, already present {result.already_present}")
    return EXIT_OK


@contextlib.contextmanager
def _cyclic_collection_paused() -> Iterator[None]:
    """An import makes next to no cyclic garbage (1,300 objects for 30,000
    transfers: reference counting frees the rest), yet Python's collector
    would scan the records kept between the two passes, and every object
    made since, again and again: a third of a 100,000-line import's time.
    This process runs nothing else meanwhile; collection resumes after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def cmd_matrix(args: argparse.Namespace) -> int:
    print(matrix.render_mermaid() if args.format == "mermaid" else matrix.render_table())
    return EXIT_OK
