"""The whole system at once: the ledger, its daemons and webhook handler, and a
Stripe simulator over real HTTP on 127.0.0.1 (a "world"), on each database.
Fixtures: the simulator alone, and a world."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ledger.stripe.simulator import SimulatorServer
from tests.system.world import STARTED_DAEMONS, World, kill, new_world, running_simulator


@pytest.fixture(autouse=True)
def no_daemon_left_running() -> Iterator[None]:
    yield
    while STARTED_DAEMONS:
        kill(STARTED_DAEMONS.pop())


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with running_simulator(api_key=None) as server:
        yield server


@pytest.fixture
def world(migrated_url: str, sim: SimulatorServer) -> World:
    """A migrated ledger on SQLite or PostgreSQL, and the simulator."""
    return new_world(migrated_url, sim)
