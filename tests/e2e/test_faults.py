"""Faults, each checked at the simulated providers: nothing lost, nothing told twice, nothing crashed."""

from __future__ import annotations

import json
import resource
from collections import Counter
from typing import Any

import httpx
import pytest

from bridge.sim.imkit import ImkitSim
from tests._poll import wait_for
from tests.e2e._stack import ANDROID, IOS, Stack, stack, stack_options  # noqa: F401 - fixtures used by name
from tests.e2e.test_restart import BridgeProcess, world  # noqa: F401 - fixture used by name


def apns_ids(stack: Stack) -> Counter[str]:
    return Counter(json.loads(r.payload["payload"])["_id"] for r in stack.delivered_apns() if "payload" in r.payload)


def fcm_ids(stack: Stack) -> Counter[str]:
    return Counter(json.loads(r.message["data"]["payload"])["_id"] for r in stack.delivered_fcm() if "payload" in r.message.get("data", {}))


async def two_devices(stack: Stack) -> None:
    await stack.subscribe("iphone", "ios", IOS)
    await stack.subscribe("pixel", "fcm", ANDROID)
    await stack.wait_live("iphone", "pixel")


def exactly_once(stack: Stack, ids: list[str]) -> bool:
    a, f = apns_ids(stack), fcm_ids(stack)
    return all(a[i] == 1 and f[i] == 1 for i in ids)


async def test_imkit_killed_and_restarted_mid_traffic(stack: Stack) -> None:
    im = stack.imkit
    await two_devices(stack)
    sent = [(await im.send_message("r1", "bob", "before"))["_id"]]
    await wait_for(lambda: exactly_once(stack, sent), 10, message="first message")
    port = im.port
    await im.stop()  # every socket drops; sessions back off and retry
    sent += [(await im.send_message("r1", "bob", f"while IMKIT was down {i}"))["_id"] for i in range(3)]
    await im.start(port=port)
    await stack.wait_live("iphone", "pixel")
    sent += [(await im.send_message("r1", "bob", "after"))["_id"]]
    await wait_for(lambda: exactly_once(stack, sent), 15, message="every message exactly once on both devices")
    await wait_for(lambda: sum(apns_ids(stack).values()) == len(sent), 1, message="no extra pushes")
    assert sum(fcm_ids(stack).values()) == len(sent)


@pytest.fixture
def stack_options() -> dict[str, Any]:
    return {"imkit_auth_timeout": 0.3}


async def test_imkit_never_acknowledges_auth2(stack: Stack) -> None:
    im = stack.imkit
    await two_devices(stack)
    im.ack_auth = False
    auths = im.auths_total
    await im.drop_all_sockets()
    # Sessions time out waiting for the ack and keep retrying with backoff, never "live".
    await wait_for(lambda: im.auths_total >= auths + 6, 10, message="auth2 retried")

    async def not_live() -> bool:
        states = [(await stack.device(d))["session"] for d in ("iphone", "pixel")]
        return all(s in ("connecting", "authenticating", "backoff") for s in states)

    assert await not_live()
    missed = (await im.send_message("r1", "bob", "sent while auth hangs"))["_id"]
    im.ack_auth = True
    await stack.wait_live("iphone", "pixel")
    await wait_for(lambda: exactly_once(stack, [missed]), 15, message="backfilled once")
    pool = stack.bridge.bridge.pool
    assert pool is not None and pool.running


async def test_apns_stall_and_goaway_mid_batch(stack: Stack) -> None:
    im = stack.imkit
    tokens = [f"{i + 1:064x}" for i in range(6)]
    users = [f"x{i}" for i in range(6)]
    for u in users:
        im.create_user(u, u)
    im.create_room("batch", [*users, "bob"])
    for u, t in zip(users, tokens, strict=True):
        async with stack.bridge.client(im.issue_token(u)) as c:
            r = await c.post("/me/subscribe", json={"type": "ios", "token": t, "deviceId": f"d-{u}"})
            assert r.status_code == 200
    await wait_for(lambda: all(im.live_sockets(u) == 1 for u in users), 10, message="live")
    stack.apns.script(tokens[0], stall=1.0, times=1)  # slow, within the push timeout (3 s)
    stack.apns.script(tokens[1], goaway=True, reason="Shutdown", times=1)
    stack.apns.script(tokens[2], stall=5.0, times=1)  # beyond the push timeout: retried
    msg = (await im.send_message("batch", "bob", "to everyone"))["_id"]

    def delivered() -> list[Any]:
        return [r for r in stack.apns.received if r.status == 200 and json.loads(r.payload["payload"])["_id"] == msg]

    await wait_for(lambda: {r.token for r in delivered()} == set(tokens), 20, interval=0.05, message="delivered to all six")
    # A request cut off by the GOAWAY or outliving the timeout may still have reached APNs. Its
    # retry carries the same apns-id and collapse id: one notification, shown once by the device.
    for t in tokens:
        got = [r for r in delivered() if r.token == t]
        assert len({r.headers["apns-id"] for r in got}) == 1, t
        assert len({r.headers["apns-collapse-id"] for r in got}) == 1, t
    retries = stack.bridge.bridge.metrics.registry.get_sample_value("bridge_pushes_total", {"provider": "apns", "outcome": "retry"})
    assert retries is not None and retries >= 2  # the GOAWAY and the long stall were retried


