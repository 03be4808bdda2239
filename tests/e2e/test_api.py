"""The app and operator API over real HTTP, against the simulated IMKIT (log push provider)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.config import Settings
from bridge.sim.imkit import ImkitSim
from tests._poll import wait_for
from tests.e2e._bridge import RunningBridge, running_bridge

ADMIN = "admin-secret-token"
IOS_TOKEN = "ab" * 32


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
        "admin_token": ADMIN,
        "backoff_base": 0.05,
        "backoff_cap": 0.5,
        "push_provider_fallback": "log",  # no provider credentials: test pushes go to the log
    }
    base.update(kw)
    return Settings(_env_file=None, **base)  # type: ignore[call-arg]


@pytest.fixture
async def bridge(sim: ImkitSim, tmp_path: Path) -> AsyncIterator[RunningBridge]:
    async with running_bridge(settings_for(sim, tmp_path)) as b:
        yield b


def sub(device: str = "dev1", type_: str = "ios", token: str = IOS_TOKEN, **kw: Any) -> dict[str, Any]:
    return {"type": type_, "token": token, "deviceId": device, **kw}


def assert_error(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["RC"] == status and body["error"]["code"] == code, body
    assert body["error"]["message"]


async def test_subscribe_then_session_goes_live(bridge: RunningBridge, sim: ImkitSim) -> None:
    async with bridge.client(sim.issue_token("alice")) as c:
        r = await c.post("/me/subscribe", json=sub(locale="zh-TW"))
        assert r.status_code == 200
        body = r.json()
        assert (body["RC"], body["RM"]) == (0, "OK")
        dev = body["result"]
        assert dev["deviceId"] == "dev1" and dev["clientId"] == "alice" and dev["locale"] == "zh-TW"
        assert dev["registrations"][0]["type"] == "ios" and IOS_TOKEN not in r.text

        async def live() -> bool:
            return (await c.get("/me/devices/dev1")).json()["result"]["session"] == "live"

        await wait_for(live, 10, message="session live")
        assert sim.live_sockets("alice") == 1
        headers = sim.last_auth_headers["alice"]
        assert headers.get("IM-Device-ID") == "dev1" or headers.get("deviceId") == "dev1"


async def test_subscribe_is_idempotent_and_updates(bridge: RunningBridge, sim: ImkitSim) -> None:
    async with bridge.client(sim.issue_token("alice")) as c:
        assert (await c.post("/me/subscribe", json=sub())).status_code == 200
        r = await c.post("/me/subscribe", json=sub(token="cd" * 32, locale="ja"))
        assert r.status_code == 200
        assert len(r.json()["result"]["registrations"]) == 1 and r.json()["result"]["locale"] == "ja"
        r = await c.post("/me/subscribe", json=sub(type_="ios-voip", token="ef" * 32))
        assert {x["type"] for x in r.json()["result"]["registrations"]} == {"ios", "ios-voip"}
    dev = await bridge.bridge.store.get_device("dev1")
    assert dev is not None and dev.registrations["ios"].token == "cd" * 32


async def test_subscribe_remembers_environment_content_and_key(bridge: RunningBridge, sim: ImkitSim) -> None:
    key1, key2 = bytes(range(32)), bytes(range(1, 33))
    async with bridge.client(sim.issue_token("alice")) as c:
        body = sub(apnsEnvironment="sandbox", content="encrypted", contentKey=base64.urlsafe_b64encode(key1).decode().rstrip("="))
        r = await c.post("/me/subscribe", json=body)
        assert r.status_code == 200, r.text
        reg = r.json()["result"]["registrations"][0]
        assert (reg["apnsEnvironment"], reg["content"], reg["hasContentKey"]) == ("sandbox", "encrypted", True)
        assert base64.b64encode(key1).decode() not in r.text
        dev = await bridge.bridge.store.get_device("dev1")
        assert dev is not None and dev.registrations["ios"].content_key == key1
        # A token refresh that omits the optional fields keeps the mode and key, not the
        # environment (a new token may come from another build); a new key rotates it.
        r = await c.post("/me/subscribe", json=sub(token="cd" * 32, contentKey=base64.b64encode(key2).decode()))
        reg = r.json()["result"]["registrations"][0]
        assert (reg["apnsEnvironment"], reg["content"]) == (None, "encrypted")
        dev = await bridge.bridge.store.get_device("dev1")
        assert dev is not None and dev.registrations["ios"].content_key == key2
        # FCM registrations show no APNs environment.
        r = await c.post("/me/subscribe", json=sub(type_="fcm", token="f1"))
        fcm = next(x for x in r.json()["result"]["registrations"] if x["type"] == "fcm")
        assert "apnsEnvironment" not in fcm and fcm["content"] is None and fcm["hasContentKey"] is False


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"token": IOS_TOKEN, "deviceId": "d"}, 400, "MISSING_PARAMETER"),
        ({"type": "ios", "deviceId": "d"}, 400, "MISSING_PARAMETER"),
        ({"type": "ios", "token": IOS_TOKEN}, 400, "MISSING_PARAMETER"),
        ({"type": "blackberry", "token": IOS_TOKEN, "deviceId": "d"}, 400, "INVALID_PARAMETER"),
        ({"type": "ios", "token": "has space", "deviceId": "d"}, 400, "INVALID_PARAMETER"),
        ({"type": "ios", "token": IOS_TOKEN, "deviceId": "d" * 129}, 400, "INVALID_PARAMETER"),
        ({"type": "ios", "token": IOS_TOKEN, "deviceId": "d/../x"}, 400, "INVALID_PARAMETER"),
        ({"type": "ios", "token": "x" * 5000, "deviceId": "d"}, 400, "INVALID_PARAMETER"),
        ({"type": "ios", "token": IOS_TOKEN, "deviceId": "d", "locale": "<script>"}, 400, "INVALID_PARAMETER"),
        ({"type": "ios", "token": IOS_TOKEN, "deviceId": "d", "state": "asleep"}, 400, "INVALID_PARAMETER"),
        ({"type": 5, "token": IOS_TOKEN, "deviceId": "d"}, 400, "INVALID_PARAMETER"),
        ({"type": "ios", "token": IOS_TOKEN, "deviceId": "d", "apnsEnvironment": "staging"}, 400, "INVALID_PARAMETER"),
        ({"type": "fcm", "token": "t", "deviceId": "d", "apnsEnvironment": "sandbox"}, 400, "INVALID_PARAMETER"),
        ({"type": "ios", "token": IOS_TOKEN, "deviceId": "d", "content": "secret"}, 400, "INVALID_PARAMETER"),
        ({"type": "ios", "token": IOS_TOKEN, "deviceId": "d", "content": "encrypted"}, 400, "MISSING_PARAMETER"),
        # 31 bytes, 33 bytes, not base64:
        ({"type": "ios", "token": IOS_TOKEN, "deviceId": "d", "contentKey": base64.b64encode(b"k" * 31).decode()}, 400, "INVALID_PARAMETER"),
        ({"type": "ios", "token": IOS_TOKEN, "deviceId": "d", "contentKey": base64.b64encode(b"k" * 33).decode()}, 400, "INVALID_PARAMETER"),
        ({"type": "ios", "token": IOS_TOKEN, "deviceId": "d", "contentKey": "!" * 44}, 400, "INVALID_PARAMETER"),
    ],
)
async def test_subscribe_validation(bridge: RunningBridge, sim: ImkitSim, body: dict[str, Any], status: int, code: str) -> None:
    async with bridge.client(sim.issue_token("alice")) as c:
        assert_error(await c.post("/me/subscribe", json=body), status, code)


async def test_malformed_and_oversized_bodies(bridge: RunningBridge, sim: ImkitSim) -> None:
    async with bridge.client(sim.issue_token("alice")) as c:
        r = await c.post("/me/subscribe", content=b"{not json", headers={"content-type": "application/json"})
        assert_error(r, 400, "INVALID_PARAMETER")
        r = await c.post("/me/subscribe", content=b"[1,2]", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] in ("INVALID_PARAMETER", "MISSING_PARAMETER")
        big = json.dumps(sub(extra="x" * 20_000))
        assert_error(await c.post("/me/subscribe", content=big, headers={"content-type": "application/json"}), 413, "INVALID_PARAMETER")


async def test_token_errors(bridge: RunningBridge, sim: ImkitSim) -> None:
    async with bridge.client() as c:
        assert_error(await c.post("/me/subscribe", json=sub()), 401, "INVALID_TOKEN")
    async with bridge.client("not-a-valid-token") as c:
        assert_error(await c.post("/me/subscribe", json=sub()), 401, "INVALID_TOKEN")
    async with bridge.client(sim.issue_token("alice", ttl=-10)) as c:
        assert_error(await c.post("/me/subscribe", json=sub()), 401, "INVALID_TOKEN")


async def test_imkit_unreachable_is_503(bridge: RunningBridge, sim: ImkitSim) -> None:
    sim.fail_rest(503)
    async with bridge.client(sim.issue_token("alice")) as c:
        r = await c.post("/me/subscribe", json=sub())
        assert_error(r, 503, "UPSTREAM_UNAVAILABLE")
        assert "Retry-After" in r.headers


async def test_devices_are_private(bridge: RunningBridge, sim: ImkitSim) -> None:
    async with bridge.client(sim.issue_token("alice")) as alice, bridge.client(sim.issue_token("bob")) as bob:
        assert (await alice.post("/me/subscribe", json=sub())).status_code == 200
        missing = await bob.get("/me/devices/nope")
        theirs = await bob.get("/me/devices/dev1")
        assert_error(missing, 404, "NOT_FOUND")
        assert_error(theirs, 404, "NOT_FOUND")
        assert missing.json()["error"] == theirs.json()["error"]  # existence is not revealed
        assert_error(await bob.post("/me/state", json={"deviceId": "dev1", "state": "foreground"}), 404, "NOT_FOUND")
        assert_error(await bob.post("/me/devices/dev1/test-push"), 404, "NOT_FOUND")
        r = await bob.post("/me/unsubscribe", json={"type": "ios", "deviceId": "dev1"})
        assert r.json()["result"] == {"n": 0, "ok": 1}
        assert (await alice.get("/me/devices/dev1")).status_code == 200


async def test_admin_key_with_client_id(bridge: RunningBridge, sim: ImkitSim) -> None:
    async with bridge.client(sim.issue_token("alice")) as alice:
        await alice.post("/me/subscribe", json=sub())
    async with bridge.client(**{"IM-API-KEY": ADMIN}) as backend:
        r = await backend.get("/me/devices/dev1", params={"clientId": "alice"})
        assert r.status_code == 200 and r.json()["result"]["clientId"] == "alice"
        assert_error(await backend.get("/me/devices/dev1", params={"clientId": "bob"}), 404, "NOT_FOUND")
        assert_error(await backend.get("/me/devices/dev1"), 400, "MISSING_PARAMETER")
        r = await backend.post("/me/state", json={"deviceId": "dev1", "state": "foreground", "clientId": "alice"})
        assert r.status_code == 200
    async with bridge.client(**{"IM-API-KEY": "wrong"}) as bad:
        assert_error(await bad.get("/me/devices/dev1", params={"clientId": "alice"}), 401, "INVALID_TOKEN")


async def test_unsubscribe(bridge: RunningBridge, sim: ImkitSim) -> None:
    async with bridge.client(sim.issue_token("alice")) as c:
        await c.post("/me/subscribe", json=sub())
        await wait_for(lambda: sim.live_sockets("alice") == 1, 10, message="live")
        r = await c.post("/me/unsubscribe", json={"type": "ios", "deviceId": "dev1"})
        assert r.json() == {"RC": 0, "RM": "OK", "result": {"n": 1, "ok": 1}}
        await wait_for(lambda: sim.live_sockets("alice") == 0, 5, message="session closed")
        assert_error(await c.get("/me/devices/dev1"), 404, "NOT_FOUND")
        r = await c.post("/me/unsubscribe", json={"type": "ios", "deviceId": "dev1"})
        assert r.json()["result"] == {"n": 0, "ok": 1}


async def test_state_foreground_ttl_and_expiry(bridge: RunningBridge, sim: ImkitSim) -> None:
    async with bridge.client(sim.issue_token("alice")) as c:
        await c.post("/me/subscribe", json=sub())
        r = await c.post("/me/state", json={"deviceId": "dev1", "state": "foreground", "ttl": 1})
        assert r.status_code == 200 and r.json()["result"]["foregroundUntil"] is not None
        assert (await c.get("/me/devices/dev1")).json()["result"]["state"] == "foreground"

        async def background() -> bool:
            return (await c.get("/me/devices/dev1")).json()["result"]["state"] == "background"

        # Expiry with no call: the effective state falls back to background once the TTL runs out.
        await wait_for(background, 5, interval=0.1, message="foreground expiry")
        assert_error(await c.post("/me/state", json={"deviceId": "dev1", "state": "foreground", "ttl": 0}), 400, "INVALID_PARAMETER")
        assert_error(await c.post("/me/state", json={"deviceId": "dev1"}), 400, "MISSING_PARAMETER")


async def test_test_push_returns_provider_answer(bridge: RunningBridge, sim: ImkitSim) -> None:
    async with bridge.client(sim.issue_token("alice")) as c:
        await c.post("/me/subscribe", json=sub(type_="fcm", token="fcm-token-1"))
        r = await c.post("/me/devices/dev1/test-push")
        assert r.status_code == 200, r.text
        results = r.json()["result"]["results"]
        assert [(x["type"], x["outcome"]) for x in results] == [("fcm", "delivered")]


async def test_device_limit(sim: ImkitSim, tmp_path: Path) -> None:
    async with running_bridge(settings_for(sim, tmp_path, max_devices_per_user=2)) as b, b.client(sim.issue_token("alice")) as c:
        for i in range(2):
            assert (await c.post("/me/subscribe", json=sub(device=f"d{i}"))).status_code == 200
        assert_error(await c.post("/me/subscribe", json=sub(device="d2")), 403, "FORBIDDEN")
        assert (await c.post("/me/subscribe", json=sub(device="d1", token="ee" * 32))).status_code == 200


async def test_rate_limit(sim: ImkitSim, tmp_path: Path) -> None:
    async with running_bridge(settings_for(sim, tmp_path, rate_limit_per_minute=3)) as b:
        async with b.client(sim.issue_token("alice")) as c:
            codes = [(await c.get("/me/devices/x")).status_code for _ in range(4)]
            assert codes[:3] == [404, 404, 404]
            assert codes[3] == 429
            r = await c.get("/me/devices/x")
            assert_error(r, 429, "RATE_LIMITED")
            assert int(r.headers["Retry-After"]) >= 1
        async with b.client(sim.issue_token("bob")) as other:
            assert (await other.get("/me/devices/x")).status_code == 404  # per user


async def test_client_key_must_match(sim: ImkitSim, tmp_path: Path) -> None:
    async with running_bridge(settings_for(sim, tmp_path, imkit_client_key="sim-client-key")) as b:
        async with b.client(sim.issue_token("alice"), **{"IM-CLIENT-KEY": "other"}) as c:
            assert_error(await c.post("/me/subscribe", json=sub()), 401, "INVALID_TOKEN")
        async with b.client(sim.issue_token("alice"), **{"IM-CLIENT-KEY": "sim-client-key"}) as c:
            assert (await c.post("/me/subscribe", json=sub())).status_code == 200


async def test_ops_endpoints(bridge: RunningBridge, sim: ImkitSim) -> None:
    async with bridge.client() as c:
        assert (await c.get("/healthz")).status_code == 200
        r = await c.get("/readyz")
        assert r.status_code == 200 and r.json()["result"]["ready"] is True
        metrics = (await c.get("/metrics")).text
        for name in ("bridge_sessions", "bridge_push_queue_depth", "bridge_devices"):
            assert name in metrics
        spec = (await c.get("/openapi.json")).json()
        for path in ("/me/subscribe", "/me/unsubscribe", "/me/state", "/me/devices/{deviceId}", "/me/devices/{deviceId}/test-push", "/healthz", "/readyz", "/metrics", "/admin/status", "/admin/devices"):
            assert path in spec["paths"], path
        assert r.headers.get("x-request-id")


async def test_admin_api(bridge: RunningBridge, sim: ImkitSim) -> None:
    async with bridge.client(sim.issue_token("alice")) as c:
        for i in range(5):
            await c.post("/me/subscribe", json=sub(device=f"d{i}", type_="fcm" if i % 2 else "ios", token=f"tok{i}"))
    async with bridge.client(Authorization=f"Bearer {ADMIN}") as admin:
        status = (await admin.get("/admin/status")).json()["result"]
        assert status["devices"]["total"] == 5 and status["devices"]["byPlatform"] == {"ios": 3, "fcm": 2}
        page1 = (await admin.get("/admin/devices", params={"limit": 2})).json()["result"]
        page2 = (await admin.get("/admin/devices", params={"limit": 2, "cursor": page1["nextCursor"]})).json()["result"]
        page3 = (await admin.get("/admin/devices", params={"limit": 2, "cursor": page2["nextCursor"]})).json()["result"]
        ids = [d["deviceId"] for d in page1["data"] + page2["data"] + page3["data"]]
        assert ids == ["d0", "d1", "d2", "d3", "d4"] and page3["nextCursor"] is None
        assert (await admin.get("/admin/devices/d3")).json()["result"]["clientId"] == "alice"
        assert (await admin.delete("/admin/devices/d3")).status_code == 200
        assert_error(await admin.get("/admin/devices/d3"), 404, "NOT_FOUND")
    async with bridge.client(Authorization="Bearer nope") as bad:
        assert_error(await bad.get("/admin/status"), 401, "INVALID_TOKEN")


# Regressions found by tests/e2e/test_schemathesis.py (issue 8, "Bad input").


@pytest.mark.parametrize("value", [b"\xff\xfe", "tok\u00e9n".encode("latin-1"), b"abc\x7f", b"a\x01b"])
async def test_client_token_outside_printable_ascii_is_401(bridge: RunningBridge, value: bytes) -> None:
    # Such a token used to reach the IMKIT client, which cannot put it in a header: 500.
    async with bridge.client() as c:
        assert_error(await c.get("/me/devices/dev1", headers={"IM-Authorization": value}), 401, "INVALID_TOKEN")
        backend = {"IM-API-KEY": ADMIN.encode(), "IM-Authorization": value}
        r = await c.post("/me/subscribe", json=sub(clientId="alice"), headers=backend)
        assert_error(r, 401, "INVALID_TOKEN")


async def test_imkit_refusing_to_verify_a_token(bridge: RunningBridge, sim: ImkitSim) -> None:
    # A GET /me answered with a 4xx other than 401 used to escape the API as a 500.
    async with bridge.client(sim.issue_token("alice")) as c:
        sim.fail_rest(403)
        assert_error(await c.get("/me/devices/dev1"), 401, "INVALID_TOKEN")
        sim.fail_rest(404)  # no /me at BRIDGE_IMKIT_URL: the bridge's problem, not the token's
        r = await c.get("/me/devices/dev1")
        assert_error(r, 503, "UPSTREAM_UNAVAILABLE")
        assert "Retry-After" in r.headers
        sim.fail_rest(None)
        assert_error(await c.get("/me/devices/dev1"), 404, "NOT_FOUND")


async def test_unsupported_method_says_what_is_allowed(bridge: RunningBridge) -> None:
    # The envelope handler used to drop the Allow header of a 405.
    async with bridge.client() as c:
        r = await c.request("TRACE", "/me/subscribe")
        assert_error(r, 405, "INVALID_PARAMETER")
        assert r.headers["allow"] == "POST"
        r = await c.put("/admin/devices/dev1")
        # Starlette names the methods of the first route on the path only (GET; DELETE is another route).
        assert r.status_code == 405 and "GET" in r.headers["allow"]


async def test_device_id_in_path_is_validated(bridge: RunningBridge, sim: ImkitSim) -> None:
    async with bridge.client(sim.issue_token("alice")) as c:
        # A trailing newline used to pass the hand-written check (re.match's "$" matches before it).
        for bad in ("dev1%0A", "d%20x", "x" * 129):
            assert_error(await c.get(f"/me/devices/{bad}"), 400, "INVALID_PARAMETER")
            assert_error(await c.post(f"/me/devices/{bad}/test-push"), 400, "INVALID_PARAMETER")


async def test_openapi_documents_errors_security_and_examples(bridge: RunningBridge) -> None:
    async with bridge.client() as c:
        spec = (await c.get("/openapi.json")).json()
    # Validation errors are 400s in our envelope, not FastAPI's 422.
    assert all("422" not in op["responses"] for ops in spec["paths"].values() for op in ops.values())
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ErrorEnvelope" in schemas
    assert set(spec["components"]["securitySchemes"]) == {"ClientToken", "PlatformKey", "AdminToken"}
    envelope = {"$ref": "#/components/schemas/ErrorEnvelope"}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            if path.startswith(("/me/", "/admin/")):
                assert op["security"], where
                errors = {s for s in op["responses"] if s.startswith(("4", "5"))}
                assert {"401", "503"} <= errors, where
                for status in errors:
                    assert op["responses"][status]["content"]["application/json"]["schema"] == envelope, (where, status)
            if path.startswith("/me/"):
                assert {"400", "401", "403", "429", "503"} <= set(op["responses"]), where
            if "requestBody" in op:
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                assert schemas[ref.rsplit("/", 1)[1]].get("examples"), where
            for param in op.get("parameters", []):
                if param["in"] == "path":
                    assert param["schema"].get("examples"), (where, param["name"])
