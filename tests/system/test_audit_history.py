"""`ledger audit ID`: a transfer's whole history, through every kind of event
(the daemon's outcomes included), and its state at any version or time."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from ledger.cli import run
from tests.e2e.support import UNKNOWN_ID
from tests.system.world import World


def audit(capsys: pytest.CaptureFixture[str], world: World, *args: str) -> tuple[int, Any]:
    capsys.readouterr()
    code = run(["audit", "--database-url", world.url, *args])
    out, err = capsys.readouterr()
    if code != 0:
        assert err.count("\n") == 1 and "Traceback" not in err, err
        return code, err
    return code, json.loads(out) if "--json" in args else out


def a_transfer_through_every_kind_of_event(world: World) -> str:
    """A payout answered 500 once (an attempt whose outcome is unknown, then
    made), a refund, a reversal attempt answered 500 once, then the reversal."""
    world.simulator.add_fault("500_before", path="/v1/transfers")
    transfer_id = world.create("order-audit", amount=9000)
    world.run_daemon_once()
    world.request_reversal(transfer_id, amount=4000)
    world.simulator.add_fault("500_before", path="/reversals")
    world.run_daemon_once()
    return str(transfer_id)


def test_the_history_shows_every_event_with_who_why_and_what_caused_it(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    transfer_id = a_transfer_through_every_kind_of_event(world)
    code, data = audit(capsys, world, transfer_id, "--json")
    assert code == 0
    events = data["events"]
    assert [e["type"] for e in events] == [
        "Created",
        "PayoutFailed",
        "PayoutSucceeded",
        "ReversalRequested",
        "ReversalAttemptFailed",
        "Reversed",
    ]
    assert [e["version"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert [(e["from_status"], e["to_status"]) for e in events] == [
        (None, "pending"),
        ("pending", "failed"),
        ("failed", "completed"),
        ("completed", "reversal_pending"),
        ("reversal_pending", "reversal_pending"),
        ("reversal_pending", "reversed"),
    ]
    assert events[2]["stripe_transfer_id"] == data["state"]["stripe_transfer_id"]
    assert events[5]["stripe_reversal_id"].startswith("trr_")
    assert events[2]["caused_by"] == f"{transfer_id}:1"
    assert events[5]["caused_by"] == f"{transfer_id}:4"
    assert events[3]["actor"] == "refund-handler" and events[3]["reason"] == "order refunded"
    assert "500" in events[1]["error"]
    # The state at the end is the read table's row, field for field.
    assert data["state"] == world.show(UUID(transfer_id)).as_json()
    code, text = audit(capsys, world, transfer_id)
    assert code == 0 and "ReversalRequested" in text and "refund-handler" in text


def test_the_state_at_a_version_or_a_time_between_two_events(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    transfer_id = a_transfer_through_every_kind_of_event(world)
    _, full = audit(capsys, world, transfer_id, "--json")
    _, at_3 = audit(capsys, world, transfer_id, "--version", "3", "--json")
    assert at_3["state"]["status"] == "completed" and at_3["state"]["version"] == 3
    assert len(at_3["events"]) == 3
    # A time after event 4 and before event 5 gives the state of version 4.
    fourth, fifth = full["events"][3]["at"], full["events"][4]["at"]
    between = _parse(fourth) + (_parse(fifth) - _parse(fourth)) / 2
    _, then = audit(capsys, world, transfer_id, "--at", between.isoformat(), "--json")
    assert then["state"]["status"] == "reversal_pending"
    assert then["state"]["version"] == 4 and then["state"]["reversal_amount"] == 4000


def test_refusals_are_one_line_with_the_contracts_exit_codes(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    transfer_id = str(world.create("order-audit-refusals"))
    created = _parse(audit(capsys, world, transfer_id, "--json")[1]["events"][0]["at"])
    before = (created - timedelta(days=1)).isoformat()
    cases = [
        ((UNKNOWN_ID,), 4),
        (("not-a-uuid",), 2),
        ((transfer_id, "--at", "yesterday"), 2),
        ((transfer_id, "--at", "2026-01-01T00:00:00"), 2),  # no offset
        ((transfer_id, "--at", before), 4),
        ((transfer_id, "--version", "0"), 2),
        ((transfer_id, "--version", "9"), 4),
        ((transfer_id, "--version", "1", "--at", before), 2),
    ]
    for args, expected in cases:
        code, err = audit(capsys, world, *args)
        assert code == expected, (args, err)


def test_the_other_kinds_of_event_imported_admin_and_giving_up(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    refused = str(world.create("order-audit-refused", seller="acct_unknownSeller"))
    world.run_daemon_once()
    legacy = tmp_path / "legacy.jsonl"
    imported = "7a2d3b5f-1e6c-4d2f-8b48-2c3d4e5f6a71"
    legacy.write_text(
        json.dumps(
            {
                "id": imported,
                "seller_account_id": "acct_4Jug",
                "order_ref": "order-0911",
                "amount": 15000,
                "currency": "eur",
                "status": "failed",
                "retry_count": 2,
                "last_error": "account_closed",
            }
        )
        + "\n"
    )
    assert run(["transfer", "import", str(legacy), "--database-url", world.url]) == 0
    assert run(
        [
            "transfer", "set-status", imported, "permanently_failed",
            "--actor", "alice@ops", "--reason", "seller gone, OPS-9",
            "--database-url", world.url,
        ]
    ) == 0  # fmt: skip
    _, gave_up = audit(capsys, world, refused, "--json")
    assert [e["type"] for e in gave_up["events"]] == [
        "Created",
        "PayoutFailed",
        "PayoutPermanentlyFailed",
    ]
    assert "resource_missing" in gave_up["events"][2]["error"]
    _, admin = audit(capsys, world, imported, "--json")
    assert [(e["type"], e["from_status"], e["to_status"]) for e in admin["events"]] == [
        ("Imported", None, "failed"),
        ("StatusSetByAdmin", "failed", "permanently_failed"),
    ]
    assert admin["events"][0]["retry_count"] == 2
    assert admin["events"][1]["actor"] == "alice@ops"
    assert admin["events"][1]["reason"] == "seller gone, OPS-9"
    _, at_import = audit(capsys, world, imported, "--version", "1", "--json")
    assert at_import["state"]["status"] == "failed"
    assert at_import["state"]["last_error"] == "account_closed"


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
