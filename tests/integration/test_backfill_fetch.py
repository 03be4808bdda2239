"""fetch_missed against a real simulated IMKIT on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bridge.sim.imkit import ImkitSim
from bridge.upstream.protocol import Message
from bridge.upstream.rest import ImkitRest, InvalidToken, RequestRejected, UpstreamUnavailable
from bridge.worker.backfill import fetch_missed, plan_backfill
from bridge.worker.dedupe import SeenMessages, message_time


@pytest.fixture
async def rest(imkit_sim: ImkitSim) -> AsyncIterator[ImkitRest]:
    client = ImkitRest(imkit_sim.url, client_key="sim-client-key", timeout=5.0)
    try:
        yield client
    finally:
        await client.aclose()


def ids(messages: list[Any]) -> list[str]:
    return [m.id if hasattr(m, "id") else m["_id"] for m in messages]


async def test_everything_after_the_checkpoint_is_fetched_once(
    imkit_sim: ImkitSim, rest: ImkitRest
) -> None:
    for rid in ("r1", "r2", "r3", "quiet"):
        imkit_sim.create_room(rid, ["alice", "bob"], name=f"Room {rid}")
    imkit_sim.create_room("not-mine", ["bob", "carol"])
    old = {}
    for rid in ("r1", "r2", "r3", "quiet"):
        old[rid] = [await imkit_sim.send_message(rid, "bob", f"old {i}") for i in range(3)]
    checkpoint = await imkit_sim.send_message("r1", "bob", "the last one pushed")
    since = int(checkpoint["updatedAtMS"])
    quiet = await imkit_sim.send_message("quiet", "bob", "one missed here")
    await imkit_sim.send_message("not-mine", "bob", "not for alice")
    new = {}
    for rid in ("r1", "r2", "r3"):
        new[rid] = [await imkit_sim.send_message(rid, "bob", f"new {i}") for i in range(2)]
    own = await imkit_sim.send_message("r2", "alice", "from my other phone")
    edited = await imkit_sim.edit_message(old["r3"][0]["_id"], "old 0, edited")  # pre-checkpoint
    await imkit_sim.invite("not-mine", "carol", "alice")
    token = imkit_sim.issue_token("alice")
    before = imkit_sim.rest_requests_total

    missed = await fetch_missed(rest, token, since_ms=since, anchors={"r1": checkpoint["_id"]})

    # rooms listing + invitations + one read per active room: nothing fetched twice
    assert imkit_sim.rest_requests_total - before == 2 + 4
    assert ids(missed.rooms["r1"]) == ids(new["r1"])  # the anchor dropped
    assert ids(missed.rooms["r2"]) == ids([*new["r2"], own])  # no anchor: by time
    assert ids(missed.rooms["r3"]) == ids([*new["r3"], edited])  # an edit of an old one counts
    assert missed.rooms["r3"][-1].text == "old 0, edited"
    assert ids(missed.rooms["quiet"]) == [quiet["_id"]]
    assert set(missed.rooms) == {"r1", "r2", "r3", "quiet"}
    every = [m.id for ms in missed.rooms.values() for m in ms]
    assert len(every) == len(set(every))
    assert all(m.version_ms > since for ms in missed.rooms.values() for m in ms)
    assert missed.room_names["r2"] == "Room r2"
    assert [(i.room.id, i.inviter.id if i.inviter else None) for i in missed.invitations] == [
        ("not-mine", "carol")
    ]
    assert missed.malformed == 0

    # and the plan over it, with the pool's kind of predicate and of dedupe
    now_ms = int(own["updatedAtMS"]) + 1000
    seen = SeenMessages()
    live = Message.model_validate(new["r1"][0])  # pushed live before the gap was noticed
    seen.add(live.room, live.id, message_time(live))
    plan = plan_backfill(
        missed,
        now_ms=now_ms,
        max_age_ms=3_600_000,
        room_cap=2,
        pushable=lambda m: m.sender_id != "alice",
        seen=seen,
        gap=(since, now_ms),
    )
    assert ids(plan.messages) == ids([quiet, new["r1"][1], *new["r2"]])  # own one left out
    assert [(s.room_id, s.count, s.room_name) for s in plan.summaries] == [("r3", 3, "Room r3")]
    assert plan.summaries[0].newest.id == edited["_id"]
    assert [i.room.id for i in plan.invitations] == ["not-mine"]


async def test_nothing_missed(imkit_sim: ImkitSim, rest: ImkitRest) -> None:
    imkit_sim.create_room("r1", ["alice", "bob"])
    last = await imkit_sim.send_message("r1", "bob", "seen")
    missed = await fetch_missed(
        rest,
        imkit_sim.issue_token("alice"),
        since_ms=int(last["updatedAtMS"]),
        anchors={"r1": last["_id"]},
    )
    assert missed.rooms == {} and missed.invitations == [] and missed.malformed == 0


async def test_old_invitations_are_not_missed(imkit_sim: ImkitSim, rest: ImkitRest) -> None:
    imkit_sim.create_room("g1", ["bob"])
    imkit_sim.create_room("g2", ["bob"])
    first = await imkit_sim.invite("g1", "bob", "alice")
    await imkit_sim.invite("g2", "bob", "alice")
    missed = await fetch_missed(
        rest, imkit_sim.issue_token("alice"), since_ms=first["updatedTimeMS"], anchors={}
    )
    assert [i.room.id for i in missed.invitations] == ["g2"]


async def test_rooms_without_anchor_read_the_newest_page(
    imkit_sim: ImkitSim, rest: ImkitRest
) -> None:
    imkit_sim.create_room("busy", ["alice", "bob"])
    msgs = [await imkit_sim.send_message("busy", "bob", f"m{i}") for i in range(8)]
    missed = await fetch_missed(
        rest, imkit_sim.issue_token("alice"), since_ms=0, anchors={}, per_room_limit=3
    )
    assert ids(missed.rooms["busy"]) == ids(msgs[5:])


async def test_anchored_room_over_the_limit_still_has_its_newest(
    imkit_sim: ImkitSim, rest: ImkitRest
) -> None:
    imkit_sim.create_room("busy", ["alice", "bob"])
    msgs = [await imkit_sim.send_message("busy", "bob", f"m{i}") for i in range(10)]
    missed = await fetch_missed(
        rest,
        imkit_sim.issue_token("alice"),
        since_ms=int(msgs[0]["updatedAtMS"]),
        anchors={"busy": msgs[0]["_id"]},
        per_room_limit=3,
    )
    # the first page after the anchor, then the newest page: the newest message is never cut off
    assert ids(missed.rooms["busy"]) == ids(msgs[1:4] + msgs[7:])


async def test_a_deleted_anchor_falls_back_to_time(imkit_sim: ImkitSim, rest: ImkitRest) -> None:
    imkit_sim.create_room("r1", ["alice", "bob"])
    old = await imkit_sim.send_message("r1", "bob", "before")
    new = await imkit_sim.send_message("r1", "bob", "after")
    missed = await fetch_missed(
        rest,
        imkit_sim.issue_token("alice"),
        since_ms=int(old["updatedAtMS"]),
        anchors={"r1": "no-such-message"},
    )
    assert ids(missed.rooms["r1"]) == [new["_id"]]


async def test_malformed_items_are_skipped_and_counted(
    imkit_sim: ImkitSim, rest: ImkitRest
) -> None:
    imkit_sim.create_room("r1", ["alice", "bob"])
    good = await imkit_sim.send_message("r1", "bob", "fine")
    no_id: dict[str, Any] = {"_id": None, "id": None}  # stored, but served without an id
    await imkit_sim.send_message("r1", "bob", "no id", **no_id)
    no_room = await imkit_sim.send_message("r1", "bob", "room left out", room=None)
    missed = await fetch_missed(rest, imkit_sim.issue_token("alice"), since_ms=0, anchors={})
    assert ids(missed.rooms["r1"]) == [good["_id"], no_room["_id"]]
    assert missed.rooms["r1"][1].room == "r1"  # filled in from the room it was listed under
    assert missed.malformed == 1


async def test_rooms_are_fetched_with_bounded_concurrency(imkit_sim: ImkitSim) -> None:
    for i in range(10):
        imkit_sim.create_room(f"r{i}", ["alice", "bob"])
        await imkit_sim.send_message(f"r{i}", "bob", "hi")
    in_flight = 0
    peak = 0

    async def on_request(*_: object) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)

    async def on_response(*_: object) -> None:
        nonlocal in_flight
        in_flight -= 1

    imkit_sim.rest_delay = 0.05  # long enough for requests to overlap
    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request)
    trace.on_request_end.append(on_response)
    async with aiohttp.ClientSession(trace_configs=[trace]) as http:
        rest = ImkitRest(imkit_sim.url, client_key=None, client=http)
        missed = await fetch_missed(rest, imkit_sim.issue_token("alice"), since_ms=0, anchors={})
    assert len(missed.rooms) == 10
    assert 2 <= peak <= 4


async def test_expired_token_is_invalid_token(imkit_sim: ImkitSim, rest: ImkitRest) -> None:
    imkit_sim.create_room("r1", ["alice", "bob"])
    await imkit_sim.send_message("r1", "bob", "hi")
    with pytest.raises(InvalidToken):
        await fetch_missed(rest, imkit_sim.issue_token("alice", ttl=-10), since_ms=0, anchors={})


async def test_imkit_failing_is_upstream_unavailable(imkit_sim: ImkitSim, rest: ImkitRest) -> None:
    imkit_sim.create_room("r1", ["alice", "bob"])
    await imkit_sim.send_message("r1", "bob", "hi")
    token = imkit_sim.issue_token("alice")
    imkit_sim.fail_rest(500)
    with pytest.raises(UpstreamUnavailable):
        await fetch_missed(rest, token, since_ms=0, anchors={})
    imkit_sim.fail_rest(None)
    assert set((await fetch_missed(rest, token, since_ms=0, anchors={})).rooms) == {"r1"}


async def test_a_room_read_refused_propagates(imkit_sim: ImkitSim, rest: ImkitRest) -> None:
    imkit_sim.create_room("r1", ["alice", "bob"])
    await imkit_sim.send_message("r1", "bob", "hi")
    token = imkit_sim.issue_token("alice")
    with pytest.raises(ValueError):
        await fetch_missed(rest, token, since_ms=0, anchors={}, per_room_limit=0)
    imkit_sim.fail_rest(403)  # not a 401/5xx/429: refused, surfaced as is
    with pytest.raises(RequestRejected) as info:
        await fetch_missed(rest, token, since_ms=0, anchors={})
    assert info.value.status == 403
