"""The embedded bridge end to end: simulated IMKIT, APNs (HTTP/2+TLS) and FCM, real clients."""

from __future__ import annotations

import asyncio
import json

from bridge.sim.stack import TOPIC
from tests._poll import wait_for
from tests.e2e._stack import ANDROID, IOS, Stack, stack, stack_options  # noqa: F401 - fixtures used by name


async def test_message_becomes_apns_and_fcm_notifications(stack: Stack) -> None:
    await stack.subscribe("iphone", "ios", IOS, locale="en-US")
    await stack.subscribe("pixel", "android", ANDROID, locale="zh-TW")
    await stack.wait_live("iphone", "pixel")
    msg = await stack.imkit.send_message("r1", "bob", "Lunch at noon?")
    await wait_for(lambda: stack.delivered_apns() and stack.delivered_fcm(), 10, message="both delivered")

    a = stack.delivered_apns()[0]
    assert a.headers["apns-topic"] == TOPIC and a.headers["apns-push-type"] == "alert"
    alert = a.payload["aps"]["alert"]
    assert alert["loc-key"] == "im_loc_text" and "Lunch at noon?" in alert["body"]
    assert a.payload["aps"]["thread-id"] == "r1"
    assert json.loads(a.payload["payload"])["_id"] == msg["_id"]

    f = stack.delivered_fcm()[0]
    data = f.message["data"]
    assert all(isinstance(v, str) for v in data.values())
    assert data["type"] == "message:r1" and data["loc-key"] == "im_loc_text"
    assert json.loads(data["payload"])["_id"] == msg["_id"]
    assert f.message["android"]["collapse_key"] == "r1"

    events = await stack.wait_event("iphone", 1)
    assert events[0]["decision"] == "pushed" and events[0]["results"][0]["outcome"] == "delivered"
    assert (await stack.device("iphone"))["lastProviderResult"]["outcome"] == "delivered"


async def test_every_decision_reason(stack: Stack) -> None:
    im = stack.imkit
    await stack.subscribe("iphone", "ios", IOS)
    await stack.wait_live("iphone")
    n = 0

    async def expect(reason: str) -> None:
        nonlocal n
        n += 1
        events = await stack.wait_event("iphone", n)
        assert events[0]["reason"] == reason, events[0]

    first = await im.send_message("r1", "bob", "one")
    await expect("pushed")
    await im.send_message("r1", "alice", "sent from my laptop")
    await expect("own_message")
    await im.edit_message(first["_id"], "one (edited)")
    await expect("duplicate")
    await im.recall_message(first["_id"])
    await expect("duplicate")
    await im.send_message("r1", "bob", None, message_type="joinRoom")
    await expect("message_type_off")
    await im.emit_raw("alice", "typing", {"room": "r1", "message": "ty"})
    await expect("event_not_pushed")
    await im.mute("alice", "r2", True)
    await expect("event_not_pushed")  # the roomPref event itself
    await im.send_message("r2", "bob", "in a muted room")
    await expect("muted")
    r = await stack.alice.post("/me/state", json={"deviceId": "iphone", "state": "foreground"})
    assert r.status_code == 200
    # No wait: in the embedded mode the pool has applied the state before the API answered.
    await im.send_message("r1", "bob", "while open")
    await expect("foreground")
    await stack.alice.post("/me/state", json={"deviceId": "iphone", "state": "background"})
    im.set_notification_enabled("alice", False)
    pool = stack.bridge.bridge.pool
    assert pool is not None
    await wait_for(lambda: (u := pool.user_state("alice")) is not None and not u.notifications_enabled, 5, message="switch refreshed")
    await im.send_message("r1", "bob", "switched off")
    await expect("notifications_disabled")
    im.set_notification_enabled("alice", True)
    await wait_for(lambda: (u := pool.user_state("alice")) is not None and u.notifications_enabled, 5, message="switch refreshed")

    # A dead token: APNs says Unregistered, the registration is disabled, later events say why.
    stack.apns.script(IOS, status=410, reason="Unregistered")
    await im.send_message("r1", "bob", "to a dead token")
    events = await stack.wait_event("iphone", n + 1)
    n += 1
    assert events[0]["decision"] == "pushed" and events[0]["results"][0]["outcome"] == "token_invalid"
    await wait_for(lambda: _active(stack, "iphone") is False, 5, message="registration disabled")
    # No working token left: the device's session closes (issue 11), so nothing more is decided.
    await wait_for(lambda: im.live_sockets("alice") == 0, 5, message="session closed")
    assert (await stack.device("iphone"))["session"] == "closed"
    assert len(stack.delivered_apns()) == 1  # only the very first message was ever alerted
    dev = await stack.device("iphone")
    assert dev["registrations"][0]["disabledReason"] == "Unregistered"


def _active(stack: Stack, device_id: str) -> bool | None:
    pool = stack.bridge.bridge.pool
    rt = pool._runtimes.get(device_id) if pool else None
    return bool(rt.device.active_registrations) if rt else None


