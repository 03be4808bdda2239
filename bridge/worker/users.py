"""The users of the devices a worker holds, and what IMKIT says about them.

One :class:`UserState` per user with a device here, shared by the user's devices: the mute list
and notification switch (``GET /me``) and the badge (``GET /badge``), refetched at (re)connect
when older than :data:`USER_REFRESH_MIN_AGE`, periodically (:meth:`UserFacts.keep_fresh`, spread
over the interval), the mute list again when a ``roomPref`` event says it changed, and the badge
when the user read a room elsewhere.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from bridge.models import Device
from bridge.upstream.rest import ImkitRest, InvalidToken, RequestRejected, UpstreamUnavailable
from bridge.worker.state import DeviceRuntime, UserState

log = logging.getLogger(__name__)

#: A user's mute list and badge are refetched at (re)connect when older than this.
USER_REFRESH_MIN_AGE = 5.0
#: The periodic refresh goes at most this many times the even pace (users / interval): users
#: who fell due together (10,000 devices connected within minutes) are spread out instead of
#: refreshed in a burst, and users who fell behind still catch up.
CATCH_UP = 2.0
#: A user whose periodic refresh failed (or who was never fetched) is tried again this soon.
RETRY_AFTER = 30.0


class UserFacts:
    """Per-user state of this worker, kept fresh from IMKIT's REST API."""

    def __init__(self, rest: ImkitRest, *, runtimes: Mapping[str, DeviceRuntime]) -> None:
        self._rest = rest
        #: The pool's devices: a user's REST calls use the client token of one of them.
        self._runtimes = runtimes
        self._users: dict[str, UserState] = {}
        #: Devices of each user in this worker (to find a token for the user's REST calls).
        self._devices: dict[str, set[str]] = {}
        self._sem = asyncio.Semaphore(20)
        #: Users whose refresh is under way: the periodic tick and a reconnect must not queue
        #: another one each (at 10,000 users, refreshes slower than the tick piled up to 18
        #: REST calls per user and never settled: docs/benchmarks.md).
        self._refreshing: set[str] = set()
        #: When each user is next looked at by :meth:`keep_fresh`: a heap of (monotonic time,
        #: client id), one entry per user in ``_scheduled``. Entries go stale (a reconnect's
        #: refresh, the user left) and are checked when they come up, so nothing else touches it.
        self._due: list[tuple[float, str]] = []
        self._scheduled: set[str] = set()
        #: The interval :meth:`keep_fresh` runs with (None: not running, nothing is scheduled).
        self._interval: float | None = None

    def get(self, client_id: str) -> UserState | None:
        return self._users.get(client_id)

    def of(self, client_id: str) -> UserState:
        """The user's state, created empty if this worker had none."""
        user = self._users.get(client_id)
        if user is None:
            user = self._users[client_id] = UserState(client_id)
        return user

    def join(self, device: Device) -> None:
        """The worker took the device on."""
        self.of(device.client_id)
        self._devices.setdefault(device.client_id, set()).add(device.device_id)
        if self._interval is not None:
            self._schedule(device.client_id, time.monotonic() + self._interval)

    def leave(self, device: Device) -> None:
        """The worker let the device go: the user is forgotten with their last device here."""
        owned = self._devices.get(device.client_id)
        if owned is not None:
            owned.discard(device.device_id)
            if not owned:
                del self._devices[device.client_id]
                self._users.pop(device.client_id, None)

    def _schedule(self, client_id: str, at: float) -> None:
        if client_id not in self._scheduled:
            self._scheduled.add(client_id)
            heapq.heappush(self._due, (at, client_id))

    async def keep_fresh(
        self, interval: float, spawn: Callable[[Coroutine[Any, Any, None]], None], *, step: float = 0.1
    ) -> None:
        """Refetch every user about once per ``interval`` seconds, for ever (cancel to stop).

        A user comes due ``interval`` after their last fetch (a reconnect's refresh moves that),
        and due users are refreshed oldest first through ``spawn``, at most :data:`CATCH_UP`
        times the even rate ``users / interval``. So 10,000 users whose devices connected
        together cost a steady trickle of REST calls, not 20,000 calls in one burst every
        interval (which held the event loop for seconds: docs/benchmarks.md).
        """
        self._interval = interval
        step = min(step, interval / 10)
        now = time.monotonic()
        for client_id in self._users:
            self._schedule(client_id, now + interval)
        allowance, last = 0.0, now
        try:
            while True:
                await asyncio.sleep(step)
                now = time.monotonic()
                rate = CATCH_UP * len(self._users) / interval
                # No banking beyond one step's worth: an idle minute does not buy a burst later.
                allowance = min(allowance + rate * (now - last), max(1.0, rate * step))
                last = now
                allowance = self._start_due(now, interval, allowance, spawn)
        finally:
            self._interval = None
            self._due.clear()
            self._scheduled.clear()

    def _start_due(
        self, now: float, interval: float, allowance: float, spawn: Callable[[Coroutine[Any, Any, None]], None]
    ) -> float:
        """Start the refreshes of users due by ``now``, while ``allowance`` lasts; what is left of it."""
        while allowance >= 1.0 and self._due and self._due[0][0] <= now:
            _, client_id = heapq.heappop(self._due)
            user = self._users.get(client_id)
            if user is None:  # left since: forget the entry
                self._scheduled.discard(client_id)
                continue
            due = user.fetched_at + interval
            if due > now:  # fetched since it was scheduled
                heapq.heappush(self._due, (due, client_id))
                continue
            # Looked at again soon: a success moves its next turn to a full interval (the check
            # above), a failure is tried again after RETRY_AFTER.
            heapq.heappush(self._due, (now + min(RETRY_AFTER, interval), client_id))
            if client_id not in self._refreshing:
                spawn(self.refresh(client_id))
                allowance -= 1.0
        return allowance

    async def refresh(self, client_id: str, min_age: float = 0.0) -> None:
        """Refetch the user's mute list, switch and badge, unless fetched less than ``min_age`` ago
        or a refresh of the user is already under way (its answer serves this call too)."""
        user = self._users.get(client_id)
        if user is None or time.monotonic() - user.fetched_at < min_age or client_id in self._refreshing:
            return
        self._refreshing.add(client_id)
        try:
            await self._refresh(client_id, user)
        finally:
            self._refreshing.discard(client_id)

    async def _refresh(self, client_id: str, user: UserState) -> None:
        rt = next((self._runtimes[d] for d in self._devices.get(client_id, ()) if d in self._runtimes), None)
        if rt is None:
            return
        token = rt.device.client_token
        async with self._sem:
            try:
                me = await self._rest.me(token)
            except (InvalidToken, UpstreamUnavailable, RequestRejected) as exc:
                log.info("user refresh failed", extra={"client_id": client_id, "error": rest_error(exc)})
                return
            user.muted = frozenset(me.mute)
            user.notifications_enabled = me.notification_enabled
            try:
                user.badge = await self._rest.badge(token)
            except (InvalidToken, UpstreamUnavailable, RequestRejected) as exc:
                # The mute list is fresh; pushes go on with the badge we had (or none).
                log.info("badge refresh failed", extra={"client_id": client_id, "error": rest_error(exc)})
        user.fetched_at = time.monotonic()

    async def refresh_mutes(self, device: Device, user: UserState) -> None:
        """Reread the user's mute list and notification switch from ``GET /me`` now."""
        try:
            async with self._sem:
                me = await self._rest.me(device.client_token)
        except (InvalidToken, UpstreamUnavailable, RequestRejected) as exc:
            log.info("mute refresh failed", extra={"device_id": device.device_id, "error": rest_error(exc)})
            return
        user.muted = frozenset(me.mute)
        user.notifications_enabled = me.notification_enabled

    async def refresh_badge(self, device: Device) -> int | None:
        """Refetch the user's badge with the device's token; None if IMKIT did not answer it."""
        user = self.of(device.client_id)
        try:
            badge = await self._rest.badge(device.client_token)
        except (InvalidToken, UpstreamUnavailable, RequestRejected) as exc:
            log.info("badge refresh failed", extra={"device_id": device.device_id, "error": type(exc).__name__})
            return None
        user.badge = badge
        return badge

    async def token_refused(self, token: str) -> bool:
        """Does IMKIT refuse this client token? Only a 401 from ``GET /me`` says so."""
        try:
            async with self._sem:
                await self._rest.me(token)
        except InvalidToken:
            return True
        except (UpstreamUnavailable, RequestRejected):
            return False
        return False


def rest_error(exc: Exception) -> str:
    """A REST failure for the log: its class, and the HTTP status of a refusal (never a token)."""
    if isinstance(exc, RequestRejected):
        return f"RequestRejected({exc.status})"
    return type(exc).__name__
