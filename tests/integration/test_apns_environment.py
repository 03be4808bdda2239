"""APNs environments (issue 14, part 1) and certificate expiry (part 4), at the provider: real
aioapns against the simulated APNs, whose two listeners play production and the sandbox."""

from __future__ import annotations

import asyncio
import datetime
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.check import run_checks
from bridge.config import Settings
from bridge.models import ApnsEnvironment, ApnsRequest, Notification
from bridge.push.apns import ApnsProvider, certificate_not_after, endpoints
from bridge.push.provider import Delivered, Failed, Retry, TokenInvalid
from bridge.sim.apns import ApnsSim
from bridge.sim.certs import ApnsKey, TestCerts, generate_apns_key, issue_test_certs

TOPIC = "com.example.chat"
DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestCerts, ApnsKey]:
    d = tmp_path_factory.mktemp("apns-env-pki")
    return issue_test_certs(d / "certs"), generate_apns_key(d / "key")


@pytest.fixture
async def sim(pki: tuple[TestCerts, ApnsKey]) -> AsyncIterator[ApnsSim]:
    certs, key = pki
    s = ApnsSim(certs.cert_file, certs.key_file, topics=[TOPIC], keys=[key])
    await s.start()
    yield s
    await s.stop()


MakeProvider = Callable[..., ApnsProvider]


@pytest.fixture
async def make_provider(
    pki: tuple[TestCerts, ApnsKey], sim: ApnsSim
) -> AsyncIterator[MakeProvider]:
    certs, key = pki
    made: list[ApnsProvider] = []

    def make(**kwargs: Any) -> ApnsProvider:
        options: dict[str, Any] = {
            "topic": TOPIC,
            "key": key.key_file.read_text(),
            "key_id": key.key_id,
            "team_id": key.team_id,
            "host": "127.0.0.1",
            "port": sim.port,
            "sandbox_host": "127.0.0.1",
            "sandbox_port": sim.sandbox_port,
            "ca_file": str(certs.ca_file),
            "timeout": 2.0,
        }
        options.update(kwargs)
        provider = ApnsProvider(**options)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()


def note(token: str, environment: ApnsEnvironment | None = None) -> Notification:
    return Notification(
        device_id="dev-1",
        push_type="ios",
        token=token,
        push_id=f"push-{secrets.token_hex(8)}",
        kind="message",
        apns=ApnsRequest({"aps": {"alert": {"title": "Ann", "body": "hello"}}}),
        apns_environment=environment,
    )


def seen(sim: ApnsSim, token: str) -> list[tuple[str, int | None, str | None]]:
    return [(r.environment, r.status, r.reason) for r in sim.received if r.token == token]


# --- endpoints


@pytest.mark.parametrize(
    ("overrides", "production", "sandbox"),
    [
        ({}, ("api.push.apple.com", 443), ("api.sandbox.push.apple.com", 443)),
        # One override (a proxy, the simulator of the outside checks) serves both environments.
        ({"host": "proxy", "port": 8443}, ("proxy", 8443), ("proxy", 8443)),
        (
            {"host": "proxy", "port": 8443, "sandbox_host": "sbx", "sandbox_port": 9443},
            ("proxy", 8443),
            ("sbx", 9443),
        ),
        ({"host": "proxy", "sandbox_port": 9443}, ("proxy", 443), ("proxy", 9443)),
        ({"sandbox_host": "sbx"}, ("api.push.apple.com", 443), ("sbx", 443)),
    ],
)
def test_endpoints(
    overrides: dict[str, Any], production: tuple[str, int], sandbox: tuple[str, int]
) -> None:
    assert endpoints(**overrides) == {"production": production, "sandbox": sandbox}


def test_settings_reach_the_sandbox_endpoint(pki: tuple[TestCerts, ApnsKey]) -> None:
    _, key = pki
    settings = Settings(
        apns_key_file=str(key.key_file),
        apns_key_id=key.key_id,
        apns_team_id=key.team_id,
        apns_topic=TOPIC,
        apns_host="127.0.0.1:2197",
        apns_sandbox_host="https://sandbox.local:8443/",
    )
    assert ApnsProvider.from_settings(settings).endpoints == {
        "production": ("127.0.0.1", 2197),
        "sandbox": ("sandbox.local", 8443),
    }


# --- sends


