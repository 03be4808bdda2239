"""bridge.compose: golden payloads for a handful of cases, properties for every type × locale."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest

from bridge import l10n
from bridge.compose import (
    ELLIPSIS,
    KNOWN_TYPES,
    NAME_MAX,
    TEXT_TYPES,
    ComposeError,
    Target,
    compose_badge,
    compose_invitation,
    compose_message,
    compose_summary,
    compose_test,
    fits,
    loc_key_for,
    push_id,
    with_push_id,
)
from bridge.models import ApnsRequest, FcmRequest
from bridge.push.apns_layout import APNS_LIMIT, APNS_VOIP_LIMIT, apns_id
from bridge.push.apns_layout import topic as voip_topic
from bridge.push.fcm_layout import FCM_LIMIT, FCM_RESERVE
from bridge.push.fcm_layout import size as fcm_size
from bridge.upstream.protocol import Invitation, Message

NOW = 1_700_000_000.5
PUSH_TYPES = ("ios", "ios-voip", "fcm", "android", "web")
LOCALES = ("en-US", "zh-TW", "zh-CN", "ja", "ko-KR")
#: Every messageType imkit-protocol.md lists, plus odd and unknown ones.
ALL_TYPES = (
    "text image video audio file location sticker url mixed template flex announcement recall "
    "encrypted joinRoom leaveRoom addMember addMembers deleteMember deleteMembers cancelInvitations "
    "payment payment-select line ai_streaming waitingCall missingCall endCall"
).split() + ["holo-gram", "Weird Type!", "", "图片", "x" * 200]


def msg(**kw: Any) -> Message:
    base: dict[str, Any] = {
        "_id": "m1",
        "room": "r1",
        "messageType": "text",
        "message": "Hello",
        "sender": {"_id": "u1", "nickname": "Alice"},
    }
    base.update(kw)
    return Message.model_validate(base)


def inv(**kw: Any) -> Invitation:
    base: dict[str, Any] = {
        "room": {"_id": "r9", "name": "Party"},
        "inviter": {"_id": "u3", "nickname": "Carol"},
    }
    base.update(kw)
    return Invitation.model_validate(base)


def data_of(req: ApnsRequest | FcmRequest) -> dict[str, Any]:
    """The IMKIT data block: FCM ``data``, or APNs' top-level custom keys."""
    if isinstance(req, ApnsRequest):
        return {k: v for k, v in req.payload.items() if k != "aps"}
    return dict(req.data)


def size_ok(req: ApnsRequest | FcmRequest) -> bool:
    if isinstance(req, ApnsRequest):
        limit = APNS_VOIP_LIMIT if req.push_type == "voip" else APNS_LIMIT
        return len(json.dumps(req.payload, ensure_ascii=False).encode("utf-8")) <= limit
    # FCM counts the whole message, not only ``data``: every block but the token, as JSON.
    blocks = {
        "data": req.data,
        "notification": req.notification,
        "android": req.android,
        "webpush": req.webpush,
    }
    whole = json.dumps(
        {k: v for k, v in blocks.items() if v}, ensure_ascii=False, separators=(",", ":")
    )
    return len(whole.encode("utf-8")) <= FCM_LIMIT


# ---------------------------------------------------------------------------------- golden


def test_golden_ios_text_direct_en() -> None:
    m = msg(messageTimeMS=1700000000000)
    req = compose_message(m, Target("ios", "en-US", badge=2), now=NOW)
    payload = (
        '{"_id":"m1","room":"r1","messageType":"text","message":"Hello",'
        '"sender":{"_id":"u1","nickname":"Alice"},"messageTimeMS":1700000000000}'
    )
    assert req == ApnsRequest(
        payload={
            "aps": {
                "alert": {
                    "title": "Alice",
                    "body": "Hello",
                    "loc-key": "im_loc_text",
                    "loc-args": ["Alice", "Hello"],
                },
                "badge": 2,
                "sound": "default",
                "thread-id": "r1",
                "mutable-content": 1,
            },
            "title": "Alice",
            "body": "Hello",
            "badge": "2",
            "loc-key": "im_loc_text",
            "loc-args": '["Alice","Hello"]',
            "type": "message:r1",
            "payload": payload,
        },
        push_type="alert",
        priority=10,
        collapse_id="m1",
        expiration=1_700_003_600,
        thread_id="r1",
    )


