"""The connect limiter's token bucket, on a fake clock (and one short check on the real one)."""

from __future__ import annotations

import asyncio
import time

import pytest

from bridge.upstream.ratelimit import ConnectLimiter


class FakeClock:
    """A clock that only moves when the limiter sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def limiter(rate: float, burst: int) -> tuple[ConnectLimiter, FakeClock]:
    clock = FakeClock()
    return ConnectLimiter(rate, burst, clock=clock, sleep=clock.sleep), clock


async def test_burst_is_granted_without_waiting() -> None:
    lim, clock = limiter(100, 100)
    for _ in range(100):
        await lim.acquire()
    assert clock.sleeps == []
    assert lim.granted == 100


async def test_after_the_burst_each_connect_waits_one_interval() -> None:
    lim, clock = limiter(100, 10)
    for _ in range(10):
        await lim.acquire()
    start = clock.now
    for i in range(1, 6):
        await lim.acquire()
        assert clock.now - start == pytest.approx(i * 0.01)


@pytest.mark.parametrize(("rate", "burst", "n"), [(100, 100, 1000), (100, 10, 1000), (5, 1, 20), (1000, 50, 5000)])
async def test_long_run_rate(rate: float, burst: int, n: int) -> None:
    lim, clock = limiter(rate, burst)
    start = clock.now
    for _ in range(n):
        await lim.acquire()
    assert clock.now - start == pytest.approx((n - burst) / rate, rel=1e-6)


async def test_idle_time_refills_up_to_the_burst_only() -> None:
    lim, clock = limiter(10, 5)
    for _ in range(5):
        await lim.acquire()
    clock.now += 3600  # an hour idle is still worth only `burst` connects
    for _ in range(5):
        await lim.acquire()
    assert clock.sleeps == []
    await lim.acquire()
    assert clock.sleeps == [pytest.approx(0.1)]


async def test_waiters_are_served_in_arrival_order() -> None:
    lim, _ = limiter(50, 1)
    order: list[int] = []

    async def take(i: int) -> None:
        await lim.acquire()
        order.append(i)

    await asyncio.gather(*(take(i) for i in range(30)))
    assert order == list(range(30))


async def test_a_cancelled_waiter_uses_no_token() -> None:
    gate = asyncio.Event()
    clock = FakeClock()

    async def blocking_sleep(seconds: float) -> None:
        await gate.wait()
        clock.now += seconds

    lim = ConnectLimiter(10, 1, clock=clock, sleep=blocking_sleep)
    await lim.acquire()
    waiter = asyncio.ensure_future(lim.acquire())
    follower = asyncio.ensure_future(lim.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    gate.set()
    await follower
    assert waiter.cancelled()
    assert lim.granted == 2


async def test_real_clock_rate() -> None:
    lim = ConnectLimiter(200, 5)
    t0 = time.monotonic()
    await asyncio.gather(*(lim.acquire() for _ in range(45)))
    elapsed = time.monotonic() - t0
    assert elapsed >= 40 / 200 * 0.95
    assert elapsed < 2.0


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_rejects_bad_settings(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        ConnectLimiter(rate, burst)


async def test_handshake_slots() -> None:
    limiter = ConnectLimiter(100, 100, max_in_progress=2)
    await limiter.begin()
    await limiter.begin()
    third = asyncio.create_task(limiter.begin())
    await asyncio.sleep(0)  # let it run up to the semaphore
    assert not third.done()
    limiter.end()
    await asyncio.wait_for(third, 1)
    unlimited = ConnectLimiter(100, 100)
    for _ in range(1000):
        await unlimited.begin()  # no cap: never waits
