"""Issue 11 through the API: device ownership, the cost of made-up tokens, and safer defaults.

Real HTTP against a real bridge and the simulated IMKIT (and APNs/FCM where a push must be seen).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from bridge.api.auth import FailureLimiter, TokenVerifier
from bridge.api.errors import ApiError
from bridge.check import run_checks
from bridge.config import Settings
from bridge.models import Registration
from bridge.service import Bridge
from bridge.sim.imkit import ImkitSim
from bridge.sim.stack import SimStack
from bridge.upstream.rest import ImkitRest
from tests._poll import wait_for
from tests._redis import RedisServer, redis_server  # noqa: F401  # fixture
from tests.e2e._bridge import RunningBridge, running_bridge
from tests.e2e._stack import ANDROID, IOS, Stack, stack, stack_options  # noqa: F401  # fixtures

VOIP = "c3" * 32


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["RC"] == status and body["error"]["code"] == code, body


@pytest.fixture
async def sim() -> AsyncIterator[ImkitSim]:
    s = ImkitSim()
    await s.start()
    for cid in ("alice", "bob"):
        s.create_user(cid, cid.title())
    s.create_room("r1", ["alice", "bob"], name="Room 1")
    yield s
    await s.stop()


def settings_for(sim: ImkitSim, tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "imkit_url": sim.url,
        "store": f"sqlite:///{tmp_path / 'bridge.db'}",
        "backoff_base": 0.05,
        "backoff_cap": 0.5,
        "push_provider_fallback": "log",
    }
    base.update(kw)
    return Settings(_env_file=None, **base)  # type: ignore[call-arg]


@pytest.fixture
async def bridge(sim: ImkitSim, tmp_path: Path) -> AsyncIterator[RunningBridge]:
    async with running_bridge(settings_for(sim, tmp_path)) as b:
        yield b


def sub(device: str, type_: str, token: str, **kw: Any) -> dict[str, Any]:
    return {"type": type_, "token": token, "deviceId": device, **kw}


# ---------------------------------------------------------------- ownership


async def test_another_user_can_neither_take_over_silence_read_nor_test_push(stack: Stack) -> None:
    await stack.subscribe("iphone", "ios", IOS)
    await stack.wait_live("iphone")
    async with stack.bridge.client(stack.imkit.issue_token("bob")) as bob:
        # The deviceId is not a secret; without the phone's push token it cannot be taken.
        for body in (sub("iphone", "ios", "ee" * 32), sub("iphone", "fcm", "bobs-fcm-token")):
            r = await bob.post("/me/subscribe", json=body)
            assert_error(r, 403, "FORBIDDEN")
            assert "another user" in r.json()["error"]["message"]
        state = {"deviceId": "iphone", "state": "foreground", "ttl": 3600}
        assert_error(await bob.post("/me/state", json=state), 404, "NOT_FOUND")
        r = await bob.post("/me/unsubscribe", json={"type": "ios", "deviceId": "iphone"})
        assert r.json()["result"] == {"n": 0, "ok": 1}
        assert_error(await bob.get("/me/devices/iphone"), 404, "NOT_FOUND")
        assert_error(await bob.post("/me/devices/iphone/test-push"), 404, "NOT_FOUND")

    dev = await stack.device("iphone")
    assert dev["clientId"] == "alice" and dev["state"] == "background" and dev["session"] == "live"
    assert [r["type"] for r in dev["registrations"]] == ["ios"]
    assert stack.imkit.live_sockets("alice") == 1 and not stack.apns.received  # no test push either
    msg = await stack.imkit.send_message("r1", "bob", "still yours")
    await wait_for(lambda: len(stack.delivered_apns()) == 1, 10, message="the victim is still pushed")
    assert msg["_id"] in stack.delivered_apns()[0].payload["payload"]


async def test_same_phone_signed_in_as_another_user_moves_cleanly(stack: Stack) -> None:
    imkit = stack.imkit
    await stack.subscribe("phone", "ios", IOS, locale="ja")
    await stack.subscribe("phone", "ios-voip", VOIP)
    await stack.wait_live("phone")
    first = await imkit.send_message("r1", "bob", "for alice")
    await stack.wait_event("phone", 1)
    assert (await stack.alice.post("/me/state", json={"deviceId": "phone", "state": "foreground", "ttl": 3600})).status_code == 200

    async with stack.bridge.client(imkit.issue_token("bob")) as bob:
        r = await bob.post("/me/subscribe", json=sub("phone", "ios", IOS))
        assert r.status_code == 200, r.text
        dev = r.json()["result"]
        # Nothing of alice's: not her other registration, state, locale, session or history.
        assert dev["clientId"] == "bob" and [x["type"] for x in dev["registrations"]] == ["ios"]
        assert (dev["state"], dev["locale"], dev["events"], dev["lastProviderResult"]) == ("background", None, [], None)
        assert_error(await stack.alice.get("/me/devices/phone"), 404, "NOT_FOUND")
        await wait_for(lambda: imkit.live_sockets("alice") == 0 and imkit.live_sockets("bob") == 1, 10, message="session restarted as bob")

        # The phone now gets bob's pushes, and no longer alice's.
        await imkit.send_message("r1", "bob", "bob's own: not pushed to bob")
        second = await imkit.send_message("r1", "alice", "for bob")

        async def two_decisions() -> bool:
            events = (await bob.get("/me/devices/phone")).json()["result"]["events"]
            return len(events) == 2 and all(e["results"] for e in events if e["decision"] == "pushed")

        await wait_for(two_decisions, 10, interval=0.05, message="bob's phone decided both")
        events = (await bob.get("/me/devices/phone")).json()["result"]["events"]
        assert [e["reason"] for e in events] == ["pushed", "own_message"]
    payloads = [a.payload["payload"] for a in stack.delivered_apns()]
    assert len(payloads) == 2 and first["_id"] in payloads[0] and second["_id"] in payloads[1]


async def test_a_push_token_registered_by_a_new_user_leaves_other_users_devices(stack: Stack) -> None:
    imkit = stack.imkit
    await stack.subscribe("a-phone", "android", ANDROID)
    await stack.subscribe("a-tablet", "ios", IOS)
    await stack.subscribe("a-tablet", "fcm", "shared-fcm-token")
    await stack.wait_live("a-phone", "a-tablet")
    async with stack.bridge.client(imkit.issue_token("bob")) as bob:
        # The phone changed hands (reinstalled: a new deviceId), and so did the tablet's FCM token.
        assert (await bob.post("/me/subscribe", json=sub("b-phone", "android", ANDROID))).status_code == 200
        assert (await bob.post("/me/subscribe", json=sub("b-tablet", "fcm", "shared-fcm-token"))).status_code == 200
    # a-phone had nothing else: it is gone, like after its last unsubscribe.
    assert_error(await stack.alice.get("/me/devices/a-phone"), 404, "NOT_FOUND")
    tablet = await stack.device("a-tablet")
    assert [x["type"] for x in tablet["registrations"]] == ["ios"]
    # Another device of the same user may hold the token (the rule is about other users).
    await stack.subscribe("a-tablet-2", "ios", IOS)
    assert [x["type"] for x in (await stack.device("a-tablet"))["registrations"]] == ["ios"]

    await imkit.send_message("r1", "bob", "to alice")
    await wait_for(lambda: len(stack.delivered_apns()) == 2, 10, message="alice's two iOS devices pushed")
    await stack.wait_event("a-tablet", 1)
    # bob's own message is not pushed to bob's devices, and alice no longer reaches their tokens.
    assert [f for f in stack.fcm.received if f.token in (ANDROID, "shared-fcm-token")] == []


async def test_history_never_crosses_owners_with_redis(
    sim: ImkitSim, tmp_path: Path, redis_server: RedisServer  # noqa: F811
) -> None:
    settings = settings_for(sim, tmp_path, store=redis_server.url, secret_key=Fernet.generate_key().decode())
    async with running_bridge(settings, role="api") as b:
        store = b.bridge.store
        async with b.client(sim.issue_token("alice")) as alice, b.client(sim.issue_token("bob")) as bob:
            assert (await alice.post("/me/subscribe", json=sub("dev1", "ios", IOS))).status_code == 200
            # What the device's worker publishes (pb:status:dev1) for alice.
            alices = {"clientId": "alice", "session": "live", "events": [{"id": "alice-msg"}], "lastProviderResult": {"outcome": "delivered"}}
            await store.put_status("dev1", alices)
            assert (await alice.get("/me/devices/dev1")).json()["result"]["events"] == [{"id": "alice-msg"}]

            r = await bob.post("/me/subscribe", json=sub("dev1", "ios", IOS))  # the same phone
            assert r.status_code == 200
            dev = r.json()["result"]
            assert (dev["clientId"], dev["events"], dev["lastProviderResult"], dev["session"]) == ("bob", [], None, "unknown")
            # A worker that has not applied the change yet publishes alice's history again.
            await store.put_status("dev1", alices)
            assert (await bob.get("/me/devices/dev1")).json()["result"]["events"] == []

            assert (await bob.post("/me/unsubscribe", json={"type": "ios", "deviceId": "dev1"})).json()["result"]["n"] == 1
            assert await store.get_status("dev1") is None


# ---------------------------------------------------------------- made-up tokens


async def test_made_up_tokens_cost_imkit_at_most_100_calls(sim: ImkitSim, bridge: RunningBridge) -> None:
    before = sim.rest_requests_total  # no device: every REST call is a token check (GET /me)
    async with bridge.client() as c:  # all at once (the client opens up to 100 connections)
        answers = await asyncio.gather(*(c.get("/me/devices/x", headers={"IM-Authorization": f"made-up-{i}"}) for i in range(300)))
    # At most 20 refusals a minute, 32 checks at a time: 20 + 31.
    assert sim.rest_requests_total - before <= 51
    assert {r.status_code for r in answers} == {401, 429}
    for r in answers:
        assert r.json()["error"]["code"] == ("INVALID_TOKEN" if r.status_code == 401 else "RATE_LIMITED")
        if r.status_code == 429:
            assert 1 <= int(r.headers["Retry-After"]) <= 61

    # Another address is not affected (127.0.0.2 is loopback too on Linux).
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(base_url=bridge.url, transport=transport, headers={"IM-Authorization": sim.issue_token("alice")}) as other:
        assert (await other.post("/me/subscribe", json=sub("dev1", "ios", IOS))).status_code == 200


async def test_a_refused_token_is_answered_from_memory(sim: ImkitSim, bridge: RunningBridge) -> None:
    before = sim.rest_requests_total
    async with bridge.client("made-up-token") as c:
        codes = [(await c.get("/me/devices/x")).status_code for _ in range(50)]
    assert codes == [401] * 50  # never 429: the repeats cost IMKIT nothing
    assert sim.rest_requests_total - before == 1


async def test_concurrent_calls_with_one_new_token_share_one_check(sim: ImkitSim, bridge: RunningBridge) -> None:
    # An app registering many devices at once must not look like an attack (nor cost 50 calls).
    before = sim.rest_requests_total
    async with bridge.client(sim.issue_token("alice")) as c:
        answers = await asyncio.gather(*(c.get(f"/me/devices/d{i}") for i in range(50)))
    assert {r.status_code for r in answers} == {404}
    assert sim.rest_requests_total - before == 1


async def test_forwarded_for_is_believed_only_when_configured(sim: ImkitSim, tmp_path: Path) -> None:
    limit = 5
    async with running_bridge(settings_for(sim, tmp_path, auth_failures_per_minute=limit, auth_negative_ttl=0)) as b:
        async with b.client() as c:
            before = sim.rest_requests_total
            codes = [
                (await c.get("/me/devices/x", headers={"IM-Authorization": f"bad-{i}", "X-Forwarded-For": f"198.51.100.{i}"})).status_code
                for i in range(20)
            ]
            assert codes == [401] * limit + [429] * (20 - limit)  # a forged header changes nothing
            assert sim.rest_requests_total - before == limit

    async with running_bridge(
        settings_for(sim, tmp_path, auth_failures_per_minute=limit, trusted_proxy_header="X-Forwarded-For")
    ) as b:
        async with b.client() as c:
            for i in range(limit):
                r = await c.get("/me/devices/x", headers={"IM-Authorization": f"bad-{i}", "X-Forwarded-For": "203.0.113.5"})
                assert r.status_code == 401
            # The proxy appends the address it saw: what the caller put before it does not count.
            forged = {"X-Forwarded-For": "198.51.100.1, 203.0.113.5", "IM-Authorization": sim.issue_token("alice")}
            assert_error(await c.get("/me/devices/x", headers=forged), 429, "RATE_LIMITED")
            other = {"X-Forwarded-For": "203.0.113.5, 203.0.113.9", "IM-Authorization": sim.issue_token("alice")}
            assert_error(await c.get("/me/devices/x", headers=other), 404, "NOT_FOUND")


async def test_failure_memory_is_bounded(sim: ImkitSim) -> None:
    now = [1000.0]

    def clock() -> float:
        return now[0]

    rest = ImkitRest(sim.url, client_key=None)
    failures = FailureLimiter(3, max_addresses=4, clock=clock)
    verifier = TokenVerifier(rest, negative_ttl=30, failures=failures, max_entries=5, clock=clock)
    try:
        for i in range(12):
            with pytest.raises(ApiError) as info:
                await verifier.client_id(f"bad-{i}", f"192.0.2.{i}")
            assert info.value.status == 401
        assert (failures.addresses, verifier.refused_size) == (4, 5)
        # IPv6: one /64 is one caller; an IPv4-mapped address is the IPv4 one.
        assert FailureLimiter.key("2001:db8::1") == FailureLimiter.key("2001:db8::ffff") != FailureLimiter.key("2001:db8:0:1::1")
        assert FailureLimiter.key("::ffff:192.0.2.1") == "192.0.2.1"
        for i in range(3):
            with pytest.raises(ApiError):
                await verifier.client_id(f"v6-{i}", f"2001:db8::{i + 1}")
        with pytest.raises(ApiError) as info:
            await verifier.client_id(sim.issue_token("alice"), "2001:db8::99")
        assert info.value.status == 429 and info.value.headers == {"Retry-After": "61"}
        now[0] += 60.5  # the window slid past the failures
        assert await verifier.client_id(sim.issue_token("alice"), "2001:db8::99") == "alice"
    finally:
        await rest.aclose()


async def test_checks_beyond_the_concurrency_wait_and_look_at_failures_again() -> None:
    # 2 failures a minute, 1 check at a time: a burst cannot slip past the limit.
    failures = FailureLimiter(2, concurrency=1, clock=lambda: 0.0)
    release = [asyncio.Event() for _ in range(3)]
    entered: list[int] = []

    async def check(i: int, fail: bool) -> str:
        try:
            async with failures.attempt("192.0.2.1") as attempt:
                entered.append(i)
                await release[i].wait()
                attempt.failed = fail
            return "checked"
        except ApiError as exc:
            return str(exc.status)

    tasks = [asyncio.create_task(check(i, fail=True)) for i in range(3)]
    await wait_for(lambda: entered == [0], 2, message="first check running")
    await asyncio.sleep(0)  # the others are waiting at the gate, not refused
    assert entered == [0] and not any(t.done() for t in tasks)
    release[0].set()
    await wait_for(lambda: entered == [0, 1], 2, message="second check running")
    release[1].set()
    assert await asyncio.gather(*tasks) == ["checked", "checked", "429"]  # the third saw 2 failures
    assert entered == [0, 1]


# ---------------------------------------------------------------- test push, state, ttl


async def test_test_push_goes_to_active_alert_registrations_only(bridge: RunningBridge, sim: ImkitSim) -> None:
    store = bridge.bridge.store
    async with bridge.client(sim.issue_token("alice")) as c:
        for type_, token in (("ios", IOS), ("ios-voip", VOIP), ("fcm", "fcm-token-1")):
            assert (await c.post("/me/subscribe", json=sub("dev1", type_, token))).status_code == 200
        device = await store.get_device("dev1")
        assert device is not None
        device.registrations["fcm"] = Registration("fcm", "fcm-token-1", disabled_reason="Unregistered")
        await store.put_device(device)  # as after FCM said UNREGISTERED

        r = await c.post("/me/devices/dev1/test-push")
        assert r.status_code == 200, r.text
        result = r.json()["result"]
        assert [(x["type"], x["outcome"]) for x in result["results"]] == [("ios", "delivered")]
        assert sorted(result["skipped"], key=lambda x: x["type"]) == [
            {"type": "fcm", "reason": "disabled"},
            {"type": "ios-voip", "reason": "voip"},
        ]

        # Nothing left to test: 200 with no results, and why.
        assert (await c.post("/me/subscribe", json=sub("voip-only", "ios-voip", "d4" * 32))).status_code == 200
        r = await c.post("/me/devices/voip-only/test-push")
        assert r.status_code == 200
        assert r.json()["result"] == {"deviceId": "voip-only", "results": [], "skipped": [{"type": "ios-voip", "reason": "voip"}]}


async def test_state_stores_a_newer_verified_client_token(bridge: RunningBridge, sim: ImkitSim) -> None:
    old, new = sim.issue_token("alice"), sim.issue_token("alice", ttl=3600)
    assert old != new
    store = bridge.bridge.store
    async with bridge.client(old) as c:
        assert (await c.post("/me/subscribe", json=sub("dev1", "ios", IOS))).status_code == 200
        await wait_for(lambda: sim.live_sockets("alice") == 1, 10, message="live")
    before = await store.get_device("dev1")
    assert before is not None and before.client_token == old
    async with bridge.client(new) as c:
        r = await c.post("/me/state", json={"deviceId": "dev1", "state": "background"})
        assert r.status_code == 200
    after = await store.get_device("dev1")
    assert after is not None and after.client_token == new and after.token_version == before.token_version + 1

    def reauthenticated() -> bool:
        headers = sim.last_auth_headers.get("alice", {})
        return (headers.get("IM-Authorization") or headers.get("Authorization")) == new

    await wait_for(reauthenticated, 10, message="session re-authenticated with the new token")
    await wait_for(lambda: sim.live_sockets("alice") == 1, 10, message="live again")


async def test_foreground_ttl_is_capped(bridge: RunningBridge, sim: ImkitSim) -> None:
    async with bridge.client(sim.issue_token("alice")) as c:
        ok = sub("dev1", "ios", IOS, state="foreground", ttl=3600)
        assert (await c.post("/me/subscribe", json=ok)).status_code == 200
        assert_error(await c.post("/me/subscribe", json={**ok, "ttl": 3601}), 400, "INVALID_PARAMETER")
        for ttl in (3601, 86400):
            r = await c.post("/me/state", json={"deviceId": "dev1", "state": "foreground", "ttl": ttl})
            assert_error(r, 400, "INVALID_PARAMETER")
        assert (await c.post("/me/state", json={"deviceId": "dev1", "state": "foreground", "ttl": 3600})).status_code == 200
    with pytest.raises(ValidationError, match="foreground_ttl"):
        Settings(_env_file=None, foreground_ttl=3601)  # type: ignore[call-arg]


# ---------------------------------------------------------------- readiness and defaults


async def test_readyz_names_no_store_details(
    sim: ImkitSim, tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    settings = settings_for(sim, tmp_path, store=redis_server.url, secret_key=Fernet.generate_key().decode())
    async with running_bridge(settings, role="api") as b, b.client() as c:
        assert (await c.get("/readyz")).status_code == 200
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="bridge.service"):
            r = await c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["result"]["reasons"] == ["store unreachable"]
        assert str(redis_server.port) not in r.text and "redis" not in r.text.lower()
        # The details are for the operator's log.
        assert any(str(redis_server.port) in rec.getMessage() for rec in caplog.records)


async def test_readyz_is_503_when_no_provider_can_deliver(tmp_path: Path) -> None:
    sims = await SimStack.start(tmp_path)
    try:
        base = {"imkit_url": sims.imkit.url, "store": f"sqlite:///{tmp_path / 'b.db'}"}
        # The default: no log fallback, and no credentials.
        async with running_bridge(Settings(_env_file=None, **base)) as b, b.client() as c:  # type: ignore[call-arg]
            assert b.bridge.settings.push_provider_fallback == "none"
            r = await c.get("/readyz")
            assert r.status_code == 503
            assert r.json()["result"]["reasons"] == [
                "no push provider can deliver: no APNs or FCM credentials and BRIDGE_PUSH_PROVIDER_FALLBACK=none"
            ]
        # FCM alone can deliver (an Android-only app): ready.
        fcm_only = {k: v for k, v in sims.settings().items() if k.startswith("fcm_")}
        async with running_bridge(Settings(_env_file=None, **base, **fcm_only)) as b, b.client() as c:  # type: ignore[call-arg]
            assert set(b.bridge.providers) == {"fcm"}
            assert (await c.get("/readyz")).status_code == 200
    finally:
        await sims.stop()


# ---------------------------------------------------------------- http:// IMKIT


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://imkit.example.com:3100", True),
        ("http://10.0.0.5", True),
        ("https://imkit.example.com", False),
        ("http://127.0.0.1:3100", False),
        ("http://localhost:3100", False),
        ("http://[::1]:3100", False),
    ],
)
def test_check_warns_about_a_cleartext_imkit_url(tmp_path: Path, url: str, warned: bool) -> None:
    settings = Settings(_env_file=None, imkit_url=url, store=f"sqlite:///{tmp_path / 'b.db'}", push_provider_fallback="log")  # type: ignore[call-arg]
    results = run_checks(settings)
    cleartext = [what for status, what in results if status == "warn" and "plain http://" in what]
    assert bool(cleartext) is warned
    assert all(status != "fail" for status, _ in results)  # a warning, not a failure


async def test_start_logs_a_cleartext_imkit_url(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def start(url: str) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bridge.service"):
            settings = Settings(_env_file=None, imkit_url=url, store=f"sqlite:///{tmp_path / 'b.db'}", push_provider_fallback="log")  # type: ignore[call-arg]
            bridge = Bridge(settings)
            await bridge.rest.aclose()
            await bridge.api_rest.aclose()
        return [r.getMessage() for r in caplog.records if "unencrypted" in r.getMessage()]

    assert await start("http://imkit.example.com")
    assert not await start("https://imkit.example.com") and not await start("http://127.0.0.1:1")