def test_golden_android_image_group_zh_tw() -> None:
    m = msg(
        _id="m2",
        room={"_id": "r2", "name": "ignored"},
        messageType="image",
        message={"url": "https://x/y.jpg"},
        sender={"_id": "u2", "nickname": "Bob"},
    )
    req = compose_message(m, Target("android", "zh-TW", ttl=600), now=NOW, room_name="設計組")
    body = "Bob 傳送了一張照片"
    assert req == FcmRequest(
        data={
            "title": "設計組",
            "body": body,
            "loc-key": "im_loc_image",
            "loc-args": '["Bob"]',
            "type": "message:r2",
            "payload": '{"_id":"m2","room":"r2","messageType":"image","message":{"url":"https://x/y.jpg"},'
            '"sender":{"_id":"u2","nickname":"Bob"}}',
        },
        android={
            "collapse_key": "r2",
            "priority": "high",
            "ttl": 600,
            "notification": {
                "body_loc_key": "im_loc_image",
                "body_loc_args": ["Bob"],
                "tag": "r2",
            },
        },
        notification={"title": "設計組", "body": body},
    )


def test_golden_web_text_group_ja() -> None:
    req = compose_message(
        msg(message="こんにちは"), Target("web", "ja", badge=0), now=NOW, room_name="開発"
    )
    body = "Alice: こんにちは"
    assert req == FcmRequest(
        data={
            "title": "開発",
            "body": body,
            "badge": "0",
            "loc-key": "im_loc_text",
            "loc-args": '["Alice","こんにちは"]',
            "type": "message:r1",
            "payload": '{"_id":"m1","room":"r1","messageType":"text","message":"こんにちは",'
            '"sender":{"_id":"u1","nickname":"Alice"}}',
        },
        notification={"title": "開発", "body": body},
        webpush={
            "headers": {"TTL": "3600", "Urgency": "high"},
            "notification": {"tag": "r1"},
        },
    )


def test_golden_voip_call_ko() -> None:
    m = msg(
        messageType="waitingCall", message={"call": 1}, sender={"_id": "u2", "nickname": "민수"}
    )
    req = compose_message(m, Target("ios-voip", "ko-KR", badge=1), now=NOW)
    body = "민수님에게서 전화가 왔습니다"
    assert req == ApnsRequest(
        payload={
            "aps": {
                "alert": {
                    "title": "민수",
                    "body": body,
                    "loc-key": "im_loc_waitingCall",
                    "loc-args": ["민수"],
                },
                "badge": 1,
                "thread-id": "r1",
            },
            "title": "민수",
            "body": body,
            "badge": "1",
            "loc-key": "im_loc_waitingCall",
            "loc-args": '["민수"]',
            "type": "message:r1",
            "payload": '{"_id":"m1","room":"r1","messageType":"waitingCall","message":{"call":1},'
            '"sender":{"_id":"u2","nickname":"민수"}}',
        },
        push_type="voip",
        priority=10,
        collapse_id="m1",
        expiration=1_700_003_600,
        thread_id="r1",
    )


def test_golden_invitation_android_zh_cn() -> None:
    req = compose_invitation(inv(), Target("fcm", "zh-CN"), now=NOW)
    body = "Carol 邀请你加入 Party"
    assert req == FcmRequest(
        data={
            "title": "Party",
            "body": body,
            "loc-key": "im_loc_invitation",
            "loc-args": '["Carol","Party"]',
            "type": "invitation:r9",
            "payload": '{"room":{"_id":"r9","name":"Party"},"inviter":{"_id":"u3","nickname":"Carol"}}',
        },
        android={
            "collapse_key": "r9",
            "priority": "high",
            "ttl": 3600,
            "notification": {
                "body_loc_key": "im_loc_invitation",
                "body_loc_args": ["Carol", "Party"],
                "tag": "r9",
            },
        },
        notification={"title": "Party", "body": body},
    )


def test_golden_badge() -> None:
    assert compose_badge(Target("ios"), 7, now=NOW) == ApnsRequest(
        payload={"aps": {"badge": 7, "content-available": 1}, "badge": "7", "type": "badge"},
        push_type="background",
        priority=5,
        expiration=1_700_003_600,
    )
    assert compose_badge(Target("android", ttl=60), 7, now=NOW) == FcmRequest(
        data={"badge": "7", "type": "badge"},
        android={"collapse_key": "badge", "priority": "normal", "ttl": 60},
    )
    assert compose_badge(Target("web"), 0, now=NOW) == FcmRequest(
        data={"badge": "0", "type": "badge"},
        webpush={"headers": {"TTL": "3600", "Urgency": "normal"}},
    )


