"""Chat messages the simulated IMKIT emits for a scenario and the pushes they cause: emit, wait
for the arrivals at the simulated providers, join emit and arrival times."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bench.harness import Harness
from bench.options import SENDER
from bench.processes import BenchError, wait_until


async def latencies(h: Harness) -> tuple[dict[str, list[float]], int]:
    """Emit → arrival in ms per provider, joined across the simulator processes; and emits missed."""
    emitted: dict[str, float] = {}
    arrived: dict[str, dict[str, float]] = {"apns": {}, "fcm": {}}
    for info in h.sims_info.values():
        data = await h.get_json(f"{info['control']}/bench/latencies")
        emitted.update(data["emitted"])
        for provider, times in data["arrived"].items():
            arrived[provider].update(times)
    out: dict[str, list[float]] = {"apns": [], "fcm": []}
    seen = 0
    for provider, times in arrived.items():
        for mid, t in times.items():
            if mid in emitted:
                out[provider].append((t - emitted[mid]) * 1000)
                seen += 1
    return out, len(emitted) - seen


async def provider_arrivals(h: Harness) -> int:
    """Requests the simulated providers received since the last reset."""
    stats = await h.sims_stats("providers")
    return int(stats["apns"]["received"]) + int(stats["fcm"]["received"])


async def emit_and_wait(
    h: Harness,
    rooms: list[str],
    count: int,
    rate: float,
    expect: int,
    what: str,
    *,
    arrived_total: Callable[[], Awaitable[int]] | None = None,
) -> dict[str, Any]:
    """Have IMKIT send ``count`` messages; wait for the emission and ``expect`` arrivals
    (counted by ``arrived_total()``, by default the requests the simulated providers received)."""
    count_arrived = arrived_total or (lambda: provider_arrivals(h))
    await h.post_json(
        f"{h.control('imkit')}/bench/emit",
        {"rooms": rooms, "count": count, "rate": rate, "sender": SENDER},
    )
    with h.ui.progress(what, expect) as update:
        state: dict[str, Any] = {}

        async def emitted() -> bool:
            state.update(await h.get_json(f"{h.control('imkit')}/bench/emit"))
            if state.get("error"):
                raise BenchError(f"emission failed: {state['error']}")
            update(await count_arrived())
            return bool(state["done"])

        await wait_until(emitted, 60 + count / max(rate, 100) * 3, "the emission")
        last = -1
        still = 0

        async def arrived() -> bool:
            nonlocal last, still
            got = await count_arrived()
            update(got)
            still = still + 1 if got == last else 0
            last = got
            # Done when all arrived, or nothing moved for 10 s (the rest is reported as missing).
            return got >= expect or still >= 40

        await wait_until(arrived, 120 + expect / 200, "the pushes to arrive")
    return state
