"""Bytes per device of the per-device bookkeeping: the old structures against the bounded ones.

One device (one user) in ``--rooms`` rooms sees ``--messages`` chat messages, round-robin over its
rooms, and handles each as the worker pool does: dedupe check and record, history entry and, when
the device is in the background, a push with its provider answer and the badge count.

* old: ``seen`` and ``counted`` as 2,000-entry ``_LruSet`` (an ``OrderedDict`` of ``m:<id>``),
  and a ``deque`` of 50 ``EventRecord`` with dict results (the code of bridge/worker/pool.py at
  commit 9637fd9, copied here);
* new: :class:`bridge.worker.dedupe.SeenMessages` (device and user) and
  :class:`bridge.worker.history.History`.

Memory is ``tracemalloc``'s: what the structures allocate and keep. The message ids, rooms and
push ids are made beforehand (they belong to the event objects and the dispatcher). Also shown:
the objects the garbage collector tracks, which is what a full collection walks.

    .venv/bin/python -m bench.structures_memory
    .venv/bin/python -m bench.structures_memory --messages 10000 --rooms 200
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.push.provider import Delivered
from bridge.worker.dedupe import SeenMessages
from bridge.worker.history import History, ProviderResult

T0 = 1_760_000_000_000


class _LruSet:
    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def add(self, key: str) -> None:
        self._items[key] = None
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


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


def old(ids: list[str], rooms: list[str], push_ids: list[str], background: bool) -> Any:
    seen, counted = _LruSet(2000), _LruSet(2000)
    history: deque[EventRecord] = deque(maxlen=50)
    for i, mid in enumerate(ids):
        key = f"m:{mid}"
        new = key not in seen
        seen.add(key)
        push = background and new
        record = EventRecord(time.time(), "chat message", mid, rooms[i % len(rooms)], "pushed" if push else "suppressed", "pushed" if push else "foreground")
        history.append(record)
        if push:
            if mid not in counted:
                counted.add(mid)
            record.push_ids.append(push_ids[i])
            info = {"type": "ios", "provider": "apns", "at": time.time(), "outcome": "delivered", "id": None, "latency": round(0.0123456, 4)}
            record.results.append(info)
    return seen, counted, history


def new(ids: list[str], rooms: list[str], push_ids: list[str], background: bool) -> Any:
    seen, counted, history = SeenMessages(), SeenMessages(), History()
    for i, mid in enumerate(ids):
        room, t = rooms[i % len(rooms)], T0 + i * 50
        fresh = not seen.seen(room, mid, t)
        seen.add(room, mid, t)
        push = background and fresh
        ticket = history.add(time.time(), "chat message", mid, room, pushed=push, reason="pushed" if push else "foreground")
        if push:
            if not counted.seen(room, mid, t):
                counted.add(room, mid, t)
            history.add_push(ticket, push_ids[i])
            history.record_result(push_ids[i], ProviderResult.of("ios", "apns", Delivered(None), at=time.time(), latency=0.0123456))
    return seen, counted, history


def measure(build: Callable[..., Any], *args: Any) -> tuple[int, int, float]:
    gc.collect()
    tracked = len(gc.get_objects())
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    kept = build(*args)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    tracked = len(gc.get_objects()) - tracked
    del kept
    best = float("inf")
    for _ in range(5):  # the best of five: the machine is shared
        gc.collect()
        t = time.perf_counter()
        build(*args)
        best = min(best, time.perf_counter() - t)
    per_msg_us = best / len(args[0]) * 1e6
    return used, tracked, per_msg_us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--rooms", type=int, default=20)
    args = ap.parse_args()
    ids = [f"{i:024x}" for i in range(args.messages)]
    rooms = [f"{r:024x}" for r in range(args.rooms)]
    push_ids = [f"{i:064x}" for i in range(args.messages)]
    print(f"{args.messages} messages in {args.rooms} rooms, one device")
    print(f"{'':24}{'KiB':>8}{'GC objs':>9}{'µs/msg':>8}")
    for background in (False, True):
        mode = "background (pushed)" if background else "foreground"
        for name, build in (("old", old), ("new", new)):
            used, tracked, us = measure(build, ids, rooms, push_ids, background)
            print(f"{name + ', ' + mode:24}{used / 1024:8.1f}{tracked:9d}{us:8.1f}")


if __name__ == "__main__":
    main()
