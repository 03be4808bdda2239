"""Rooms of devices and the pushes each message owes them; the per-push figures of a window
(missing, duplicate, latency per provider and per tenth of the run) and the backlog growth that
``rooms --find-max`` judges a step by. No processes: the tests check these on plain data."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench.harness import BenchDevice
from bench.stats import summarize


def message_index(message_id: str) -> int:
    """The number that ends a bench message id (``b3-0000042`` → 42): its place in the emission."""
    return int(message_id.rpartition("-")[2])


@dataclass
class RoomPlan:
    """Devices in rooms: ``rooms[r]`` holds the indices (into ``devices``) of room ``r``'s members.

    Messages go round-robin over the rooms (the emitter's and the floor's alike), so message ``i``
    goes to room ``i % len(rooms)`` and owes a push to every member of it.
    """

    devices: list[BenchDevice]
    rooms: list[list[int]]
    #: push token -> device index
    by_token: dict[str, int]

    @classmethod
    def build(cls, devices: list[BenchDevice], size: int) -> RoomPlan:
        idx = list(range(len(devices)))
        rooms = [idx[i : i + size] for i in range(0, len(devices), max(1, size))]
        return cls(devices, rooms, {d.push_token: i for i, d in enumerate(devices)})

    @property
    def ids(self) -> list[str]:
        return [f"room-{r:05d}" for r in range(len(self.rooms))]

    @property
    def per_message(self) -> float:
        """Pushes per message, on average over the rooms."""
        return len(self.devices) / len(self.rooms)

    def expected(self, count: int) -> int:
        """Pushes owed for messages ``0 .. count-1``."""
        return sum(len(self.rooms[i % len(self.rooms)]) for i in range(count))


def _p50_p99(values: list[float]) -> dict[str, float]:
    s = summarize(values)
    return {k: s[k] for k in ("n", "p50", "p99") if k in s}


def analyse_pushes(
    emitted: dict[str, float],
    arrivals: Iterable[tuple[str, int, float, str]],
    plan: RoomPlan,
    *,
    started: float,
    span: float,
) -> dict[str, Any]:
    """Per-push figures of one window, from ``(message id, device index, time, channel)`` arrivals.

    Only messages in ``emitted`` (id → emit time) count. Each owes a push to every member of its
    room; a (message, device) pair seen again is a duplicate, a device outside the room (index -1:
    an unknown token) unexpected. Latency is arrival − emit in ms, per channel (provider, or
    ``socket.io`` for the receiving floor), and per tenth of ``span`` seconds after ``started``
    by emit time, so warm-up and a growing backlog show.
    """
    members = [set(room) for room in plan.rooms]
    seen: set[tuple[str, int]] = set()
    duplicate = unexpected = 0
    by_channel: dict[str, list[float]] = {}
    tenths: list[list[float]] = [[] for _ in range(10)]
    channel_tenths: dict[str, list[list[float]]] = {}
    for mid, device, at, channel in arrivals:
        emit = emitted.get(mid)
        if emit is None:
            continue
        if device not in members[message_index(mid) % len(members)]:
            unexpected += 1
            continue
        if (mid, device) in seen:
            duplicate += 1
            continue
        seen.add((mid, device))
        ms = (at - emit) * 1000
        by_channel.setdefault(channel, []).append(ms)
        k = min(9, max(0, int((emit - started) / span * 10))) if span > 0 else 0
        tenths[k].append(ms)
        channel_tenths.setdefault(channel, [[] for _ in range(10)])[k].append(ms)
    expected = sum(len(plan.rooms[message_index(mid) % len(plan.rooms)]) for mid in emitted)
    everything = [ms for values in by_channel.values() for ms in values]
    return {
        "messages": len(emitted),
        "expected": expected,
        "received": len(seen),
        "missing": expected - len(seen),
        "duplicate": duplicate,
        "unexpected": unexpected,
        "latency_ms": {
            "all": summarize(everything),
            **{c: summarize(v) for c, v in sorted(by_channel.items())},
        },
        "tenths": [{"tenth": k + 1, **_p50_p99(v)} for k, v in enumerate(tenths)],
        "channel_tenths": {
            c: [{"tenth": k + 1, **_p50_p99(v)} for k, v in enumerate(t)]
            for c, t in sorted(channel_tenths.items())
        },
    }


def backlog_growth_ms(window: dict[str, Any]) -> float | None:
    """p50 of the last tenth with pushes minus the first's (> 0 when the backlog grew), for each
    channel (provider) when the window has them, and the largest of those: with two providers, a
    growing backlog at one must not hide behind the other's fast pushes in an overall p50."""
    series = list(window.get("channel_tenths", {}).values()) or [window["tenths"]]
    growths = [g for g in map(_growth, series) if g is not None]
    return max(growths) if growths else None


def _growth(tenths: list[dict[str, Any]]) -> float | None:
    present = [t for t in tenths if t.get("n")]
    if len(present) < 2:
        return None
    return float(present[-1]["p50"] - present[0]["p50"])
