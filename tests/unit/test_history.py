"""bridge.worker.history: the compact "why no push?" history answers exactly as the deque of
``EventRecord`` objects did, stays at 50 events, and costs a few KiB per device."""

from __future__ import annotations

import gc
import json
import random
import tracemalloc
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest

from bridge.models import Notification
from bridge.push.provider import Delivered, Failed, Retry, SendResult, TokenInvalid
from bridge.upstream.protocol import EVENTS
from bridge.worker.history import (
    HISTORY_SIZE,
    History,
    ProviderResult,
    SentPush,
    sent_push,
    with_acks,
)

# ---------------------------------------------------------------- the reference: the old code
# ``EventRecord`` and ``result_dict`` as bridge/worker/pool.py had them (commit 9637fd9), and the
# way the pool used them: the API answer must not change (but for what issue 14 added: each
# event's ``pushes`` and each answer's ``pushId``, for the app's acks).


@dataclass(slots=True)
class EventRecord:
    at: float
    event: str
    id: str | None
    room: str | None
    decision: str
    reason: str
    source: str = "live"
    push_ids: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "event": self.event,
            "id": self.id,
            "room": self.room,
            "decision": self.decision,
            "reason": self.reason,
            "source": self.source,
            "results": list(self.results),
            "pushes": [{"pushId": p, "shown": None} for p in self.push_ids],
        }


def result_dict(n: Notification, result: SendResult, at: float) -> dict[str, Any]:
    out: dict[str, Any] = {"type": n.push_type, "provider": n.provider, "at": at}
    if isinstance(result, Delivered):
        out.update(outcome="delivered", id=result.provider_id)
    elif isinstance(result, Retry):
        out.update(outcome="retry", reason=result.reason)
    elif isinstance(result, TokenInvalid):
        out.update(outcome="token_invalid", reason=result.reason)
    elif isinstance(result, Failed):
        out.update(outcome="failed", reason=result.reason)
    return out


class Old:
    def __init__(self) -> None:
        self.history: deque[EventRecord] = deque(maxlen=HISTORY_SIZE)
        self.last_result: dict[str, Any] | None = None

    def add(self, at: float, event: str, mid: str | None, room: str | None, pushed: bool, reason: str, source: str) -> EventRecord:
        record = EventRecord(at=at, event=event, id=mid, room=room, decision="pushed" if pushed else "suppressed", reason=reason)
        record.source = source
        self.history.append(record)
        return record

    def handle_result(self, n: Notification, result: SendResult, at: float, latency: float) -> None:
        info = result_dict(n, result, at)
        info["latency"] = round(latency, 4)
        info["pushId"] = n.push_id
        self.last_result = info
        for record in reversed(self.history):
            if n.push_id in record.push_ids:
                record.results.append(info)
                break

    def status(self) -> dict[str, Any]:
        return {"events": [r.as_dict() for r in reversed(self.history)], "lastProviderResult": self.last_result}


def new_status(h: History) -> dict[str, Any]:
    return {"events": h.as_dicts(), "lastProviderResult": h.last_result}


def note(push_type: str, push_id: str) -> Notification:
    return Notification(device_id="d1", push_type=push_type, token="secret-token", push_id=push_id, kind="message")


RESULTS: list[SendResult] = [
    Delivered("apns-id-1"),
    Delivered(None),
    Retry("TooManyRequests", 12.0),
    TokenInvalid("Unregistered", 1.5),
    Failed("PayloadTooLarge"),
]


