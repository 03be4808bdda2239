"""The users of the devices a worker holds, and what IMKIT says about them.

One :class:`UserState` per user with a device here, shared by the user's devices: the mute list
and notification switch (``GET /me``) and the badge (``GET /badge``), refetched at (re)connect
when older than :data:`USER_REFRESH_MIN_AGE`, periodically by the pool, the mute list again when
a ``roomPref`` event says it changed, and the badge when the user read a room elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from bridge.models import Device
from bridge.upstream.rest import ImkitRest, InvalidToken, RequestRejected, UpstreamUnavailable
from bridge.worker.state import DeviceRuntime, UserState

log = logging.getLogger(__name__)

#: A user's mute list and badge are refetched at (re)connect when older than this.
USER_REFRESH_MIN_AGE = 5.0


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

    def leave(self, device: Device) -> None:
        """The worker let the device go: the user is forgotten with their last device here."""
        owned = self._devices.get(device.client_id)
        if owned is not None:
            owned.discard(device.device_id)
            if not owned:
                del self._devices[device.client_id]
                self._users.pop(device.client_id, None)

    def stale(self, before: float) -> list[str]:
        """Users last fetched before ``before`` (monotonic seconds)."""
        return [u.client_id for u in self._users.values() if u.fetched_at < before]

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
