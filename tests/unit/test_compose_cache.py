"""bridge.worker.compose_cache: one composition per message and kind of recipient, same pushes."""

from __future__ import annotations

from typing import Any

import pytest

from bridge import compose
from bridge.compose import BADGE_ROOM, Target, compose_message, fits, with_badge
from bridge.models import ApnsRequest
from bridge.seal import open_sealed
from bridge.upstream.protocol import Message
from bridge.worker.compose_cache import MAX_AGE, ComposeCache

NOW = 1_700_000_000.5
PUSH_TYPES = ("ios", "ios-voip", "fcm", "android", "web")


def msg(text: str = "Hello", **kw: Any) -> Message:
    base: dict[str, Any] = {
        "_id": "m1",
        "room": "r1",
        "messageType": "text",
        "message": text,
        "sender": {"_id": "u1", "nickname": "Alice"},
        "updatedAt": 1_700_000_000_000,
    }
    base.update(kw)
    return Message.model_validate(base)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("push_type", PUSH_TYPES)
@pytest.mark.parametrize("content", ["full", "hidden"])
def test_fan_out_composes_once_and_each_device_gets_its_own_badge(push_type: str, content: Any) -> None:
    cache = ComposeCache()
    m = msg()
    badges = [None, 0, 1, 7, 42, 1234, BADGE_ROOM]
    for badge in badges:
        for _ in range(3):  # three devices of users with that badge
            target = Target(push_type=push_type, locale="en-US", badge=badge, content=content)
            got = cache.message(m, target, now=NOW, room_name="Room 1")
            # Exactly what composing for this device alone gives.
            assert got == compose_message(m, target, now=NOW, room_name="Room 1")
    # One composition with a badge (shared by every badge value) and one without.
    assert cache.misses == 2 and cache.hits == len(badges) * 3 - 2


def test_kinds_of_recipients_do_not_share() -> None:
    cache = ComposeCache()
    m = msg(messageType="image")  # its body is a sentence in the device's language
    seen = set()
    for push_type in ("ios", "android"):
        for locale in ("en-US", "ja"):
            for room_name in (None, "Room 1"):
                req = cache.message(m, Target(push_type=push_type, locale=locale, badge=3), now=NOW, room_name=room_name)
                assert req == compose_message(m, Target(push_type=push_type, locale=locale, badge=3), now=NOW, room_name=room_name)
                seen.add(repr(req))
    assert cache.misses == 8 and len(seen) == 8


def test_near_the_size_limit_every_badge_still_fits() -> None:
    cache = ComposeCache()
    for push_type in PUSH_TYPES:
        m = msg("長" * 3000)  # trimmed to the limit
        for badge in (0, 9, 99_999, BADGE_ROOM):
            req = cache.message(m, Target(push_type=push_type, badge=badge), now=NOW)
            assert fits(req), (push_type, badge)
            if isinstance(req, ApnsRequest):
                assert req.payload["aps"]["badge"] == badge and req.payload["badge"] == str(badge)
            else:
                assert req.data["badge"] == str(badge)


def test_another_message_object_or_version_is_composed_anew() -> None:
    cache = ComposeCache()
    target = Target(push_type="ios", badge=1)
    first = cache.message(msg("one"), target, now=NOW)
    # Same id and version, another object (e.g. fetched by a backfill): not trusted to be equal.
    second = cache.message(msg("two"), target, now=NOW)
    edited = msg("three", updatedAt=1_700_000_000_500)
    third = cache.message(edited, target, now=NOW)
    assert cache.misses == 3 and cache.hits == 0
    assert [r.payload["aps"]["alert"]["body"] for r in (first, second, third) if isinstance(r, ApnsRequest)] == [
        "one",
        "two",
        "three",
    ]


def test_encrypted_is_sealed_per_device_and_never_shared() -> None:
    cache = ComposeCache()
    m = msg()
    keys = [bytes([i]) * 32 for i in (1, 2)]
    for key in keys:
        req = cache.message(m, Target(push_type="android", badge=2, content="encrypted", content_key=key), now=NOW)
        assert not isinstance(req, ApnsRequest)
        assert b'"body":"Hello"' in open_sealed(key, req.data["enc"])
    assert cache.misses == 0 and cache.hits == 0 and len(cache) == 0


def test_entries_expire_and_are_bounded() -> None:
    clock = Clock()
    cache = ComposeCache(max_entries=3, clock=clock)
    m = msg()
    target = Target(push_type="ios", badge=1)
    cache.message(m, target, now=NOW)
    clock.now += MAX_AGE + 0.1
    cache.message(m, target, now=NOW)  # too old: composed again
    assert (cache.misses, cache.hits) == (2, 0)
    for locale in ("a", "b", "c", "d"):
        cache.message(m, Target(push_type="ios", badge=1, locale=locale), now=NOW)
    assert len(cache) == 3


def test_a_badge_wider_than_the_placeholder_is_composed_alone() -> None:
    cache = ComposeCache()
    target = Target(push_type="ios", badge=BADGE_ROOM + 1)
    req = cache.message(msg(), target, now=NOW)
    assert req == compose_message(msg(), target, now=NOW) and len(cache) == 0
    with pytest.raises(ValueError, match="outside"):
        with_badge(req, BADGE_ROOM + 1)


def test_compose_errors_are_raised_and_not_cached() -> None:
    cache = ComposeCache()
    bad = msg(room="r" * 5000)  # ids alone overflow
    with pytest.raises(compose.ComposeError):
        cache.message(bad, Target(push_type="ios", badge=1), now=NOW)
    assert len(cache) == 0