def test_golden_summary_and_test() -> None:
    req = compose_summary("r1", 3, Target("ios", "ko"), now=NOW, room_name="가족")
    assert isinstance(req, ApnsRequest)
    assert req.payload == {
        "aps": {
            "alert": {
                "title": "가족",
                "body": "새 메시지 3개",
                "loc-key": "im_loc_summary",
                "loc-args": ["3"],
            },
            "sound": "default",
            "thread-id": "r1",
            "mutable-content": 1,
        },
        "title": "가족",
        "body": "새 메시지 3개",
        "loc-key": "im_loc_summary",
        "loc-args": '["3"]',
        "type": "message:r1",
    }
    assert req.collapse_id == "summary:r1"
    one = compose_summary("r1", 1, Target("fcm", "en"), now=NOW)
    assert isinstance(one, FcmRequest)
    assert (one.data["title"], one.data["body"]) == ("New messages", "1 new message")

    test = compose_test(Target("fcm", "en-GB", badge=4), now=NOW)
    assert test == FcmRequest(
        data={
            "title": "Test notification",
            "body": "Push notifications are working.",
            "badge": "4",
            "loc-key": "im_loc_test",
            "loc-args": "[]",
            "type": "test",
        },
        android={
            "priority": "high",
            "ttl": 3600,
            "notification": {
                "body_loc_key": "im_loc_test",
                "body_loc_args": [],
            },
        },
        notification={"title": "Test notification", "body": "Push notifications are working."},
    )
    ios_test = compose_test(Target("ios"), now=NOW)
    assert isinstance(ios_test, ApnsRequest)
    assert "thread-id" not in ios_test.payload["aps"] and ios_test.collapse_id is None


# --------------------------------------------------------------------------- localisation


@pytest.mark.parametrize(
    ("locale", "lang"),
    [
        (None, "en"),
        ("", "en"),
        ("en-US", "en"),
        ("fr-FR", "en"),
        ("zh-TW", "zh-Hant"),
        ("zh_HK", "zh-Hant"),
        ("zh-MO", "zh-Hant"),
        ("zh-Hant", "zh-Hant"),
        ("zh_Hant_SG", "zh-Hant"),
        ("zh", "zh-Hans"),
        ("zh-CN", "zh-Hans"),
        ("zh-SG", "zh-Hans"),
        ("zh-Hans-HK", "zh-Hans"),
        ("ZH-tw", "zh-Hant"),
        ("ja", "ja"),
        ("ja-JP", "ja"),
        ("ko-KR", "ko"),
        ("yue-HK", "en"),
    ],
)
def test_resolve_locale(locale: str | None, lang: str) -> None:
    assert l10n.resolve_locale(locale) == lang


BODIES = {
    "image": [
        "Alice sent a photo",
        "Alice 傳送了一張照片",
        "Alice 发送了一张图片",
        "Aliceが写真を送信しました",
        "Alice님이 사진을 보냈습니다",
    ],
    "sticker": [
        "Alice sent a sticker",
        "Alice 傳送了一張貼圖",
        "Alice 发送了一个贴纸",
        "Aliceがスタンプを送信しました",
        "Alice님이 스티커를 보냈습니다",
    ],
    "recall": [
        "Alice recalled a message",
        "Alice 收回了一則訊息",
        "Alice 撤回了一条消息",
        "Aliceがメッセージの送信を取り消しました",
        "Alice님이 메시지를 취소했습니다",
    ],
    "holo-gram": [
        "Alice sent a message",
        "Alice 傳送了一則訊息",
        "Alice 发送了一条消息",
        "Aliceがメッセージを送信しました",
        "Alice님이 메시지를 보냈습니다",
    ],
}


@pytest.mark.parametrize("mtype", list(BODIES))
@pytest.mark.parametrize("i", range(len(LOCALES)))
def test_body_per_type_and_locale(mtype: str, i: int) -> None:
    req = compose_message(
        msg(messageType=mtype, message={"x": 1}), Target("fcm", LOCALES[i]), now=NOW
    )
    assert isinstance(req, FcmRequest)
    assert req.data["body"] == BODIES[mtype][i]
    assert req.data["title"] == "Alice"


