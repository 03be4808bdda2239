"""Waiting for a condition with a deadline, for the narrated demo and the benchmarks (drivers of
a running bridge): check, pause, check again. The tests have their own in tests/_poll.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_until(
    cond: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    *,
    interval: float = 0.02,
    error: Callable[[str], Exception] = TimeoutError,
) -> float:
    """Check ``cond`` now and then every ``interval`` seconds until it holds; the seconds it took.

    Raises ``error`` (:class:`TimeoutError` unless the caller has its own) naming ``what`` once
    ``timeout`` seconds have passed.
    """
    start = time.monotonic()
    while not await cond():
        if time.monotonic() - start > timeout:
            raise error(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic() - start
