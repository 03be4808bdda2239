"""The APNs provider end to end through real aioapns against the simulated APNs (HTTP/2 + TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.config import Settings
from bridge.models import ApnsRequest, Notification
from bridge.push.apns import ApnsProvider, map_response
from bridge.push.provider import Delivered, Failed, Retry, SendResult, TokenInvalid
from bridge.sim.apns import ApnsSim, run
from bridge.sim.certs import ApnsKey, TestCerts, generate_apns_key, issue_test_certs
from tests._poll import wait_for

TOPIC = "com.example.chat"
TIMEOUT = 0.5  # the provider's push timeout in these tests: stalls cost this much


@dataclass(frozen=True)
class Pki:
    certs: TestCerts
    key: ApnsKey
    other_key: ApnsKey


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("apns-pki")
    return Pki(
        issue_test_certs(d / "certs"), generate_apns_key(d / "k1"), generate_apns_key(d / "k2")
    )


@pytest.fixture
async def sim(pki: Pki) -> AsyncIterator[ApnsSim]:
    s = ApnsSim(pki.certs.cert_file, pki.certs.key_file, topics=[TOPIC], keys=[pki.key])
    await s.start()
    yield s
    await s.stop()


MakeProvider = Callable[..., ApnsProvider]


@pytest.fixture
async def make_provider(pki: Pki, sim: ApnsSim) -> AsyncIterator[MakeProvider]:
    made: list[ApnsProvider] = []

    def make(key: ApnsKey | None = None, **kwargs: Any) -> ApnsProvider:
        key = key or pki.key
        options: dict[str, Any] = {
            "topic": TOPIC,
            "key": key.key_file.read_text(),
            "key_id": key.key_id,
            "team_id": key.team_id,
            "host": "127.0.0.1",
            "port": kwargs.pop("port", None) or sim.port,
            "ca_file": str(pki.certs.ca_file),
            "timeout": TIMEOUT,
        }
        options.update(kwargs)
        provider = ApnsProvider(**options)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()


@pytest.fixture
async def provider(make_provider: MakeProvider) -> ApnsProvider:
    return make_provider()


def new_token() -> str:
    return secrets.token_hex(32)


def note(token: str, request: ApnsRequest | None = None, push_type: str = "ios") -> Notification:
    return Notification(
        device_id="dev-1",
        push_type=push_type,
        token=token,
        # A push id is unique per (device, message) in the bridge; it becomes the apns-id.
        push_id=f"push-{secrets.token_hex(8)}",
        kind="message",
        apns=request or ApnsRequest({"aps": {"alert": {"title": "Ann", "body": "hello"}}}),
    )


# --- delivered, and what Apple would have seen


async def test_delivered_sends_what_apple_expects(
    provider: ApnsProvider, sim: ApnsSim, pki: Pki
) -> None:
    token = new_token()
    payload = {
        "aps": {"alert": {"title": "Ann", "body": "hi"}, "thread-id": "r1"},
        "type": "msg:r1",
    }
    expiration = int(time.time()) + 3600
    request = ApnsRequest(payload, priority=10, collapse_id="m-42", expiration=expiration)

    result = await provider.send(note(token, request))

    assert isinstance(result, Delivered)
    [got] = sim.received
    assert got.status == 200
    assert got.token == token
    assert got.headers[":path"] == f"/3/device/{token}"
    assert got.headers["apns-topic"] == TOPIC
    assert got.headers["apns-push-type"] == "alert"
    assert got.headers["apns-priority"] == "10"
    assert got.headers["apns-collapse-id"] == "m-42"
    assert abs(int(got.headers["apns-expiration"]) - expiration) <= 1
    assert got.headers["apns-id"] == result.provider_id
    assert got.payload == payload
    scheme, _, bearer = got.headers["authorization"].partition(" ")
    assert scheme == "bearer"
    claims = jwt.decode(bearer, pki.key.public_key_pem, algorithms=["ES256"])
    assert claims["iss"] == pki.key.team_id
    assert jwt.get_unverified_header(bearer)["kid"] == pki.key.key_id


async def test_expiration_zero_means_now_or_never(provider: ApnsProvider, sim: ApnsSim) -> None:
    assert isinstance(
        await provider.send(note(new_token(), ApnsRequest({"aps": {}}, expiration=0))), Delivered
    )
    assert abs(int(sim.received[-1].headers["apns-expiration"]) - time.time()) <= 2


async def test_voip_goes_to_the_voip_topic(provider: ApnsProvider, sim: ApnsSim) -> None:
    request = ApnsRequest({"aps": {}, "call": "c1"}, push_type="voip", priority=10)
    assert isinstance(await provider.send(note(new_token(), request, "ios-voip")), Delivered)
    got = sim.received[-1]
    assert got.headers["apns-push-type"] == "voip"
    assert got.headers["apns-topic"] == TOPIC + ".voip"


async def test_an_explicit_topic_is_used_as_is(provider: ApnsProvider, sim: ApnsSim) -> None:
    sim.topics = frozenset({TOPIC, "com.example.other"})
    request = ApnsRequest(
        {"aps": {}}, push_type="background", priority=5, topic="com.example.other"
    )
    assert isinstance(await provider.send(note(new_token(), request)), Delivered)
    got = sim.received[-1]
    assert (got.headers["apns-topic"], got.headers["apns-push-type"]) == (
        "com.example.other",
        "background",
    )
    assert got.headers["apns-priority"] == "5"


# --- every mapping, through the library


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        (400, "BadDeviceToken", TokenInvalid("BadDeviceToken")),
        # A configuration error (wrong topic), not a dead token: never disables a registration.
        (400, "DeviceTokenNotForTopic", Failed("DeviceTokenNotForTopic")),
        (400, "TopicDisallowed", Failed("TopicDisallowed")),
        (403, "InvalidProviderToken", Failed("InvalidProviderToken")),
        (429, "TooManyRequests", Retry("TooManyRequests")),
        (500, "InternalServerError", Retry("InternalServerError")),
        (503, "ServiceUnavailable", Retry("ServiceUnavailable")),
        (503, "Shutdown", Retry("Shutdown")),
        (400, "BadCollapseId", Failed("BadCollapseId")),
        (400, "BadTopic", Failed("BadTopic")),
        (403, "Forbidden", Failed("Forbidden")),
        (413, "PayloadTooLarge", Failed("PayloadTooLarge")),
        (405, "MethodNotAllowed", Failed("MethodNotAllowed")),
        (410, "SomethingNew", Failed("SomethingNew")),
    ],
)
async def test_scripted_answer_maps_to_its_result(
    provider: ApnsProvider, sim: ApnsSim, status: int, reason: str, expected: SendResult
) -> None:
    token = new_token()
    sim.script(token, status=status, reason=reason)
    assert await provider.send(note(token)) == expected
    assert (sim.received[-1].status, sim.received[-1].reason) == (status, reason)


@pytest.mark.parametrize("reason", ["Unregistered", "ExpiredToken"])
async def test_410_is_token_invalid_since_apples_timestamp(
    provider: ApnsProvider, sim: ApnsSim, reason: str
) -> None:
    token = new_token()
    sim.script(token, status=410, reason=reason)
    before = time.time()
    result = await provider.send(note(token))
    assert isinstance(result, TokenInvalid) and result.reason == reason
    # The sim stamps the answer in milliseconds, like Apple: "invalid since" for the store.
    assert result.since is not None and before - 0.01 <= result.since <= time.time() + 0.01


async def test_configuration_errors_fail_and_are_logged_once_per_interval(
    make_provider: MakeProvider, sim: ApnsSim, caplog: pytest.LogCaptureFixture
) -> None:
    provider = make_provider()
    tokens = [new_token() for _ in range(3)]
    for token in tokens:
        sim.script(token, status=400, reason="DeviceTokenNotForTopic")
    with caplog.at_level(logging.INFO, logger="bridge.push.apns"):
        results = [await provider.send(note(token)) for token in tokens]
    assert results == [Failed("DeviceTokenNotForTopic")] * 3
    lines = [r for r in caplog.records if "DeviceTokenNotForTopic" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR
    assert "BRIDGE_APNS_TOPIC" in lines[0].getMessage() and TOPIC in lines[0].getMessage()
    assert not any(token in caplog.text for token in tokens)

    caplog.clear()
    chatty = make_provider(config_log_interval=0.0)
    with caplog.at_level(logging.INFO, logger="bridge.push.apns"):
        for token in tokens[:2]:
            await chatty.send(note(token))
    assert sum("DeviceTokenNotForTopic" in r.getMessage() for r in caplog.records) == 2


async def test_429_with_retry_after_carries_not_before(
    provider: ApnsProvider, sim: ApnsSim
) -> None:
    token = new_token()
    sim.script(token, status=429, reason="TooManyRequests", retry_after=30)
    before = time.time()
    result = await provider.send(note(token))
    assert isinstance(result, Retry) and result.reason == "TooManyRequests"
    assert result.not_before is not None
    assert before + 29 <= result.not_before <= time.time() + 31


async def test_a_script_applies_only_so_many_times(provider: ApnsProvider, sim: ApnsSim) -> None:
    token = new_token()
    sim.script(token, status=503, reason="ServiceUnavailable", times=2)
    results = [await provider.send(note(token)) for _ in range(3)]
    assert [type(r) for r in results] == [Retry, Retry, Delivered]


async def test_a_stall_times_out_as_retry_and_the_client_stays_usable(
    provider: ApnsProvider, sim: ApnsSim
) -> None:
    slow, fast = new_token(), new_token()
    sim.script(slow, stall=30)
    started = time.monotonic()
    assert await provider.send(note(slow)) == Retry("timeout")
    assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 1.0
    assert isinstance(await provider.send(note(fast)), Delivered)


async def test_a_late_answer_to_a_timed_out_send_does_not_break_the_connection(
    provider: ApnsProvider, sim: ApnsSim
) -> None:
    late = new_token()
    sim.script(late, status=400, reason="BadCollapseId", stall=TIMEOUT + 0.2)
    ok = new_token()
    sim.script(ok, stall=TIMEOUT + 0.3)
    assert await provider.send(note(late)) == Retry("timeout")
    # The stalled answers now arrive for requests nobody waits for; the connection must survive.
    results = await asyncio.gather(provider.send(note(ok)), provider.send(note(new_token())))
    assert results[0] == Retry("timeout") and isinstance(results[1], Delivered)
    assert isinstance(await provider.send(note(new_token())), Delivered)
    assert sim.accepted == 1


@pytest.mark.parametrize(("status", "reason"), [(200, None), (400, "BadCollapseId")])
async def test_an_answer_without_apns_id_does_not_hang(
    make_provider: MakeProvider, sim: ApnsSim, status: int, reason: str | None
) -> None:
    provider = make_provider(timeout=10.0)
    token = new_token()
    sim.script(token, status=status, reason=reason, echo_apns_id=False)
    started = time.monotonic()
    assert await provider.send(note(token)) == Retry("connection")
    assert time.monotonic() - started < 5.0  # ended with the stream, well before the timeout
    assert isinstance(await provider.send(note(new_token())), Delivered)
    assert sim.accepted == 1


async def test_goaway_is_retry_and_the_next_send_reconnects(
    provider: ApnsProvider, sim: ApnsSim
) -> None:
    assert isinstance(await provider.send(note(new_token())), Delivered)
    token = new_token()
    sim.script(token, goaway=True, reason="Shutdown", times=1)
    assert await provider.send(note(token)) == Retry("connection")
    assert sim.received[-1].status is None
    assert isinstance(await provider.send(note(token)), Delivered)
    assert sim.accepted == 2


async def test_connection_refused_is_retry(make_provider: MakeProvider, sim: ApnsSim) -> None:
    port = sim.port
    await sim.stop()
    provider = make_provider(port=port)
    assert isinstance(await provider.send(note(new_token())), Retry)


async def test_untrusted_server_certificate_is_retry(
    make_provider: MakeProvider, sim: ApnsSim
) -> None:
    provider = make_provider(ca_file=None)  # the system store does not know our test CA
    assert isinstance(await provider.send(note(new_token())), Retry)
    assert sim.received == []


# --- what the simulator itself rejects, seen through the provider


async def test_wrong_signing_key_is_rejected_with_403(
    make_provider: MakeProvider, sim: ApnsSim, pki: Pki
) -> None:
    provider = make_provider(key=pki.other_key)
    assert await provider.send(note(new_token())) == Failed("InvalidProviderToken")
    assert (sim.received[-1].status, sim.received[-1].reason) == (403, "InvalidProviderToken")


async def test_key_signed_for_another_team_is_rejected(
    make_provider: MakeProvider, sim: ApnsSim, pki: Pki
) -> None:
    provider = make_provider(team_id="ZZZZZZZZZZ")
    assert await provider.send(note(new_token())) == Failed("InvalidProviderToken")


async def test_topic_not_allowed(make_provider: MakeProvider, sim: ApnsSim) -> None:
    provider = make_provider(topic="com.example.elsewhere")
    assert await provider.send(note(new_token())) == Failed("TopicDisallowed")
    assert sim.received[-1].status == 400


@pytest.mark.parametrize(
    ("push_type", "size", "expected_status"),
    [("alert", 4096, 200), ("alert", 4097, 413), ("voip", 5120, 200), ("voip", 5121, 413)],
)
async def test_payload_limits(
    provider: ApnsProvider, sim: ApnsSim, push_type: str, size: int, expected_status: int
) -> None:
    skeleton = json.dumps({"aps": {}, "x": ""}, ensure_ascii=False).encode()
    payload = {"aps": {}, "x": "a" * (size - len(skeleton))}
    request = ApnsRequest(payload, push_type=push_type)  # type: ignore[arg-type]
    result = await provider.send(note(new_token(), request))
    assert sim.received[-1].status == expected_status
    if expected_status == 413:
        assert result == Failed("PayloadTooLarge")
    else:
        assert isinstance(result, Delivered)


async def test_certificate_auth(pki: Pki) -> None:
    certs = pki.certs
    sim = ApnsSim(certs.cert_file, certs.key_file, topics=[TOPIC], client_ca_file=certs.ca_file)
    await sim.start()
    provider = ApnsProvider(
        topic=TOPIC,
        cert_file=str(certs.client_file),
        host="127.0.0.1",
        port=sim.port,
        ca_file=str(certs.ca_file),
        timeout=2.0,
    )
    try:
        assert isinstance(await provider.send(note(new_token())), Delivered)
        assert "authorization" not in sim.received[-1].headers
    finally:
        await provider.close()
        await sim.stop()


# --- load, flow control, recycling, idle timeout


async def test_many_concurrent_sends(make_provider: MakeProvider, sim: ApnsSim) -> None:
    provider = make_provider(timeout=10.0)
    dead = new_token()
    sim.script(dead, status=410, reason="Unregistered")
    tokens = [new_token() for _ in range(600)]
    # ~1 KiB each: 600 at once need ten times the 64 KiB HTTP/2 send window a connection starts with
    request = ApnsRequest({"aps": {"alert": {"body": "b" * 1000}}})
    assert isinstance(await provider.send(note(new_token())), Delivered)  # connected: one burst
    started = time.monotonic()
    results = await asyncio.gather(
        *(provider.send(note(dead if i % 10 == 0 else t, request)) for i, t in enumerate(tokens))
    )
    elapsed = time.monotonic() - started
    print(f"600 concurrent APNs sends in {elapsed:.2f}s ({600 / elapsed:.0f}/s)")
    assert sum(isinstance(r, Delivered) for r in results) == 540
    assert sum(isinstance(r, TokenInvalid) and r.reason == "Unregistered" for r in results) == 60
    ids = {r.provider_id for r in results if isinstance(r, Delivered)}
    assert len(ids) == 540
    assert len(await sim.wait_received(601, timeout=1.0)) == 601


async def test_error_bodies_do_not_exhaust_the_flow_control_window(
    make_provider: MakeProvider, sim: ApnsSim
) -> None:
    # ~1 KiB per error body: without handing credit back, the 64 KiB window runs out after ~64.
    provider = make_provider(timeout=2.0, recycle_sends=10**9)
    token = new_token()
    sim.script(token, status=400, reason="X" * 1000)
    for _ in range(4):
        results = await asyncio.gather(*(provider.send(note(token)) for _ in range(50)))
        assert all(r == Failed("X" * 1000) for r in results)
    assert sim.accepted == 1


async def test_the_client_is_recycled_every_n_sends(
    make_provider: MakeProvider, sim: ApnsSim
) -> None:
    provider = make_provider(recycle_sends=5)
    results = [await provider.send(note(new_token())) for _ in range(12)]
    assert all(isinstance(r, Delivered) for r in results)
    assert sim.accepted == 3
    await wait_for(lambda: sim.connections == 1)


async def test_the_client_is_recycled_after_some_time(
    make_provider: MakeProvider, sim: ApnsSim
) -> None:
    provider = make_provider(recycle_after=0.0)  # every client is already old at its next send
    assert isinstance(await provider.send(note(new_token())), Delivered)
    assert isinstance(await provider.send(note(new_token())), Delivered)
    assert sim.accepted == 2
    await wait_for(lambda: sim.connections == 1)


async def test_recycling_waits_for_sends_in_flight(
    make_provider: MakeProvider, sim: ApnsSim
) -> None:
    provider = make_provider(recycle_sends=1, timeout=3.0)
    slow = new_token()
    sim.script(slow, stall=0.3)
    pending = asyncio.ensure_future(provider.send(note(slow)))
    await sim.wait_received(1)
    assert isinstance(await provider.send(note(new_token())), Delivered)  # on a new client
    assert isinstance(await pending, Delivered)  # the old client was not closed under it
    assert sim.accepted == 2
    await wait_for(lambda: sim.connections == 1)


async def test_idle_timeout_is_configurable(make_provider: MakeProvider, sim: ApnsSim) -> None:
    provider = make_provider(idle_timeout=0.2)
    assert isinstance(await provider.send(note(new_token())), Delivered)
    assert sim.connections == 1
    await wait_for(lambda: sim.connections == 0, timeout=3.0)
    assert isinstance(await provider.send(note(new_token())), Delivered)


async def test_default_idle_timeout_outlasts_aioapns_ten_seconds(provider: ApnsProvider) -> None:
    assert isinstance(await provider.send(note(new_token())), Delivered)
    [conn] = provider._current["production"].client.pool.connections
    assert conn.INACTIVITY_TIME > 10


async def test_close_closes_connections_and_later_sends_retry(
    provider: ApnsProvider, sim: ApnsSim
) -> None:
    assert isinstance(await provider.send(note(new_token())), Delivered)
    await provider.close()
    await wait_for(lambda: sim.connections == 0)
    assert await provider.send(note(new_token())) == Retry("provider_closed")


# --- configuration and secrets


async def test_from_settings_with_a_key_file(sim: ApnsSim, pki: Pki) -> None:
    settings = Settings(
        apns_key_file=str(pki.key.key_file),
        apns_key_id=pki.key.key_id,
        apns_team_id=pki.key.team_id,
        apns_topic=TOPIC,
        apns_host="127.0.0.1",
        apns_port=sim.port,
        apns_ca_file=str(pki.certs.ca_file),
        push_timeout=TIMEOUT,
    )
    provider = ApnsProvider.from_settings(settings)
    try:
        assert provider.name == "apns"
        assert isinstance(await provider.send(note(new_token())), Delivered)
    finally:
        await provider.close()


def test_from_settings_without_credentials_is_an_error() -> None:
    with pytest.raises(ValueError, match="not configured"):
        ApnsProvider.from_settings(Settings(apns_topic=TOPIC))


def test_from_settings_sandbox_picks_apples_sandbox_host(pki: Pki) -> None:
    settings = Settings(
        apns_key_file=str(pki.key.key_file),
        apns_key_id=pki.key.key_id,
        apns_team_id=pki.key.team_id,
        apns_topic=TOPIC,
        apns_sandbox=True,
    )
    provider = ApnsProvider.from_settings(settings)
    assert provider.default_environment == "sandbox"
    assert provider.endpoints["sandbox"] == ("api.sandbox.push.apple.com", 443)


async def test_no_token_or_key_in_logs_or_repr(
    make_provider: MakeProvider, sim: ApnsSim, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = new_token()
    provider = make_provider()
    for status, reason in [(410, "Unregistered"), (500, "InternalServerError")]:
        sim.script(token, status=status, reason=reason, times=1)
        await provider.send(note(token))
    sim.script(token, goaway=True, times=1)
    await provider.send(note(token))
    sim.script(token, stall=5, times=1)
    await provider.send(note(token))
    key_text = pki.key.key_file.read_text()
    secret_bits = [token, key_text.splitlines()[1], sim.received[0].headers["authorization"]]
    texts = [r.getMessage() for r in caplog.records] + [repr(provider), repr(sim.received[0])]
    assert caplog.records  # something was logged, so the check below means something
    for text in texts:
        for secret in secret_bits:
            assert secret not in text


# --- the simulator's own checks, with a plain HTTP/2 client


@pytest.fixture
async def h2_client(pki: Pki) -> AsyncIterator[httpx.AsyncClient]:
    ctx = ssl.create_default_context(cafile=str(pki.certs.ca_file))
    async with httpx.AsyncClient(http2=True, verify=ctx, timeout=5.0) as client:
        yield client


def bearer(key: ApnsKey, iat: float | None = None) -> str:
    token = jwt.encode(
        {"iss": key.team_id, "iat": int(time.time() if iat is None else iat)},
        key.key_file.read_text(),
        algorithm="ES256",
        headers={"kid": key.key_id},
    )
    return f"bearer {token}"


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({}, 200, None),
        ({"path": "/3/device/not-hex"}, 400, "BadDeviceToken"),
        ({"path": "/2/device/abcd"}, 404, "BadPath"),
        ({"method": "GET"}, 405, "MethodNotAllowed"),
        ({"authorization": None}, 403, "MissingProviderToken"),
        ({"authorization": "bearer nonsense"}, 403, "InvalidProviderToken"),
        ({"authorization": "expired"}, 403, "ExpiredProviderToken"),
        ({"apns-topic": None}, 400, "MissingTopic"),
        ({"apns-topic": "com.evil"}, 400, "TopicDisallowed"),
        ({"apns-push-type": "shout"}, 400, "InvalidPushType"),
        ({"apns-push-type": "voip"}, 400, "InvalidPushType"),  # voip needs the .voip topic
        ({"apns-push-type": "voip", "apns-topic": TOPIC + ".voip"}, 200, None),
        ({"apns-priority": "7"}, 400, "BadPriority"),
        ({"apns-id": "not-a-uuid"}, 400, "BadMessageId"),
        ({"apns-collapse-id": "c" * 65}, 400, "BadCollapseId"),
        ({"apns-expiration": "soon"}, 400, "BadExpirationDate"),
        ({"body": b"{not json"}, 400, "BadPayload"),
        ({"body": b"[1, 2]"}, 400, "BadPayload"),
        ({"body": b""}, 400, "PayloadEmpty"),
    ],
)
async def test_sim_checks_like_apple(
    h2_client: httpx.AsyncClient,
    sim: ApnsSim,
    pki: Pki,
    change: dict[str, Any],
    status: int,
    reason: str | None,
) -> None:
    token = new_token()
    headers: dict[str, str | None] = {
        "apns-topic": TOPIC,
        "apns-push-type": "alert",
        "authorization": bearer(pki.key),
    }
    if change.get("authorization") == "expired":
        change = {"authorization": bearer(pki.key, iat=time.time() - 3700)}
    headers.update({k: v for k, v in change.items() if k not in ("path", "method", "body")})
    response = await h2_client.request(
        change.get("method", "POST"),
        f"https://127.0.0.1:{sim.port}{change.get('path', f'/3/device/{token}')}",
        headers={k: v for k, v in headers.items() if v is not None},
        content=change.get("body", b'{"aps": {"alert": "hi"}}'),
    )
    assert response.http_version == "HTTP/2"
    assert response.status_code == status
    assert response.headers.get("apns-id")
    if status == 200:
        assert response.content == b""
    else:
        assert response.json()["reason"] == reason
    assert (sim.received[-1].status, sim.received[-1].reason) == (status, reason)


async def test_sim_echoes_the_requests_apns_id(
    h2_client: httpx.AsyncClient, sim: ApnsSim, pki: Pki
) -> None:
    apns_id = "123e4567-e89b-12d3-a456-426614174000"
    response = await h2_client.post(
        f"https://127.0.0.1:{sim.port}/3/device/{new_token()}",
        headers={"apns-topic": TOPIC, "authorization": bearer(pki.key), "apns-id": apns_id},
        content=b'{"aps": {}}',
    )
    assert (response.status_code, response.headers["apns-id"]) == (200, apns_id)


async def test_sim_410_carries_a_timestamp(
    h2_client: httpx.AsyncClient, sim: ApnsSim, pki: Pki
) -> None:
    token = new_token()
    sim.script(token, status=410, reason="Unregistered")
    response = await h2_client.post(
        f"https://127.0.0.1:{sim.port}/3/device/{token}",
        headers={"apns-topic": TOPIC, "authorization": bearer(pki.key)},
        content=b'{"aps": {}}',
    )
    assert response.status_code == 410
    assert abs(response.json()["timestamp"] / 1000 - time.time()) < 60


async def test_sim_keeps_only_the_latest_received_when_asked(
    h2_client: httpx.AsyncClient, pki: Pki
) -> None:
    sim = ApnsSim(
        pki.certs.cert_file, pki.certs.key_file, topics=[TOPIC], keys=[pki.key], keep_received=3
    )
    await sim.start()
    try:
        headers = {"apns-topic": TOPIC, "authorization": bearer(pki.key)}
        url = f"https://127.0.0.1:{sim.port}/3/device/"
        tokens = [new_token() for _ in range(10)]
        sim.script(tokens[-1], status=410, reason="Unregistered")
        for token in tokens:
            await h2_client.post(url + token, headers=headers, content=b'{"aps": {}}')
        await sim.wait_received(10)
        assert sim.received_total == 10
        assert 3 <= len(sim.received) <= 6 and sim.received[-1].token == tokens[-1]
        assert sim.statuses == {200: 9, 410: 1}
    finally:
        await sim.stop()


async def test_sim_wait_received_times_out(sim: ApnsSim) -> None:
    with pytest.raises(TimeoutError):
        await sim.wait_received(1, timeout=0.05)


async def test_sim_run_writes_its_settings_and_reuses_them(tmp_path: Path) -> None:
    async def serve_once() -> dict[str, Any]:
        task = asyncio.ensure_future(run("127.0.0.1", 0, tmp_path, TOPIC))
        state_file = tmp_path / "apns-sim.json"
        try:

            def written() -> bool:
                # the file is written once, after listening; a left-over one has port -1
                with contextlib.suppress(OSError, ValueError):
                    return int(json.loads(state_file.read_text())["port"]) > 0
                return False

            await wait_for(written)
            state: dict[str, Any] = json.loads(state_file.read_text())
            env = state["env"]
            settings = Settings(
                apns_key_file=env["BRIDGE_APNS_KEY_FILE"],
                apns_key_id=env["BRIDGE_APNS_KEY_ID"],
                apns_team_id=env["BRIDGE_APNS_TEAM_ID"],
                apns_topic=env["BRIDGE_APNS_TOPIC"],
                apns_host=env["BRIDGE_APNS_HOST"],
                apns_port=int(env["BRIDGE_APNS_PORT"]),
                apns_ca_file=env["BRIDGE_APNS_CA_FILE"],
                push_timeout=2.0,
            )
            provider = ApnsProvider.from_settings(settings)
            token = new_token()
            try:
                assert isinstance(await provider.send(note(token)), Delivered)
            finally:
                await provider.close()
            # What arrived is readable from outside the process, this run's requests only.
            lines = (await asyncio.to_thread(Path(state["received_file"]).read_text)).splitlines()
            assert [(r["token"], r["status"]) for r in map(json.loads, lines)] == [(token, 200)]
            assert json.loads(lines[0])["payload"]["aps"]["alert"]["body"] == "hello"
            state_file.unlink()
            return state
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    first = await serve_once()
    (tmp_path / "apns-sim.json").write_text(json.dumps({**first, "port": -1}))  # a previous run's
    second = await serve_once()
    assert second["key_id"] == first["key_id"] and second["ca_file"] == first["ca_file"]


# --- the mapping table on its own (cases the simulator cannot easily produce)


@pytest.mark.parametrize(
    ("status", "reason", "retry_after", "expected"),
    [
        (200, None, None, Delivered()),
        (502, None, None, Retry("http_502")),
        (400, "Shutdown", None, Retry("Shutdown")),
        (
            429,
            "TooManyRequests",
            "Wed, 21 Oct 2099 07:28:00 GMT",
            Retry("TooManyRequests", 4096250880.0),
        ),
        (429, "TooManyRequests", "garbage", Retry("TooManyRequests")),
        (301, None, None, Failed("http_301")),
    ],
)
def test_map_response_edges(
    status: int, reason: str | None, retry_after: str | None, expected: SendResult
) -> None:
    assert map_response(status, reason, retry_after) == expected


@pytest.mark.parametrize(
    ("timestamp", "since"),
    [(1_700_000_000_123, 1_700_000_000.123), (None, None), (0, None), ("soon", None), (True, None)],
)
def test_map_response_reads_the_410_timestamp(timestamp: Any, since: float | None) -> None:
    assert map_response(410, "Unregistered", None, timestamp) == TokenInvalid("Unregistered", since)
    # Apple sends one with 410 only; whenever there is one, a dead token carries it.
    assert map_response(400, "BadDeviceToken", None, timestamp) == TokenInvalid(
        "BadDeviceToken", since
    )


async def test_no_apns_request_is_failed_without_network(pki: Pki) -> None:
    provider = ApnsProvider(topic=TOPIC, cert_file=str(pki.certs.client_file))
    n = note(new_token())
    n.apns = None
    assert await provider.send(n) == Failed("no_apns_request")


@pytest.mark.parametrize(
    "credentials",
    [
        {
            "key": "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
            "key_id": "K",
            "team_id": "T",
        },
        {"key": "rsa", "key_id": "K", "team_id": "T"},
        {"key": "x"},  # no key id / team id
        {"cert_file": "/nonexistent/cert.pem"},
        {},
    ],
)
def test_unusable_credentials_fail_at_construction(credentials: dict[str, Any]) -> None:
    if credentials.get("key") == "rsa":
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        credentials["key"] = rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    with pytest.raises(ValueError) as caught:
        ApnsProvider(topic=TOPIC, **credentials)
    assert "not a key" not in str(caught.value)
