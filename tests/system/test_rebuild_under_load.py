"""`ledger rebuild` while a daemon pays transfers out and a writer keeps
creating them: nothing is lost, the table equals the events afterwards, and no
money moves twice."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from uuid import UUID

import pytest

from ledger.cli import run
from tests.system.world import (
    World,
    finish,
    ledger_matches_stripe,
    new_world,
    running_simulator,
    start_daemon,
    wait_started,
)
from tests.waiting import wait_for


def test_a_rebuild_under_a_working_daemon_and_a_writer_loses_nothing(
    migrated_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_simulator(latency_ms=5) as sim:
        world: World = new_world(migrated_url, sim)
        ids: list[UUID] = [world.create(f"order-{n}") for n in range(60)]
        log = tmp_path / "daemon.log"
        daemon = start_daemon(world, "--concurrency", "4", log_path=log)
        stop = threading.Event()

        def write() -> None:
            n = 0
            while not stop.is_set():
                ids.append(world.create(f"during-{n}"))
                n += 1

        writer = threading.Thread(target=write)
        try:
            wait_started(daemon, log)
            writer.start()
            wait_for(world.stripe_transfers, what="the daemon to be paying")
            capsys.readouterr()
            assert run(["rebuild", "--database-url", migrated_url]) == 0, capsys.readouterr().err
        finally:
            stop.set()
            writer.join(timeout=60)
        try:
            wait_for(
                lambda: all(world.show(i).status == "completed" for i in ids),
                timeout=60,
                what="every transfer to be paid",
            )
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert finish(daemon) == 0, log.read_text()
        assert ledger_matches_stripe(world, ids) == []
        capsys.readouterr()
        assert run(["audit", "verify", "--database-url", migrated_url]) == 0, capsys.readouterr()
