"""bridge.worker.catchup: a device's gap is fetched, planned and pushed through the fan-out.

Given a fake REST client (the backfill reads), a fake dispatcher behind a real fan-out, and user
facts over the same REST client.
"""

from __future__ import annotations

import time
from typing import Any

from bridge.metrics import Metrics
from bridge.models import AppState
from bridge.upstream.rest import InvalidToken, UpstreamUnavailable
from bridge.worker.catchup import CatchUp
from bridge.worker.fanout import Fanout
from bridge.worker.state import DeviceRuntime
from bridge.worker.users import UserFacts
from tests.unit._worker_fakes import (
    NOW_MS,
    FakeDispatcher,
    FakeRest,
    Spawned,
    device,
    runtime,
    settings,
)


def raw(msg_id: str, at_ms: int, room: str = "r1") -> dict[str, Any]:
    return {"_id": msg_id, "room": room, "messageType": "text", "message": msg_id, "sender": {"_id": "bob"}, "createdAtMS": at_ms}


class Rig:
    def __init__(self, **kw: Any) -> None:
        self.rest = FakeRest()
        self.dispatcher = FakeDispatcher()
        self.runtimes: dict[str, DeviceRuntime] = {}
        self.users = UserFacts(self.rest, runtimes=self.runtimes)  # type: ignore[arg-type]
        s = settings(**kw)
        fanout = Fanout(s, dispatcher=self.dispatcher, metrics=Metrics(), users=self.users, status_changed=lambda _: None, spawn=Spawned())  # type: ignore[arg-type]
        self.catchup = CatchUp(s, rest=self.rest, metrics=Metrics(), users=self.users, fanout=fanout, dispatcher=self.dispatcher)  # type: ignore[arg-type]

    def add(self, rt: DeviceRuntime) -> DeviceRuntime:
        self.runtimes[rt.device.device_id] = rt
        self.users.join(rt.device)
        return rt


async def test_missed_messages_are_pushed_like_live_ones_marked_backfill() -> None:
    rig = Rig()
    rt = rig.add(runtime())
    now_ms = int(time.time() * 1000)
    rig.rest.rooms = {"r1": [raw("old", now_ms - 10_000), raw("m1", now_ms - 2_000), raw("m2", now_ms - 1_000)]}

    assert await rig.catchup.backfill(rt, since_ms=now_ms - 5_000, anchors={})

    assert [n.push_id for n in rig.dispatcher.submitted] == list(rt.pending)
    assert [e["id"] for e in rt.history.as_dicts()] == ["m2", "m1"]
    assert {e["source"] for e in rt.history.as_dicts()} == {"backfill"}
    assert rt.high_water == (now_ms - 1_000, "m2") and rt.anchors["r1"] == "m2"
    assert rig.users.of("alice").room_names == {"r1": "Room r1"}
    assert not rt.backfilling


async def test_claims_out_of_reach_push_nothing_and_ask_for_a_retry() -> None:
    """The previous owner may have pushed the gap already; unchecked, it would go out twice."""
    rig = Rig()
    rt = rig.add(runtime())
    now_ms = int(time.time() * 1000)
    rig.rest.rooms = {"r1": [raw("m1", now_ms - 2_000)]}
    rig.dispatcher.claims_up = False

    assert await rig.catchup.backfill(rt, since_ms=now_ms - 5_000, anchors={}) is False
    assert rig.dispatcher.submitted == [] and rt.history.as_dicts() == [] and not rt.backfilling

    rig.dispatcher.claims_up = True  # back: the retry pushes it, nothing was marked seen meanwhile
    assert await rig.catchup.backfill(rt, since_ms=now_ms - 5_000, anchors={})
    assert [e["id"] for e in rt.history.as_dicts()] == ["m1"] and len(rig.dispatcher.submitted) == 1


async def test_a_room_over_the_cap_is_one_summary() -> None:
    rig = Rig(backfill_room_cap=2)
    rt = rig.add(runtime())
    now_ms = int(time.time() * 1000)
    rig.rest.rooms = {"r1": [raw(f"m{i}", now_ms - 1_000 + i) for i in range(3)]}

    assert await rig.catchup.backfill(rt, since_ms=now_ms - 5_000, anchors={})

    [n] = rig.dispatcher.submitted
    assert n.kind == "summary"
    assert rt.history.as_dicts()[0]["event"] == "summary"


async def test_imkit_down_asks_for_a_retry_and_a_dead_token_does_not() -> None:
    rig = Rig()
    rt = rig.add(runtime())
    rig.rest.fail = UpstreamUnavailable("down")
    assert not await rig.catchup.backfill(rt, since_ms=NOW_MS, anchors={})
    assert not rt.backfilling
    rig.rest.fail = InvalidToken("401")
    assert await rig.catchup.backfill(rt, since_ms=NOW_MS, anchors={})
    assert rig.dispatcher.submitted == []


async def test_nothing_is_fetched_for_a_foreground_device_or_during_another_backfill() -> None:
    rig = Rig()
    fg = rig.add(runtime(device("fg", state=AppState.FOREGROUND)))
    assert await rig.catchup.backfill(fg, since_ms=NOW_MS, anchors={})
    busy = rig.add(runtime(device("busy")))
    busy.backfilling = True
    assert not await rig.catchup.backfill(busy, since_ms=NOW_MS, anchors={})
    assert rig.rest.calls == []
