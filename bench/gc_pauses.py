"""The longest GC pause of a phase, from the bridge's ``bridge_gc_longest_pause_seconds`` read
before and after it, and its row in a summary table."""

from __future__ import annotations

from typing import Any

from bench.goals import GOALS, goal_status
from bench.harness import Harness


async def gc_pause_s(h: Harness) -> float | None:
    """The bridge's longest GC pause since it started, in seconds (None if it exports none); with
    several processes holding sessions, the longest of theirs."""
    name = "bridge_gc_longest_pause_seconds"
    pauses = [m[name] for m in (await h.metrics_each()).values() if name in m]
    return max(pauses, default=None)


def gc_phase(before: float | None, after: float | None) -> dict[str, Any]:
    """The longest GC pause of a phase from ``bridge_gc_longest_pause_seconds`` (the longest since
    the process started) read before and after it: exact when it grew during the phase, else only
    an upper bound (a pause before the phase, at start-up say, was at least as long)."""
    if before is None or after is None:
        return {"seconds": None, "exact": False, "before_phase": before}
    return {"seconds": after, "exact": after > before, "before_phase": before}


def gc_row(label: str, gc: dict[str, Any], *, goal: bool) -> tuple[str, str, str]:
    """The summary row of a :func:`gc_phase` figure; ``goal``: judged against the pause goal."""
    if gc["seconds"] is None:
        return label, "– (no bridge_gc_longest_pause_seconds)", ""
    ms = 1000 * gc["seconds"]
    limit = GOALS["steady_gc_pause_ms"]
    if gc["exact"]:
        return label, f"{ms:,.0f} ms", goal_status(ms <= limit, f"≤ {limit:g} ms") if goal else ""
    verdict = "met" if ms <= limit else "not known"
    text = f"≤ {ms:,.0f} ms (none in this phase beat the one before it)"
    return label, text, f"≤ {limit:g} ms: {verdict}" if goal else ""
