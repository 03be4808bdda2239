"""LogProvider: one JSON line per notification, never the push token."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from bridge.models import ApnsRequest, FcmRequest, Notification
from bridge.push.log import LogProvider
from bridge.push.provider import Delivered

TOKEN = "push-token-SECRET-0123456789abcdef"


def _notification(push_id: str, *, apns: bool = False) -> Notification:
    return Notification(
        device_id="dev-1",
        push_type="ios" if apns else "fcm",
        token=TOKEN,
        push_id=push_id,
        kind="message",
        apns=ApnsRequest(
            payload={"aps": {"alert": {"title": "Bob", "body": "hi"}}}, thread_id="room-1"
        )
        if apns
        else None,
        fcm=None
        if apns
        else FcmRequest(data={"title": "Bob", "body": "hi"}, android={"priority": "high"}),
    )


@pytest.mark.parametrize("apns", [False, True])
async def test_one_json_line_without_the_token(
    caplog: pytest.LogCaptureFixture, apns: bool
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.push.log")
    provider = LogProvider()

    result = await provider.send(_notification("p-1", apns=apns))

    assert isinstance(result, Delivered)
    [record] = [r for r in caplog.records if r.name == "bridge.push.log"]
    line = record.getMessage()
    assert "\n" not in line
    logged = json.loads(line)
    assert TOKEN not in caplog.text and TOKEN not in repr(provider.sent)
    assert logged["token_sha256"] == hashlib.sha256(TOKEN.encode()).hexdigest()[:12]
    assert (
        logged["device_id"] == "dev-1"
        and logged["push_id"] == "p-1"
        and logged["kind"] == "message"
    )
    assert logged["push_type"] == ("ios" if apns else "fcm")
    if apns:
        assert logged["apns"]["payload"]["aps"]["alert"]["title"] == "Bob"
        assert logged["apns"]["thread_id"] == "room-1"
    else:
        assert logged["fcm"]["data"] == {"title": "Bob", "body": "hi"}
        assert logged["fcm"]["android"] == {"priority": "high"}
    assert provider.sent[-1] == logged


async def test_keeps_only_the_last_n() -> None:
    provider = LogProvider(keep=3)

    for i in range(5):
        await provider.send(_notification(f"p-{i}"))
    await provider.close()

    assert [r["push_id"] for r in provider.sent] == ["p-2", "p-3", "p-4"]
    assert provider.name == "log"

