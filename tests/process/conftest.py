"""Fixtures for the process side: a Stripe simulator on 127.0.0.1 and a world
(ledger + simulator) on each database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ledger.stripe.simulator import SimulatorServer
from tests.process.world import World, new_world, running_simulator


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with running_simulator(api_key=None) as server:
        yield server


@pytest.fixture
def world(migrated_url: str, sim: SimulatorServer) -> World:
    """A migrated ledger on SQLite or PostgreSQL, and the simulator."""
    return new_world(migrated_url, sim)
