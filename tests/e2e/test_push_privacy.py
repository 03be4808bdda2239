"""Privacy modes (issue 14, part 2; docs/privacy.md) through the API against the simulated APNs/FCM:
``hidden`` carries no text, sender or room name; ``encrypted`` opens, with the device's key and the
documented format, to exactly what ``full`` sends; the device's choice beats the global default;
a re-subscribe with a new key rotates it; the test push follows the mode; keys are never logged."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests._poll import wait_for
from tests.e2e._stack import ANDROID, IOS, Stack, stack, stack_options  # noqa: F401 - fixtures used by name

SECRET = "the launch code is 0000"
ROOM = "Project Zebra"
#: What hidden pushes must never carry: the text, the senders' nicknames, the room name.
LEAKS = (SECRET, "launch code", "Bob", "Carol", ROOM, "Zebra")
IPAD = "c3" * 32
KEY1, KEY2, KEY3 = bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96))


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def data_of(received: Any) -> dict[str, str]:
    """The data block as the provider got it: APNs top-level custom keys, or FCM ``data``."""
    if hasattr(received, "payload"):
        return {k: v for k, v in received.payload.items() if k != "aps"}
    return dict(received.message["data"])


def wire(received: Any) -> str:
    """Everything the provider got, as text (non-ASCII unescaped, so names would show)."""
    return json.dumps(received.payload if hasattr(received, "payload") else received.message, ensure_ascii=False)


def decrypt(enc: str, key: bytes) -> dict[str, str]:
    """docs/privacy.md: base64(0x01 || nonce(12) || ciphertext || tag(16)), AES-256-GCM, no AAD."""
    box = base64.b64decode(enc)
    assert box[0] == 0x01
    result: dict[str, str] = json.loads(AESGCM(key).decrypt(box[1:13], box[13:], None))
    return result


async def invite_and_message(stack: Stack) -> dict[str, Any]:
    """An invitation to a named group room (so the bridge knows its name), then a message in it."""
    stack.imkit.create_room("zebra", ["alice", "bob", "carol"], name=ROOM)
    await stack.imkit.invite("zebra", "carol", "alice")
    return await stack.imkit.send_message("zebra", "bob", SECRET)


def delivered(stack: Stack, token: str) -> list[Any]:
    return stack.delivered_fcm(token) if token == ANDROID else stack.delivered_apns(token)


def by_type(received: list[Any]) -> dict[str, Any]:
    """Pushes by their clear ``type`` (concurrent sends may arrive in either order)."""
    return {data_of(r)["type"]: r for r in received}


@pytest.mark.parametrize("stack_options", [{"push_content": "hidden"}])
async def test_hidden_by_default_carries_ids_only_to_apns_and_fcm(stack: Stack) -> None:
    await stack.subscribe("iphone", "ios", IOS)
    await stack.subscribe("pixel", "android", ANDROID, locale="zh-TW")
    await stack.wait_live("iphone", "pixel")
    msg = await invite_and_message(stack)
    await wait_for(lambda: len(stack.delivered_apns()) == 2 and len(stack.delivered_fcm()) == 2, 10, message="4 pushes")

    for received in stack.delivered_apns() + stack.delivered_fcm():
        text = wire(received)
        assert not [leak for leak in LEAKS if leak in text], text
        data = data_of(received)
        assert data["content"] == "hidden" and "loc-key" not in data and "enc" not in data
    pushes = by_type(stack.delivered_apns())
    invitation, message = pushes["invitation:zebra"], pushes["message:zebra"]
    assert message.payload["aps"]["alert"] == {"title": "New message", "body": "You have a new message"}
    assert message.payload["aps"]["mutable-content"] == 1
    assert data_of(message)["type"] == "message:zebra"
    assert json.loads(data_of(message)["payload"]) == {"_id": msg["_id"], "room": "zebra", "messageType": "text"}
    assert invitation.payload["aps"]["alert"]["title"] == "New invitation"
    assert json.loads(data_of(invitation)["payload"]) == {"room": {"_id": "zebra"}}

    fcm = by_type(stack.delivered_fcm())["message:zebra"].message
    assert fcm["notification"] == {"title": "新訊息", "body": "你有一則新訊息"}
    assert "body_loc_key" not in fcm["android"].get("notification", {})
    assert json.loads(fcm["data"]["payload"])["_id"] == msg["_id"]

    # The test push follows the mode too.
    r = await stack.alice.post("/me/devices/pixel/test-push")
    assert r.status_code == 200 and r.json()["result"]["results"][0]["outcome"] == "delivered"
    assert stack.delivered_fcm()[-1].message["data"]["content"] == "hidden"


@pytest.mark.parametrize("stack_options", [{"push_content": "hidden"}])
async def test_a_device_choice_beats_the_global_default(stack: Stack) -> None:
    await stack.subscribe("iphone", "ios", IOS, content="full")
    await stack.subscribe("pixel", "android", ANDROID)  # the default: hidden
    await stack.wait_live("iphone", "pixel")
    assert [r["content"] for r in (await stack.device("iphone"))["registrations"]] == ["full"]
    await stack.imkit.send_message("r1", "bob", SECRET)
    await wait_for(lambda: stack.delivered_apns() and stack.delivered_fcm(), 10, message="both delivered")
    assert SECRET in stack.delivered_apns()[0].payload["aps"]["alert"]["body"]  # this test can see a leak
    assert SECRET not in wire(stack.delivered_fcm()[0])

    # The device changes its mind: a re-subscribe with content=hidden applies at once.
    await stack.subscribe("iphone", "ios", IOS, content="hidden")
    await stack.imkit.send_message("r1", "bob", SECRET + " again")
    await wait_for(lambda: len(stack.delivered_apns()) == 2, 10, message="second push")
    assert SECRET not in wire(stack.delivered_apns()[1])


async def test_encrypted_opens_to_what_full_sends_and_follows_key_rotation(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await stack.subscribe("iphone", "ios", IOS, content="encrypted", contentKey=b64(KEY1))
    await stack.subscribe("pixel", "android", ANDROID, content="encrypted", contentKey=b64(KEY2))
    await stack.subscribe("ipad", "ios", IPAD)  # the global default: full, for comparison
    await stack.wait_live("iphone", "pixel", "ipad")
    msg = await invite_and_message(stack)
    await wait_for(
        lambda: all(len(delivered(stack, t)) == 2 for t in (IOS, ANDROID, IPAD)), 10, message="6 pushes"
    )

    for kind in ("invitation:zebra", "message:zebra"):
        full = data_of(by_type(stack.delivered_apns(IPAD))[kind])
        full.pop("pushId", None)  # per device, in clear next to ``enc``
        for token, key in ((IOS, KEY1), (ANDROID, KEY2)):
            received = by_type(delivered(stack, token))[kind]
            clear = data_of(received)
            assert clear["content"] == "encrypted"
            assert not [leak for leak in LEAKS if leak in wire(received)]
            assert decrypt(clear["enc"], key) == full
    sealed = by_type(stack.delivered_apns())["message:zebra"]
    message = decrypt(data_of(sealed)["enc"], KEY1)
    assert json.loads(message["payload"])["_id"] == msg["_id"]
    assert json.loads(message["payload"])["message"] == SECRET and SECRET in message["body"]
    assert sealed.payload["aps"]["mutable-content"] == 1
    assert sealed.payload["aps"]["alert"] == {"title": "New message", "body": "You have a new message"}
    fcm = by_type(stack.delivered_fcm())["message:zebra"].message
    assert "notification" not in fcm and "notification" not in fcm["android"]  # data only: the app decrypts

    # Key rotation: a re-subscribe with a new key; what follows is sealed with it.
    await stack.subscribe("iphone", "ios", IOS, contentKey=b64(KEY3))
    await stack.imkit.send_message("zebra", "bob", "after rotation")
    await wait_for(lambda: len(stack.delivered_apns()) == 3, 10, message="pushed after rotation")
    enc = data_of(stack.delivered_apns()[2])["enc"]
    assert json.loads(decrypt(enc, KEY3)["payload"])["message"] == "after rotation"
    with pytest.raises(InvalidTag):
        decrypt(enc, KEY1)

    # The test push is sealed too: an app can check its decryption with it.
    r = await stack.alice.post("/me/devices/iphone/test-push")
    assert r.status_code == 200 and r.json()["result"]["results"][0]["outcome"] == "delivered"
    test = decrypt(data_of(stack.delivered_apns()[-1])["enc"], KEY3)
    assert test["loc-key"] == "im_loc_test" and test["type"] == "test"

    # Keys are secrets: in no log record, in any spelling.
    assert any(r.name.startswith("bridge") for r in caplog.records)  # the bridge's logs are captured
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for key in (KEY1, KEY2, KEY3):
        for spelling in (b64(key), base64.urlsafe_b64encode(key).decode(), key.hex(), repr(key)):
            assert spelling not in logged
