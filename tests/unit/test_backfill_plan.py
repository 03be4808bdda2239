"""plan_backfill: what to push after a gap (pure), as tables of cases."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from bridge.decide import Gap
from bridge.upstream.protocol import Invitation, Message
from bridge.worker.backfill import BackfillPlan, Missed, RoomSummary, invitation_ms, plan_backfill
from bridge.worker.dedupe import SeenMessages

NOW = 10_000_000
MAX_AGE = 1_000_000
CUTOFF = NOW - MAX_AGE  # a message at exactly this age is still kept
ME = "alice"


def msg(mid: str, room: str, ms: int, sender: str | None = "bob", kind: str = "text") -> Message:
    return Message.model_validate(
        {
            "_id": mid,
            "room": room,
            "messageType": kind,
            "message": f"text of {mid}@{ms}",
            "sender": {"_id": sender, "nickname": sender} if sender else None,
            "updatedAtMS": ms,
        }
    )


def inv(room: str, ms: int | None = None, **extra: Any) -> Invitation:
    body: dict[str, Any] = {"room": {"_id": room, "name": f"name of {room}"}, "inviter": "bob"}
    if ms is not None:
        body["updatedTimeMS"] = ms
    return Invitation.model_validate({**body, **extra})


class KeySeen:
    """What was handled, as keys: ``m:<id>`` a message, ``s:<id>`` a stream, ``i:<room>`` an invitation."""

    def __init__(self, keys: frozenset[str] = frozenset()) -> None:
        self.keys = keys

    def seen(self, room: str, msg_id: str, at_ms: int | None, *, gap: Gap | None = None) -> bool:
        return f"m:{msg_id}" in self.keys

    def streaming(self, msg_id: str) -> bool:
        return f"s:{msg_id}" in self.keys

    def invited(self, room: str) -> bool:
        return f"i:{room}" in self.keys


def not_own_not_recall(m: Message) -> bool:
    """A stand-in for the pool's decide()-based predicate."""
    return m.sender_id != ME and m.messageType != "recall"


@dataclass
class Case:
    rooms: dict[str, list[Message]]
    messages: list[str]  # expected ids, in order
    summaries: list[tuple[str, int, str]] = field(default_factory=list)  # (room, count, newest id)
    skipped_old: int = 0
    room_cap: int = 3
    seen: frozenset[str] = frozenset()


def n_msgs(room: str, n: int, start: int = NOW - 100) -> list[Message]:
    return [msg(f"{room}-{i}", room, start + i) for i in range(n)]


