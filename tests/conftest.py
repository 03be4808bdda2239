"""Fixtures shared by every test package: a running IMKIT simulator.

Condition waits are in ``tests/_poll.py`` (``from tests._poll import wait_for``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge.sim.imkit import ImkitSim


@pytest.fixture
async def imkit_sim() -> AsyncIterator[ImkitSim]:
    """A started simulated IMKIT on 127.0.0.1 (free port), stopped after the test."""
    sim = ImkitSim()
    await sim.start("127.0.0.1", 0)
    try:
        yield sim
    finally:
        await sim.stop()
