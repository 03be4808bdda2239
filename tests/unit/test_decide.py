"""Every reason of bridge.decide, as a table of cases."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.decide import DeviceView, UserView, apply_mute, decide, dedupe_key
from bridge.models import AppState, Reason
from bridge.upstream.protocol import Invitation, LastRead, Message

ME = "alice"


def msg(**kw: Any) -> Message:
    base: dict[str, Any] = {"_id": "m1", "room": "r1", "messageType": "text", "message": "hi", "sender": {"_id": "bob", "nickname": "Bob"}}
    base.update(kw)
    return Message.model_validate(base)


def inv(**kw: Any) -> Invitation:
    base: dict[str, Any] = {"room": {"_id": "r9", "name": "Party"}, "inviter": {"_id": "carol", "nickname": "Carol"}}
    base.update(kw)
    return Invitation.model_validate(base)


BG = DeviceView(state=AppState.BACKGROUND)
FG = DeviceView(state=AppState.FOREGROUND)
USER = UserView(client_id=ME)

CASES: list[tuple[str, str, Any, dict[str, Any], Reason]] = [
    ("text in background", "chat message", msg(), {}, Reason.PUSHED),
    ("invitation in background", "invitation", inv(), {}, Reason.PUSHED),
    ("unknown message type", "chat message", msg(messageType="holo-gram"), {}, Reason.PUSHED),
    ("platform message, no sender", "chat message", msg(sender=None), {}, Reason.PUSHED),
    ("foreground", "chat message", msg(), {"device": FG}, Reason.FOREGROUND),
    ("invitation while foreground", "invitation", inv(), {"device": FG}, Reason.FOREGROUND),
    ("own message", "chat message", msg(sender={"_id": ME}), {}, Reason.OWN_MESSAGE),
    ("own invitation", "invitation", inv(inviter={"_id": ME}), {}, Reason.OWN_MESSAGE),
    ("muted room", "chat message", msg(), {"user": UserView(ME, muted_rooms=frozenset({"r1"}))}, Reason.MUTED),
    ("muted invited room", "invitation", inv(), {"user": UserView(ME, muted_rooms=frozenset({"r9"}))}, Reason.MUTED),
    ("notifications off", "chat message", msg(), {"user": UserView(ME, notifications_enabled=False)}, Reason.NOTIFICATIONS_DISABLED),
    ("same _id again", "chat message", msg(), {"seen": {"m:m1"}}, Reason.DUPLICATE),
    ("edit of an unseen message", "chat message", msg(editedAt="2026-01-01T00:00:00Z"), {}, Reason.DUPLICATE),
    ("same invitation again", "invitation", inv(), {"seen": {"i:r9"}}, Reason.DUPLICATE),
    ("recall", "chat message", msg(_id="m2", messageType="recall"), {}, Reason.MESSAGE_TYPE_OFF),
    ("system type, off by default", "chat message", msg(messageType="joinRoom"), {}, Reason.MESSAGE_TYPE_OFF),
    ("system type, switched on", "chat message", msg(messageType="addMembers"), {"system_messages": True}, Reason.PUSHED),
    ("typing", "typing", {"room": "r1", "message": "x"}, {}, Reason.EVENT_NOT_PUSHED),
    ("ai_streaming", "ai_streaming", {"room": "r1", "text": "x"}, {}, Reason.EVENT_NOT_PUSHED),
    ("lastRead", "lastRead", LastRead(roomID="r1", memberID=ME), {}, Reason.EVENT_NOT_PUSHED),
    ("roomPref", "roomPref", {"room": "r1"}, {}, Reason.EVENT_NOT_PUSHED),
    ("no working token", "chat message", msg(), {"device": DeviceView(AppState.BACKGROUND, has_active_token=False)}, Reason.TOKEN_INVALID),
    ("own message beats foreground", "chat message", msg(sender={"_id": ME}), {"device": FG}, Reason.OWN_MESSAGE),
    ("muted beats foreground", "chat message", msg(), {"device": FG, "user": UserView(ME, muted_rooms=frozenset({"r1"}))}, Reason.MUTED),
]


@pytest.mark.parametrize(("name", "event", "payload", "kw", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decide(name: str, event: str, payload: Any, kw: dict[str, Any], expected: Reason) -> None:
    d = decide(
        event,
        payload,
        user=kw.get("user", USER),
        device=kw.get("device", BG),
        seen=kw.get("seen", set()),
        system_messages=kw.get("system_messages", False),
    )
    assert d.reason is expected
    assert d.push is (expected is Reason.PUSHED)


def test_dedupe_keys() -> None:
    assert dedupe_key("chat message", msg(_id="x")) == "m:x"
    assert dedupe_key("invitation", inv()) == "i:r9"
    assert dedupe_key("typing", {"room": "r"}) is None


@pytest.mark.parametrize(
    ("before", "room", "muted", "after"),
    [
        (frozenset(), "r", True, frozenset({"r"})),
        (frozenset({"r"}), "r", False, frozenset()),
        (frozenset({"r"}), "r", None, frozenset({"r"})),  # unknown is not "unmuted"
        (frozenset({"a"}), "b", None, frozenset({"a"})),
    ],
)
def test_apply_mute(before: frozenset[str], room: str, muted: bool | None, after: frozenset[str]) -> None:
    assert apply_mute(before, room, muted) == after


@pytest.mark.parametrize(
    ("kind", "mtype", "types", "expected"),
    [
        ("message", "text", ["ios", "ios-voip"], ["ios"]),
        ("message", "waitingCall", ["ios", "ios-voip"], ["ios-voip"]),
        ("message", "waitingCall", ["ios"], ["ios"]),
        ("message", "text", ["ios-voip"], []),
        ("message", "waitingCall", ["fcm", "ios-voip"], ["fcm", "ios-voip"]),
        ("invitation", None, ["ios", "ios-voip", "android"], ["ios", "android"]),
        ("badge", None, ["ios-voip", "web"], ["web"]),
    ],
)
def test_route(kind: str, mtype: str | None, types: list[str], expected: list[str]) -> None:
    from bridge.decide import route

    assert route(kind, mtype, types) == expected
