"""Should this event reach this device now? Pure functions, no I/O.

The order of the checks is the order of the reasons a user would ask about: an event that is never
pushed, a device without a working token, the user's own message, a message already alerted, a
message type that is off, notifications switched off, a muted room, and finally the app being in
the foreground. The caller records every chat message it decided on (whatever the outcome, see
:func:`remember`), so an edit or recall of it never alerts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.models import AppState, Decision, Reason
from bridge.upstream.protocol import CancelInvitation, Invitation, Message
from bridge.worker.dedupe import message_time

#: Member-change and other bookkeeping message types: pushed only with BRIDGE_SYSTEM_MESSAGES=true.
SYSTEM_MESSAGE_TYPES: frozenset[str] = frozenset(
    {
        "joinRoom",
        "leaveRoom",
        "addMember",
        "addMembers",
        "deleteMember",
        "deleteMembers",
        "cancelInvitations",
    }
)

#: Message types that never alert: a recall replaces a message, AI chunks precede the final one.
SILENT_MESSAGE_TYPES: frozenset[str] = frozenset({"recall", "ai_streaming", "typing"})

#: A ``chat message`` of this type is an AI reply still being streamed (the placeholder, or a
#: partial update): the finished message comes later with the same ``_id`` and another type.
STREAMING_MESSAGE_TYPES: frozenset[str] = frozenset({"ai_streaming"})

PUSHED_EVENTS: frozenset[str] = frozenset({"chat message", "invitation"})


@dataclass(frozen=True, slots=True)
class UserView:
    """What the session knows about its user when an event arrives."""

    client_id: str
    muted_rooms: frozenset[str] = frozenset()
    notifications_enabled: bool = True


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What the decision needs to know about the device."""

    state: AppState
    has_active_token: bool = True


#: A backfill's gap ``(after_ms, before_ms)``: message times strictly between were not heard live.
Gap = tuple[int, int]


class Seen(Protocol):
    """What the device already handled (read side; :class:`bridge.worker.dedupe.SeenMessages`)."""

    def seen(self, room: str, msg_id: str, at_ms: int | None, *, gap: Gap | None = None) -> bool: ...

    def streaming(self, msg_id: str) -> bool: ...

    def invited(self, room: str) -> bool: ...


class Remembers(Protocol):
    """The write side of :class:`Seen`, for :func:`remember`."""

    def add(
        self, room: str, msg_id: str, at_ms: int | None, *, streaming: bool = False, gap: Gap | None = None
    ) -> None: ...

    def add_invitation(self, room: str) -> None: ...

    def cancel_invitation(self, room: str) -> None: ...


def already_handled(event_name: str, payload: Any, seen: Seen, gap: Gap | None = None) -> bool:
    """Was this message ``_id`` (any version of it) or this room's invitation handled before?

    A message still streaming is remembered apart (:meth:`Seen.streaming`): its finished
    version, which has the same ``_id``, is no duplicate of it.
    """
    if event_name == "chat message" and isinstance(payload, Message):
        if payload.messageType in STREAMING_MESSAGE_TYPES:
            return seen.streaming(payload.id)
        return seen.seen(payload.room, payload.id, message_time(payload), gap=gap)
    if event_name == "invitation" and isinstance(payload, Invitation):
        return seen.invited(payload.room.id)
    return False


def remember(event_name: str, payload: Any, seen: Remembers, gap: Gap | None = None) -> None:
    """Record a decided event in ``seen`` (whatever the decision): chat messages by ``_id``
    (a streaming one apart), invitations by room; ``cancelInvitation`` forgets the room's.
    ``gap``: the backfill's, as for :func:`decide`."""
    if event_name == "chat message" and isinstance(payload, Message):
        streaming = payload.messageType in STREAMING_MESSAGE_TYPES
        seen.add(payload.room, payload.id, message_time(payload), streaming=streaming, gap=gap)
    elif event_name == "invitation" and isinstance(payload, Invitation):
        seen.add_invitation(payload.room.id)
    elif event_name == "cancelInvitation" and isinstance(payload, CancelInvitation):
        seen.cancel_invitation(payload.room)


def decide(
    event_name: str,
    payload: Any,
    *,
    user: UserView,
    device: DeviceView,
    seen: Seen,
    system_messages: bool = False,
    gap: Gap | None = None,
) -> Decision:
    """Push or suppress one upstream event for one device, with the reason.

    ``gap`` is set for a backfilled event: the gap it was fetched for (see :class:`Seen`).
    """
    if event_name not in PUSHED_EVENTS or not isinstance(payload, Message | Invitation):
        return Decision(False, Reason.EVENT_NOT_PUSHED)
    if not device.has_active_token:
        return Decision(False, Reason.TOKEN_INVALID)

    if isinstance(payload, Message):
        room_id = payload.room
        if payload.sender_id is not None and payload.sender_id == user.client_id:
            return Decision(False, Reason.OWN_MESSAGE)
        if payload.messageType in STREAMING_MESSAGE_TYPES:
            return Decision(False, Reason.MESSAGE_TYPE_OFF)
        # An edit re-sends a known _id; one never seen is still an edit of a message delivered
        # before, unless it is the end of a stream we saw begin (that one was never alerted).
        if already_handled(event_name, payload, seen, gap) or (
            payload.editedAt and not seen.streaming(payload.id)
        ):
            return Decision(False, Reason.DUPLICATE)
        if payload.messageType in SILENT_MESSAGE_TYPES:
            return Decision(False, Reason.MESSAGE_TYPE_OFF)
        if payload.messageType in SYSTEM_MESSAGE_TYPES and not system_messages:
            return Decision(False, Reason.MESSAGE_TYPE_OFF)
    else:
        room_id = payload.room.id
        if payload.inviter is not None and payload.inviter.id == user.client_id:
            return Decision(False, Reason.OWN_MESSAGE)
        if seen.invited(room_id):
            return Decision(False, Reason.DUPLICATE)

    if not user.notifications_enabled:
        return Decision(False, Reason.NOTIFICATIONS_DISABLED)
    if room_id in user.muted_rooms:
        return Decision(False, Reason.MUTED)
    if device.state is AppState.FOREGROUND:
        return Decision(False, Reason.FOREGROUND)
    return Decision(True, Reason.PUSHED)


def apply_mute(muted_rooms: frozenset[str], room_id: str, muted: bool | None) -> frozenset[str]:
    """The muted-room set after a ``room``/``roomPref`` update; ``None`` (unknown) changes nothing."""
    if muted is None:
        return muted_rooms
    if muted:
        return muted_rooms | {room_id}
    return muted_rooms - {room_id}


#: Message types that ring: sent to ``ios-voip`` tokens (iOS ends apps that get a VoIP push without a call).
CALL_MESSAGE_TYPES: frozenset[str] = frozenset({"waitingCall"})


def route(kind: str, message_type: str | None, push_types: Iterable[str]) -> list[str]:
    """Which of a device's active registration types get a notification of this kind.

    ``ios-voip`` only ever gets incoming calls, and a call goes to ``ios-voip`` instead of ``ios``
    when the device has both; every other registration gets everything.
    """
    types = list(push_types)
    is_call = kind == "message" and message_type in CALL_MESSAGE_TYPES
    if is_call and "ios-voip" in types:
        return [t for t in types if t != "ios"]
    return [t for t in types if t != "ios-voip"]