async def test_invitation_and_badge_update_when_read_elsewhere(stack: Stack) -> None:
    await stack.subscribe("iphone", "ios", IOS)
    await stack.subscribe("pixel", "fcm", ANDROID)
    await stack.wait_live("iphone", "pixel")
    stack.imkit.create_room("party", ["carol"], name="Party")
    await stack.imkit.invite("party", "carol", "alice")
    await wait_for(lambda: stack.delivered_apns() and stack.delivered_fcm(), 10, message="invitation delivered")
    alert = stack.delivered_apns()[0].payload["aps"]["alert"]
    assert alert["loc-key"] == "im_loc_invitation" and alert["loc-args"] == ["Carol", "Party"]
    assert stack.delivered_fcm()[0].message["data"]["type"] == "invitation:party"

    await stack.imkit.send_message("r1", "bob", "unread 1")
    await stack.imkit.send_message("r1", "bob", "unread 2")
    await wait_for(lambda: len(stack.delivered_apns()) == 3, 10, message="two messages delivered")
    assert stack.delivered_apns()[-1].payload["aps"]["badge"] == 2
    await stack.imkit.read("alice", "r1")
    await wait_for(lambda: len(stack.delivered_apns()) == 4 and len(stack.delivered_fcm()) == 4, 10, message="silent badge updates")
    silent = stack.delivered_apns()[-1]
    assert silent.headers["apns-push-type"] == "background" and silent.payload["aps"]["badge"] == 0
    assert "alert" not in silent.payload["aps"]
    assert stack.delivered_fcm()[-1].message["data"]["badge"] == "0"


async def test_token_update_recovers_auth_failed(stack: Stack) -> None:
    await stack.subscribe("iphone", "ios", IOS)
    await stack.wait_live("iphone")
    stack.imkit.delete_user("alice")  # every token of alice's is now rejected
    await stack.imkit.drop_all_sockets()

    async def parked() -> bool:
        return (await stack.device("iphone"))["session"] == "auth_failed"

    # The API still answers from its token cache while the session is parked.
    await wait_for(parked, 10, interval=0.05, message="auth_failed")
    stack.imkit.create_user("alice", "Alice")
    fresh = stack.imkit.issue_token("alice")
    async with stack.bridge.client(fresh) as c:
        r = await c.post("/me/subscribe", json={"type": "ios", "token": IOS, "deviceId": "iphone"})
        assert r.status_code == 200
    await stack.wait_live("iphone")
    await stack.imkit.send_message("r1", "bob", "back again")
    await wait_for(lambda: len(stack.delivered_apns()) == 1, 10, message="push after recovery")


async def test_200_devices_registered_concurrently_all_go_live(stack: Stack) -> None:
    im = stack.imkit
    users = [f"u{i}" for i in range(200)]
    for u in users:
        im.create_user(u, u)
    im.create_room("big", users[:50] + ["bob"])

    async def register(u: str) -> int:
        async with stack.bridge.client(im.issue_token(u)) as c:
            kind, tok = ("ios", f"{users.index(u):064x}") if users.index(u) % 2 else ("fcm", f"fcm-{u}")
            r = await c.post("/me/subscribe", json={"type": kind, "token": tok, "deviceId": f"dev-{u}"})
            return r.status_code

    codes = await asyncio.gather(*(register(u) for u in users))
    assert codes == [200] * 200
    await wait_for(lambda: im.live_sockets() == 200, 30, interval=0.05, message="200 live sockets")
    pool = stack.bridge.bridge.pool
    assert pool is not None
    try:
        await wait_for(lambda: pool.session_counts()["live"] == 200, 10, message="200 live sessions")
    finally:
        print("COUNTS", pool.session_counts(), len(pool.owned()), sorted(str(pool.session_state(d)) for d in pool.owned())[:5])
    await im.send_message("big", "bob", "hello everyone")
    await wait_for(lambda: len([r for r in stack.apns.received if r.status == 200]) + len([r for r in stack.fcm.received if r.status == 200]) == 50, 15, message="50 pushes")


