"""`ledger audit ...` and `ledger rebuild`: the auditor's commands."""

from __future__ import annotations

import argparse
import json
import sys

from ledger import values
from ledger.audit.chain import head
from ledger.audit.history import audit, export
from ledger.audit.verify import verify
from ledger.bootstrap import open_backend
from ledger.cli.output import EXIT_FAILURE, EXIT_OK, history, print_json, whole_number
from ledger.errors import InvalidInput, LedgerError
from ledger.projections.rebuild import rebuild


# `ledger audit` takes a transfer id or one of these (DESIGN section 8).
def cmd_audit(args: argparse.Namespace) -> int:
    if args.target == "export":
        return _export(args)
    if args.target in ("verify", "head"):
        if args.version is not None or args.at is not None:
            raise InvalidInput("--version and --at go with `ledger audit ID`")
        return _verify(args) if args.target == "verify" else _head(args)
    if args.since is not None or args.status is not None:
        raise InvalidInput("--since and --status go with `ledger audit export`")
    if args.head is not None:
        raise InvalidInput("--head goes with `ledger audit verify`")
    transfer_id = values.transfer_id(args.target)
    if args.version is not None and args.at is not None:
        raise InvalidInput("give --version or --at, not both")
    version = (
        whole_number(args.version, "--version", 1, 2**31 - 1) if args.version is not None else None
    )
    at = values.timestamp(args.at, "--at") if args.at is not None else None
    with open_backend(args.database_url) as backend:
        events = list(backend.transfers.events.get(transfer_id))
    result = audit(events, transfer_id, version=version, at=at)
    if args.json:
        print_json(result.as_json())
    else:
        history(result)
    return EXIT_OK


def _head(args: argparse.Namespace) -> int:
    with open_backend(args.database_url) as backend:
        # Every append links its events itself: the head covers all of them.
        newest = head(backend.db)
    if newest is None:
        raise LedgerError("the event log is empty: there is no head yet")
    if args.json:
        print_json(newest.as_json())
    else:
        print(f"{newest.link.hex()} at position {newest.position}")
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    recorded: bytes | None = None
    if args.head is not None:
        try:
            recorded = bytes.fromhex(args.head)
        except ValueError:
            recorded = b""
        if len(recorded) != 32:
            raise InvalidInput(
                "invalid --head: expected the 64 hex digits `ledger audit head` prints"
            )
    with open_backend(args.database_url) as backend:
        report = verify(backend.db, backend.transfers.mapper.to_domain_event, recorded)
    if args.json:
        print_json(report.as_json())
        return EXIT_OK if report.ok else EXIT_FAILURE
    for finding in report.findings:
        print(f"{finding['transfer_id'] or '-'}  {finding['check']}: {finding['problem']}")
    data = report.as_json()
    verdict = "clean" if report.ok else f"{len(report.findings)} finding(s)"
    lagging = f", {data['unprojected']} not in the read table yet" if data["unprojected"] else ""
    print(
        f"{verdict}: {data['transfers']} transfers, {data['events']} events,"
        f" {data['sealed']} linked in the chain, {data['unsealed']} without a link{lagging}"
    )
    return EXIT_OK if report.ok else EXIT_FAILURE


def _export(args: argparse.Namespace) -> int:
    if args.version is not None or args.at is not None:
        raise InvalidInput("--version and --at go with `ledger audit ID`")
    since = values.timestamp(args.since, "--since") if args.since is not None else None
    status = values.status(args.status) if args.status is not None else None
    with open_backend(args.database_url) as backend:
        decode = backend.transfers.mapper.to_domain_event
        stored = backend.db.stream_stored_events()
        for result in export((decode(e) for _, e in stored), since=since, status=status):
            sys.stdout.write(json.dumps(result.as_json(), separators=(", ", ": ")) + "\n")
    return EXIT_OK


def cmd_rebuild(args: argparse.Namespace) -> int:
    with open_backend(args.database_url) as backend:
        result = rebuild(backend.db, backend.transfers.mapper.to_domain_event, verify=args.verify)
    if args.json:
        print_json({"rows": result.rows, "events": result.events, "seconds": result.seconds})
    else:
        print(
            f"rebuilt seller_transfers: {result.rows} rows from {result.events} events"
            f" in {result.seconds:.1f} s, and switched over"
        )
    return EXIT_OK
