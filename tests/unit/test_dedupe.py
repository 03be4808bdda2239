"""bridge.worker.dedupe: "already handled?" for edits, recalls, re-sends, streams and invitations,
in memory that stays bounded however many messages a device sees."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.upstream.protocol import Message
from bridge.worker.dedupe import DedupeLimits, SeenMessages, message_time

T0 = 1_760_000_000_000  # epoch ms


def msg(mid: str, room: str = "r1", created: int | None = T0, **kw: Any) -> Message:
    body: dict[str, Any] = {"_id": mid, "room": room, "message": "hi", "sender": {"_id": "bob"}}
    if created is not None:
        body.update(createdAtMS=created, messageTimeMS=created, updatedAtMS=created)
    body.update(kw)
    return Message.model_validate(body)


def seen(s: SeenMessages, m: Message, gap: tuple[int, int] | None = None) -> bool:
    return s.seen(m.room, m.id, message_time(m), gap=gap)


def add(s: SeenMessages, m: Message, *, streaming: bool = False) -> None:
    s.add(m.room, m.id, message_time(m), streaming=streaming)


def handle(s: SeenMessages, m: Message) -> bool:
    """What the pool does with a live chat message: is it new? Remember it either way."""
    new = not seen(s, m)
    add(s, m)
    return new


# ---------------------------------------------------------------- edits, recalls, re-sends


def test_message_time_stays_through_edits() -> None:
    original = msg("m1")
    edit = msg("m1", updatedAtMS=T0 + 5_000, editedAt="2026-01-01T00:00:00Z")
    assert message_time(original) == message_time(edit) == T0
    assert message_time(msg("m2", created=None, messageTime="2025-10-09T08:53:20.000Z")) == T0
    assert message_time(msg("m3", created=None)) is None


def test_resend_edit_and_recall_of_a_recent_message_are_seen() -> None:
    s = SeenMessages()
    assert handle(s, msg("m1"))
    assert seen(s, msg("m1"))  # re-send with the same _id
    assert seen(s, msg("m1", updatedAtMS=T0 + 60_000, editedAt="2026-01-01T00:00:00Z"))
    assert seen(s, msg("m1", messageType="recall", updatedAtMS=T0 + 90_000))


def test_edits_and_recalls_of_old_messages_stay_seen_after_10000_messages() -> None:
    s = SeenMessages()
    ids = [f"m{i}" for i in range(10_000)]
    for i, mid in enumerate(ids):
        assert handle(s, msg(mid, room=f"r{i % 20}", created=T0 + i * 10)), mid
    for i, mid in enumerate(ids):
        original = msg(mid, room=f"r{i % 20}", created=T0 + i * 10)
        assert seen(s, original), mid
        assert seen(s, msg(mid, room=f"r{i % 20}", created=T0 + i * 10, messageType="recall", updatedAtMS=T0 + 10**8))


# ---------------------------------------------------------------- out-of-order arrival


def test_an_older_message_arriving_after_a_newer_one_is_new_once() -> None:
    s = SeenMessages()
    assert handle(s, msg("b", created=T0 + 40))
    assert handle(s, msg("a", created=T0 + 10))  # the other sender's, committed first, late
    assert not handle(s, msg("a", created=T0 + 10))
    assert not handle(s, msg("b", created=T0 + 40))


def test_late_messages_within_the_window_are_new_then_older_ones_count_as_handled() -> None:
    limits = DedupeLimits(window_ms=1_000, per_room=4)
    s = SeenMessages(limits)
    for i in range(4):
        assert handle(s, msg(f"n{i}", created=T0 + 1_000 + i))
    assert handle(s, msg("late", created=T0 + 999))  # behind all four: still within the window
    # Past the window in time (1 s behind the newest): taken as handled (the trade-off).
    assert seen(s, msg("too-late", created=T0 - 2))
    # Past the window in count: four newer ids held, an older one cannot be told apart.
    for i in range(4, 8):
        add(s, msg(f"n{i}", created=T0 + 1_000 + i))
    assert seen(s, msg("late2", created=T0 + 1_003))
    assert not seen(s, msg("next", created=T0 + 1_008))


def test_a_burst_within_one_millisecond_is_not_dropped() -> None:
    s = SeenMessages(DedupeLimits(per_room=2))
    handle(s, msg("before", created=T0 - 1))
    assert all(handle(s, msg(f"b{i}", created=T0)) for i in range(8))
    assert all(seen(s, msg(f"b{i}", created=T0)) for i in range(8))
    assert handle(s, msg("after", created=T0 + 1))
    assert len(s) == 1  # the burst goes as one: ties cannot be told apart by time


# ---------------------------------------------------------------- rooms evicted


def test_a_room_evicted_then_seen_again_never_alerts_for_an_old_message() -> None:
    s = SeenMessages(DedupeLimits(max_rooms=2))
    assert handle(s, msg("a1", room="ra", created=T0 + 100))
    assert handle(s, msg("b1", room="rb", created=T0 + 200))
    assert handle(s, msg("c1", room="rc", created=T0 + 300))  # evicts ra
    assert s.room_count == 2
    assert seen(s, msg("a1", room="ra", created=T0 + 100))  # its edit or recall: handled
    assert seen(s, msg("a0", room="ra", created=T0 + 50))  # older than the floor: handled
    assert handle(s, msg("a2", room="ra", created=T0 + 400))  # newer: new (evicts rb)
    assert seen(s, msg("b1", room="rb", created=T0 + 200))
    assert seen(s, msg("a1", room="ra", created=T0 + 100))  # ra is back: its low is past the floor
    # A new room's first message is new as long as it is newer than the rooms evicted before it.
    assert handle(s, msg("d1", room="rd", created=T0 + 500))


def test_rooms_round_robin_over_more_than_the_cap_still_push_every_message_once() -> None:
    s = SeenMessages(DedupeLimits(max_rooms=8))
    for i in range(2_000):
        m = msg(f"m{i}", room=f"r{i % 40}", created=T0 + i)
        assert handle(s, m), m.id
        assert seen(s, m)
    assert s.room_count == 8


# ---------------------------------------------------------------- backfill after a reconnect


def test_backfill_gap_messages_are_new_even_when_live_traffic_moved_past_them() -> None:
    s = SeenMessages(DedupeLimits(per_room=4))
    before = [msg(f"old{i}", created=T0 + i) for i in range(3)]
    for m in before:
        handle(s, m)
    since = T0 + 2  # the connection dropped after the last of them
    resumed = T0 + 1_000  # and came back here; live traffic carries on at once
    live = [msg(f"live{i}", created=resumed + i) for i in range(10)]
    for m in live:
        handle(s, m)
    gap = (since, resumed)
    missed = [msg(f"gap{i}", created=T0 + 100 + i) for i in range(5)]
    # Without the gap these would be taken for handled: older than the window.
    assert all(seen(s, m) for m in missed)
    for m in missed:
        assert not seen(s, m, gap), m.id
        add(s, m)
    # What was handled before the gap, and live after it, stays handled even with the gap.
    assert all(seen(s, m, gap) for m in before + live)


def test_a_gap_message_backfilled_once_is_not_new_to_a_second_backfill_of_the_gap() -> None:
    s = SeenMessages(DedupeLimits(per_room=4))
    handle(s, msg("old", created=T0))
    for i in range(10):  # live after the reconnect: the window moves far past the gap
        handle(s, msg(f"live{i}", created=T0 + 1_000 + i))
    gap = (T0, T0 + 1_000)
    missed = [msg(f"gap{i}", created=T0 + 100 + i) for i in range(3)]
    for m in missed:
        assert not seen(s, m, gap)
        s.add(m.room, m.id, message_time(m), gap=gap)
    # A retry, or the next owner, backfills the same gap: every one of them is handled now.
    assert all(seen(s, m, gap) for m in missed)
    assert all(seen(s, m) for m in missed)
    # ... and the window still holds the newest live ones; a new message is still new.
    assert seen(s, msg("live9", created=T0 + 1_009), gap)
    assert not seen(s, msg("next", created=T0 + 1_010))


def test_backfill_does_not_push_a_gap_message_twice_when_it_is_still_in_the_window() -> None:
    s = SeenMessages()
    gap = (T0, T0 + 10_000)
    m = msg("g1", created=T0 + 5)
    assert not seen(s, m, gap)
    add(s, m)
    assert seen(s, m, gap)
    assert seen(s, m)


# ---------------------------------------------------------------- AI replies streamed


def test_an_ai_reply_pushes_once_even_after_a_busy_room_moved_past_its_placeholder() -> None:
    s = SeenMessages(DedupeLimits(per_room=4, window_ms=1_000))
    placeholder = msg("ai1", messageType="ai_streaming", message="")
    assert not seen(s, placeholder)
    add(s, placeholder, streaming=True)
    assert s.streaming("ai1")
    for i in range(20):  # the stream takes a while; the room goes on
        handle(s, msg(f"m{i}", created=T0 + 5_000 + i))
    final = msg("ai1", updatedAtMS=T0 + 9_000, editedAt="2026-01-01T00:00:00Z")
    assert not seen(s, final)
    add(s, final)
    assert not s.streaming("ai1")
    assert seen(s, final)  # a re-send of the finished reply
    # A late partial update after the finish does not re-open the stream.
    add(s, placeholder, streaming=True)
    assert not s.streaming("ai1") and seen(s, final)


def test_streams_are_bounded() -> None:
    s = SeenMessages(DedupeLimits(max_streams=3))
    for i in range(5):
        s.add("r1", f"ai{i}", T0 + i, streaming=True)
    assert [s.streaming(f"ai{i}") for i in range(5)] == [False, False, True, True, True]


# ---------------------------------------------------------------- no time, invitations, badge


def test_a_message_without_time_is_deduplicated_while_its_id_is_held() -> None:
    s = SeenMessages(DedupeLimits(per_room=2))
    bare = msg("x", created=None)
    assert handle(s, bare)
    assert seen(s, bare)
    assert handle(s, msg("y", created=None))
    assert not seen(s, msg("z", created=None))


def test_invitations_by_room_discarded_on_cancel() -> None:
    s = SeenMessages(DedupeLimits(max_invitations=2))
    assert not s.invited("r9")
    s.add_invitation("r9")
    assert s.invited("r9")
    s.cancel_invitation("r9")
    assert not s.invited("r9")  # invited again after a cancel: new
    s.add_invitation("r9")
    s.add_invitation("r8")
    s.add_invitation("r9")  # refreshed: r8 is now the oldest
    s.add_invitation("r7")
    assert (s.invited("r7"), s.invited("r8"), s.invited("r9")) == (True, False, True)


def test_badge_counted_once_per_user_across_devices() -> None:
    counted = SeenMessages()
    badge = 0
    for _device in ("iphone", "ipad"):
        for m in (msg("m1"), msg("m2", created=T0 + 1)):
            if not seen(counted, m):
                add(counted, m)
                badge += 1
    assert badge == 2


# ---------------------------------------------------------------- properties


events = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 40), st.integers(-3_000, 3_000)), max_size=300
)


@settings(max_examples=200, deadline=None)
@given(events)
def test_what_was_handled_is_always_seen(items: list[tuple[int, int, int]]) -> None:
    """Safety, whatever the order: a handled message (with a time) is never new again."""
    s = SeenMessages(DedupeLimits(window_ms=1_000, per_room=3, max_rooms=3))
    handled: list[tuple[str, str, int]] = []
    for room, n, dt in items:
        key = (f"r{room}", f"m{room}-{n}@{dt}", T0 + dt)  # an _id always has the same time
        s.add(*key)
        handled.append(key)
        assert all(s.seen(*k) for k in handled)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(1, 50)), max_size=300))
def test_in_order_traffic_is_never_dropped(items: list[tuple[int, int]]) -> None:
    """Liveness: messages arriving in time order are each new exactly once."""
    s = SeenMessages(DedupeLimits(window_ms=1_000, per_room=2, max_rooms=3))
    t = T0
    for i, (room, step) in enumerate(items):
        t += step
        assert not s.seen(f"r{room}", f"m{i}", t)
        s.add(f"r{room}", f"m{i}", t)
        assert s.seen(f"r{room}", f"m{i}", t)


# ---------------------------------------------------------------- memory


@pytest.mark.parametrize(("rooms", "max_entries", "max_bytes"), [(20, 20 * 8, 8 * 1024), (500, 32 * 8, 12 * 1024)])
def test_memory_is_bounded_after_10000_messages(rooms: int, max_entries: int, max_bytes: int) -> None:
    ids = [f"{i:024x}" for i in range(10_000)]  # the message objects' strings, shared
    room_ids = [f"room-{r:020d}" for r in range(rooms)]
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        s = SeenMessages()
        for i, mid in enumerate(ids):
            s.add(room_ids[i % rooms], mid, T0 + i * 50)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(s) <= max_entries
    assert s.room_count <= min(rooms, 32)
    assert used < max_bytes, used
    assert s.seen(room_ids[0], ids[0], T0)  # ... and still answers for the first message


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        DedupeLimits(per_room=0)
    with pytest.raises(ValueError):
        DedupeLimits(window_ms=-1)