def run_both(steps: int, seed: int) -> tuple[Old, History, list[tuple[Any, int, list[str]]]]:
    """Drive the old and the new history through the same random life of a device."""
    rng = random.Random(seed)
    old, new = Old(), History()
    pending: list[tuple[EventRecord, int, list[str]]] = []
    events = ["chat message", "invitation", "lastRead", "typing", "roomPref", "summary"]
    reasons = ["pushed", "foreground", "duplicate", "muted", "event_not_pushed"]
    for i in range(steps):
        at = 1_760_000_000.0 + i * 0.123
        event = rng.choice(events)
        mid = f"{i:024x}" if event in ("chat message", "summary") else None
        room = None if event == "typing" and rng.random() < 0.5 else f"room-{rng.randrange(5)}"
        pushed = rng.random() < 0.4
        reason = "pushed" if pushed else rng.choice(reasons[1:])
        source = rng.choice(["live", "live", "backfill"])
        record = old.add(at, event, mid, room, pushed, reason, source)
        ticket = new.add(at, event, mid, room, pushed=pushed, reason=reason, source=source)
        if pushed:
            ids = []
            for push_type in rng.sample(["ios", "fcm", "ios-voip"], rng.randint(1, 2)):
                if rng.random() < 0.1:  # compose error: no push id
                    record.results.append({"type": push_type, "outcome": "failed", "reason": "compose_error"})
                    new.add_result(ticket, ProviderResult.local(push_type, "failed", "compose_error"))
                    continue
                push_id = f"push-{i}-{push_type}"
                record.push_ids.append(push_id)
                new.add_push(ticket, push_id)
                ids.append(push_id)
                if rng.random() < 0.1:  # the dispatcher already had it
                    record.results.append({"type": push_type, "outcome": "duplicate"})
                    new.add_result(ticket, ProviderResult.local(push_type, "duplicate"))
            pending.append((record, ticket, ids))
        # Answers come back later, some after their event left the history, some twice (retry).
        while pending and rng.random() < 0.5:
            _, _, ids = pending.pop(rng.randrange(len(pending)))
            for push_id in ids:
                for result in rng.sample(RESULTS, rng.randint(1, 2)):
                    n = note("ios" if push_id.endswith("ios") else "fcm", push_id)
                    at_r, latency = at + 0.05, rng.random() / 3
                    old.handle_result(n, result, at_r, latency)
                    new.record_result(push_id, ProviderResult.of(n.push_type, n.provider, result, at=at_r, latency=latency))
    return old, new, [(r, t, ids) for r, t, ids in pending]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("steps", [0, 1, 49, 50, 51, 400])
def test_same_api_answer_as_the_event_records(steps: int, seed: int) -> None:
    old, new, _ = run_both(steps, seed)
    # Byte for byte: same keys in the same order, same values and types.
    assert json.dumps(new_status(new)) == json.dumps(old.status())
    assert len(new) == min(steps, HISTORY_SIZE)


def test_results_attach_to_the_newest_event_with_that_push_id_and_no_other() -> None:
    h = History()
    first = h.add(1.0, "chat message", "m1", "r1", pushed=True, reason="pushed")
    h.add_push(first, "p1")
    second = h.add(2.0, "chat message", "m1", "r1", pushed=True, reason="pushed")
    h.add_push(second, "p1")
    h.add(3.0, "typing", None, "r1", pushed=False, reason="event_not_pushed")
    delivered = ProviderResult.of("ios", "apns", Delivered("x"), at=4.0, latency=0.123456)
    assert h.record_result("p1", delivered)
    events = h.as_dicts()
    assert [len(e["results"]) for e in events] == [0, 1, 0]
    assert events[1]["results"] == [
        {"type": "ios", "provider": "apns", "at": 4.0, "outcome": "delivered", "id": "x", "latency": 0.1235, "pushId": "p1"}
    ]
    assert events[1]["pushes"] == [{"pushId": "p1", "shown": None}]
    # An answer for a push no event holds any more still becomes the last result.
    failed = ProviderResult.of("fcm", "fcm", Failed("boom"), at=5.0, latency=1)
    assert not h.record_result("p-unknown", failed)
    assert h.last_result == {"type": "fcm", "provider": "fcm", "at": 5.0, "outcome": "failed", "reason": "boom", "latency": 1, "pushId": "p-unknown"}


def test_acks_show_on_their_push_only_and_inputs_stay_unchanged() -> None:
    h = History()
    t = h.add(1.0, "chat message", "m1", "r1", pushed=True, reason="pushed")
    h.add_push(t, "p-ios")
    h.add_push(t, "p-fcm")
    h.add(2.0, "typing", None, "r1", pushed=False, reason="event_not_pushed")
    events = h.as_dicts()
    shown = with_acks(events, {"p-fcm": 9.5, "p-elsewhere": 3.0})
    assert [e["pushes"] for e in shown] == [[], [{"pushId": "p-ios", "shown": None}, {"pushId": "p-fcm", "shown": 9.5}]]
    assert events[1]["pushes"][1]["shown"] is None  # a copy: the history's answer is not changed
    # A status an older worker published (no ``pushes``) passes through as it is.
    assert with_acks([{"id": "m0"}], {"p": 1.0}) == [{"id": "m0"}]