def test_every_described_type_has_every_language() -> None:
    for lang in l10n.LANGS:
        table = l10n.TABLES[lang]
        missing = set(l10n.TABLES["en"]) - set(table) - {"summary_one"}
        assert not missing, (lang, missing)
        for key, template in table.items():
            assert set(re.findall(r"{(\w+)}", template)) <= {"name", "text", "room", "count"}, key


@pytest.mark.parametrize(
    ("lang", "sender_none_name"),
    [
        ("en", "System"),
        ("zh-Hant", "系統"),
        ("zh-Hans", "系统"),
        ("ja", "システム"),
        ("ko", "시스템"),
    ],
)
def test_platform_message_without_sender(lang: str, sender_none_name: str) -> None:
    locale = {"zh-Hant": "zh-TW", "zh-Hans": "zh-CN"}.get(lang, lang)
    req = compose_message(msg(sender=None), Target("fcm", locale), now=NOW)
    assert json.loads(data_of(req)["loc-args"]) == [sender_none_name, "Hello"]
    assert data_of(req)["title"] == sender_none_name
    # With a room name, the room speaks.
    req = compose_message(msg(sender=None), Target("fcm", locale), now=NOW, room_name="Ops")
    assert json.loads(data_of(req)["loc-args"]) == ["Ops", "Hello"]


def test_sender_without_nickname_is_someone() -> None:
    req = compose_message(msg(sender="u7"), Target("fcm", "en"), now=NOW)
    assert json.loads(data_of(req)["loc-args"]) == ["Someone", "Hello"]


# ------------------------------------------------------------------ every type × locale × platform


@pytest.mark.parametrize("push_type", PUSH_TYPES)
@pytest.mark.parametrize("locale", LOCALES)
def test_every_type_properties(push_type: str, locale: str) -> None:
    for mtype in ALL_TYPES:
        for content in ("full",):  # hidden and encrypted: tests/unit/test_privacy.py
            m = msg(messageType=mtype, message="Hello there")
            target = Target(push_type, locale, badge=9, content=content)
            req = compose_message(m, target, now=NOW, room_name=None)
            data = data_of(req)
            assert all(isinstance(v, str) for v in data.values())
            assert re.fullmatch(r"im_loc_[A-Za-z0-9_]+", data["loc-key"])
            if mtype not in KNOWN_TYPES:
                assert re.fullmatch(r"im_loc_[a-z0-9_]{1,48}", data["loc-key"])
            args = json.loads(data["loc-args"])
            assert args[0] == "Alice"
            assert len(args) == (2 if mtype in TEXT_TYPES else 1)
            assert data["type"] == "message:r1"
            assert data["title"] and data["body"]
            assert "{" not in data["body"]
            assert data["badge"] == "9"
            shows_text = mtype in TEXT_TYPES and content == "full"
            assert ("Hello there" in data["body"]) is shows_text
            assert ("payload" in data) is (content == "full")
            if content == "full":
                assert json.loads(data["payload"])["messageType"] == mtype
            assert "payloadTrimmed" not in data
            assert fits(req) and size_ok(req)
            if isinstance(req, ApnsRequest):
                assert req.payload["aps"]["alert"]["loc-args"] == args
                assert req.push_type == ("voip" if push_type == "ios-voip" else "alert")
            else:
                assert (req.webpush is not None) is (push_type == "web")
                assert (req.android is not None) is (push_type != "web")


@pytest.mark.parametrize("locale", LOCALES)
def test_apns_custom_keys_mirror_fcm_data(locale: str) -> None:
    for mtype in ALL_TYPES:
        m = msg(messageType=mtype)
        ios = compose_message(m, Target("ios", locale, badge=1), now=NOW, room_name="R")
        fcm = compose_message(m, Target("fcm", locale, badge=1), now=NOW, room_name="R")
        assert data_of(ios) == data_of(fcm)


