"""bridge.compose under random Unicode: size limits always hold and everything stays valid UTF-8/JSON."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.compose import (
    ELLIPSIS,
    NAME_MAX,
    Target,
    compose_invitation,
    compose_message,
    compose_summary,
    push_id,
    with_push_id,
)
from bridge.models import ApnsRequest, FcmRequest, PushContent
from bridge.push.apns_layout import APNS_LIMIT, APNS_VOIP_LIMIT
from bridge.push.fcm_layout import FCM_LIMIT
from bridge.seal import open_sealed
from bridge.upstream.protocol import Invitation, Message

PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any code point, lone surrogates included (JSON escapes can carry them from upstream).
CHARS = st.one_of(
    st.characters(exclude_categories=()),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"]),
    st.sampled_from(['"', "\\", "\n", "\x00", "😀", "é", "訊", "\u200d"]),
)
#: Multi-character pieces that break naive code: grapheme clusters, format fields.
PIECES = st.sampled_from(["👩\u200d👩\u200d👧", "{name}", "%1$@", "🇹🇼", "e\u0301"])


@st.composite
def texts(draw: st.DrawFn, max_repeat: int = 400) -> str:
    """Short random text, sometimes repeated into a huge one (cheap to generate)."""
    base = "".join(draw(st.lists(st.one_of(CHARS, PIECES), max_size=24)))
    return base * draw(st.one_of(st.just(1), st.integers(1, max_repeat)))


JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), texts(max_repeat=50)
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(CHARS, max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
#: The device key of ``encrypted`` targets.
KEY = bytes(range(32))
IDS = st.text(st.characters(exclude_categories=()), min_size=1, max_size=40)
MESSAGE_TYPES = st.one_of(
    st.sampled_from(
        ["text", "image", "sticker", "url", "recall", "encrypted", "joinRoom", "mixed"]
    ),
    st.text(CHARS, max_size=30),
)
TARGETS = st.builds(
    Target,
    push_type=st.sampled_from(["ios", "ios-voip", "fcm", "android", "web"]),
    locale=st.sampled_from([None, "en", "zh-TW", "zh-CN", "ja", "ko", "xx"]),
    badge=st.one_of(st.none(), st.integers(0, 10**6)),
    content=st.sampled_from(["full", "full", "hidden", "encrypted"]),
    content_key=st.just(KEY),
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    raw: dict[str, Any] = {
        "_id": draw(IDS),
        "room": draw(IDS),
        "messageType": draw(MESSAGE_TYPES),
        "message": draw(st.one_of(texts(), JSON)),
        "sender": draw(
            st.one_of(st.none(), st.builds(lambda i, n: {"_id": i, "nickname": n}, IDS, texts()))
        ),
    }
    if draw(st.booleans()):
        raw["extra"] = draw(st.dictionaries(st.text(CHARS, max_size=8), JSON, max_size=4))
    if draw(st.booleans()):
        raw["custom"] = draw(JSON)
    return Message.model_validate(raw)


def fcm_bytes(req: FcmRequest) -> int:
    """What FCM counts, as the issue measured it: data keys and values, notification title/body."""
    data = sum(len(k.encode("utf-8")) + len(v.encode("utf-8")) for k, v in req.data.items())
    note = req.notification or {}
    return data + sum(len(note.get(k, "").encode("utf-8")) for k in ("title", "body"))


def fcm_json(req: FcmRequest) -> bytes:
    """The whole message but the token, platform blocks included, as compact UTF-8 JSON."""
    blocks = {
        "data": req.data,
        "notification": req.notification,
        "android": req.android,
        "webpush": req.webpush,
    }
    present = {k: v for k, v in blocks.items() if v}
    return json.dumps(present, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


#: Every push gets its ``pushId`` after composing (pool.notification_for): measured with it.
PUSH_ID = push_id("device-1/ios", "message", "m-1")


def check(req: ApnsRequest | FcmRequest) -> dict[str, str]:
    """The invariants of every composed push, as sent (with its pushId); returns its data block."""
    req = with_push_id(req, PUSH_ID)
    if isinstance(req, ApnsRequest):
        limit = APNS_VOIP_LIMIT if req.push_type == "voip" else APNS_LIMIT
        wire = json.dumps(req.payload, ensure_ascii=False).encode("utf-8")  # strict: no surrogates
        assert len(wire) <= limit
        assert (
            len(json.dumps(req.payload, ensure_ascii=False, separators=(",", ":")).encode())
            <= limit
        )
        data = {k: v for k, v in req.payload.items() if k != "aps"}
        if req.collapse_id is not None:
            assert len(req.collapse_id.encode("utf-8")) <= 64
    else:
        data = req.data
        assert fcm_bytes(req) <= FCM_LIMIT
        assert len(fcm_json(req)) <= FCM_LIMIT
    check_block(data)
    if "enc" in data:  # encrypted: what the app decrypts is a full push's data block
        check_block(json.loads(open_sealed(KEY, data["enc"])))
    return data


def shown(data: dict[str, str]) -> dict[str, str] | None:
    """The content the app shows: the data block, sealed or not; None for ``hidden``."""
    if "enc" in data:
        inner: dict[str, str] = json.loads(open_sealed(KEY, data["enc"]))
        return inner
    return None if data.get("content") == "hidden" else data


def check_block(data: dict[str, str]) -> None:
    assert all(isinstance(v, str) for v in data.values())
    if data.get("content") in ("hidden", "encrypted"):
        assert "loc-key" not in data and "loc-args" not in data
    else:
        args = json.loads(data["loc-args"])
        assert isinstance(args, list) and all(isinstance(a, str) for a in args)
    if "payload" in data:

        def reject(name: str) -> None:
            raise AssertionError(f"non-standard JSON constant {name}")

        json.loads(data["payload"], parse_constant=reject)


@PROPS
@given(msg=messages(), target=TARGETS, room_name=st.one_of(st.none(), texts()))
def test_message_always_fits(msg: Message, target: Target, room_name: str | None) -> None:
    req = compose_message(msg, target, now=1_700_000_000.0, room_name=room_name)
    data = check(req)
    assert data["type"].startswith("message:")
    inner = shown(data) or data  # hidden: the ids payload
    assert ("payload" in inner) or inner.get("payloadTrimmed") == "1"
    title = data["title"]
    assert len(title) <= NAME_MAX + 1 or title.endswith(ELLIPSIS)


@PROPS
@given(
    text=st.text(st.characters(exclude_categories=["Cs"]), max_size=60),
    nickname=st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30),
    target=TARGETS,
)
def test_small_text_is_never_trimmed(text: str, nickname: str, target: Target) -> None:
    """Whatever fits comfortably arrives whole: body is the text, payload the whole message."""
    msg = Message.model_validate(
        {"_id": "m1", "room": "r1", "message": text, "sender": {"_id": "u", "nickname": nickname}}
    )
    data = check(compose_message(msg, target, now=0.0))
    assert "payloadTrimmed" not in data
    inner = shown(data)
    if inner is not None:  # encrypted too: the base64 budget leaves room for a short text
        data = inner
        assert "payloadTrimmed" not in data
        assert json.loads(data["loc-args"]) == [nickname, text]
        assert json.loads(data["payload"])["message"] == text


@PROPS
@given(text=texts(max_repeat=400), target=TARGETS)
def test_trimmed_body_is_a_prefix_plus_ellipsis(text: str, target: Target) -> None:
    clean = text.encode("utf-8", "replace").decode("utf-8")
    msg = Message.model_validate(
        {"_id": "m1", "room": "r1", "message": text, "sender": {"_id": "u", "nickname": "A"}}
    )
    inner = shown(check(compose_message(msg, target, now=0.0)))
    if inner is None or not clean:
        return  # no text shown: covered by the table tests
    data = inner
    body = data["body"]
    assert body == clean or (body.endswith(ELLIPSIS) and clean.startswith(body[: -len(ELLIPSIS)]))


@PROPS
@given(
    room_id=IDS,
    room_name=st.one_of(st.none(), texts()),
    inviter=st.one_of(st.none(), texts()),
    extra=JSON,
    target=TARGETS,
)
def test_invitation_and_summary_always_fit(
    room_id: str, room_name: str | None, inviter: str | None, extra: Any, target: Target
) -> None:
    raw: dict[str, Any] = {"room": {"_id": room_id, "name": room_name}, "extra": extra}
    if inviter is not None:
        raw["inviter"] = {"_id": "u", "nickname": inviter}
    data = shown(check(compose_invitation(Invitation.model_validate(raw), target, now=0.0)))
    assert data is None or len(json.loads(data["loc-args"])) == 2
    data = shown(check(compose_summary(room_id, 3, target, now=0.0, room_name=room_name)))
    assert data is None or json.loads(data["loc-args"]) == ["3"]


#: The five languages, by the locales apps send.
LOCALES = ("en-US", "zh-TW", "zh-CN", "ja", "ko-KR")
#: Text as users write it in those languages, plus the characters that cost most in UTF-8/JSON.
LOCALE_CHARS = st.one_of(
    st.characters(codec="utf-8"),
    st.sampled_from(["a", " ", "訊", "息", "あ", "ア", "한", "글", "😀", "\n", '"', "\\", "\x01"]),
)
#: Lengths from empty to far past any limit (a few thousand characters of 4-byte emoji).
ANY_TEXT = st.builds(
    lambda piece, n: (piece * n)[: n * 2],
    st.text(LOCALE_CHARS, min_size=1, max_size=12),
    st.integers(0, 3000),
)


@settings(max_examples=150, deadline=None)
@given(
    text=ANY_TEXT,
    sender=ANY_TEXT,
    room_name=st.one_of(st.none(), ANY_TEXT),
    locale=st.sampled_from(LOCALES),
    push_type=st.sampled_from(["ios", "ios-voip", "fcm", "android", "web"]),
    message_type=st.sampled_from(["text", "image", "invitation", "summary"]),
    badge=st.one_of(st.none(), st.integers(0, 10**6)),
    content=st.sampled_from(["full", "hidden", "encrypted"]),
)
def test_every_push_fits_its_provider_limit(
    text: str,
    sender: str,
    room_name: str | None,
    locale: str,
    push_type: str,
    message_type: str,
    badge: int | None,
    content: PushContent,
) -> None:
    """FCM: data + notification title/body ≤ 4096 (the whole message too); APNs ≤ 4096 / 5120."""
    target = Target(push_type, locale, badge=badge, content=content, content_key=KEY)
    if message_type == "invitation":
        raw = {
            "room": {"_id": "room-1", "name": room_name},
            "inviter": {"_id": "u", "nickname": sender},
        }
        req = compose_invitation(Invitation.model_validate(raw), target, now=0.0)
    elif message_type == "summary":
        req = compose_summary("room-1", 12, target, now=0.0, room_name=room_name)
    else:
        m = {
            "_id": "m-1",
            "room": "room-1",
            "messageType": message_type,
            "message": text,
            "sender": {"_id": "u", "nickname": sender},
        }
        req = compose_message(Message.model_validate(m), target, now=0.0, room_name=room_name)
    req = with_push_id(req, PUSH_ID)
    if isinstance(req, FcmRequest):
        assert fcm_bytes(req) <= FCM_LIMIT
        assert len(fcm_json(req)) <= FCM_LIMIT
    else:
        limit = APNS_VOIP_LIMIT if push_type == "ios-voip" else APNS_LIMIT
        assert len(json.dumps(req.payload, ensure_ascii=False).encode("utf-8")) <= limit
