"""A process-wide token bucket for upstream connects, so an IMKIT restart never becomes a stampede."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class ConnectLimiter:
    """An async token bucket: ``rate`` connects per second on average, bursts of up to ``burst``.

    Waiters are served in arrival order (an ``asyncio.Lock`` is FIFO), so under a reconnect storm
    every session gets its turn and none starves. A waiter that is cancelled gives its place up
    without using a token. ``clock`` and ``sleep`` are injectable so tests can run on a fake clock.
    """

    def __init__(
        self,
        rate: float = 100.0,
        burst: int = 100,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_in_progress: int | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()
        self._lock = asyncio.Lock()
        #: Connects granted so far (for metrics and tests).
        self.granted = 0
        # The rate protects IMKIT; this protects the process: handshakes (connect, conf, auth2)
        # it started but has not finished. Past what the loop can finish within the auth
        # timeout, sessions time out and reconnect, and a storm never settles.
        self._in_progress = asyncio.Semaphore(max_in_progress) if max_in_progress else None
        #: Sessions waiting for a handshake slot.
        self.waiting = 0

    async def begin(self) -> None:
        """Wait for a free handshake slot (when ``max_in_progress`` is set); pair with :meth:`end`."""
        if self._in_progress is not None:
            self.waiting += 1
            try:
                await self._in_progress.acquire()
            finally:
                self.waiting -= 1

    def end(self) -> None:
        """The handshake that :meth:`begin` admitted is over (live, refused or failed)."""
        if self._in_progress is not None:
            self._in_progress.release()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._updated
        if elapsed > 0:
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._updated = now

    async def acquire(self) -> None:
        """Wait until a connect may start, and take its token."""
        async with self._lock:
            while True:
                self._refill()
                # The epsilon absorbs float rounding, which could otherwise leave 0.9999999 tokens
                # and a wait too small for the clock to move.
                if self._tokens >= 1.0 - 1e-9:
                    self._tokens = max(0.0, self._tokens - 1.0)
                    self.granted += 1
                    return
                await self._sleep((1.0 - self._tokens) / self.rate)

    def __repr__(self) -> str:
        return f"ConnectLimiter(rate={self.rate!r}, burst={self.burst!r})"
