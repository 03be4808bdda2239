"""Small fakes of the worker parts' collaborators, passed through their constructors.

Each records what it was asked, so a test of one part (``bridge.worker.fanout``, ``results``,
``checkpoints``, ``users``, ``catchup``) reads as: what went in, what the fakes saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any

from bridge.config import Settings
from bridge.models import AppState, Device, Notification, Registration
from bridge.store.base import StoreUnavailable
from bridge.upstream.protocol import Message
from bridge.upstream.rest import Me
from bridge.worker.state import DeviceRuntime

ME = "alice"
NOW_MS = 1_760_000_000_000


def settings(**kw: Any) -> Settings:
    """Settings from defaults only (no ``.env``), for the parts that take them."""
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def device(
    device_id: str = "d1",
    *,
    client_id: str = ME,
    types: tuple[str, ...] = ("ios",),
    state: AppState = AppState.BACKGROUND,
) -> Device:
    regs = {t: Registration(type=t, token=f"{device_id}-{t}-token") for t in types}
    return Device(device_id=device_id, client_id=client_id, client_token=f"ct-{client_id}", registrations=regs, state=state)


def runtime(dev: Device | None = None) -> DeviceRuntime:
    return DeviceRuntime(device=dev or device())


def message(msg_id: str = "m1", *, room: str = "r1", at_ms: int = NOW_MS, sender: str = "bob", **kw: Any) -> Message:
    base: dict[str, Any] = {
        "_id": msg_id,
        "room": room,
        "messageType": "text",
        "message": f"text of {msg_id}",
        "sender": {"_id": sender, "nickname": sender.title()},
        "createdAtMS": at_ms,
    }
    base.update(kw)
    return Message.model_validate(base)


class FakeDispatcher:
    """Records each submitted notification; answers ``accept`` (False: a duplicate push id)."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.submitted: list[Notification] = []
        #: What ``claims_reachable`` answers (False: the shared claims store is down).
        self.claims_up = True

    async def submit(self, n: Notification) -> bool:
        self.submitted.append(n)
        return self.accept

    async def claims_reachable(self) -> bool:
        return self.claims_up


class FakeRest:
    """``GET /me`` and ``GET /me/badge`` (raising ``fail`` when set), plus the backfill reads."""

    def __init__(self, *, mute: frozenset[str] = frozenset(), badge: int = 0) -> None:
        self.mute = mute
        self.enabled = True
        self.badge_value = badge
        self.fail: Exception | None = None
        self.calls: list[tuple[str, str]] = []
        #: When set, ``me`` waits for it (a slow IMKIT).
        self.gate: asyncio.Event | None = None
        #: Backfill: room id -> raw messages, newest last.
        self.rooms: dict[str, list[dict[str, Any]]] = {}

    async def me(self, token: str) -> Me:
        self.calls.append(("me", token))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return Me(client_id=ME, nickname=None, mute=self.mute, notification_enabled=self.enabled)

    async def badge(self, token: str) -> int:
        self.calls.append(("badge", token))
        if self.fail is not None:
            raise self.fail
        return self.badge_value

    async def rooms_updated_after(self, token: str, since_ms: int) -> list[dict[str, Any]]:
        self.calls.append(("rooms", token))
        if self.fail is not None:
            raise self.fail
        return [{"_id": rid, "name": f"Room {rid}"} for rid in self.rooms]

    async def invitations(self, token: str) -> list[dict[str, Any]]:
        return []

    async def recent_messages(self, token: str, room_id: str, limit: int) -> list[dict[str, Any]]:
        return self.rooms.get(room_id, [])[-limit:]

    async def messages_after(self, token: str, room_id: str, anchor: str, limit: int) -> list[dict[str, Any]]:
        items = self.rooms.get(room_id, [])
        ids = [m["_id"] for m in items]
        return items[ids.index(anchor) + 1 :][:limit] if anchor in ids else items[:limit]


class FakeStore:
    """The store calls of the result sink and the checkpoints; ``down`` makes them all fail."""

    def __init__(self) -> None:
        self.down = False
        self.checkpoints: list[tuple[str, str, int]] = []
        self.checkpoint_batches = 0
        self.statuses: dict[str, dict[str, Any]] = {}
        self.disabled: list[tuple[str, str, str, str]] = []
        #: What ``disable_registration`` answers (False: the token changed since).
        self.disable_answer = True

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("down")

    async def set_checkpoint(self, device_id: str, message_id: str, version_ms: int) -> None:
        self._check()
        self.checkpoints.append((device_id, message_id, version_ms))

    async def set_checkpoints(self, checkpoints: Mapping[str, tuple[str, int]]) -> None:
        self._check()
        self.checkpoint_batches += 1
        self.checkpoints.extend((d, m, ms) for d, (m, ms) in checkpoints.items())

    async def put_status(self, device_id: str, status: dict[str, Any]) -> None:
        self._check()
        self.statuses[device_id] = status

    async def disable_registration(
        self, device_id: str, push_type: str, token: str, reason: str, *, since: float | None = None
    ) -> bool:
        self._check()
        self.disabled.append((device_id, push_type, token, reason))
        return self.disable_answer


class Spawned:
    """Stands in for the pool's background tasks: keeps the coroutines to run them when asked."""

    def __init__(self) -> None:
        self.coros: list[Coroutine[Any, Any, None]] = []

    def __call__(self, coro: Coroutine[Any, Any, None]) -> None:
        self.coros.append(coro)

    async def run_all(self) -> None:
        coros, self.coros = self.coros, []
        for c in coros:
            await c