async def test_fcm_429_with_retry_after(stack: Stack) -> None:
    await two_devices(stack)
    stack.fcm.script(ANDROID, error_code="QUOTA_EXCEEDED", retry_after=1, times=1)
    msg = (await stack.imkit.send_message("r1", "bob", "throttled"))["_id"]
    await wait_for(lambda: exactly_once(stack, [msg]), 15, message="delivered after Retry-After")
    tries = [r for r in stack.fcm.received if r.token == ANDROID]
    assert [r.status for r in tries] == [429, 200]
    assert tries[1].at - tries[0].at >= 0.95  # Retry-After honoured


async def test_reconnect_storm_respects_the_connect_rate(stack: Stack) -> None:
    im = stack.imkit
    users = [f"s{i}" for i in range(120)]
    for u in users:
        im.create_user(u, u)
    for u in users:
        async with stack.bridge.client(im.issue_token(u)) as c:
            await c.post("/me/subscribe", json={"type": "fcm", "token": f"tok-{u}", "deviceId": f"d-{u}"})
    await wait_for(lambda: im.live_sockets() == len(users), 20, message="all live")
    pool = stack.bridge.bridge.pool
    assert pool is not None
    await wait_for(lambda: pool.session_counts()["live"] == len(users), 10, message="pool live")
    went_live = pool.went_live
    im.connect_times.clear()
    await im.drop_all_sockets()
    await wait_for(lambda: im.live_sockets() == len(users), 20, message="all live again")
    # Every reconnect counts as a session gone live (the heap freezer follows this).
    await wait_for(lambda: pool.went_live >= went_live + len(users), 10, message="counted")
    # BRIDGE_CONNECT_RATE=50/s with a burst of 10 (see stack_options of this test): the bridge's
    # token bucket grants at most burst + rate x 1 s in any 1-second window (+1: the window is
    # closed). IMKIT sees each grant a little later, after the handshake, and a busy loop delays
    # some handshakes more than others, squeezing grants up to JITTER apart into one window.
    # Unthrottled, all 120 would land within a fraction of a second.
    jitter = 0.25
    assert im.peak_connect_rate(1.0) <= 10 + 50 * (1 + jitter) + 1
    times = sorted(im.connect_times)
    assert len(times) >= len(users)
    # ... and the storm as a whole is spread over (120 - burst) / rate = 2.2 s, jitter aside.
    assert times[len(users) - 1] - times[0] >= (len(users) - 10) / 50 - jitter


test_reconnect_storm_respects_the_connect_rate = pytest.mark.parametrize(
    "stack_options", [{"connect_rate": 50, "connect_burst": 10, "backoff_base": 0.05, "backoff_cap": 1.0}]
)(test_reconnect_storm_respects_the_connect_rate)


async def test_sqlite_unwritable_answers_503_and_recovers(world: dict[str, Any]) -> None:
    imkit: ImkitSim = world["imkit"]
    proc: BridgeProcess = world["proc"]
    imkit.create_user("alice", "Alice")
    token = imkit.issue_token("alice")
    proc.start()
    await wait_for(proc.ready, 20, interval=0.1, message="ready")
    assert proc.proc is not None
    pid = proc.proc.pid
    async with httpx.AsyncClient(base_url=proc.url, timeout=10, headers={"IM-Authorization": token}) as c:
        sub = {"type": "ios", "token": "ab" * 32, "deviceId": "dev1"}
        assert (await c.post("/me/subscribe", json=sub)).status_code == 200
        # The disk is "full" for the bridge: every write past 0 bytes fails (EFBIG).
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
        try:
            r = await c.post("/me/subscribe", json={**sub, "deviceId": "dev2"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "STORE_UNAVAILABLE"
            r = await c.post("/me/state", json={"deviceId": "dev1", "state": "foreground"})
            assert r.status_code == 503
            assert (await c.get("/readyz")).status_code == 503
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/me/devices/dev1")).status_code == 200  # reads still work
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        await wait_for(proc.ready, 10, interval=0.1, message="ready again")
        assert (await c.post("/me/subscribe", json={**sub, "deviceId": "dev2"})).status_code == 200
    assert proc.proc.poll() is None  # never crashed