@pytest.mark.parametrize("default_sandbox", [False, True])
async def test_each_notification_goes_to_its_environment_or_the_default(
    make_provider: MakeProvider, sim: ApnsSim, default_sandbox: bool
) -> None:
    provider = make_provider(sandbox=default_sandbox)
    tokens = {env: secrets.token_hex(32) for env in ("production", "sandbox", "default")}
    for env in ("production", "sandbox"):
        result = await provider.send(note(tokens[env], env))
        assert isinstance(result, Delivered) and result.corrected_environment is None
    assert isinstance(await provider.send(note(tokens["default"])), Delivered)
    default = "sandbox" if default_sandbox else "production"
    assert seen(sim, tokens["production"]) == [("production", 200, None)]
    assert seen(sim, tokens["sandbox"]) == [("sandbox", 200, None)]
    assert seen(sim, tokens["default"]) == [(default, 200, None)]


@pytest.mark.parametrize(
    ("token_env", "sent_to", "corrected"),
    [("sandbox", None, "sandbox"), ("production", "sandbox", "production")],
)
async def test_bad_device_token_is_tried_once_in_the_other_environment(
    make_provider: MakeProvider,
    sim: ApnsSim,
    token_env: ApnsEnvironment,
    sent_to: ApnsEnvironment | None,
    corrected: ApnsEnvironment,
) -> None:
    provider = make_provider()
    token = secrets.token_hex(32)
    sim.register_token(token, token_env)
    n = note(token, sent_to)
    result = await provider.send(n)
    assert isinstance(result, Delivered) and result.corrected_environment == corrected
    wrong = "sandbox" if corrected == "production" else "production"
    assert seen(sim, token) == [(wrong, 400, "BadDeviceToken"), (corrected, 200, None)]
    # The same notification (apns-id) in both: a retry, not a second push.
    ids = {r.headers["apns-id"] for r in sim.received if r.token == token}
    assert len(ids) == 1 and result.provider_id in ids
    # Sent where it belongs (as the registration will be, once corrected): no correction.
    again = await provider.send(note(token, corrected))
    assert isinstance(again, Delivered) and again.corrected_environment is None
    assert seen(sim, token)[2:] == [(corrected, 200, None)]


async def test_a_token_bad_in_both_environments_is_dead(
    make_provider: MakeProvider, sim: ApnsSim
) -> None:
    provider = make_provider()
    token = secrets.token_hex(32)
    sim.script(token, status=400, reason="BadDeviceToken")
    assert await provider.send(note(token)) == TokenInvalid("BadDeviceToken")
    assert seen(sim, token) == [
        ("production", 400, "BadDeviceToken"),
        ("sandbox", 400, "BadDeviceToken"),
    ]


async def test_the_other_environments_answer_stands(
    make_provider: MakeProvider, sim: ApnsSim
) -> None:
    provider = make_provider()
    token = secrets.token_hex(32)
    sim.register_token(token, "sandbox")  # production answers BadDeviceToken
    sim.script(token, status=429, reason="TooManyRequests")  # and the sandbox: later, please
    # A retry (of both, later), not a dead token and no correction.
    assert await provider.send(note(token)) == Retry("TooManyRequests")
    assert seen(sim, token) == [
        ("production", 400, "BadDeviceToken"),
        ("sandbox", 429, "TooManyRequests"),
    ]


async def test_one_endpoint_for_both_is_not_asked_twice(
    make_provider: MakeProvider, sim: ApnsSim
) -> None:
    provider = make_provider(sandbox_host=None, sandbox_port=None)
    assert provider.endpoints["sandbox"] == provider.endpoints["production"]
    token = secrets.token_hex(32)
    sim.register_token(token, "sandbox")  # the production listener refuses it
    assert await provider.send(note(token)) == TokenInvalid("BadDeviceToken")
    assert seen(sim, token) == [("production", 400, "BadDeviceToken")]


async def test_the_second_try_fits_in_the_same_timeout(
    make_provider: MakeProvider, sim: ApnsSim
) -> None:
    provider = make_provider(timeout=1.0)
    token = secrets.token_hex(32)
    # Each answer takes 0.6 s: the first fits in the timeout, the second (0.4 s left) does not.
    sim.script(token, status=400, reason="BadDeviceToken", stall=0.6)
    started = time.monotonic()
    assert await provider.send(note(token)) == Retry("timeout")
    assert time.monotonic() - started < 1.0 + 0.3
    assert [r.environment for r in sim.received if r.token == token] == ["production", "sandbox"]


