"""bridge.upstream.decode_cache: one decode per packet however many sessions receive it; malformed
packets still reported to every session."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from bridge.upstream import protocol
from bridge.upstream.decode_cache import CACHE, DecodeCache, parse_event
from bridge.upstream.protocol import DecodeError, Message, encode_payload

MESSAGE = {"_id": "m1", "room": "r1", "message": "hi", "sender": {"_id": "bob"}, "createdAtMS": 1}


class Counting:
    """protocol.parse_event, counting its calls (handed to the cache as its ``parse``)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, name: str, raw: Any) -> Any:
        self.calls += 1
        return protocol.parse_event(name, raw)


def per_session_copy(raw: str) -> str:
    """An equal string that is not the same object: each socket decodes its own packet."""
    copy = "".join(list(raw))
    assert copy == raw and copy is not raw
    return copy


def test_a_packet_delivered_to_50_sessions_is_decoded_once() -> None:
    parse = Counting()
    cache = DecodeCache(parse=parse)
    raw = encode_payload(MESSAGE)
    first = cache.parse_event("chat message", raw)
    assert isinstance(first, Message) and first.id == "m1"
    for _ in range(49):
        assert cache.parse_event("chat message", per_session_copy(raw)) is first
    assert parse.calls == 1
    assert (cache.hits, cache.misses) == (49, 1)


def test_the_event_name_is_part_of_the_key() -> None:
    cache = DecodeCache()
    raw = encode_payload({"room": "r1", "muted": True})
    pref = cache.parse_event("roomPref", raw)
    other = cache.parse_event("typing", raw)
    assert isinstance(pref, protocol.RoomPref)
    assert other == {"room": "r1", "muted": True}


def test_bytes_payloads_are_cached_too() -> None:
    parse = Counting()
    cache = DecodeCache(parse=parse)
    raw = encode_payload(MESSAGE).encode("ascii")
    assert cache.parse_event("chat message", raw) is cache.parse_event("chat message", bytes(bytearray(raw)))
    assert parse.calls == 1


def test_decoded_objects_bypass_the_cache() -> None:
    parse = Counting()
    cache = DecodeCache(parse=parse)
    a = cache.parse_event("chat message", dict(MESSAGE))
    b = cache.parse_event("chat message", dict(MESSAGE))
    assert a == b and a is not b
    assert parse.calls == 2 and len(cache) == 0


@pytest.mark.parametrize(
    ("name", "raw", "text"),
    [
        ("chat message", "not base64!", "payload is a string but not base64 of UTF-8"),
        ("chat message", base64.b64encode(b"{nope").decode(), "payload is not JSON after base64 decoding"),
        ("chat message", encode_payload({"room": "r1"}), "chat message: 1 invalid field(s)"),
    ],
)
def test_malformed_payloads_raise_for_every_session(name: str, raw: str, text: str) -> None:
    parse = Counting()
    cache = DecodeCache(parse=parse)
    with pytest.raises(DecodeError) as first:
        cache.parse_event(name, raw)
    assert str(first.value) == text
    reported = 0
    for _ in range(5):  # each session counts its own malformed event, as before
        with pytest.raises(DecodeError) as again:
            cache.parse_event(name, per_session_copy(raw))
        assert str(again.value) == text
        assert again.value is not first.value and again.value.__traceback__ is not None
        reported += 1
    assert reported == 5 and parse.calls == 1


def test_other_errors_are_reported_by_type_name_only() -> None:
    def hostile(name: str, raw: Any) -> Any:
        raise TypeError(f"quoting the payload {raw}")

    cache = DecodeCache(parse=hostile)
    with pytest.raises(TypeError):
        cache.parse_event("chat message", "secret-ish")
    with pytest.raises(DecodeError, match="^TypeError$"):
        cache.parse_event("chat message", "secret-ish")


def test_bounded_by_entries_and_bytes() -> None:
    cache = DecodeCache(max_entries=3, max_bytes=10_000)
    raws = [encode_payload({**MESSAGE, "_id": f"m{i}"}) for i in range(10)]
    objs = [cache.parse_event("chat message", r) for r in raws]
    assert len(cache) == 3
    assert cache.parse_event("chat message", raws[-1]) is objs[-1]  # recent ones kept
    assert cache.parse_event("chat message", raws[0]) is not objs[0]  # the oldest decoded again
    small = DecodeCache(max_bytes=2 * len(raws[0]))
    for r in raws:
        small.parse_event("chat message", r)
    assert len(small) == 2


def test_the_process_cache() -> None:
    raw = encode_payload({**MESSAGE, "_id": "process-wide"})
    assert parse_event("chat message", raw) is parse_event("chat message", per_session_copy(raw))
    assert len(CACHE) >= 1
