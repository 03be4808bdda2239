"""Waiting for a condition in tests: check, pause briefly, check again, and fail at a deadline
(a test never sleeps for a fixed time hoping something happened)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

Condition = Callable[[], bool | Awaitable[bool]]


async def wait_for(
    cond: Condition,
    timeout: float = 5.0,
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


def holds_within(cond: Callable[[], bool], timeout: float, *, interval: float = 0.01) -> bool:
    """:func:`wait_for` for synchronous code that decides itself what a timeout means: whether
    ``cond()`` became true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True
