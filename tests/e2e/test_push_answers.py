"""Provider answers that must *not* disable a registration, end to end through the pool and store."""

from __future__ import annotations

from typing import Any

from tests._poll import wait_for
from tests.e2e._stack import IOS, Stack, stack, stack_options  # noqa: F401 - fixtures used by name

NEW_IOS = "b2" * 32


def registration(device: dict[str, Any], push_type: str) -> dict[str, Any]:
    return next(r for r in device["registrations"] if r["type"] == push_type)


async def test_a_late_unregistered_for_the_old_token_spares_the_new_one(stack: Stack) -> None:
    await stack.subscribe("iphone", "ios", IOS)
    await stack.wait_live("iphone")
    # APNs will say the old token is dead, but only after the app registered a new one.
    stack.apns.script(IOS, status=410, reason="Unregistered", stall=1.0, times=1)
    await stack.imkit.send_message("r1", "bob", "to the old token")
    await wait_for(lambda: any(r.token == IOS for r in stack.apns.received), 10, message="sent")
    await stack.subscribe("iphone", "ios", NEW_IOS)

    events = await stack.wait_event("iphone", 1)  # the 410 answer is in (and was handled)
    assert events[0]["results"][0]["outcome"] == "token_invalid"
    reg = registration(await stack.device("iphone"), "ios")
    assert reg["active"] is True and reg["disabledReason"] is None

    await stack.imkit.send_message("r1", "bob", "to the new token")
    await wait_for(lambda: stack.delivered_apns(NEW_IOS), 10, message="new token still pushed")


async def test_device_token_not_for_topic_does_not_disable_the_registration(stack: Stack) -> None:
    await stack.subscribe("iphone", "ios", IOS)
    await stack.wait_live("iphone")
    # A wrong BRIDGE_APNS_TOPIC would answer this for every token: none may be disabled for it.
    stack.apns.script(IOS, status=400, reason="DeviceTokenNotForTopic", times=1)
    await stack.imkit.send_message("r1", "bob", "wrong topic")

    events = await stack.wait_event("iphone", 1)
    assert events[0]["results"][0]["outcome"] == "failed"
    assert events[0]["results"][0]["reason"] == "DeviceTokenNotForTopic"
    reg = registration(await stack.device("iphone"), "ios")
    assert reg["active"] is True and reg["disabledReason"] is None

    await stack.imkit.send_message("r1", "bob", "fixed")
    await wait_for(lambda: stack.delivered_apns(IOS), 10, message="still pushed once fixed")