def test_sent_push_finds_the_push_and_its_delivered_answer() -> None:
    h = History()
    t = h.add(1.0, "chat message", "m1", "r1", pushed=True, reason="pushed")
    h.add_push(t, "p1")
    h.add_push(t, "p2")
    assert sent_push(h.as_dicts(), "p1") == SentPush(provider=None, at=None)  # not answered yet
    h.record_result("p1", ProviderResult.of("ios", "apns", Retry("TooManyRequests", 1.0), at=2.0, latency=0.1))
    h.record_result("p2", ProviderResult.of("fcm", "fcm", Delivered("f"), at=2.5, latency=0.1))
    h.record_result("p1", ProviderResult.of("ios", "apns", Delivered("a"), at=3.0, latency=0.1))
    h.record_result("p1", ProviderResult.of("ios", "apns", Retry("late", 1.0), at=4.0, latency=0.1))
    events = h.as_dicts()
    assert sent_push(events, "p1") == SentPush(provider="apns", at=3.0)  # the delivered answer
    assert sent_push(events, "p2") == SentPush(provider="fcm", at=2.5)
    assert sent_push(events, "p3") is None
    h.add_result(h.add(5.0, "chat message", "m2", "r1", pushed=True, reason="pushed"), ProviderResult.local("ios", "failed", "compose_error"))
    assert sent_push(h.as_dicts(), "p1") == SentPush(provider="apns", at=3.0)


def test_bounded_at_50_and_a_stale_ticket_is_ignored() -> None:
    h = History()
    stale = h.add(0.0, "chat message", "m0", "r", pushed=True, reason="pushed")
    for i in range(1, 500):
        h.add(float(i), "chat message", f"m{i}", "r", pushed=False, reason="foreground")
    h.add_push(stale, "p0")  # its event left the history: nothing changes
    h.add_result(stale, ProviderResult.local("ios", "duplicate"))
    assert len(h) == HISTORY_SIZE
    events = h.as_dicts()
    assert [e["id"] for e in events] == [f"m{i}" for i in range(499, 449, -1)]
    assert all(e["results"] == [] for e in events)
    assert not h.record_result("p0", ProviderResult.local("ios", "duplicate"))


def test_event_names_are_shared_constants_not_the_packet_strings() -> None:
    h = History()
    name = "".join(["chat", " ", "message"])  # a fresh string, as each packet brings
    h.add(1.0, name, "m1", "r1", pushed=False, reason="foreground")
    assert h.as_dicts()[0]["event"] is EVENTS[0] == "chat message"


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        History(0)


def measure(build: Any) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        kept = build()
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert kept is not None
    return used


@pytest.mark.parametrize(("pushed_share", "bound"), [(0.0, 4 * 1024), (1.0, 14 * 1024)])
def test_bytes_per_device_with_50_events(pushed_share: float, bound: int) -> None:
    """Strings (ids, rooms, push ids) belong to the events and the dispatcher: made beforehand."""
    ids = [f"{i:024x}" for i in range(3_000)]
    rooms = [f"room-{r:020d}" for r in range(20)]
    push_ids = [f"push-{i:032x}" for i in range(3_000)]
    names = ["chat message"] * 3_000
    every = int(1 / pushed_share) if pushed_share else 0

    def fill_new() -> History:
        h = History()
        for i, mid in enumerate(ids):
            pushed = bool(every) and i % every == 0
            t = h.add(1_760_000_000.0 + i, names[i], mid, rooms[i % 20], pushed=pushed, reason="pushed" if pushed else "foreground")
            if pushed:
                h.add_push(t, push_ids[i])
                h.record_result(push_ids[i], ProviderResult.of("ios", "apns", Delivered(None), at=1_760_000_000.5 + i, latency=0.01))
        return h

    def fill_old() -> Old:
        o = Old()
        for i, mid in enumerate(ids):
            pushed = bool(every) and i % every == 0
            r = o.add(1_760_000_000.0 + i, names[i], mid, rooms[i % 20], pushed, "pushed" if pushed else "foreground", "live")
            if pushed:
                r.push_ids.append(push_ids[i])
                o.handle_result(note("ios", push_ids[i]), Delivered(None), 1_760_000_000.5 + i, 0.01)
        return o

    new_bytes, old_bytes = measure(fill_new), measure(fill_old)
    assert new_bytes < bound, (new_bytes, old_bytes)
    assert new_bytes * 2 < old_bytes, (new_bytes, old_bytes)
