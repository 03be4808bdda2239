"""bridge._poll.wait_until: checks until the condition holds, and gives up at the deadline."""

from __future__ import annotations

import pytest

from bridge._poll import wait_until


async def test_returns_once_the_condition_holds() -> None:
    checks = 0

    async def third_time() -> bool:
        nonlocal checks
        checks += 1
        return checks == 3

    assert await wait_until(third_time, 5.0, "the third check", interval=0.001) < 5.0
    assert checks == 3


async def test_times_out_naming_what_it_waited_for() -> None:
    async def never() -> bool:
        return False

    with pytest.raises(TimeoutError, match="waiting for the impossible"):
        await wait_until(never, 0.05, "the impossible", interval=0.01)
