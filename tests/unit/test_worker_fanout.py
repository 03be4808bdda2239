"""bridge.worker.fanout: one event for one device → a decision → a push per routed registration.

The fan-out is given a fake dispatcher (recording submits), user facts over a fake REST client,
and callbacks that record what they are told; no socket, no store.
"""

from __future__ import annotations

from typing import Any

from bridge import compose
from bridge.metrics import Metrics
from bridge.models import AppState
from bridge.upstream.protocol import LastRead, RoomPref
from bridge.worker.backfill import RoomSummary
from bridge.worker.fanout import Fanout, notification_for
from bridge.worker.state import DeviceRuntime
from bridge.worker.users import UserFacts
from tests.unit._worker_fakes import (
    NOW_MS,
    FakeDispatcher,
    FakeRest,
    Spawned,
    device,
    message,
    runtime,
    settings,
)


class Rig:
    """A :class:`Fanout` with its collaborators, and the devices it serves."""

    def __init__(self, *, accept: bool = True, badge: int = 0) -> None:
        self.dispatcher = FakeDispatcher(accept)
        self.rest = FakeRest(badge=badge)
        self.runtimes: dict[str, DeviceRuntime] = {}
        self.users = UserFacts(self.rest, runtimes=self.runtimes)  # type: ignore[arg-type]
        self.changed: list[str] = []
        self.spawned = Spawned()
        self.fanout = Fanout(
            settings(),
            dispatcher=self.dispatcher,  # type: ignore[arg-type]
            metrics=Metrics(),
            users=self.users,
            status_changed=self.changed.append,
            spawn=self.spawned,
        )

    def add(self, rt: DeviceRuntime) -> DeviceRuntime:
        self.runtimes[rt.device.device_id] = rt
        self.users.join(rt.device)
        return rt


def pid(device_id: str, push_type: str, kind: str, ident: str) -> str:
    return compose.push_id(f"{device_id}/{push_type}", kind, ident)


async def test_a_message_to_a_background_device_is_pushed_to_each_registration() -> None:
    rig = Rig()
    rt = rig.add(runtime(device("d1", types=("ios", "fcm"))))
    msg = message("m1", at_ms=1_000)

    await rig.fanout.on_event(rt, "chat message", msg)

    sent = rig.dispatcher.submitted
    assert [(n.push_type, n.token, n.kind) for n in sent] == [("ios", "d1-ios-token", "message"), ("fcm", "d1-fcm-token", "message")]
    assert [n.push_id for n in sent] == [pid("d1", "ios", "message", "m1"), pid("d1", "fcm", "message", "m1")]
    # Each push holds the checkpoint at the message until its answer comes.
    assert rt.pending == {n.push_id: 1_000 for n in sent}
    assert rt.high_water == (1_000, "m1")
    assert rt.safe_checkpoint() == (999, "m1")
    [event] = rt.history.as_dicts()
    assert (event["event"], event["id"], event["room"], event["decision"], event["source"]) == ("chat message", "m1", "r1", "pushed", "live")
    assert [p["pushId"] for p in event["pushes"]] == [n.push_id for n in sent]
    assert rig.changed == ["d1"]


async def test_a_foreground_device_submits_nothing_and_says_why() -> None:
    rig = Rig()
    rt = rig.add(runtime(device("d1", types=("ios", "fcm"), state=AppState.FOREGROUND)))

    await rig.fanout.on_event(rt, "chat message", message("m1"))

    assert rig.dispatcher.submitted == []
    assert rt.pending == {}
    [event] = rt.history.as_dicts()
    assert (event["decision"], event["reason"], event["pushes"]) == ("suppressed", "foreground", [])
    # Decided all the same: the checkpoint may move past it.
    assert rt.safe_checkpoint() == (NOW_MS, "m1")


async def test_the_same_message_again_is_a_duplicate() -> None:
    rig = Rig()
    rt = rig.add(runtime())
    await rig.fanout.on_event(rt, "chat message", message("m1"))
    await rig.fanout.on_event(rt, "chat message", message("m1"))

    assert len(rig.dispatcher.submitted) == 1
    assert [e["reason"] for e in rt.history.as_dicts()] == ["duplicate", "pushed"]


