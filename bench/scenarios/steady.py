"""``steady``: idle RSS per live session at several counts, RSS growth per device after K messages
each, and the longest GC pause (``bridge_gc_longest_pause_seconds``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from bench.emission import emit_and_wait
from bench.gc_pauses import gc_pause_s, gc_phase, gc_row
from bench.goals import GOALS, goal_status
from bench.harness import BenchDevice, Harness
from bench.machine import open_files, raise_nofile
from bench.options import NOFILE_RESERVE, SENDER, Options, Result
from bench.processes import BenchError, wait_until
from bridge.upstream.decode_cache import MAX_ENTRIES as DECODE_CACHE_ENTRIES


def session_counts(counts: Sequence[str], limit: int) -> list[int]:
    """``steady``'s idle counts, ascending: numbers, or ``max`` (the open-files ``limit`` less
    :data:`NOFILE_RESERVE` for the store, the API, the providers and IMKIT's REST calls)."""
    out: set[int] = set()
    for c in counts:
        if c == "max":
            out.add(limit - NOFILE_RESERVE)
        elif c.isdigit() and int(c) > 0:
            out.add(int(c))
        else:
            raise BenchError(f"--sessions takes numbers or 'max', not {c!r}")
    return sorted(out)


async def _steady_idle(h: Harness, devices: list[BenchDevice], limit: int) -> dict[str, Any]:
    """A fresh bridge (empty store): RSS empty, then with every device registered and live."""
    n = len(devices)
    h.opts.sessions = n  # the harness's deadlines scale with it
    # Each user is refreshed again BRIDGE_MUTE_REFRESH_INTERVAL (300 s) after its last fetch; at
    # 10,000 users that keeps IMKIT's REST counter moving for ever and the settle rule (no REST
    # call for 2 s) never holds. A refresh keeps nothing in memory, so the idle figure loses
    # nothing by moving it past the phase.
    await h.start_bridge(
        BRIDGE_STORE=f"sqlite:///{h.tmp / f'steady-{n}.db'}",
        BRIDGE_MUTE_REFRESH_INTERVAL=86400,
    )
    assert h.bridge is not None
    pid = h.bridge.pid
    await asyncio.sleep(1.0)
    rss_empty, _ = h.bridge_usage()
    gc_before = await gc_pause_s(h)
    peak_files = open_files(pid)

    async def sample_files() -> None:
        nonlocal peak_files
        while True:
            with contextlib.suppress(OSError):
                peak_files = max(peak_files, await asyncio.to_thread(open_files, pid))
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample_files())
    try:
        registration = await h.register(devices)
        went_live = await h.wait_mostly_live(n, f"{n:,} sessions going live", 60 + n / 20)
        settle = await h.wait_quiet()
    finally:
        sampler.cancel()
    rss_live, _ = h.bridge_usage()
    gc = gc_phase(gc_before, await gc_pause_s(h))
    await h.stop_bridge()
    return {
        "sessions": n,
        "not_live": went_live["not_live"],
        "registration": registration,
        "after_live_settle": settle,
        "rss_empty_kib": rss_empty,
        "rss_live_kib": rss_live,
        "kib_per_session": round((rss_live - rss_empty) / n, 1),
        "gc_longest_pause": gc,
        "open_files_peak": peak_files,
        "open_files_limit": limit,
    }


async def _chat_events(h: Harness) -> int:
    return int((await h.metrics()).get('bridge_upstream_events_total{event="chat message"}', 0))