@pytest.mark.parametrize(
    "content",
    [
        "plain",
        {"text": "from dict"},
        {"no": "text"},
        ["a", 1],
        42,
        3.5,
        None,
        True,
        {"deep": {"er": [1, {"x": None}]}},
    ],
)
@pytest.mark.parametrize("mtype", ["text", "image", "template", "unknownThing"])
def test_any_json_content(content: Any, mtype: str) -> None:
    for push_type in PUSH_TYPES:
        req = compose_message(msg(messageType=mtype, message=content), Target(push_type), now=NOW)
        data = data_of(req)
        assert json.loads(data["payload"])["message"] == content
        if mtype == "text" and content == "plain":
            assert data["body"] == "plain"
        elif mtype == "text" and content == {"text": "from dict"}:
            assert data["body"] == "from dict"
        elif mtype == "text":
            assert data["body"] == "Alice sent a message"
            assert json.loads(data["loc-args"]) == ["Alice", ""]


def test_encrypted_never_shows_content() -> None:
    req = compose_message(msg(messageType="encrypted", message="c2VjcmV0"), Target("fcm"), now=NOW)
    data = data_of(req)
    assert data["body"] == "Alice sent an encrypted message"
    assert "c2VjcmV0" not in data["body"] + data["loc-args"]


def test_invitation_variants() -> None:
    no_name = compose_invitation(inv(room="r5", inviter=None), Target("ios", "zh-TW"), now=NOW)
    data = data_of(no_name)
    assert json.loads(data["loc-args"]) == ["系統", "聊天室"]
    assert data["type"] == "invitation:r5"
    assert isinstance(no_name, ApnsRequest) and no_name.collapse_id == "invitation:r5"


# ----------------------------------------------------------------------------- size limits


def test_long_text_trims_payload_then_body() -> None:
    text = "é" * 5000
    for push_type in PUSH_TYPES:
        req = compose_message(msg(message=text), Target(push_type, badge=1), now=NOW)
        data = data_of(req)
        # As sent: with the pushId the pool adds, which compose keeps room for.
        req = with_push_id(req, push_id("d1/" + push_type, "message", "m1"))
        assert size_ok(req)
        assert data["payloadTrimmed"] == "1"
        assert data["body"].endswith(ELLIPSIS) and text.startswith(data["body"][:-1])
        args = json.loads(data["loc-args"])
        assert args[1] == data["body"]
        # The body gets most of the budget: the limit is nearly used up.
        if isinstance(req, ApnsRequest):
            used = len(json.dumps(req.payload, ensure_ascii=False).encode())
            limit = APNS_VOIP_LIMIT if push_type == "ios-voip" else APNS_LIMIT
        else:
            used, limit = fcm_size(req), FCM_LIMIT - FCM_RESERVE
        assert used > limit - 40


def test_voip_limit_is_larger() -> None:
    m = msg(message="x" * 3000)
    ios = data_of(compose_message(m, Target("ios"), now=NOW))
    voip = data_of(compose_message(m, Target("ios-voip"), now=NOW))
    assert len(voip["body"]) > len(ios["body"])


def test_big_extras_reduce_payload_but_keep_text() -> None:
    m = msg(message="short text", extra={"blob": "y" * 10000}, bulk=["z" * 100] * 100)
    for push_type in PUSH_TYPES:
        data = data_of(compose_message(m, Target(push_type), now=NOW))
        assert data["payloadTrimmed"] == "1"
        assert data["body"] == "short text"
        reduced = json.loads(data["payload"])
        assert reduced == {
            "_id": "m1",
            "room": "r1",
            "messageType": "text",
            "sender": {"_id": "u1", "nickname": "Alice"},
            "message": "short text",
        }


def test_medium_text_keeps_a_prefix_of_the_message_in_the_payload() -> None:
    text = "abc" * 200  # 600 bytes: fits the body (four times over FCM), not the whole payload too
    m = msg(message=text, extra={"blob": "y" * 3000})
    data = data_of(compose_message(m, Target("fcm"), now=NOW))
    assert data["body"] == text
    reduced = json.loads(data["payload"])
    assert text.startswith(reduced["message"]) and reduced["message"]


def test_huge_names_are_cut_too() -> None:
    m = msg(message="hi", sender={"_id": "u", "nickname": "N" * 20000})
    for push_type in PUSH_TYPES:
        req = compose_message(m, Target(push_type), now=NOW, room_name="R" * 20000)
        data = data_of(req)
        assert size_ok(req)
        assert data["title"] == "R" * NAME_MAX + ELLIPSIS
        assert json.loads(data["loc-args"]) == ["N" * NAME_MAX + ELLIPSIS, "hi"]


