"""One timer for every upstream socket of a process: ends the sockets whose server went silent.

Engine.IO's client bounds each read with a timeout of ping interval + ping timeout, so a server
that stops answering (a frozen network: no close, no reset) is noticed. Per socket that is a
timer, a timeout object and a context, re-created by every packet: ~0.5 KiB per live session,
and at 10,000 sessions a wave of server pings put 3,000 of them (with their read chains) in the
young GC generation at once, a 100 ms collection (docs/benchmarks.md). Here each socket only
stamps the time of its last packet; one sweep a second ends those silent for longer than their
limit, as the per-read timeout did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

log = logging.getLogger(__name__)

#: Seconds between sweeps: how late past its limit a silent socket may be noticed.
SWEEP_INTERVAL = 1.0


class Watched(Protocol):
    """A socket the watch can end (:class:`bridge.upstream.transport.EngineIOClient`)."""

    def idle_deadline(self) -> float | None:
        """The loop time after which the socket counts as silent (None: not reading yet)."""
        ...

    def expire(self) -> None:
        """End the socket as its own read timeout would have."""
        ...


class IdleWatch:
    """The sockets of one event loop, swept every ``interval`` seconds for silence.

    The sweep task runs only while some socket is watched, so an owner has nothing to start; it
    calls :meth:`close` at shutdown (or lets the last socket go).
    """

    def __init__(self, interval: float = SWEEP_INTERVAL) -> None:
        self._interval = interval
        #: Insertion-ordered set: a dict, as sets of 10,000 entries resize on every few removals.
        self._sockets: dict[Watched, None] = {}
        self._task: asyncio.Task[None] | None = None
        #: Sockets ended for silence so far.
        self.expired = 0

    def __len__(self) -> int:
        return len(self._sockets)

    def watch(self, sock: Watched) -> None:
        """Start watching ``sock`` (from inside the running loop)."""
        self._sockets[sock] = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._sweep_loop(), name="upstream-idle-watch"
            )

    def forget(self, sock: Watched) -> None:
        """Stop watching ``sock`` (its read loop ended)."""
        self._sockets.pop(sock, None)

    def sweep(self, now: float) -> int:
        """End every socket whose deadline is before ``now`` (loop time); returns how many."""
        silent = [s for s in self._sockets if (d := s.idle_deadline()) is not None and d < now]
        for sock in silent:
            self._sockets.pop(sock, None)
            try:
                sock.expire()
            except Exception:  # one broken socket must not keep the others from being swept
                log.exception("ending a silent upstream socket failed")
        self.expired += len(silent)
        return len(silent)

    async def _sweep_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._sockets:
            await asyncio.sleep(self._interval)
            self.sweep(loop.time())
        self._task = None

    async def close(self) -> None:
        """Stop sweeping (the sockets are closed by their owners)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


__all__ = ["SWEEP_INTERVAL", "IdleWatch", "Watched"]
