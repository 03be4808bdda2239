"""Claims: "send at most once" keys, one per push id, that expire after a while."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol


class Claims(Protocol):
    """A set of expiring push-id keys; whoever claims an id first may send that push.

    In one process :class:`MemoryClaims` is enough; several nodes share one in Redis
    (:class:`bridge.push.redis_claims.RedisClaims`), so two workers that briefly both hold a
    device during a hand-over still send each push once.
    """

    #: Whether other processes share these claims. Only then can another one take a claim over,
    #: so only then is a send marked (:meth:`sending`); in one process that is a task per push saved.
    shared: bool

    async def claim(self, push_id: str, ttl: float) -> bool:
        """Take ``push_id`` for ``ttl`` seconds; True only the first time within that window."""
        ...

    async def sending(self, push_id: str, ttl: float) -> bool:
        """Marks a claimed push as being sent (its first send): True if this process may send it.

        False when another process holds the claim now (it took over the claim of a process it
        believed dead): that one sends the push, so this one must not.
        """
        ...

    def confirm_before_send(self) -> bool:
        """Whether a send must wait for :meth:`sending`'s answer.

        False while no other process can have taken this one's claims over: the send then starts
        together with the mark, so both leave in the same event-loop step and a process killed
        in between (a lost push, or one sent twice) is as unlikely as can be.
        """
        ...

    async def release(self, push_id: str) -> None:
        """Give ``push_id`` back (a push given up before any send), so a later try may claim it."""
        ...

    async def reachable(self) -> bool:
        """Whether claims can be checked now (a backfill waits while they cannot, see
        :meth:`bridge.push.dispatcher.Dispatcher.claims_reachable`)."""
        ...


class MemoryClaims:
    """In-process claims, bounded by ``max_entries``.

    Entries are kept in insertion order, so with one TTL (the dispatcher's) the oldest entry is
    also the first to expire: expired entries are purged from the front on every claim, and past
    ``max_entries`` the oldest live entry is forgotten (a duplicate of it could then slip through,
    which is the price of bounded memory).
    """

    shared = False

    def __init__(
        self, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._clock = clock
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    async def claim(self, push_id: str, ttl: float) -> bool:
        """True the first time ``push_id`` is claimed within ``ttl`` seconds, False afterwards."""
        now = self._clock()
        self._purge(now)
        expires = self._expiry.get(push_id)
        if expires is not None and expires > now:
            return False
        self._expiry[push_id] = now + ttl
        self._expiry.move_to_end(push_id)
        while len(self._expiry) > self._max_entries:
            self._expiry.popitem(last=False)
        return True

    async def sending(self, push_id: str, ttl: float) -> bool:
        """Always True: in one process nobody else can take a claim over."""
        return True

    def confirm_before_send(self) -> bool:
        """Always False (see :meth:`sending`)."""
        return False

    def holds(self, push_id: str) -> bool:
        """Whether ``push_id`` is claimed now (without claiming it)."""
        expires = self._expiry.get(push_id)
        return expires is not None and expires > self._clock()

    async def release(self, push_id: str) -> None:
        """Forget ``push_id`` (no error if it is unknown or already expired)."""
        self._expiry.pop(push_id, None)

    async def reachable(self) -> bool:
        """Always True: they are in this process."""
        return True

    def _purge(self, now: float) -> None:
        # Stops at the first live entry: entries claimed with a longer TTL than a later one may
        # linger a little, but the size bound still holds.
        while self._expiry:
            push_id, expires = next(iter(self._expiry.items()))
            if expires > now:
                break
            del self._expiry[push_id]
