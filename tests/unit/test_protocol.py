"""Decoding IMKIT payloads: both encodings, the tolerant models, and fuzzing."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.upstream.protocol import (
    EVENTS,
    DecodeError,
    Invitation,
    Message,
    RoomEvent,
    decode_payload,
    encode_payload,
    parse_event,
)

SAMPLE = {
    "_id": "5c1ddf2d1536bbb6c49f7cfe",
    "message": "Bonjour 2",
    "room": "demo-room",
    "sender": {"_id": "sss", "nickname": "Desirae", "isRobot": False, "avatarUrl": "", "id": "sss"},
    "messageType": "text",
    "appID": "SampleApp",
    "messageTime": "2018-12-22T06:52:29.380Z",
    "messageTimeMS": 1545461549380,
    "id": "5c1ddf2d1536bbb6c49f7cfe",
}


@pytest.mark.parametrize("raw", [SAMPLE, encode_payload(SAMPLE)], ids=["object", "base64"])
def test_message_both_encodings(raw: Any) -> None:
    m = parse_event("chat message", raw)
    assert isinstance(m, Message)
    assert (m.id, m.room, m.sender_id, m.text, m.version_ms) == (SAMPLE["_id"], "demo-room", "sss", "Bonjour 2", 1545461549380)
    assert m.model_extra is not None and m.model_extra["messageTime"] == SAMPLE["messageTime"]


@pytest.mark.parametrize(
    ("patch", "check"),
    [
        ({"sender": None}, lambda m: m.sender is None and m.sender_id is None),
        ({"message": {"text": "hello", "x": 1}}, lambda m: m.text == "hello"),
        ({"message": [1, 2]}, lambda m: m.text == ""),
        ({"message": 42}, lambda m: m.text == ""),
        ({"extra": '{"a": 1}'}, lambda m: m.extra == {"a": 1}),
        ({"extra": "not json"}, lambda m: m.extra == {"raw": "not json"}),
        ({"messageType": "brand-new-type"}, lambda m: m.messageType == "brand-new-type"),
        ({"room": {"_id": "r2", "name": "R"}}, lambda m: m.room == "r2"),
        ({"sender": "bob"}, lambda m: m.sender_id == "bob"),
        ({"mentions": [{"_id": "a"}, "b"]}, lambda m: m.mentions == ["a", "b"]),
        ({"updatedAtMS": "1700000000000"}, lambda m: m.version_ms == 1700000000000),
    ],
)
def test_message_tolerates_what_imkit_sends(patch: dict[str, Any], check: Any) -> None:
    assert check(Message.model_validate({**SAMPLE, **patch}))


@pytest.mark.parametrize("bad", [{"room": "r"}, {"_id": "x"}, {"_id": None, "room": "r"}, [], "bm90IGpzb24=", "%%%"])
def test_malformed_message_is_a_decode_error(bad: Any) -> None:
    with pytest.raises(DecodeError):
        parse_event("chat message", bad)


def test_invitation_and_room_variants() -> None:
    inv = parse_event("invitation", encode_payload({"room": {"_id": "r1", "name": "Team"}, "inviter": {"_id": "u", "nickname": "U"}, "createdTimeMS": 1}))
    assert isinstance(inv, Invitation) and inv.room.id == "r1" and inv.inviter and inv.inviter.nickname == "U"
    legacy = parse_event("room", {"room": {"_id": "r1", "muted": True}, "memberProperty": {}})
    assert isinstance(legacy, RoomEvent) and legacy.room.muted is True
    partial = parse_event("room", {"_id": "r1", "name": "n"})
    assert isinstance(partial, RoomEvent) and partial.room.muted is None


@pytest.mark.parametrize("raw", [{"room": "r7", "memberProperty": {"role": "member"}}, encode_payload({"room": "r7"})])
def test_legacy_room_event_with_a_room_id(raw: Any) -> None:
    # The legacy {room, memberProperty} shape may name the room by its id only: a room event, not malformed.
    event = parse_event("room", raw)
    assert isinstance(event, RoomEvent) and event.room.id == "r7" and event.room.muted is None


@pytest.mark.parametrize("bad", [{"room": ""}, {"room": None}, {"room": True}, {"memberProperty": {}}])
def test_room_event_without_a_room_is_malformed(bad: Any) -> None:
    with pytest.raises(DecodeError):
        parse_event("room", bad)


ISO_ONLY = {k: v for k, v in SAMPLE.items() if k != "messageTimeMS"}


@pytest.mark.parametrize(
    ("patch", "version"),
    [
        ({}, 1545461549380),  # messageTime only
        ({"createdAt": "2018-12-22T06:52:30Z"}, 1545461550000),
        ({"updatedAt": "2018-12-22T06:53:00.5+00:00", "createdAt": "2018-12-22T06:52:30Z"}, 1545461580500),
        ({"updatedAt": "2018-12-22T14:53:00+08:00"}, 1545461580000),  # an offset other than UTC
        ({"updatedAt": "2018-12-22T06:53:00"}, 1545461580000),  # no offset: UTC
        ({"updatedAtMS": "2018-12-22T06:53:00Z"}, 1545461580000),  # an ISO string in an MS field
        ({"updatedAtMS": 1545461599999, "updatedAt": "2018-12-22T06:53:00Z"}, 1545461599999),  # MS wins
        ({"messageTime": "not a time"}, 0),
        ({"messageTime": "99999-01-01T00:00:00Z"}, 0),
    ],
)
def test_iso_only_timestamps_give_the_version(patch: dict[str, Any], version: int) -> None:
    m = parse_event("chat message", {**ISO_ONLY, **patch})
    assert isinstance(m, Message) and m.version_ms == version


def test_my_pref_delete_bare_key() -> None:
    assert parse_event("myPrefDelete", base64.b64encode(b"demokey").decode()) == "demokey"
    assert parse_event("myPrefDelete", "demokey") == "demokey"


def test_round_trip() -> None:
    obj = {"a": "文字", "b": [1, None, True]}
    assert decode_payload(encode_payload(obj)) == obj


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
field_names = st.sampled_from(["_id", "id", "room", "sender", "message", "messageType", "extra", "mentions", "updatedAtMS", "updatedAt", "createdAt", "messageTime", "inviter", "roomID", "memberID", "muted", "editedAt"])
shaped = st.dictionaries(field_names, json_values, max_size=8)


@settings(max_examples=300, deadline=None)
@given(event=st.sampled_from(EVENTS), payload=st.one_of(json_values, shaped, st.binary(max_size=64), st.text(max_size=64)), b64=st.booleans())
def test_fuzz_never_raises_anything_but_decode_error(event: str, payload: Any, b64: bool) -> None:
    raw: Any = payload
    if b64 and not isinstance(payload, bytes):
        raw = base64.b64encode(json.dumps(payload).encode()).decode()
    try:
        parse_event(event, raw)
    except DecodeError:
        pass


def test_deep_nesting_is_a_decode_error() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(DecodeError):
        parse_event("chat message", base64.b64encode(deep.encode()).decode())
