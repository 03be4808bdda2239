"""APNs environment per registration (issue 14, part 1) and the certificate-expiry gauge (part 4),
through the API and the pool against the simulators (the simulated APNs has a production and a
sandbox listener, and refuses a token of the other environment with BadDeviceToken)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bridge.models import ApnsEnvironment
from bridge.push.apns import certificate_not_after
from bridge.sim.certs import issue_test_certs
from bridge.sim.stack import SimStack
from tests._poll import wait_for
from tests.e2e._bridge import running_bridge
from tests.e2e._stack import IOS, Stack, stack, stack_options, stack_settings  # noqa: F401 - fixtures

OTHER_IOS = "c3" * 32
CORRECTIONS = "bridge_apns_environment_corrections_total"


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text ``text`` (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def registration(device: dict[str, Any], push_type: str = "ios") -> dict[str, Any]:
    return next(r for r in device["registrations"] if r["type"] == push_type)


def seen(stack: Stack, token: str) -> list[tuple[str, int | None, str | None]]:
    return [(r.environment, r.status, r.reason) for r in stack.apns.received if r.token == token]


async def corrections(stack: Stack) -> float:
    text = (await stack.alice.get("/metrics")).text
    return sum(
        metric(text, CORRECTIONS, **{"from": a, "to": b})
        for a, b in (("production", "sandbox"), ("sandbox", "production"))
    )


async def test_a_sandbox_registration_is_pushed_to_the_sandbox(stack: Stack) -> None:
    stack.apns.register_token(IOS, "sandbox")  # a debug build's token
    await stack.subscribe("iphone", "ios", IOS, apnsEnvironment="sandbox")
    assert registration(await stack.device("iphone"))["apnsEnvironment"] == "sandbox"
    await stack.wait_live("iphone")
    await stack.imkit.send_message("r1", "bob", "to the debug build")

    events = await stack.wait_event("iphone", 1)
    assert events[0]["results"][0]["outcome"] == "delivered"
    assert seen(stack, IOS) == [("sandbox", 200, None)]
    assert await corrections(stack) == 0


async def test_a_production_default_registration_is_pushed_to_production(stack: Stack) -> None:
    stack.apns.register_token(IOS, "production")
    await stack.subscribe("iphone", "ios", IOS)
    assert registration(await stack.device("iphone"))["apnsEnvironment"] is None
    await stack.wait_live("iphone")
    await stack.imkit.send_message("r1", "bob", "to the store build")
    await stack.wait_event("iphone", 1)
    assert seen(stack, IOS) == [("production", 200, None)]


async def _corrected_and_remembered(
    stack: Stack, token_env: ApnsEnvironment, subscribed: ApnsEnvironment | None
) -> None:
    stack.apns.register_token(IOS, token_env)
    extra = {"apnsEnvironment": subscribed} if subscribed else {}
    await stack.subscribe("iphone", "ios", IOS, **extra)
    await stack.wait_live("iphone")
    wrong = "sandbox" if token_env == "production" else "production"

    await stack.imkit.send_message("r1", "bob", "first")
    events = await stack.wait_event("iphone", 1)
    assert events[0]["results"][0]["outcome"] == "delivered"
    reg = registration(await stack.device("iphone"))
    assert reg["apnsEnvironment"] == token_env and reg["active"] is True
    text = (await stack.alice.get("/metrics")).text
    assert metric(text, CORRECTIONS, **{"from": wrong, "to": token_env}) == 1

    # Remembered: the next push goes straight to the right environment.
    await stack.imkit.send_message("r1", "bob", "second")
    events = await stack.wait_event("iphone", 2)
    assert events[0]["results"][0]["outcome"] == "delivered"
    assert seen(stack, IOS) == [
        (wrong, 400, "BadDeviceToken"),
        (token_env, 200, None),
        (token_env, 200, None),
    ]
    assert await corrections(stack) == 1


async def test_a_sandbox_token_without_environment_is_corrected_and_remembered(
    stack: Stack,
) -> None:
    await _corrected_and_remembered(stack, "sandbox", None)


async def test_a_production_token_registered_as_sandbox_is_corrected(stack: Stack) -> None:
    await _corrected_and_remembered(stack, "production", "sandbox")


async def test_a_token_bad_in_both_environments_is_disabled(stack: Stack) -> None:
    stack.apns.script(IOS, status=400, reason="BadDeviceToken")
    await stack.subscribe("iphone", "ios", IOS)
    await stack.wait_live("iphone")
    await stack.imkit.send_message("r1", "bob", "nowhere")

    events = await stack.wait_event("iphone", 1)
    assert events[0]["results"][0]["outcome"] == "token_invalid"
    reg = registration(await stack.device("iphone"))
    assert reg["active"] is False and reg["disabledReason"] == "BadDeviceToken"
    assert reg["apnsEnvironment"] is None
    assert seen(stack, IOS) == [
        ("production", 400, "BadDeviceToken"),
        ("sandbox", 400, "BadDeviceToken"),
    ]
    assert await corrections(stack) == 0


async def test_a_late_correction_for_an_old_token_leaves_the_new_one_alone(stack: Stack) -> None:
    await stack.subscribe("iphone", "ios", IOS)
    await stack.wait_live("iphone")
    # Production refuses the old token, slowly; the sandbox then accepts it: a correction, but it
    # arrives after the app registered a new (production) token.
    stack.apns.script(IOS, status=400, reason="BadDeviceToken", stall=1.0, times=1)
    await stack.imkit.send_message("r1", "bob", "to the old token")
    await wait_for(lambda: bool(seen(stack, IOS)), 10, message="sent to production")
    await stack.subscribe("iphone", "ios", OTHER_IOS)

    events = await stack.wait_event("iphone", 1)  # the correction was handled before this shows
    assert events[0]["results"][0]["outcome"] == "delivered"
    assert seen(stack, IOS) == [("production", 400, "BadDeviceToken"), ("sandbox", 200, None)]
    reg = registration(await stack.device("iphone"))
    assert reg["apnsEnvironment"] is None and reg["active"] is True
    assert await corrections(stack) == 1  # counted, though not recorded

    stack.apns.register_token(OTHER_IOS, "production")
    await stack.imkit.send_message("r1", "bob", "to the new token")
    await wait_for(
        lambda: seen(stack, OTHER_IOS) == [("production", 200, None)], 10, message="new token"
    )


async def test_certificate_expiry_gauge(tmp_path: Path) -> None:
    sims = await SimStack.start(tmp_path)
    soon = issue_test_certs(tmp_path / "apns-cert", client_valid_for=datetime.timedelta(days=10))
    cert_mode = {"apns_key_file": None, "apns_key_id": None, "apns_team_id": None}
    try:
        settings = stack_settings(sims, tmp_path, apns_cert_file=str(soon.client_file), **cert_mode)
        async with running_bridge(settings) as b, b.client() as client:
            text = (await client.get("/metrics")).text
        expiry = certificate_not_after(soon.client_file.read_bytes())
        assert metric(text, "bridge_apns_certificate_expiry_timestamp_seconds") == expiry

        # Token auth: keys do not expire; the gauge is 0 (the alert ignores it).
        async with running_bridge(stack_settings(sims, tmp_path)) as b, b.client() as client:
            text = (await client.get("/metrics")).text
        assert "bridge_apns_certificate_expiry_timestamp_seconds 0.0" in text
    finally:
        await sims.stop()