async def test_a_push_id_the_dispatcher_refuses_holds_nothing() -> None:
    rig = Rig(accept=False)  # already claimed (by a previous owner, say)
    rt = rig.add(runtime())

    await rig.fanout.on_event(rt, "chat message", message("m1"))

    assert rt.pending == {}
    [event] = rt.history.as_dicts()
    assert [r["outcome"] for r in event["results"]] == ["duplicate"]


async def test_a_voip_registration_gets_calls_only() -> None:
    rig = Rig()
    rt = rig.add(runtime(device("d1", types=("ios", "ios-voip"))))

    await rig.fanout.on_event(rt, "chat message", message("m1"))
    await rig.fanout.on_event(rt, "chat message", message("c1", messageType="waitingCall"))

    assert [(n.push_type, n.push_id) for n in rig.dispatcher.submitted] == [
        ("ios", pid("d1", "ios", "message", "m1")),
        ("ios-voip", pid("d1", "ios-voip", "message", "c1")),
    ]


async def test_one_message_counts_once_in_the_users_badge_across_their_devices() -> None:
    rig = Rig()
    phone, tablet = rig.add(runtime(device("phone"))), rig.add(runtime(device("tablet")))
    user = rig.users.of("alice")
    user.badge = 3

    await rig.fanout.on_event(phone, "chat message", message("m1"))
    await rig.fanout.on_event(tablet, "chat message", message("m1"))
    await rig.fanout.on_event(tablet, "chat message", message("m2"))

    assert user.badge == 5
    badges = [n.apns.payload["aps"]["badge"] for n in rig.dispatcher.submitted if n.apns]
    assert badges == [4, 4, 5]


async def test_room_pref_rereads_the_mute_list_before_the_next_message() -> None:
    rig = Rig()
    rt = rig.add(runtime())
    rig.rest.mute = frozenset({"r1"})

    await rig.fanout.on_event(rt, "roomPref", RoomPref.model_validate({"room": "r1", "muted": False}))
    await rig.fanout.on_event(rt, "chat message", message("m1", room="r1"))

    assert ("me", "ct-alice") in rig.rest.calls
    assert rig.dispatcher.submitted == []
    assert rt.history.as_dicts()[0]["reason"] == "muted"


async def test_read_elsewhere_updates_the_badge_silently_in_the_background() -> None:
    rig = Rig(badge=7)
    rt = rig.add(runtime())

    read = LastRead.model_validate({"roomID": "r1", "memberID": "alice"})
    await rig.fanout.on_event(rt, "lastRead", read)
    assert rig.dispatcher.submitted == []  # the refresh runs in the background
    await rig.spawned.run_all()

    [n] = rig.dispatcher.submitted
    assert n.kind == "badge" and n.apns is not None and n.apns.payload["aps"]["badge"] == 7
    assert rig.users.of("alice").badge == 7
    # Another member's read says nothing about this user's unread count.
    await rig.fanout.on_event(rt, "lastRead", LastRead.model_validate({"roomID": "r1", "memberID": "bob"}))
    assert rig.spawned.coros == []


async def test_a_summary_pushes_once_per_registration_and_holds_the_checkpoint() -> None:
    rig = Rig()
    rt = rig.add(runtime(device("d1", types=("ios", "fcm"))))
    newest = message("m9", at_ms=9_000)

    await rig.fanout.push_summary(rt, rig.users.of("alice"), RoomSummary("r1", 12, newest, "Team"))

    ids = [n.push_id for n in rig.dispatcher.submitted]
    assert ids == [pid("d1", "ios", "summary", "r1:m9"), pid("d1", "fcm", "summary", "r1:m9")]
    assert rt.pending == dict.fromkeys(ids, 9_000)
    [event] = rt.history.as_dicts()
    assert (event["event"], event["id"], event["source"]) == ("summary", "m9", "backfill")


def test_notification_for_carries_the_push_id_and_the_registration() -> None:
    dev = device("d1", types=("ios",))
    reg = dev.registrations["ios"]
    req: Any = compose.compose_message(message("m1"), compose.Target(push_type="ios"), now=1.0)

    n = notification_for("d1", reg, "message", "m1", req, received_at=5.0)

    assert n.push_id == pid("d1", "ios", "message", "m1")
    assert n.apns is not None and n.apns.payload["pushId"] == n.push_id
    assert (n.token, n.received_at, n.fcm) == ("d1-ios-token", 5.0, None)