async def _steady_growth(h: Harness, o: Options) -> dict[str, Any]:
    """``growth_devices`` devices in one room, each seeing ``messages`` messages: RSS growth."""
    g, k, state = o.growth_devices, o.messages, o.growth_state
    pushed = state == "background"
    # Foreground: nothing is pushed, the bridge only decides. Background: ~400 pushes/s, below
    # what one bridge process sustains, so no backlog inflates the figure.
    rate = o.growth_rate or (max(1.0, 400.0 / g) if pushed else 100.0)
    h.opts.sessions = g + 1
    await h.start_bridge(BRIDGE_STORE=f"sqlite:///{h.tmp / 'steady-growth.db'}")
    # One more device, in a room of its own, takes the warm-up: the measured devices start as
    # they were when they connected, and grow from there (a device after a week vs a minute).
    warmer, *devices = await h.create_devices(g + 1)
    registration = await h.register([warmer, *devices], state=state)
    await h.wait_mostly_live(g + 1, f"{g + 1} sessions going live ({state})", 60 + g / 20)
    room, warm_room = "steady-room", "steady-warm-up"
    await h.post_json(
        f"{h.control('imkit')}/bench/rooms",
        {
            "rooms": [
                {"roomId": room, "members": [SENDER, *(d.client_id for d in devices)]},
                {"roomId": warm_room, "members": [SENDER, warmer.client_id]},
            ]
        },
    )
    await h.wait_quiet()

    async def send(to: str, members: int, count: int, what: str) -> None:
        before = await _chat_events(h)
        await h.reset_arrivals()
        await emit_and_wait(h, [to], count, rate, count * members if pushed else 0, what)

        async def decided() -> bool:
            return await _chat_events(h) >= before + count * members

        await wait_until(decided, 60 + count * members / 500, "the bridge to take every event")

    # Warm-up: code paths, provider connections and the process-wide bounded caches (the decoded
    # packet cache holds MAX_ENTRIES packets) are not per-device costs: fill them first.
    warm = max(1, min(DECODE_CACHE_ENTRIES + 88, k // 5))
    await send(warm_room, 1, warm, f"warm-up: {warm} messages to a device of its own")
    rss0, cpu0 = h.bridge_usage()
    gc_before = await gc_pause_s(h)
    t0 = time.monotonic()
    await send(room, g, k, f"{k:,} messages to {g} devices ({state}, {rate:g}/s)")
    wall = time.monotonic() - t0
    await asyncio.sleep(1.0)  # let the last pushes' buffers go
    rss1, cpu1 = h.bridge_usage()
    gc = gc_phase(gc_before, await gc_pause_s(h))
    await h.stop_bridge()
    return {
        "devices": g,
        "messages": k,
        "warmup_messages": warm,
        "state": state,
        "rate": rate,
        "registration": registration,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "kib_per_device": round((rss1 - rss0) / g, 1),
        "seconds": round(wall, 1),
        "bridge_cpu_percent": round(100 * (cpu1 - cpu0) / wall, 1),
        "gc_longest_pause": gc,
    }


async def run_steady(h: Harness, o: Options) -> Result:
    limit = raise_nofile()
    counts = session_counts(o.session_counts or ("2000", "10000"), limit)
    pool: list[BenchDevice] = []
    idle = []
    for n in counts:
        if len(pool) < n:
            pool += await h.create_devices(n - len(pool))
        idle.append(await _steady_idle(h, pool[:n], limit))
    growth = await _steady_growth(h, o) if o.messages > 0 else None
    rows: list[tuple[str, str, str]] = []
    for r in idle:
        n, kib = r["sessions"], r["kib_per_session"]
        goal = GOALS["steady_kib_per_session" if n < 10_000 else "steady_kib_per_session_10k"]
        stuck = f"; {r['not_live']} not live" if r["not_live"] else ""
        rows.append((f"idle RSS per live session at {n:,}",
                     f"{kib:.1f} KiB ({r['rss_empty_kib'] / 1024:.0f} → {r['rss_live_kib'] / 1024:.0f} MiB{stuck})",
                     goal_status(kib <= goal, f"≤ {goal:g} KiB")))  # fmt: skip
        rows.append(gc_row("  longest GC pause", r["gc_longest_pause"], goal=n >= 10_000))
        rows.append(
            ("  open files, peak", f"{r['open_files_peak']:,} of {r['open_files_limit']:,}", "")
        )
    if growth:
        kib = growth["kib_per_device"]
        rows.append((f"RSS growth per device after {growth['messages']:,} messages",
                     f"{kib:.1f} KiB ({growth['devices']} devices, {growth['state']}; "
                     f"{growth['rss_before_kib'] / 1024:.0f} → {growth['rss_after_kib'] / 1024:.0f} MiB)",
                     goal_status(kib <= GOALS["steady_growth_kib_per_device"], "≤ 16 KiB")))  # fmt: skip
        rows.append(gc_row("  longest GC pause", growth["gc_longest_pause"], goal=False))
    return {"idle": idle, "growth": growth, "summary": rows}
