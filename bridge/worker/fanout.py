"""The hot path: one upstream event for one device → a decision → a push per registration.

:meth:`Fanout.on_event` is the whole route of a chat message:

1. note what the event says about the user (a mute, a room name, a room read elsewhere);
2. decide (:func:`bridge.decide.decide`), remember the message for the dedupe, and record the
   decision in the device's history ("why no push?");
3. :meth:`Fanout.push`: count the message once in the user's badge, compose one request per
   registration the event is routed to, and hand each to the dispatcher, held in the device's
   ``pending`` (its checkpoint waits) until :class:`~bridge.worker.results.ResultSink` hears
   the provider's answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from bridge import compose
from bridge.config import Settings
from bridge.decide import DeviceView, Gap, UserView, apply_mute, decide, remember, route
from bridge.metrics import Metrics
from bridge.models import ApnsRequest, AppState, Device, Notification, Reason, Registration
from bridge.push.dispatcher import Dispatcher
from bridge.upstream.protocol import (
    CancelInvitation,
    Invitation,
    LastRead,
    Message,
    RoomEvent,
    RoomPref,
)
from bridge.worker.backfill import RoomSummary
from bridge.worker.compose_cache import ComposeCache
from bridge.worker.dedupe import message_time
from bridge.worker.history import ProviderResult
from bridge.worker.state import DeviceRuntime, UserState
from bridge.worker.users import UserFacts

log = logging.getLogger(__name__)

#: Events whose decisions are counted in ``bridge_decisions_total``.
_COUNTED = frozenset(("chat message", "invitation", "cancelInvitation", "lastRead", "roomPref", "room"))


class Fanout:
    """Turns a device's events into decisions and its pushes into dispatcher submissions."""

    def __init__(
        self,
        settings: Settings,
        *,
        dispatcher: Dispatcher,
        metrics: Metrics,
        users: UserFacts,
        status_changed: Callable[[str], None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        compose_cache: ComposeCache | None = None,
    ) -> None:
        self._settings = settings
        #: A message fanned out to many local devices is composed once per kind of recipient.
        self._compose = compose_cache if compose_cache is not None else ComposeCache()
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._users = users
        #: Called with the device id whenever its history grows.
        self._status_changed = status_changed
        #: Runs background work the owner waits for at shutdown (the badge refresh of a read).
        self._spawn = spawn

    async def on_event(
        self, rt: DeviceRuntime, name: str, payload: Any, source: str = "live", gap: Gap | None = None
    ) -> None:
        """Decide one event for the device, record it, push it. ``gap``: a backfilled event's gap."""
        received_at = time.monotonic()
        if source == "live":
            self._metrics.upstream_events.labels(name).inc()
        device = rt.device
        user = self._users.of(device.client_id)
        if isinstance(payload, RoomPref):
            # IMKIT documents roomPref's ``muted`` as not used yet (it sends false): applying it
            # would un-mute a muted room whenever a tag changes. The event still says the user
            # changed a room preference, so reread the mute list from GET /me, before the next event.
            await self._users.refresh_mutes(device, user)
        elif isinstance(payload, RoomEvent):
            user.muted = apply_mute(user.muted, payload.room.id, payload.room.muted)
            user.remember_room(payload.room.id, payload.room.name)
        elif isinstance(payload, Invitation):
            user.remember_room(payload.room.id, payload.room.name)
        elif isinstance(payload, LastRead):
            if payload.memberID == device.client_id:
                self._spawn(self.read_elsewhere(rt))
        now = time.time()
        decision = decide(
            name,
            payload,
            user=UserView(device.client_id, user.muted, user.notifications_enabled),
            device=DeviceView(
                state=device.effective_state(now), has_active_token=bool(device.active_registrations)
            ),
            seen=rt.seen,
            system_messages=self._settings.system_messages,
            gap=gap,
        )
        if name in _COUNTED:
            self._metrics.decisions.labels(decision.outcome, decision.reason.value).inc()
        remember(name, payload, rt.seen, gap)
        ticket = rt.history.add(
            now,
            name,
            payload.id if isinstance(payload, Message) else None,
            _room_of(payload),
            pushed=decision.push,
            reason=decision.reason.value,
            source=source,
        )
        if isinstance(payload, Message):
            rt.note_message(payload)
        self._status_changed(device.device_id)
        if decision.push and isinstance(payload, Message | Invitation):
            await self.push(rt, user, payload, ticket, received_at, gap)

    async def push(
        self,
        rt: DeviceRuntime,
        user: UserState,
        payload: Message | Invitation,
        ticket: int,
        received_at: float,
        gap: Gap | None = None,
    ) -> None:
        """Send a decided message or invitation to each registration it is routed to."""
        device = rt.device
        now = time.time()
        if isinstance(payload, Message) and user.badge is not None:
            # One unread per message for the user, however many of their devices push it.
            at_ms = message_time(payload)
            if not user.counted.seen(payload.room, payload.id, at_ms, gap=gap):
                user.counted.add(payload.room, payload.id, at_ms, gap=gap)
                user.badge += 1
        kind = "message" if isinstance(payload, Message) else "invitation"
        mtype = payload.messageType if isinstance(payload, Message) else None
        regs = {r.type: r for r in device.active_registrations}
        for push_type in route(kind, mtype, regs):
            reg = regs[push_type]
            target = self._target(device, reg, user.badge)
            try:
                if isinstance(payload, Message):
                    ident = payload.id
                    req = self._compose.message(payload, target, now=now, room_name=user.room_names.get(payload.room))
                else:
                    ident = payload.room.id
                    req = compose.compose_invitation(payload, target, now=now)
            except compose.ComposeError as exc:
                log.warning("notification cannot be composed", extra={"device_id": device.device_id, "error": str(exc)})
                rt.history.add_result(ticket, ProviderResult.local(reg.type, "failed", "compose_error"))
                continue
            n = notification_for(device.device_id, reg, kind, ident, req, received_at)
            rt.history.add_push(ticket, n.push_id)
            if isinstance(payload, Message):
                rt.pending[n.push_id] = payload.version_ms
            if not await self._dispatcher.submit(n):
                rt.pending.pop(n.push_id, None)
                rt.history.add_result(ticket, ProviderResult.local(reg.type, "duplicate"))

    async def push_summary(self, rt: DeviceRuntime, user: UserState, summary: RoomSummary) -> None:
        """Send one "N new messages" push standing in for a room's missed messages (backfill)."""
        device = rt.device
        now = time.time()
        ticket = rt.history.add(
            now, "summary", summary.newest.id, summary.room_id, pushed=True,
            reason=Reason.PUSHED.value, source="backfill",
        )
        newest = summary.newest
        rt.seen.add(newest.room, newest.id, message_time(newest))
        rt.note_message(summary.newest)
        regs = {r.type: r for r in device.active_registrations}
        for push_type in route("summary", None, regs):
            reg = regs[push_type]
            target = self._target(device, reg, user.badge)
            req = compose.compose_summary(summary.room_id, summary.count, target, now=now, room_name=summary.room_name or user.room_names.get(summary.room_id))
            ident = f"{summary.room_id}:{summary.newest.id}"
            n = notification_for(device.device_id, reg, "summary", ident, req, time.monotonic())
            rt.history.add_push(ticket, n.push_id)
            rt.pending[n.push_id] = summary.newest.version_ms
            if not await self._dispatcher.submit(n):
                rt.pending.pop(n.push_id, None)

    async def read_elsewhere(self, rt: DeviceRuntime) -> None:
        """The user read a room on another device: refresh the badge and update it silently."""
        device = rt.device
        badge = await self._users.refresh_badge(device)
        if badge is None:
            return
        # Each device hears the lastRead itself; a foreground app sets its own badge.
        if device.effective_state(time.time()) is AppState.FOREGROUND:
            return
        now = time.time()
        regs = {r.type: r for r in device.active_registrations}
        for push_type in route("badge", None, regs):
            reg = regs[push_type]
            target = compose.Target(push_type=reg.type, locale=device.locale, badge=badge)
            req = compose.compose_badge(target, badge, now=now)
            n = notification_for(
                device.device_id, reg, "badge", f"{badge}:{now:.3f}", req, time.monotonic()
            )
            await self._dispatcher.submit(n)

    def _target(self, device: Device, reg: Registration, badge: int | None) -> compose.Target:
        """How a push to this registration reads: its locale, badge and privacy mode."""
        return compose.Target(
            push_type=reg.type,
            locale=device.locale,
            badge=badge,
            content=reg.content or self._settings.push_content,
            content_key=reg.content_key,
            hidden_room_name=self._settings.push_hidden_room_name,
        )


def notification_for(
    device_id: str,
    reg: Registration,
    kind: str,
    ident: str,
    req: Any,
    received_at: float,
) -> Notification:
    """One push of a composed request to one registration; its id is stable per (device, type, kind, ident).

    The request gets the id as ``pushId`` (DESIGN §2), which the app sends back to acknowledge
    the push; compose keeps room for it within the size limits.
    """
    push_id = compose.push_id(f"{device_id}/{reg.type}", kind, ident)
    req = compose.with_push_id(req, push_id)
    return Notification(
        device_id=device_id,
        push_type=reg.type,
        token=reg.token,
        apns_environment=reg.apns_environment,
        push_id=push_id,
        kind=kind,
        apns=req if isinstance(req, ApnsRequest) else None,
        fcm=None if isinstance(req, ApnsRequest) else req,
        received_at=received_at,
    )


def _room_of(payload: Any) -> str | None:
    if isinstance(payload, Message):
        return payload.room
    if isinstance(payload, Invitation):
        return payload.room.id
    if isinstance(payload, LastRead):
        return payload.roomID
    if isinstance(payload, RoomPref | CancelInvitation):
        return payload.room
    if isinstance(payload, RoomEvent):
        return payload.room.id
    return None