async def test_backfill_after_a_gap_pushes_each_missed_message_once(stack: Stack) -> None:
    im = stack.imkit
    await stack.subscribe("iphone", "ios", IOS)
    await stack.wait_live("iphone")
    await im.send_message("r1", "bob", "before the gap")
    await wait_for(lambda: len(stack.delivered_apns()) == 1, 10, message="first push")

    # A gap: IMKIT drops every socket and refuses reconnects while messages keep coming.
    im.refuse_connections(1.0)
    await im.drop_all_sockets()
    await wait_for(lambda: im.live_sockets("alice") == 0, 5, message="socket dropped")
    missed = [await im.send_message("r1", "bob", f"missed {i}") for i in range(3)]
    for i in range(7):  # over the per-room cap (5): one summary instead of seven
        await im.send_message("r2", "bob", f"busy {i}")
    await stack.wait_live("iphone")

    await wait_for(lambda: len(stack.delivered_apns()) == 1 + 3 + 1, 10, message="3 backfilled + 1 summary")
    pushed = stack.delivered_apns()[1:]
    singles = [json.loads(p.payload["payload"])["_id"] for p in pushed if p.payload["aps"]["alert"]["loc-key"] == "im_loc_text"]
    assert singles == [m["_id"] for m in missed]
    summary = [p for p in pushed if p.payload["aps"]["alert"]["loc-key"] == "im_loc_summary"]
    assert len(summary) == 1 and summary[0].payload["aps"]["alert"]["loc-args"] == ["7"]

    # A live message after the backfill still arrives once, and nothing was pushed twice.
    await im.send_message("r1", "bob", "after")
    await wait_for(lambda: len(stack.delivered_apns()) == 6, 10, message="live push after backfill")
    ids = [p.headers.get("apns-collapse-id") for p in stack.delivered_apns()]
    assert len(ids) == len(set(ids))
    events = (await stack.device("iphone"))["events"]
    assert {e["source"] for e in events} == {"live", "backfill"}


async def test_no_backfill_while_foreground(stack: Stack) -> None:
    im = stack.imkit
    await stack.subscribe("iphone", "ios", IOS, state="foreground", ttl=600)
    await stack.wait_live("iphone")
    im.refuse_connections(0.5)
    await im.drop_all_sockets()
    await im.send_message("r1", "bob", "seen in the app")
    # IMKIT's side: the socket is gone at once and counts again only once auth2 succeeded.
    await wait_for(lambda: im.live_sockets("alice") == 1, 10, message="re-authenticated")
    await im.send_message("r1", "bob", "live while open")
    events = await stack.wait_event("iphone", 1)
    assert events[0]["reason"] == "foreground"
    assert stack.delivered_apns() == []


async def test_metrics_of_the_design_are_exported(stack: Stack) -> None:
    await stack.subscribe("iphone", "ios", IOS)
    await stack.subscribe("pixel", "fcm", ANDROID)
    await stack.wait_live("iphone", "pixel")
    stack.apns.script(IOS, status=410, reason="Unregistered")
    await stack.imkit.send_message("r1", "bob", "hello")
    await wait_for(lambda: len(stack.delivered_fcm()) == 1, 10, message="pushed")
    await stack.wait_event("iphone", 1)
    # The dead token was the iPhone's only one: its session closes (issue 11); the Pixel's reconnects.
    await wait_for(lambda: stack.imkit.live_sockets("alice") == 1, 10, message="iphone session closed")
    await stack.imkit.drop_all_sockets()
    await wait_for(lambda: stack.imkit.live_sockets("alice") == 1, 10, message="pixel re-authenticated")
    await stack.wait_live("pixel")
    text = (await stack.alice.get("/metrics")).text

    def value(sample: str) -> float:
        for line in text.splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
        raise AssertionError(f"{sample} not exported")

    assert value('bridge_devices{platform="fcm"}') == 1
    assert value('bridge_sessions{state="live"}') == 1
    assert value('bridge_upstream_events_total{event="chat message"}') == 2
    assert value('bridge_decisions_total{outcome="push",reason="pushed"}') == 2
    assert value('bridge_pushes_total{outcome="delivered",provider="fcm"}') == 1
    assert value('bridge_pushes_total{outcome="token_invalid",provider="apns"}') == 1
    assert value('bridge_push_latency_seconds_count{provider="fcm"}') == 1
    assert value("bridge_push_queue_depth") == 0
    assert value('bridge_invalid_tokens_total{provider="apns",reason="Unregistered"}') == 1
    assert value('bridge_worker_devices{worker="' + stack.bridge.bridge.worker_id + '"}') == 2
    assert sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("bridge_upstream_reconnects_total{")) >= 1


async def test_device_changing_hands_follows_the_new_user(stack: Stack) -> None:
    im = stack.imkit
    await stack.subscribe("iphone", "ios", IOS)
    await stack.wait_live("iphone")
    im.create_room("bob-room", ["bob", "carol"])
    async with stack.bridge.client(im.issue_token("bob")) as bob:
        r = await bob.post("/me/subscribe", json={"type": "ios", "token": IOS, "deviceId": "iphone"})
        assert r.status_code == 200 and r.json()["result"]["clientId"] == "bob"
        await wait_for(lambda: im.live_sockets("bob") == 1 and im.live_sockets("alice") == 0, 10, message="session moved to bob")
        assert (await stack.alice.get("/me/devices/iphone")).status_code == 404
        await im.send_message("r1", "bob", "for alice")  # alice's room: no longer this phone's business
        await im.send_message("bob-room", "carol", "for bob")
        await wait_for(lambda: len(stack.delivered_apns()) == 1, 10, message="bob's push")
        assert json.loads(stack.delivered_apns()[0].payload["payload"])["room"] == "bob-room"
        pool = stack.bridge.bridge.pool
        assert pool is not None and pool.user_state("alice") is None
