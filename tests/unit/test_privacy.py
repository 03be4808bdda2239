"""Privacy modes (docs/privacy.md): ``hidden`` leaks no content, ``encrypted`` seals what ``full`` sends."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bridge import compose, l10n
from bridge.compose import (
    Target,
    compose_invitation,
    compose_message,
    compose_summary,
    compose_test,
)
from bridge.config import Settings
from bridge.models import ApnsRequest, FcmRequest
from bridge.push.apns_layout import APNS_LIMIT, APNS_VOIP_LIMIT
from bridge.push.fcm_layout import FCM_LIMIT, FCM_RESERVE
from bridge.push.fcm_layout import size as fcm_size
from bridge.seal import OVERHEAD, Sealer, SealError, open_sealed, seal, sealed_length
from bridge.upstream.protocol import Invitation, Message

NOW = 1_700_000_000.5
PUSH_TYPES = ("ios", "ios-voip", "fcm", "android", "web")
LOCALES = {"en-US": "en", "zh-TW": "zh-Hant", "zh-CN": "zh-Hans", "ja": "ja", "ko-KR": "ko"}
KEY = bytes(range(32))
SECRET, SENDER, ROOM = "the launch code is 0000", "Mallory Sender", "Project Zebra"

# The test vector of docs/privacy.md.
VECTOR_KEY = bytes(range(32))
VECTOR_NONCE = bytes(range(12))
VECTOR_PLAINTEXT = b'{"title":"Alice","body":"Hello","type":"message:r1"}'
VECTOR_SEALED = (
    "AQABAgMEBQYHCAkKCzwgonKxiac5t2PW59iKHU+v9OVblAJ9RhovgOlxBiKeI2TXjMrjKLoZwQye6eBNApxoQvAKlTrozUKJfkbYdQVV6ZWq"
)
DOC = Path(__file__).resolve().parents[2] / "docs" / "privacy.md"


def msg(**kw: Any) -> Message:
    base: dict[str, Any] = {
        "_id": "m1",
        "room": "r1",
        "messageType": "text",
        "message": SECRET,
        "sender": {"_id": "u1", "nickname": SENDER},
        "extra": {"note": SECRET},
    }
    base.update(kw)
    return Message.model_validate(base)


def inv(**kw: Any) -> Invitation:
    base: dict[str, Any] = {
        "room": {"_id": "r9", "name": ROOM},
        "inviter": {"_id": "u3", "nickname": SENDER},
    }
    base.update(kw)
    return Invitation.model_validate(base)


def data_of(req: ApnsRequest | FcmRequest) -> dict[str, str]:
    if isinstance(req, ApnsRequest):
        return {k: v for k, v in req.payload.items() if k != "aps"}
    return dict(req.data)


def opened(req: ApnsRequest | FcmRequest, key: bytes = KEY) -> dict[str, str]:
    """The sealed data block of an ``encrypted`` push, decrypted as docs/privacy.md says."""
    box = base64.b64decode(data_of(req)["enc"])
    assert box[0] == 0x01
    plain = AESGCM(key).decrypt(box[1:13], box[13:], None)
    result: dict[str, str] = json.loads(plain)
    return result


def size_ok(req: ApnsRequest | FcmRequest) -> bool:
    # The pushId added after composing is counted too (compose.fits measures it).
    req = compose.with_push_id(req, "f" * 32)
    if isinstance(req, ApnsRequest):
        limit = APNS_VOIP_LIMIT if req.push_type == "voip" else APNS_LIMIT
        return len(json.dumps(req.payload, ensure_ascii=False).encode("utf-8")) <= limit
    return fcm_size(req) <= FCM_LIMIT - FCM_RESERVE


def every_push(content: str, **target_kw: Any) -> list[ApnsRequest | FcmRequest]:
    out: list[ApnsRequest | FcmRequest] = []
    for push_type in PUSH_TYPES:
        t = Target(push_type, badge=3, content=content, content_key=KEY, **target_kw)  # type: ignore[arg-type]
        out += [
            compose_message(msg(), t, now=NOW, room_name=ROOM),
            compose_message(msg(messageType="image", message={"url": SECRET}), t, now=NOW, room_name=ROOM),
            compose_message(msg(sender=None), t, now=NOW, room_name=ROOM),
            compose_invitation(inv(), t, now=NOW),
            compose_summary("r1", 2, t, now=NOW, room_name=ROOM),
        ]
    return out


# ------------------------------------------------------------------ the sealed format


def test_vector_matches_the_documented_one() -> None:
    sealed = seal(VECTOR_KEY, VECTOR_PLAINTEXT, nonce=VECTOR_NONCE)
    assert sealed == VECTOR_SEALED
    box = base64.b64decode(sealed)
    assert box[0] == 1 and box[1:13] == VECTOR_NONCE
    assert AESGCM(VECTOR_KEY).decrypt(box[1:13], box[13:], None) == VECTOR_PLAINTEXT
    assert open_sealed(VECTOR_KEY, sealed) == VECTOR_PLAINTEXT
    doc = DOC.read_text(encoding="utf-8")
    for piece in (VECTOR_KEY.hex(), VECTOR_NONCE.hex(), VECTOR_PLAINTEXT.decode(), VECTOR_SEALED):
        assert piece in doc, f"docs/privacy.md lost {piece!r}"


def test_the_documented_generic_alerts_are_the_ones_sent() -> None:
    doc = DOC.read_text(encoding="utf-8")
    for lang, table in l10n.TABLES.items():
        for kind in ("new_message", "new_invitation"):
            assert f"{table[kind + '_title']} / {table[kind + '_body']}" in doc, (lang, kind)
        assert f"{table['test_title']} / {table['test_body']}" in doc, lang


def test_sealed_length_and_random_nonces() -> None:
    for n in (0, 1, 2, 3, 100, 3000):
        sealed = seal(KEY, b"x" * n)
        assert len(sealed) == sealed_length(n)
        assert len(base64.b64decode(sealed)) == n + OVERHEAD
    assert seal(KEY, b"same") != seal(KEY, b"same")  # a fresh nonce per push


def test_open_rejects_wrong_key_tampering_and_other_versions() -> None:
    sealed = seal(KEY, b"secret")
    with pytest.raises(SealError):
        open_sealed(bytes(32), sealed)
    box = bytearray(base64.b64decode(sealed))
    box[-1] ^= 1
    with pytest.raises(SealError):
        open_sealed(KEY, base64.b64encode(bytes(box)).decode())
    box = bytearray(base64.b64decode(sealed))
    box[0] = 2
    with pytest.raises(SealError):
        open_sealed(KEY, base64.b64encode(bytes(box)).decode())
    with pytest.raises(SealError):
        open_sealed(KEY, "not base64!")
    with pytest.raises(ValueError):
        Sealer(bytes(16))


def test_the_key_is_in_no_repr() -> None:
    target = Target("ios", content="encrypted", content_key=KEY)
    assert KEY.hex() not in repr(target) and repr(KEY) not in repr(target)
    assert repr(KEY) not in repr(Sealer(KEY))


# ------------------------------------------------------------------ hidden


def test_golden_hidden_ios_text_group() -> None:
    target = Target("ios", "en", badge=5, content="hidden")
    req = compose_message(msg(), target, now=NOW, room_name=ROOM)
    assert req == ApnsRequest(
        payload={
            "aps": {
                "alert": {"title": "New message", "body": "You have a new message"},
                "badge": 5,
                "sound": "default",
                "thread-id": "r1",
                "mutable-content": 1,
            },
            "title": "New message",
            "body": "You have a new message",
            "badge": "5",
            "type": "message:r1",
            "payload": '{"_id":"m1","room":"r1","messageType":"text"}',
            "content": "hidden",
        },
        collapse_id="m1",
        expiration=1_700_003_600,
        thread_id="r1",
    )


def test_golden_hidden_android_invitation() -> None:
    req = compose_invitation(inv(), Target("android", "ja", content="hidden"), now=NOW)
    assert req == FcmRequest(
        data={
            "title": "新しい招待",
            "body": "新しい招待があります",
            "type": "invitation:r9",
            "payload": '{"room":{"_id":"r9"}}',
            "content": "hidden",
        },
        notification={"title": "新しい招待", "body": "新しい招待があります"},
        android={"collapse_key": "r9", "priority": "high", "ttl": 3600, "notification": {"tag": "r9"}},
    )


def test_hidden_leaks_no_text_sender_or_room_name() -> None:
    for req in every_push("hidden"):
        blob = repr(req) + json.dumps(req.payload if isinstance(req, ApnsRequest) else req.data)
        for secret in (SECRET, SENDER, ROOM, "Mallory", "Zebra"):
            assert secret not in blob
        data = data_of(req)
        assert data["content"] == "hidden"
        assert "loc-key" not in data and "loc-args" not in data and "enc" not in data
        assert size_ok(req)
        if isinstance(req, ApnsRequest):
            assert "loc-key" not in req.payload["aps"]["alert"]
            assert req.payload["aps"].get("mutable-content") == (None if req.push_type == "voip" else 1)
        elif req.android is not None:
            assert "body_loc_args" not in req.android.get("notification", {})


def test_hidden_room_name_only_when_configured() -> None:
    for req in every_push("hidden", hidden_room_name=True):
        data = data_of(req)
        assert SECRET not in repr(req) and SENDER not in repr(req)
        assert data["title"] == ROOM or data["type"] == "test"


def test_hidden_is_localised_for_every_locale_and_type() -> None:
    for locale, lang in LOCALES.items():
        table = l10n.TABLES[lang]
        for push_type in PUSH_TYPES:
            t = Target(push_type, locale, content="hidden")
            for mtype in ("text", "image", "joinRoom", "holo-gram", ""):
                data = data_of(compose_message(msg(messageType=mtype), t, now=NOW))
                assert (data["title"], data["body"]) == (table["new_message_title"], table["new_message_body"])
                ids = json.loads(data["payload"])
                assert ids == {"_id": "m1", "room": "r1", "messageType": mtype}
            data = data_of(compose_invitation(inv(), t, now=NOW))
            assert (data["title"], data["body"]) == (table["new_invitation_title"], table["new_invitation_body"])
            data = data_of(compose_summary("r1", 4, t, now=NOW, room_name=ROOM))
            assert (data["title"], data["body"]) == (table["summary_title"], l10n.summary(lang, 4))


def test_hidden_test_push_is_the_test_alert_without_loc_keys() -> None:
    data = data_of(compose_test(Target("fcm", content="hidden"), now=NOW))
    assert data == {
        "title": "Test notification",
        "body": "Push notifications are working.",
        "type": "test",
        "content": "hidden",
    }


# ------------------------------------------------------------------ encrypted


def test_encrypted_seals_exactly_what_full_sends() -> None:
    for push_type in PUSH_TYPES:
        t = Target(push_type, "zh-TW", badge=2, content="encrypted", content_key=KEY)
        full, hidden = replace(t, content="full"), replace(t, content="hidden")
        for make in (
            lambda x: compose_message(msg(), x, now=NOW, room_name=ROOM),
            lambda x: compose_invitation(inv(), x, now=NOW),
            lambda x: compose_summary("r1", 2, x, now=NOW, room_name=ROOM),
            lambda x: compose_test(x, now=NOW),
        ):
            req = make(t)
            assert opened(req) == data_of(make(full))
            clear = data_of(req)
            assert clear.pop("enc") and clear.pop("content") == "encrypted"
            expect = data_of(make(hidden))
            expect.pop("content")
            assert clear == expect  # the clear part is the hidden push
            assert SECRET not in repr(req) and SENDER not in repr(req) and ROOM not in repr(req)
            assert size_ok(req)
            if isinstance(req, ApnsRequest):
                assert req.payload["aps"]["alert"] == make(hidden).payload["aps"]["alert"]  # type: ignore[union-attr]
                assert req.payload["aps"].get("mutable-content") == (None if push_type == "ios-voip" else 1)
            else:  # data only, so the app's FirebaseMessagingService / service worker decrypts it
                assert req.notification is None
                assert "notification" not in (req.android or {}) and "notification" not in (req.webpush or {})


def test_encrypted_long_text_is_trimmed_like_full_until_the_sealed_form_fits() -> None:
    text = "訊息😀" * 3000
    for push_type in PUSH_TYPES:
        t = Target(push_type, badge=1, content="encrypted", content_key=KEY)
        req = compose_message(msg(message=text), t, now=NOW, room_name=ROOM)
        assert size_ok(req)
        inner = opened(req)
        assert inner["payloadTrimmed"] == "1"
        assert inner["body"].endswith(compose.ELLIPSIS) and len(inner["body"]) > 100
        # The same keys as the full push of that text (whose payload also went first).
        full = compose_message(msg(message=text), replace(t, content="full"), now=NOW, room_name=ROOM)
        assert inner.keys() == data_of(full).keys()
        # The budget is used: the sealed push is close to its limit (base64 costs a third more).
        wire = compose.with_push_id(req, "f" * 32)
        if isinstance(wire, ApnsRequest):
            used = len(json.dumps(wire.payload, ensure_ascii=False).encode())
            limit = APNS_VOIP_LIMIT if push_type == "ios-voip" else APNS_LIMIT
        else:
            used, limit = fcm_size(wire), FCM_LIMIT - FCM_RESERVE
        assert used > limit - 40


@pytest.mark.parametrize("key", [None, b"", bytes(16), bytes(33)])
def test_encrypted_without_a_usable_key_falls_back_to_hidden(key: bytes | None) -> None:
    t = Target("ios", content="encrypted", content_key=key)
    req = compose_message(msg(), t, now=NOW, room_name=ROOM)
    assert req == compose_message(msg(), replace(t, content="hidden"), now=NOW, room_name=ROOM)


def test_a_missing_key_is_logged_once_per_process() -> None:
    # A fresh interpreter: "once" is per process, and other tests may have logged it already.
    code = (
        "import logging; logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "from bridge.compose import Target, compose_test\n"
        "for _ in range(3): compose_test(Target('fcm', content='encrypted'), now=0.0)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert run.stderr.count("content=encrypted without a 32-byte key") == 1, run.stderr


def test_an_unknown_mode_is_hidden_never_full() -> None:
    req = compose_message(msg(), Target("fcm", content="minimal"), now=NOW)  # type: ignore[arg-type]
    assert data_of(req)["content"] == "hidden" and SECRET not in repr(req)


# ------------------------------------------------------------------ settings


def test_minimal_is_a_deprecated_alias_of_hidden(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bridge.config"):
        settings = Settings(_env_file=None, push_content="minimal")  # type: ignore[call-arg]
    assert settings.push_content == "hidden"
    assert any("deprecated" in r.getMessage() for r in caplog.records)
    assert Settings(_env_file=None).push_content == "full"  # type: ignore[call-arg]
    assert Settings(_env_file=None).push_hidden_room_name is False  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        Settings(_env_file=None, push_content="secret")  # type: ignore[call-arg]


def test_settings_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_PUSH_CONTENT", "encrypted")
    monkeypatch.setenv("BRIDGE_PUSH_HIDDEN_ROOM_NAME", "true")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.push_content == "encrypted" and settings.push_hidden_room_name is True