CASES = {
    "empty": Case({}, []),
    "exactly at the cap: pushed one by one": Case(
        {"r1": n_msgs("r1", 3)}, ["r1-0", "r1-1", "r1-2"]
    ),
    "one over the cap: one summary": Case({"r1": n_msgs("r1", 4)}, [], [("r1", 4, "r1-3")]),
    "cap is per room": Case(
        {"r1": n_msgs("r1", 4, NOW - 50), "r2": n_msgs("r2", 2, NOW - 90)},
        ["r2-0", "r2-1"],
        [("r1", 4, "r1-3")],
    ),
    "age exactly max age is kept, one ms more is skipped": Case(
        {"r1": [msg("a", "r1", CUTOFF - 1), msg("b", "r1", CUTOFF)]}, ["b"], skipped_old=1
    ),
    "no timestamp at all counts as old": Case(
        {"r1": [Message.model_validate({"_id": "x", "room": "r1"})]}, [], skipped_old=1
    ),
    "old messages do not count towards the cap": Case(
        {"r1": [msg(f"o{i}", "r1", CUTOFF - 10 + i) for i in range(5)] + n_msgs("r1", 3)},
        ["r1-0", "r1-1", "r1-2"],
        skipped_old=5,
    ),
    "seen (handled live) is dropped, not counted as old": Case(
        {"r1": n_msgs("r1", 3)}, ["r1-0", "r1-2"], seen=frozenset({"m:r1-1", "i:r1-0"})
    ),
    "seen brings a room from cap+1 back to the cap": Case(
        {"r1": n_msgs("r1", 4)}, ["r1-1", "r1-2", "r1-3"], seen=frozenset({"m:r1-0"})
    ),
    "pushable rejects own messages and recalls": Case(
        {
            "r1": [
                msg("a", "r1", NOW - 5, sender=ME),
                msg("b", "r1", NOW - 4),
                msg("c", "r1", NOW - 3, kind="recall"),
                msg("d", "r1", NOW - 2, sender=None),  # a platform message: pushable here
            ]
        },
        ["b", "d"],
    ),
    "rejected messages do not count towards the cap": Case(
        {"r1": n_msgs("r1", 3) + [msg(f"own{i}", "r1", NOW - 10, sender=ME) for i in range(4)]},
        ["r1-0", "r1-1", "r1-2"],
    ),
    "ordering across rooms by version, then id": Case(
        {
            "r1": [msg("a", "r1", NOW - 10), msg("d", "r1", NOW - 4)],
            "r2": [msg("c", "r2", NOW - 7), msg("b", "r2", NOW - 7)],
            "r3": [msg("e", "r3", NOW - 1)],
        },
        ["a", "b", "c", "d", "e"],
    ),
    "an edit counts once, as its newest version": Case(
        {"r1": [msg("a", "r1", NOW - 10), msg("b", "r1", NOW - 9), msg("a", "r1", NOW - 1)]},
        ["b", "a"],
        room_cap=2,
    ),
    "edits do not push a room over the cap": Case(
        {"r1": [msg("a", "r1", NOW - 10 + i) for i in range(5)] + n_msgs("r1", 1)},
        ["r1-0", "a"],
        room_cap=2,
    ),
    "a recalled message (newest version) is not pushed in its old form": Case(
        {"r1": [msg("a", "r1", NOW - 10), msg("a", "r1", NOW - 1, kind="recall")]}, []
    ),
    "an edit of an old message made within max age is kept": Case(
        {"r1": [msg("a", "r1", CUTOFF - 100), msg("a", "r1", NOW - 1)]}, ["a"]
    ),
    "an edit of a message already pushed live is dropped": Case(
        {"r1": [msg("a", "r1", NOW - 1)]}, [], seen=frozenset({"m:a"})
    ),
    "summaries ordered by their newest message": Case(
        {"r1": n_msgs("r1", 2, NOW - 10), "r2": n_msgs("r2", 3, NOW - 50)},
        [],
        [("r2", 3, "r2-2"), ("r1", 2, "r1-1")],
        room_cap=1,
    ),
    "cap 0: every room with anything becomes a summary": Case(
        {"r1": n_msgs("r1", 1)}, [], [("r1", 1, "r1-0")], room_cap=0
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_plan_messages(case: Case) -> None:
    missed = Missed(rooms=case.rooms, room_names={"r1": "Room One"}, invitations=[], malformed=0)
    plan = plan_backfill(
        missed,
        now_ms=NOW,
        max_age_ms=MAX_AGE,
        room_cap=case.room_cap,
        pushable=not_own_not_recall,
        seen=KeySeen(case.seen),
    )
    assert [m.id for m in plan.messages] == case.messages
    assert [(s.room_id, s.count, s.newest.id) for s in plan.summaries] == case.summaries
    assert plan.skipped_old == case.skipped_old
    assert plan.invitations == []
    for s in plan.summaries:
        assert s.room_name == ("Room One" if s.room_id == "r1" else None)


def test_kept_edit_is_the_newest_version() -> None:
    missed = Missed(
        rooms={
            "r1": [msg("a", "r1", NOW - 1), msg("a", "r1", NOW - 10)]
        },  # newest first on purpose
        room_names={},
        invitations=[],
        malformed=0,
    )
    plan = plan_backfill(
        missed, now_ms=NOW, max_age_ms=MAX_AGE, room_cap=5, pushable=lambda m: True, seen=KeySeen()
    )
    assert [(m.id, m.version_ms, m.text) for m in plan.messages] == [
        ("a", NOW - 1, f"text of a@{NOW - 1}")
    ]


def test_summary_carries_the_newest_message() -> None:
    newest = msg("z", "r1", NOW - 1)
    missed = Missed(
        rooms={"r1": [newest, *n_msgs("r1", 5)]}, room_names={}, invitations=[], malformed=0
    )
    plan = plan_backfill(
        missed, now_ms=NOW, max_age_ms=MAX_AGE, room_cap=5, pushable=lambda m: True, seen=KeySeen()
    )
    assert plan == BackfillPlan(
        messages=[], invitations=[], summaries=[RoomSummary("r1", 6, newest)], skipped_old=0
    )


def created(mid: str, room: str, ms: int) -> Message:
    return Message.model_validate({"_id": mid, "room": room, "message": mid, "sender": {"_id": "bob"}, "createdAtMS": ms, "updatedAtMS": ms})


def test_the_gap_lets_missed_messages_through_though_live_traffic_moved_past_them() -> None:
    """Messages of the gap are older than the live ones heard since the reconnect: only the gap
    tells them from messages handled before it."""
    seen = SeenMessages()
    seen.add("r1", "before", NOW - 500)  # handled live before the drop at NOW - 500
    for i in range(20):  # live since the reconnect at NOW - 100
        seen.add("r1", f"live{i}", NOW - 100 + i)
    gap = (NOW - 500, NOW - 100)
    rooms = {"r1": [created("before", "r1", NOW - 500), created("g1", "r1", NOW - 300), created("g2", "r1", NOW - 200), created("live3", "r1", NOW - 97)]}
    missed = Missed(rooms=rooms, room_names={}, invitations=[], malformed=0)

    def plan(gap: Gap | None) -> list[str]:
        p = plan_backfill(missed, now_ms=NOW, max_age_ms=MAX_AGE, room_cap=5, pushable=lambda m: True, seen=seen, gap=gap)
        return [m.id for m in p.messages]

    assert plan(None) == []  # without the gap, the window has moved past them: taken as handled
    assert plan(gap) == ["g1", "g2"]
    seen.add("r1", "g1", NOW - 300, gap=gap)
    assert plan(gap) == ["g2"]


INVITATION_CASES = {
    "kept, oldest first": ([inv("b", NOW - 1), inv("a", NOW - 5)], frozenset(), ["a", "b"], 0),
    "seen i:<room> is dropped": (
        [inv("a", NOW - 5), inv("b", NOW - 1)],
        frozenset({"i:a", "m:b"}),
        ["b"],
        0,
    ),
    "two for one room count once": ([inv("a", NOW - 5), inv("a", NOW - 2)], frozenset(), ["a"], 0),
    "older than max age is skipped and counted": (
        [inv("a", CUTOFF - 1), inv("b", CUTOFF)],
        frozenset(),
        ["b"],
        1,
    ),
    "without a timestamp it is kept": ([inv("a")], frozenset(), ["a"], 0),
}


@pytest.mark.parametrize(
    ("invitations", "seen", "expected", "skipped"),
    INVITATION_CASES.values(),
    ids=INVITATION_CASES.keys(),
)
def test_plan_invitations(
    invitations: list[Invitation], seen: frozenset[str], expected: list[str], skipped: int
) -> None:
    missed = Missed(rooms={}, room_names={}, invitations=invitations, malformed=0)
    plan = plan_backfill(
        missed, now_ms=NOW, max_age_ms=MAX_AGE, room_cap=3, pushable=lambda m: True, seen=KeySeen(seen)
    )
    assert [i.room.id for i in plan.invitations] == expected
    assert plan.skipped_old == skipped
    assert plan.messages == [] and plan.summaries == []


def test_of_two_invitations_for_a_room_the_newest_is_kept() -> None:
    missed = Missed(
        rooms={},
        room_names={},
        invitations=[inv("a", NOW - 2, inviter="carol"), inv("a", NOW - 5)],
        malformed=0,
    )
    plan = plan_backfill(
        missed, now_ms=NOW, max_age_ms=MAX_AGE, room_cap=3, pushable=lambda m: True, seen=KeySeen()
    )
    assert [(i.room.id, i.inviter.id if i.inviter else None) for i in plan.invitations] == [
        ("a", "carol")
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"updatedTimeMS": 5, "createdTimeMS": 3}, 5),
        ({"createdTimeMS": 3}, 3),
        ({"updatedAt": "1970-01-01T00:00:01.500Z"}, 1500),
        ({"createdAt": "1970-01-01T00:00:02+00:00"}, 2000),
        ({"updatedAt": "not a date", "createdAt": "1970-01-01T00:00:03Z"}, 3000),
        ({"updatedAt": 12}, None),
        ({}, None),
    ],
)
def test_invitation_ms(body: dict[str, Any], expected: int | None) -> None:
    assert invitation_ms(Invitation.model_validate({"room": "r", **body})) == expected


def test_negative_cap_is_refused() -> None:
    missed = Missed(rooms={}, room_names={}, invitations=[], malformed=0)
    with pytest.raises(ValueError):
        plan_backfill(
            missed, now_ms=NOW, max_age_ms=MAX_AGE, room_cap=-1, pushable=lambda m: True, seen=KeySeen()
        )
