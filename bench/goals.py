"""The goals a result is reported against (never asserted), and a goal's verdict in a row of the
summary table."""

from __future__ import annotations

#: The goals of docs/benchmarks.md (reported against, never asserted).
GOALS = {
    "kib_per_session": 40.0,
    "storm_seconds": 20.0,
    "latency_p99_ms": 25.0,
    "throughput_ratio": 0.8,
    # rooms: p99 within this many times the floor's; max sustained at least this share of it
    "rooms_p99_vs_floor": 2.0,
    "rooms_max_vs_floor": 0.8,
    # steady: KiB per idle live session below 10,000 sessions / from 10,000 on
    "steady_kib_per_session": 32.0,
    "steady_kib_per_session_10k": 30.0,
    "steady_growth_kib_per_device": 16.0,
    # steady --reconnects: RSS per live session after a round over the idle figure (informational)
    "steady_reconnect_growth_kib_per_session": 1.0,
    "steady_gc_pause_ms": 50.0,
}


def goal_status(met: bool, goal: str) -> str:
    """The goal column of a summary row: ``goal`` and whether the figure met it."""
    return f"{goal}: {'met' if met else 'NOT met'}"
