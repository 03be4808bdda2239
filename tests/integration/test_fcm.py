"""FcmProvider through the real firebase-admin against FcmSim, over HTTP/1.1 and over TLS + HTTP/2.

The simulator runs on the test's own event loop. google-auth's token fetch is blocking HTTP, so if
it ever ran on the loop (the library's own refresh in ``before_request`` or on a 401) the simulator
could not answer it and the send would hang: every successful send here also shows that the OAuth
refresh happened off the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import firebase_admin
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.compose import Target, compose_message
from bridge.config import Settings
from bridge.models import FcmRequest, Notification
from bridge.push.fcm import FcmProvider
from bridge.push.provider import Delivered, Failed, Retry, SendResult, TokenInvalid
from bridge.sim.fcm import FcmSim
from bridge.sim.fcm_messages import FCM_ERROR_TYPE
from bridge.upstream.protocol import Message
from tests._poll import wait_for

PUSH_TIMEOUT = 0.5


def note(token: str, **fcm: Any) -> Notification:
    """A notification shaped as bridge.push.fcm_layout lays one out: string data, an android and
    a notification block."""
    req: dict[str, Any] = {
        "data": {
            "title": "Bob",
            "body": "hello",
            "badge": "3",
            "loc-key": "im_loc_text",
            "loc-args": '["Bob", "hello"]',
            "type": "message:room-1",
        },
        "android": {
            "collapse_key": "room-1",
            "priority": "high",
            "ttl": 3600,
            "notification": {"body_loc_key": "im_loc_text", "body_loc_args": ["Bob", "hello"]},
        },
        "notification": {"title": "Bob", "body": "hello"},
    }
    req.update(fcm)
    return Notification(
        device_id="dev-1",
        push_type="fcm",
        token=token,
        push_id="p-1",
        kind="message",
        fcm=FcmRequest(**req),
    )


@pytest.fixture(params=["http1", "tls-h2"])
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[FcmSim]:
    s = FcmSim(tls=request.param == "tls-h2")
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def make_provider(sim: FcmSim, tmp_path: Path, **kw: Any) -> FcmProvider:
    sa = sim.write_service_account(tmp_path / "sa.json")
    return FcmProvider(
        sa,
        fcm_url=sim.url,
        ca_file=str(sim.ca_file) if sim.ca_file else None,
        timeout=kw.pop("timeout", PUSH_TIMEOUT),
        **kw,
    )


@pytest.fixture
async def provider(sim: FcmSim, tmp_path: Path) -> AsyncIterator[FcmProvider]:
    p = make_provider(sim, tmp_path)
    try:
        yield p
    finally:
        await p.close()


# ---------------------------------------------------------------------- delivered


async def test_delivered_and_what_fcm_received(sim: FcmSim, provider: FcmProvider) -> None:
    result = await provider.send(note("tok-ok"))

    assert isinstance(result, Delivered)
    assert result.provider_id and result.provider_id.startswith("projects/sim-project/messages/")
    [rec] = sim.received
    assert rec.token == "tok-ok" and rec.status == 200
    assert rec.http_version == "1.1"  # kept-alive HTTP/1.1 connections, with or without TLS
    assert rec.headers["authorization"].startswith("Bearer ya29.sim-")
    msg = rec.message
    assert all(isinstance(v, str) for v in msg["data"].values())
    assert msg["data"]["loc-args"] == '["Bob", "hello"]'
    assert msg["android"]["collapse_key"] == "room-1"
    assert msg["android"]["priority"] == "high"
    assert msg["android"]["ttl"] == "3600s"
    # v1 has loc keys only under android.notification.
    assert msg["android"]["notification"] == {
        "body_loc_key": "im_loc_text",
        "body_loc_args": ["Bob", "hello"],
    }
    assert msg["notification"] == {"title": "Bob", "body": "hello"}


async def test_the_webpush_block_reaches_fcm(sim: FcmSim, provider: FcmProvider) -> None:
    webpush = {"headers": {"TTL": "3600", "Urgency": "high"}, "notification": {"tag": "room-1"}}
    assert isinstance(await provider.send(note("tok-web", android=None, webpush=webpush)), Delivered)

    msg = sim.received[-1].message
    assert msg["webpush"] == webpush and "android" not in msg
    assert msg["notification"] == {"title": "Bob", "body": "hello"}


async def test_oauth_token_fetched_from_sim_before_first_send_and_reused(
    sim: FcmSim, provider: FcmProvider
) -> None:
    for i in range(3):
        assert isinstance(await provider.send(note(f"tok-{i}")), Delivered)

    assert len(sim.token_requests) == 1 and provider.token_refreshes == 1
    assert sim.token_requests[0] < sim.received[0].at
    assert len({r.headers["authorization"] for r in sim.received}) == 1


# ---------------------------------------------------------------------- result mapping

MAPPINGS: list[tuple[dict[str, Any], type, str]] = [
    ({"error_code": "UNREGISTERED"}, TokenInvalid, "unregistered"),
    # Another Firebase project's tokens: a configuration error, never a reason to disable.
    ({"error_code": "SENDER_ID_MISMATCH"}, Failed, "sender_id_mismatch"),
    ({"error_code": "INVALID_ARGUMENT"}, TokenInvalid, "invalid_token"),
    ({"error_code": "QUOTA_EXCEEDED"}, Retry, "quota_exceeded"),
    ({"status": 429}, Retry, "resource_exhausted"),
    ({"error_code": "UNAVAILABLE"}, Retry, "unavailable"),
    ({"error_code": "INTERNAL"}, Retry, "internal"),
    ({"status": 500}, Retry, "internal"),
    ({"drop": True}, Retry, "unknown"),
    ({"error_code": "THIRD_PARTY_AUTH_ERROR"}, Failed, "third_party_auth_error"),
    ({"status": 403}, Failed, "permission_denied"),
    ({"status": 404}, Failed, "not_found"),
]


@pytest.mark.parametrize(
    ("script", "kind", "reason"), MAPPINGS, ids=lambda v: str(v) if isinstance(v, str) else None
)
async def test_result_mapping(
    sim: FcmSim, provider: FcmProvider, script: dict[str, Any], kind: type, reason: str
) -> None:
    sim.script("tok-x", **script)

    result = await provider.send(note("tok-x"))

    assert isinstance(result, kind), result
    assert not isinstance(result, Delivered)
    assert result.reason.split(":")[0] == reason
    if isinstance(result, Retry):
        assert result.not_before is None  # no Retry-After in these answers
    # One request only: retrying (500/503 included) is the dispatcher's job, not the library's.
    assert len(sim.received) == 1
    assert "tok-x" not in repr(result)


async def test_retry_after_becomes_not_before(sim: FcmSim, provider: FcmProvider) -> None:
    sim.script("tok-q", error_code="QUOTA_EXCEEDED", retry_after=30)

    before = time.time()
    result = await provider.send(note("tok-q"))

    assert isinstance(result, Retry) and result.reason == "quota_exceeded"
    assert result.not_before is not None
    assert before + 30 <= result.not_before <= time.time() + 30


async def test_stall_is_retry_after_push_timeout(sim: FcmSim, provider: FcmProvider) -> None:
    sim.script("tok-slow", stall=30, times=1)

    started = time.monotonic()
    result = await provider.send(note("tok-slow"))
    elapsed = time.monotonic() - started

    assert result == Retry("timeout")
    assert PUSH_TIMEOUT * 0.9 <= elapsed < PUSH_TIMEOUT + 1.5
    assert isinstance(await provider.send(note("tok-slow")), Delivered)


async def test_dropped_connection_is_retry_then_recovers(
    sim: FcmSim, provider: FcmProvider
) -> None:
    # First an open connection for the drop to hit.
    assert isinstance(await provider.send(note("tok-warm")), Delivered)
    sim.script("tok-drop", drop=True, times=1)

    assert await provider.send(note("tok-drop")) == Retry("unknown")
    assert isinstance(await provider.send(note("tok-drop")), Delivered)
    assert [r.status for r in sim.received] == [200, None, 200]


async def test_payload_rejected_by_fcm_is_failed_not_token_invalid(
    sim: FcmSim, provider: FcmProvider
) -> None:
    big = note("tok-big", data={"payload": "x" * 5000})

    result = await provider.send(big)

    assert isinstance(result, Failed) and result.reason.startswith("invalid_argument")
    assert sim.received[-1].status == 400


async def test_fcm_counts_the_notification_against_the_size_limit(
    sim: FcmSim, provider: FcmProvider
) -> None:
    """3 KB of data fits on its own; with a 1.5 KB notification body the message does not."""
    data = {"title": "Bob", "body": "x" * 3000}
    small = await provider.send(note("tok-size", data=data))
    big = await provider.send(
        note("tok-size", data=data, notification={"title": "Bob", "body": "y" * 1500})
    )

    assert isinstance(small, Delivered)
    assert isinstance(big, Failed) and big.reason.startswith("invalid_argument")
    assert [r.status for r in sim.received] == [200, 400]


async def test_a_long_text_composed_for_fcm_is_accepted(sim: FcmSim, provider: FcmProvider) -> None:
    for push_type in ("android", "web"):
        for text in ("a" * 6000, "訊息" * 3000, "😀" * 3000):
            msg = Message.model_validate(
                {
                    "_id": "m1",
                    "room": "r1",
                    "message": text,
                    "sender": {"_id": "u", "nickname": "N" * 80},
                }
            )
            target = Target(push_type, "zh-TW", badge=7)
            req = compose_message(msg, target, now=time.time(), room_name="R" * 80)
            assert isinstance(req, FcmRequest)
            n = Notification(
                device_id="dev-1",
                push_type=push_type,
                token="tok-long",
                push_id="p-1",
                kind="message",
                fcm=req,
            )

            assert isinstance(await provider.send(n), Delivered), (push_type, text[:2])
    assert [r.status for r in sim.received] == [200] * 6


async def test_configuration_errors_are_logged_once_per_interval(
    sim: FcmSim, provider: FcmProvider, caplog: pytest.LogCaptureFixture
) -> None:
    sim.script("tok-other-project", error_code="SENDER_ID_MISMATCH")
    with caplog.at_level(logging.INFO, logger="bridge.push.fcm"):
        results = [await provider.send(note("tok-other-project")) for _ in range(3)]
    assert all(isinstance(r, Failed) and r.reason.startswith("sender_id_mismatch") for r in results)
    lines = [r for r in caplog.records if "sender_id_mismatch" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR
    assert "BRIDGE_FCM_CREDENTIALS_FILE" in lines[0].getMessage()
    assert "tok-other-project" not in caplog.text


async def test_bad_message_fails_locally_without_a_request(
    sim: FcmSim, provider: FcmProvider
) -> None:
    results = [
        await provider.send(note("tok-1", data={"n": 1})),  # non-string data value
        await provider.send(note("tok-1", android={"collapse_key": "r", "no_such_field": 1})),
        await provider.send(
            Notification(device_id="d", push_type="fcm", token="t", push_id="p", kind="k")
        ),
    ]

    assert all(isinstance(r, Failed) for r in results), results
    assert isinstance(results[1], Failed) and "no_such_field" in results[1].reason
    assert sim.received == []


async def test_concurrent_sends_share_a_bounded_pool_of_kept_alive_connections(
    sim: FcmSim, tmp_path: Path
) -> None:
    p = make_provider(sim, tmp_path, max_connections=20)
    try:
        rounds = []
        for r in range(2):
            before = len(sim.received)
            started = time.monotonic()
            results = await asyncio.gather(*(p.send(note(f"tok-{r}-{i}")) for i in range(200)))
            elapsed = time.monotonic() - started
            assert all(isinstance(r, Delivered) for r in results)
            assert len({r.provider_id for r in results if isinstance(r, Delivered)}) == 200
            got = sim.received[before:]
            assert sorted(r.token for r in got) == sorted(f"tok-{r}-{i}" for i in range(200))
            rounds.append({r.connection for r in got})
            print(f"\n200 sends: {elapsed * 1000:.0f} ms on {len(rounds[-1])} connection(s)")
        # 400 requests on at most 20 connections: bounded, and kept alive between rounds.
        assert len(rounds[0] | rounds[1]) <= 20
        assert p.requests_sent == 400
    finally:
        await p.close()


async def test_mixed_batch_gets_one_result_per_caller(sim: FcmSim, provider: FcmProvider) -> None:
    sim.script("tok-dead", error_code="UNREGISTERED")
    sim.script("tok-busy", error_code="UNAVAILABLE")

    results = await asyncio.gather(
        provider.send(note("tok-a")),
        provider.send(note("tok-dead")),
        provider.send(note("tok-busy")),
        provider.send(note("tok-b")),
    )

    assert [type(r) for r in results] == [Delivered, TokenInvalid, Retry, Delivered]


# ---------------------------------------------------------------------- OAuth token refresh


async def test_short_lived_token_is_refreshed_before_each_send(sim: FcmSim, tmp_path: Path) -> None:
    sim.token_ttl = 20  # under MIN_VALIDITY: every batch must wait for a fresh token
    p = make_provider(sim, tmp_path)
    try:
        for i in range(3):
            assert isinstance(await p.send(note(f"tok-{i}")), Delivered)
    finally:
        await p.close()

    assert len(sim.token_requests) == 3 and p.token_refreshes == 3
    for i, rec in enumerate(sim.received):
        assert sim.token_requests[i] < rec.at
    assert len({r.headers["authorization"] for r in sim.received}) == 3


async def test_token_near_expiry_is_refreshed_in_background(sim: FcmSim, tmp_path: Path) -> None:
    sim.token_ttl = 200  # within the refresh margin but still good: send now, refresh alongside
    p = make_provider(sim, tmp_path)
    try:
        assert isinstance(await p.send(note("tok-1")), Delivered)
        assert len(sim.token_requests) == 1
        assert isinstance(await p.send(note("tok-2")), Delivered)
        await wait_for(lambda: len(sim.token_requests) == 2)
        first = sim.received[0].headers["authorization"]
        assert sim.received[1].headers["authorization"] == first
        assert isinstance(await p.send(note("tok-3")), Delivered)
        assert sim.received[2].headers["authorization"] != first
    finally:
        await p.close()


async def test_revoked_token_is_retry_then_refreshed(sim: FcmSim, provider: FcmProvider) -> None:
    assert isinstance(await provider.send(note("tok-1")), Delivered)
    sim.revoke_tokens()

    assert await provider.send(note("tok-1")) == Retry("unauthenticated")
    assert isinstance(await provider.send(note("tok-1")), Delivered)
    assert len(sim.token_requests) == 2
    assert [r.status for r in sim.received] == [200, 401, 200]


# ---------------------------------------------------------------------- lifecycle, settings, secrets


async def test_from_settings_and_close(sim: FcmSim, tmp_path: Path) -> None:
    sa = sim.write_service_account(tmp_path / "fcm.json")
    settings = Settings(
        _env_file=None,
        fcm_credentials_file=str(sa),
        fcm_url=sim.url + "/",
        fcm_ca_file=str(sim.ca_file) if sim.ca_file else None,
        push_timeout=PUSH_TIMEOUT,
    )
    p = FcmProvider.from_settings(settings)
    other = FcmProvider.from_settings(settings)
    assert p.app_name != other.app_name
    assert p.project_id == "sim-project"
    try:
        assert isinstance(await p.send(note("tok-1")), Delivered)
    finally:
        await p.close()
        await other.close()
        await p.close()  # idempotent

    for name in (p.app_name, other.app_name):
        with pytest.raises(ValueError):
            firebase_admin.get_app(name)
    assert await p.send(note("tok-1")) == Retry("provider_closed")


async def test_close_answers_sends_in_flight(sim: FcmSim, tmp_path: Path) -> None:
    p = make_provider(sim, tmp_path, timeout=10.0)
    sim.script("tok-slow", stall=30, times=1)
    task = asyncio.ensure_future(p.send(note("tok-slow")))
    await wait_for(lambda: len(sim.received) == 1)  # FCM has it and does not answer
    await p.close()
    assert await asyncio.wait_for(task, 2) == Retry("provider_closed")


async def test_tokens_never_logged_or_in_results(
    sim: FcmSim, provider: FcmProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "fcm-token-SECRET-4242"
    results: list[SendResult] = [await provider.send(note(secret))]
    for script in ({"error_code": "INVALID_ARGUMENT"}, {"status": 403}, {"drop": True}):
        sim.script(secret, times=1, **script)
        results.append(await provider.send(note(secret)))
    results.append(await provider.send(note(secret, android={"bogus": 1})))

    assert secret not in caplog.text
    assert all(secret not in repr(r) for r in results)


# ---------------------------------------------------------------------- the simulator itself


def _grant_assertion(sim: FcmSim, key: Any = None) -> str:
    info = sim.service_account_info()
    now = int(time.time())
    return jwt.encode(
        {
            "iss": info["client_email"],
            "aud": info["token_uri"],
            "iat": now,
            "exp": now + 600,
            "scope": "https://www.googleapis.com/auth/firebase.messaging",
        },
        key or info["private_key"],
        algorithm="RS256",
        headers={"kid": info["private_key_id"]},
    )


@pytest.fixture
async def http(sim: FcmSim) -> AsyncIterator[httpx.AsyncClient]:
    import ssl

    verify: Any = ssl.create_default_context(cafile=str(sim.ca_file)) if sim.ca_file else True
    async with httpx.AsyncClient(base_url=sim.url, verify=verify, http2=True) as client:
        yield client


async def test_sim_token_endpoint_checks_the_signature(
    sim: FcmSim, http: httpx.AsyncClient
) -> None:
    grant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    ok = await http.post("/token", data={"grant_type": grant, "assertion": _grant_assertion(sim)})
    assert ok.status_code == 200
    body = ok.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["access_token"]

    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad = await http.post(
        "/token", data={"grant_type": grant, "assertion": _grant_assertion(sim, stranger)}
    )
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    assert len(sim.token_requests) == 1


async def test_sim_answers_in_googles_error_shape(sim: FcmSim, http: httpx.AsyncClient) -> None:
    grant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    token = (
        await http.post("/token", data={"grant_type": grant, "assertion": _grant_assertion(sim)})
    ).json()
    auth = {"authorization": f"Bearer {token['access_token']}"}
    send = "/v1/projects/sim-project/messages:send"
    sim.script("tok-dead", error_code="UNREGISTERED")

    dead = await http.post(send, headers=auth, json={"message": {"token": "tok-dead"}})
    assert dead.status_code == 404
    assert dead.json() == {
        "error": {
            "code": 404,
            "message": "Requested entity was not found.",
            "status": "NOT_FOUND",
            "details": [{"@type": FCM_ERROR_TYPE, "errorCode": "UNREGISTERED"}],
        }
    }
    non_string = await http.post(
        send, headers=auth, json={"message": {"token": "t", "data": {"n": 1}}}
    )
    assert non_string.status_code == 400
    err = non_string.json()["error"]
    assert err["status"] == "INVALID_ARGUMENT" and "message.data[0].value" in err["message"]
    assert {"@type": FCM_ERROR_TYPE, "errorCode": "INVALID_ARGUMENT"} in err["details"]

    unknown = await http.post(send, headers=auth, json={"message": {"token": "t", "colour": "red"}})
    assert unknown.status_code == 400
    no_auth = await http.post(send, json={"message": {"token": "t"}})
    assert no_auth.status_code == 401 and no_auth.json()["error"]["status"] == "UNAUTHENTICATED"
    other_project = await http.post(
        "/v1/projects/other/messages:send", headers=auth, json={"message": {"token": "t"}}
    )
    assert other_project.status_code == 403
    ok = await http.post(send, headers=auth, json={"message": {"token": "t", "data": {"a": "b"}}})
    assert ok.status_code == 200 and ok.json()["name"].startswith("projects/sim-project/messages/")
    assert [r.status for r in await sim.wait_received(6, timeout=2)] == [
        404,
        400,
        400,
        401,
        403,
        200,
    ]
    assert json.loads(json.dumps(sim.received[-1].message)) == {"token": "t", "data": {"a": "b"}}


async def test_sim_run_writes_service_account(tmp_path: Path) -> None:
    from bridge.sim import fcm as fcm_sim

    task = asyncio.create_task(fcm_sim.run("127.0.0.1", 0, tmp_path))
    sa = tmp_path / "fcm-service-account.json"
    try:
        await wait_for(sa.exists)
        await wait_for(lambda: bool(sa.read_text().strip().endswith("}")))
        info = json.loads(sa.read_text())
        assert info["type"] == "service_account" and info["token_uri"].startswith(
            "http://127.0.0.1:"
        )
        assert sa.stat().st_mode & 0o777 == 0o600
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
