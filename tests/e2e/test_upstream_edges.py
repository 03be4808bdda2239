"""Upstream edge cases through the whole embedded bridge (issue 11): a handshake cut by an IMKIT
restart, room preferences, streamed AI replies, a refused badge during the backfill, and devices
left without a working push token."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.worker.pool import WorkerPool
from tests._poll import wait_for
from tests.e2e._stack import IOS, Stack, stack  # noqa: F401 - fixtures used by name

NEW_IOS = "b2" * 32


@pytest.fixture
def stack_options() -> dict[str, Any]:
    # No periodic mute refresh during a test: what the bridge knows comes from the events under test.
    return {"mute_refresh_interval": 3600}


def pool_of(stack: Stack) -> WorkerPool:
    pool = stack.bridge.bridge.pool
    assert pool is not None
    return pool


async def session_of(stack: Stack, device_id: str = "iphone") -> str:
    session: str = (await stack.device(device_id))["session"]
    return session


async def test_imkit_restarting_mid_handshake_does_not_park_a_valid_session(stack: Stack) -> None:
    im = stack.imkit
    await stack.subscribe("iphone", "ios", IOS)
    await stack.wait_live("iphone")
    im.disconnect_next_auths = 2  # the server goes away between auth2 and its ack, twice
    await im.drop_all_sockets()
    await wait_for(lambda: im.disconnect_next_auths == 0 and im.live_sockets("alice") == 1, 10, message="live again")
    assert await session_of(stack) == "live"
    await im.send_message("r1", "bob", "after the restart")
    await wait_for(lambda: len(stack.delivered_apns()) == 1, 10, message="pushed")

    # A server that hangs up on a refused auth2: parked, since GET /me refuses the token too.
    im.disconnect_on_auth_failure = True
    im.delete_user("alice")
    await im.drop_all_sockets()

    async def parked() -> bool:
        return await session_of(stack) == "auth_failed"

    await wait_for(parked, 10, interval=0.05, message="auth_failed")


async def test_a_room_preference_change_never_unmutes_a_muted_room(stack: Stack) -> None:
    im = stack.imkit
    await im.mute("alice", "r1", True)  # muted at IMKIT before the device registered
    await stack.subscribe("iphone", "ios", IOS)
    await stack.wait_live("iphone")
    pool = pool_of(stack)
    await wait_for(lambda: (u := pool.user_state("alice")) is not None and "r1" in u.muted, 5, message="mute list read")

    # What IMKIT sends when a tag changes: the whole preference, with `muted` (documented as
    # unused) false.
    pref = {"room": "r1", "folder": "", "hidden": False, "muted": False, "sticky": False, "tags": ["work"]}
    await im.emit_raw("alice", "roomPref", pref)
    await stack.wait_event("iphone", 1)
    await im.send_message("r1", "bob", "in the muted room")
    assert (await stack.wait_event("iphone", 2))[0]["reason"] == "muted"

    # A real change of the mute list still applies at once: a roomPref makes the bridge reread it.
    await im.mute("alice", "r1", False)
    await stack.wait_event("iphone", 3)
    await im.send_message("r1", "bob", "unmuted now")
    assert (await stack.wait_event("iphone", 4))[0]["reason"] == "pushed"
    await im.mute("alice", "r2", True)
    await stack.wait_event("iphone", 5)
    await im.send_message("r2", "bob", "muted just now")
    assert (await stack.wait_event("iphone", 6))[0]["reason"] == "muted"
    assert len(stack.delivered_apns()) == 1


async def test_a_streamed_ai_reply_alerts_once_when_finished(stack: Stack) -> None:
    im = stack.imkit
    await stack.subscribe("iphone", "ios", IOS)
    await stack.wait_live("iphone")
    final = await im.stream_message("r1", "bob", ["Hel", "lo ", "there"])
    await stack.wait_event("iphone", 5)  # the placeholder, three chunks, the finished message
    await im.resend_message(final["_id"])  # delivered twice: still one alert
    events = await stack.wait_event("iphone", 6)

    assert [(e["event"], e["reason"]) for e in reversed(events)] == [
        ("chat message", "message_type_off"),  # the placeholder (type ai_streaming)
        ("ai_streaming", "event_not_pushed"),
        ("ai_streaming", "event_not_pushed"),
        ("ai_streaming", "event_not_pushed"),
        ("chat message", "pushed"),  # the finished reply, same _id
        ("chat message", "duplicate"),
    ]
    assert {e["id"] for e in events if e["event"] == "chat message"} == {final["_id"]}
    (push,) = stack.delivered_apns()
    assert push.payload["aps"]["alert"]["body"].endswith("Hello there")
    assert json.loads(push.payload["payload"])["_id"] == final["_id"]


async def test_the_backfill_goes_on_when_imkit_refuses_the_badge(stack: Stack) -> None:
    im = stack.imkit
    im.rest_fail_paths["/me/badge"] = 403  # RequestRejected on every (re)connect's user refresh
    await stack.subscribe("iphone", "ios", IOS)
    await stack.wait_live("iphone")
    await im.send_message("r1", "bob", "before the gap")
    await wait_for(lambda: len(stack.delivered_apns()) == 1, 10, message="first push")

    im.refuse_connections(1.0)
    await im.drop_all_sockets()
    await wait_for(lambda: im.live_sockets("alice") == 0, 5, message="socket dropped")
    missed = [await im.send_message("r1", "bob", f"missed {i}") for i in range(2)]
    await wait_for(lambda: len(stack.delivered_apns()) == 3, 10, message="the gap backfilled")
    pushed = [json.loads(p.payload["payload"])["_id"] for p in stack.delivered_apns()[1:]]
    assert pushed == [m["_id"] for m in missed]
    events = (await stack.device("iphone"))["events"]
    assert [e["source"] for e in events[:2]] == ["backfill", "backfill"]


async def test_a_device_without_a_working_token_has_no_session(stack: Stack) -> None:
    im = stack.imkit
    await stack.subscribe("iphone", "ios", IOS)
    await stack.wait_live("iphone")
    stack.apns.script(IOS, status=410, reason="Unregistered")
    dead = await im.send_message("r1", "bob", "to a dead token")
    # Its only registration is disabled: the session closes, IMKIT sees the socket go.
    await wait_for(lambda: im.live_sockets("alice") == 0, 10, message="session closed")
    assert await session_of(stack) == "closed"
    pool = pool_of(stack)
    assert pool.session_counts()["live"] == 0
    await im.send_message("r1", "bob", "while no token works")  # had nowhere to go: never pushed

    await stack.subscribe("iphone", "ios", NEW_IOS)  # the app registers a working token
    await stack.wait_live("iphone")
    assert im.live_sockets("alice") == 1
    # The reconnect's user refresh and backfill are done: every event they decided is recorded.
    await wait_for(lambda: not pool._background, 10, message="refresh and backfill done")
    fresh = await im.send_message("r1", "bob", "to the new token")
    events = await stack.wait_event("iphone", 2)
    assert [e["id"] for e in events] == [fresh["_id"], dead["_id"]]
    assert events[0]["decision"] == "pushed" and events[0]["results"][0]["outcome"] == "delivered"
    assert [json.loads(p.payload["payload"])["_id"] for p in stack.delivered_apns(NEW_IOS)] == [fresh["_id"]]