def test_lone_surrogates_become_valid_utf8() -> None:
    m = Message.model_validate(
        json.loads(
            '{"_id":"m1","room":"r1","message":"a\\ud800b","sender":{"_id":"u","nickname":"\\udfff"}}'
        )
    )
    for push_type in PUSH_TYPES:
        req = compose_message(m, Target(push_type), now=NOW)
        json.dumps(
            req.payload if isinstance(req, ApnsRequest) else req.data, ensure_ascii=False
        ).encode("utf-8")
        assert data_of(req)["body"] == "a?b"


def test_non_finite_numbers_in_extras_stay_strict_json() -> None:
    m = Message.model_validate(
        json.loads('{"_id":"m1","room":"r1","message":"x","n":NaN,"extra":{"i":Infinity}}')
    )
    data = data_of(compose_message(m, Target("fcm"), now=NOW))

    def reject(name: str) -> None:
        raise AssertionError(name)

    assert json.loads(data["payload"], parse_constant=reject)["n"] is None


def test_room_id_too_long_raises() -> None:
    with pytest.raises(ComposeError):
        compose_message(msg(room="r" * 5000), Target("fcm"), now=NOW)


# ------------------------------------------------------------------------- ids and headers


def test_collapse_id_per_message_hashed_when_long() -> None:
    short = compose_message(msg(_id="a" * 64), Target("ios"), now=NOW)
    long = compose_message(msg(_id="a" * 65), Target("ios"), now=NOW)
    wide = compose_message(msg(_id="訊" * 22), Target("ios"), now=NOW)  # 66 bytes
    assert isinstance(short, ApnsRequest) and short.collapse_id == "a" * 64
    assert (
        isinstance(long, ApnsRequest)
        and long.collapse_id
        and re.fullmatch(r"[0-9a-f]{64}", long.collapse_id)
    )
    assert (
        isinstance(wide, ApnsRequest) and wide.collapse_id and len(wide.collapse_id.encode()) == 64
    )


def test_expiration_and_ttl() -> None:
    req = compose_message(msg(), Target("ios", ttl=0), now=NOW)
    assert isinstance(req, ApnsRequest) and req.expiration == 0
    req = compose_message(msg(), Target("android", ttl=-5), now=NOW)
    assert isinstance(req, FcmRequest) and req.android and req.android["ttl"] == 0


def test_voip_topic_suffix() -> None:
    """PushKit pushes go to the app's ``.voip`` topic: the APNs layout's rule, which the provider
    applies to its topic (a composed request names none)."""
    for push_type, app_topic, expected in [
        ("voip", "com.a", "com.a.voip"),
        ("voip", "com.a.voip", "com.a.voip"),
        ("alert", "com.a", "com.a"),
        ("background", "com.a", "com.a"),
    ]:
        assert voip_topic(push_type, app_topic) == expected
    req = compose_message(msg(), Target("ios-voip"), now=NOW)
    assert isinstance(req, ApnsRequest) and req.topic is None


def test_push_id_and_apns_id() -> None:
    a = push_id("dev1", "message", "m1")
    assert a == push_id("dev1", "message", "m1")
    assert re.fullmatch(r"[0-9a-f]{32}", a)
    others = {
        push_id("dev2", "message", "m1"),
        push_id("dev1", "invitation", "m1"),
        push_id("dev1", "message", "m2"),
    }
    assert a not in others and len(others) == 3
    assert push_id("ab", "c", "d") != push_id("a", "bc", "d")
    u = apns_id(a)
    assert u == apns_id(a) and u != apns_id(push_id("dev2", "message", "m1"))
    assert str(uuid.UUID(u)) == u


@pytest.mark.parametrize(
    ("mtype", "key"),
    [
        ("text", "im_loc_text"),
        ("image", "im_loc_image"),
        ("joinRoom", "im_loc_joinRoom"),
        ("payment-select", "im_loc_payment_select"),
        ("template", "im_loc_template"),
        ("Holo-Gram", "im_loc_holo_gram"),
        ("a b!!c", "im_loc_a_b_c"),
        ("", "im_loc_unknown"),
        ("图片", "im_loc_unknown"),
        ("_x_", "im_loc_x"),
        ("z" * 100, "im_loc_" + "z" * 48),
    ],
)
def test_loc_key_for(mtype: str, key: str) -> None:
    assert loc_key_for(mtype) == key
