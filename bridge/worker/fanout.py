"""The hot path: one upstream event for one device → a decision → a push per registration.

:meth:`Fanout.on_event` is the whole route of a chat message:

1. note what the event says about the user (a mute, a room name, a room read elsewhere);
2. decide (:func:`bridge.decide.decide`), remember the message for the dedupe, and record the
   decision in the device's history ("why no push?");
3. :meth:`Fanout.push`: count the message once in the user's badge, compose one request per
   registration the event is routed to, and hand each to the dispatcher, held in the device's
   ``pending`` (its checkpoint waits) until :class:`~bridge.worker.results.ResultSink` hears
   the provider's answer.

:func:`fan_out` is that route → compose → push id step, the one every push takes: live events,
backfilled ones and their summaries, silent badge updates, and the API's test push.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from bridge import compose
from bridge.config import Settings
from bridge.decide import (
    DeviceView,
    Gap,
    UserView,
    already_handled,
    apply_mute,
    decide,
    remember,
    route,
)
from bridge.metrics import Metrics
from bridge.models import ApnsRequest, Device, Notification, Reason, Registration
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
            # One unread per message for the user, however many of their devices push it: the
            # user's count follows the same rule as a device's dedupe.
            if not already_handled("chat message", payload, user.counted, gap):
                remember("chat message", payload, user.counted, gap)
                user.badge += 1
        if isinstance(payload, Message):
            msg, room_name = payload, user.room_names.get(payload.room)
            kind, ident, mtype, hold = "message", msg.id, msg.messageType, msg.version_ms

            def compose_for(target: compose.Target) -> compose.Request:
                return self._compose.message(msg, target, now=now, room_name=room_name)

        else:
            inv = payload
            kind, ident, mtype, hold = "invitation", inv.room.id, None, None

            def compose_for(target: compose.Target) -> compose.Request:
                return compose.compose_invitation(inv, target, now=now)

        pushes = fan_out(
            self._settings, device, kind, ident, compose_for,
            badge=user.badge, message_type=mtype, received_at=received_at,
        )  # fmt: skip
        for n in pushes:
            if isinstance(n, ProviderResult):
                rt.history.add_result(ticket, n)
            elif not await self._submit(rt, ticket, n, hold):
                rt.history.add_result(ticket, ProviderResult.local(n.push_type, "duplicate"))

    async def push_summary(self, rt: DeviceRuntime, user: UserState, summary: RoomSummary) -> None:
        """Send one "N new messages" push standing in for a room's missed messages (backfill)."""
        device = rt.device
        now = time.time()
        newest = summary.newest
        ticket = rt.history.add(
            now, "summary", newest.id, summary.room_id, pushed=True,
            reason=Reason.PUSHED.value, source="backfill",
        )
        remember("chat message", newest, rt.seen)
        rt.note_message(newest)
        room_name = summary.room_name or user.room_names.get(summary.room_id)

        def compose_for(target: compose.Target) -> compose.Request:
            return compose.compose_summary(
                summary.room_id, summary.count, target, now=now, room_name=room_name
            )

        ident = f"{summary.room_id}:{newest.id}"
        pushes = fan_out(
            self._settings, device, "summary", ident, compose_for,
            badge=user.badge, received_at=time.monotonic(),
        )  # fmt: skip
        for n in pushes:
            if isinstance(n, ProviderResult):
                rt.history.add_result(ticket, n)
            else:
                await self._submit(rt, ticket, n, newest.version_ms)

    async def read_elsewhere(self, rt: DeviceRuntime) -> None:
        """The user read a room on another device: refresh the badge and update it silently."""
        device = rt.device
        badge = await self._users.refresh_badge(device)
        if badge is None:
            return
        # Each device hears the lastRead itself; a foreground app sets its own badge.
        now = time.time()
        if device.in_foreground(now):
            return

        def compose_for(target: compose.Target) -> compose.Request:
            return compose.compose_badge(target, badge, now=now)

        pushes = fan_out(
            self._settings, device, "badge", f"{badge}:{now:.3f}", compose_for,
            badge=badge, received_at=time.monotonic(),
        )  # fmt: skip
        for n in pushes:
            if isinstance(n, Notification):
                await self._dispatcher.submit(n)

    async def _submit(self, rt: DeviceRuntime, ticket: int, n: Notification, hold: int | None) -> bool:
        """Hand ``n``, a push of the event ``ticket``, to the dispatcher; ``hold`` is the message
        version the device's checkpoint waits at until the answer comes (None: none). False when
        the dispatcher refuses the push id (already claimed: a duplicate)."""
        rt.history.add_push(ticket, n.push_id)
        if hold is not None:
            rt.pending[n.push_id] = hold
        if await self._dispatcher.submit(n):
            return True
        rt.pending.pop(n.push_id, None)
        return False


def target_for(
    settings: Settings, device: Device, reg: Registration, badge: int | None = None
) -> compose.Target:
    """How a push to this registration reads: the device's language, the badge, the privacy mode."""
    return compose.Target(
        push_type=reg.type,
        locale=device.locale,
        badge=badge,
        content=reg.content or settings.push_content,
        content_key=reg.content_key,
        hidden_room_name=settings.push_hidden_room_name,
    )


def fan_out(
    settings: Settings,
    device: Device,
    kind: str,
    ident: str,
    compose_for: Callable[[compose.Target], compose.Request],
    *,
    badge: int | None = None,
    message_type: str | None = None,
    received_at: float,
) -> Iterator[Notification | ProviderResult]:
    """One push of a ``kind`` of push (``ident``: its message or room) per active registration
    of the device that it is routed to (:func:`bridge.decide.route`): composed for the
    registration's :func:`target_for` by ``compose_for``, with its push id.

    A push that cannot be composed (:class:`~bridge.compose.ComposeError`) is logged and comes
    as its ``failed``/``compose_error`` result instead.
    """
    regs = {r.type: r for r in device.active_registrations}
    for push_type in route(kind, message_type, regs):
        reg = regs[push_type]
        try:
            req = compose_for(target_for(settings, device, reg, badge))
        except compose.ComposeError as exc:
            log.warning("notification cannot be composed", extra={"device_id": device.device_id, "error": str(exc)})
            yield ProviderResult.local(reg.type, "failed", "compose_error")
            continue
        yield notification_for(device.device_id, reg, kind, ident, req, received_at)


def notification_for(
    device_id: str,
    reg: Registration,
    kind: str,
    ident: str,
    req: compose.Request,
    received_at: float,
) -> Notification:
    """One push of a composed request to one registration; its id is stable per (device, type, kind, ident).

    The request gets the id as ``pushId``, which the app sends back to acknowledge the push
    (docs/api.md); compose keeps room for it within the size limits.
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
