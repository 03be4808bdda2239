"""Every reason of bridge.decide, as a table of cases."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.decide import DeviceView, Gap, UserView, already_handled, apply_mute, decide, remember
from bridge.models import AppState, Reason
from bridge.upstream.protocol import CancelInvitation, Invitation, LastRead, Message
from bridge.worker.dedupe import SeenMessages

ME = "alice"


def msg(**kw: Any) -> Message:
    base: dict[str, Any] = {"_id": "m1", "room": "r1", "messageType": "text", "message": "hi", "sender": {"_id": "bob", "nickname": "Bob"}}
    base.update(kw)
    return Message.model_validate(base)


def inv(**kw: Any) -> Invitation:
    base: dict[str, Any] = {"room": {"_id": "r9", "name": "Party"}, "inviter": {"_id": "carol", "nickname": "Carol"}}
    base.update(kw)
    return Invitation.model_validate(base)


class KeySeen:
    """``decide``'s view of what was handled, from keys: ``m:<id>`` a message, ``s:<id>`` an AI
    reply still streaming, ``i:<room>`` an invitation."""

    def __init__(self, keys: set[str] | frozenset[str] = frozenset()) -> None:
        self.keys = frozenset(keys)

    def seen(self, room: str, msg_id: str, at_ms: int | None, *, gap: Gap | None = None) -> bool:
        return f"m:{msg_id}" in self.keys

    def streaming(self, msg_id: str) -> bool:
        return f"s:{msg_id}" in self.keys

    def invited(self, room: str) -> bool:
        return f"i:{room}" in self.keys


def real_seen(keys: set[str] | frozenset[str]) -> SeenMessages:
    """The same keys as the pool would have recorded them (a placeholder before its final)."""
    s = SeenMessages()
    for key in sorted(keys, key=lambda k: "smi".index(k[0])):
        kind, _, ident = key.partition(":")
        if kind == "i":
            s.add_invitation(ident)
        else:
            s.add("r1", ident, None, streaming=kind == "s")
    return s


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
    ("AI reply still streaming", "chat message", msg(messageType="ai_streaming", message=""), {}, Reason.MESSAGE_TYPE_OFF),
    ("AI reply update, seen streaming", "chat message", msg(messageType="ai_streaming"), {"seen": {"s:m1"}}, Reason.MESSAGE_TYPE_OFF),
    ("AI reply finished after its placeholder", "chat message", msg(), {"seen": {"s:m1"}}, Reason.PUSHED),
    ("AI reply finished, marked edited", "chat message", msg(editedAt="2026-01-01T00:00:00Z"), {"seen": {"s:m1"}}, Reason.PUSHED),
    ("AI reply finished, already alerted", "chat message", msg(), {"seen": {"s:m1", "m:m1"}}, Reason.DUPLICATE),
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


@pytest.mark.parametrize("store", ["keys", "SeenMessages"])
@pytest.mark.parametrize(("name", "event", "payload", "kw", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decide(name: str, event: str, payload: Any, kw: dict[str, Any], expected: Reason, store: str) -> None:
    keys = kw.get("seen", set())
    d = decide(
        event,
        payload,
        user=kw.get("user", USER),
        device=kw.get("device", BG),
        seen=KeySeen(keys) if store == "keys" else real_seen(keys),
        system_messages=kw.get("system_messages", False),
    )
    assert d.reason is expected
    assert d.push is (expected is Reason.PUSHED)


def decide_and_remember(event: str, payload: Any, seen: SeenMessages, gap: Gap | None = None) -> Reason:
    """What the pool does with one event: decide, then remember it whatever the decision."""
    reason = decide(event, payload, user=USER, device=BG, seen=seen, gap=gap).reason
    remember(event, payload, seen, gap)
    return reason


def test_remembered_events_dedupe_resends_edits_and_recalls() -> None:
    seen = SeenMessages()
    t = {"createdAtMS": 1_760_000_000_000}
    assert decide_and_remember("chat message", msg(**t), seen) is Reason.PUSHED
    assert decide_and_remember("chat message", msg(**t), seen) is Reason.DUPLICATE  # re-send
    edit = msg(editedAt="2026-01-01T00:00:00Z", updatedAtMS=1_760_000_060_000, **t)
    assert decide_and_remember("chat message", edit, seen) is Reason.DUPLICATE
    recall = msg(messageType="recall", updatedAtMS=1_760_000_090_000, **t)
    assert decide_and_remember("chat message", recall, seen) is Reason.DUPLICATE
    # Remembered whatever the decision: a foreground message's edit never alerts later either.
    m2 = msg(_id="m2", createdAtMS=1_760_000_000_001)
    assert decide("chat message", m2, user=USER, device=FG, seen=seen).reason is Reason.FOREGROUND
    remember("chat message", m2, seen)
    assert decide_and_remember("chat message", m2, seen) is Reason.DUPLICATE


def test_an_ai_reply_is_pushed_once_after_its_placeholder() -> None:
    seen = SeenMessages()
    placeholder = msg(_id="ai1", messageType="ai_streaming", message="")
    assert decide_and_remember("chat message", placeholder, seen) is Reason.MESSAGE_TYPE_OFF
    assert already_handled("chat message", placeholder, seen)
    partial = msg(_id="ai1", messageType="ai_streaming", message="Hel")
    assert decide_and_remember("chat message", partial, seen) is Reason.MESSAGE_TYPE_OFF
    final = msg(_id="ai1", message="Hello", editedAt="2026-01-01T00:00:00Z")
    assert decide_and_remember("chat message", final, seen) is Reason.PUSHED
    assert decide_and_remember("chat message", final, seen) is Reason.DUPLICATE


def test_an_invitation_is_new_again_after_its_cancel() -> None:
    seen = SeenMessages()
    assert decide_and_remember("invitation", inv(), seen) is Reason.PUSHED
    assert decide_and_remember("invitation", inv(), seen) is Reason.DUPLICATE
    cancel = CancelInvitation.model_validate({"room": "r9"})
    assert decide_and_remember("cancelInvitation", cancel, seen) is Reason.EVENT_NOT_PUSHED
    assert decide_and_remember("invitation", inv(), seen) is Reason.PUSHED
    assert not already_handled("typing", {"room": "r9"}, seen)


def test_a_backfilled_gap_message_is_new_though_live_traffic_moved_past_it() -> None:
    seen = SeenMessages()
    t0 = 1_760_000_000_000
    for i in range(20):  # live after the reconnect at t0 + 600 s: the window moves past the gap
        remember("chat message", msg(_id=f"live{i}", createdAtMS=t0 + 600_000 + i), seen)
    missed = msg(_id="gap1", createdAtMS=t0 + 1_000)
    assert decide("chat message", missed, user=USER, device=BG, seen=seen).reason is Reason.DUPLICATE
    gap = (t0, t0 + 600_000)
    assert decide_and_remember("chat message", missed, seen, gap) is Reason.PUSHED
    assert decide_and_remember("chat message", missed, seen, gap) is Reason.DUPLICATE


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
