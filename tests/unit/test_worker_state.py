"""bridge.worker.state: the per-device facts the worker parts share (checkpoint, gap, anchors)."""

from __future__ import annotations

from bridge.models import SessionState
from bridge.worker.state import MAX_ANCHORS, UserState
from tests.unit._worker_fakes import device, message, runtime


def test_the_safe_checkpoint_waits_for_pending_pushes_and_an_open_gap() -> None:
    rt = runtime()
    assert rt.safe_checkpoint() is None
    rt.note_message(message("m1", at_ms=1_000))
    rt.note_message(message("m0", at_ms=500))  # older, arriving late: the high water stays
    assert rt.safe_checkpoint() == (1_000, "m1")

    rt.pending["p"] = 800
    assert rt.safe_checkpoint() == (799, "m1")
    rt.gap_ms = 600  # a gap not backfilled yet reaches further back
    assert rt.safe_checkpoint() == (600, "m1")


def test_anchors_keep_the_last_message_of_the_most_recent_rooms() -> None:
    rt = runtime()
    for i in range(MAX_ANCHORS + 3):
        rt.note_message(message(f"m{i}", room=f"r{i}", at_ms=i))
    rt.note_message(message("again", room="r1", at_ms=10_000))
    assert len(rt.anchors) == MAX_ANCHORS
    assert "r0" not in rt.anchors and "r2" not in rt.anchors
    assert list(rt.anchors.items())[-1] == ("r1", "again")


def test_a_gap_starts_at_the_checkpoint_or_where_live_stopped() -> None:
    dev = device()
    dev.checkpoint_ms = 5_000
    rt = runtime(dev)
    assert rt.gap_start() == (5_000, {})  # a new session: from the stored checkpoint

    rt.note_message(message("m1", room="r1", at_ms=7_000))
    rt.was_live = True
    assert rt.gap_start() == (7_000, {"r1": "m1"})  # a reconnect: from the last live message
    rt.floor_ms = 9_000  # the device had no working token before this
    assert rt.gap_start() == (9_000, {"r1": "m1"})


def test_status_names_the_owner_and_the_session() -> None:
    rt = runtime()
    rt.history.add(1.0, "chat message", "m1", "r1", pushed=False, reason="foreground")
    status = rt.status()
    assert (status["clientId"], status["session"]) == ("alice", SessionState.CLOSED.value)
    assert [e["id"] for e in status["events"]] == ["m1"]
    assert status["lastProviderResult"] is None


def test_room_names_are_cut_and_bounded() -> None:
    user = UserState("alice")
    user.remember_room("r1", "x" * 300)
    user.remember_room("r2", None)
    assert user.room_names == {"r1": "x" * 200}
    for i in range(2_100):
        user.remember_room(f"n{i}", "name")
    assert len(user.room_names) == 2_000 and "r1" not in user.room_names