async def test_both_environments_use_one_provider_token(
    make_provider: MakeProvider, sim: ApnsSim
) -> None:
    provider = make_provider()
    for env in ("production", "sandbox"):
        assert isinstance(await provider.send(note(secrets.token_hex(32), env)), Delivered)
    # Keep each environment's connection busy with stalled sends (the simulator allows one
    # stream per connection now): more connections open, each of which aioapns would sign a
    # provider token for.
    sim.max_concurrent_streams = 1
    await provider.close()
    provider = make_provider()
    tokens = [secrets.token_hex(32) for _ in range(3)]
    for t in tokens:
        sim.script(t, stall=0.2)
    results = await asyncio.gather(
        *(provider.send(note(t, env)) for t in tokens for env in ("production", "sandbox"))
    )
    assert all(isinstance(r, Delivered) for r in results)
    assert provider.connections >= 4
    assert {r.environment for r in sim.received} == {"production", "sandbox"}
    assert len({r.headers["authorization"] for r in sim.received[2:]}) == 1


# --- certificate expiry


async def test_certificate_expiry_is_read_and_follows_a_renewed_file(
    tmp_path: Path, sim: ApnsSim, pki: tuple[TestCerts, ApnsKey]
) -> None:
    soon = issue_test_certs(tmp_path / "soon", client_valid_for=10 * DAY)
    later = issue_test_certs(tmp_path / "later", client_valid_for=300 * DAY)
    cert_file = tmp_path / "apns-cert.pem"
    shutil.copy(soon.client_file, cert_file)
    provider = ApnsProvider(
        topic=TOPIC,
        cert_file=str(cert_file),
        host="127.0.0.1",
        port=sim.port,
        ca_file=str(pki[0].ca_file),
        timeout=2.0,
        recycle_sends=1,
    )
    try:
        expiry = certificate_not_after(soon.client_file.read_bytes())
        assert provider.certificate_expiry == expiry
        assert abs(expiry - (time.time() + 10 * 86400)) < 60
        # The simulator checks no client certificate here: the answer does not matter.
        assert isinstance(await provider.send(note(secrets.token_hex(32))), Failed)
        shutil.copy(later.client_file, cert_file)
        await provider.send(note(secrets.token_hex(32)))  # recycled: the file is loaded again
        assert provider.certificate_expiry == certificate_not_after(later.client_file.read_bytes())
    finally:
        await provider.close()


@pytest.mark.parametrize(
    ("valid_for", "status", "text"),
    [
        (300 * DAY, "ok", "APNs certificate valid until"),
        (10 * DAY, "warn", "APNs certificate expires on"),
        (-DAY, "fail", "APNs certificate expired on"),
    ],
)
def test_check_warns_before_the_certificate_expires(
    tmp_path: Path, valid_for: datetime.timedelta, status: str, text: str
) -> None:
    certs = issue_test_certs(tmp_path, client_valid_for=valid_for)
    settings = Settings(
        _env_file=None,
        imkit_url="http://127.0.0.1:1",
        store=f"sqlite:///{tmp_path / 'b.db'}",
        apns_topic=TOPIC,
        apns_cert_file=str(certs.client_file),
    )
    found = [(s, what) for s, what in run_checks(settings) if "APNs certificate" in what]
    assert len(found) == 1 and found[0][0] == status and text in found[0][1], found
    when = datetime.datetime.fromtimestamp(
        certificate_not_after(certs.client_file.read_bytes()), datetime.UTC
    ).strftime("%Y-%m-%d %H:%M UTC")
    assert when in found[0][1]


def test_check_says_nothing_about_expiry_with_token_auth(
    tmp_path: Path, pki: tuple[TestCerts, ApnsKey]
) -> None:
    _, key = pki
    settings = Settings(
        _env_file=None,
        imkit_url="http://127.0.0.1:1",
        store=f"sqlite:///{tmp_path / 'b.db'}",
        apns_topic=TOPIC,
        apns_key_file=str(key.key_file),
        apns_key_id=key.key_id,
        apns_team_id=key.team_id,
    )
    assert not [what for _, what in run_checks(settings) if "certificate" in what]
