"""Generic test helpers shared by every test package: condition waits and a running IMKIT simulator.

``wait_for`` is both importable (``from conftest import wait_for``) and a fixture of the same name,
so a test can take it as an argument without import-path tricks.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bridge.sim.imkit import ImkitSim

Condition = Callable[[], bool | Awaitable[bool]]
WaitFor = Callable[..., Awaitable[None]]


async def wait_for(
    cond: Condition,
    timeout: float = 5.0,  # noqa: ASYNC109 - the deadline is this helper's whole point
    *,
    interval: float = 0.01,
    message: str | None = None,
) -> None:
    """Wait until ``cond()`` (a function or coroutine function) is true; fail after ``timeout``.

    Checks the condition immediately and then every ``interval`` seconds; never waits longer than
    ``timeout`` seconds in all, and raises ``AssertionError`` (naming ``message``) when it runs out.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {message or cond!r}")
        await asyncio.sleep(interval)


@pytest.fixture(name="wait_for")
def _wait_for_fixture() -> WaitFor:
    """The :func:`wait_for` coroutine function, as a fixture."""
    return wait_for


@pytest.fixture
async def imkit_sim() -> AsyncIterator[ImkitSim]:
    """A started simulated IMKIT on 127.0.0.1 (free port), stopped after the test."""
    sim = ImkitSim()
    await sim.start("127.0.0.1", 0)
    try:
        yield sim
    finally:
        await sim.stop()
