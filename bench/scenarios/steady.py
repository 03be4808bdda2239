"""``steady``: idle RSS per live session at several counts, RSS growth per device after K messages
each, and the longest GC pause (``bridge_gc_longest_pause_seconds``); with ``--reconnects K``, RSS
per live session after each of K rounds of IMKIT dropping every upstream socket."""

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


async def _steady_idle(
    h: Harness, devices: list[BenchDevice], limit: int, reconnects: int = 0
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A fresh bridge (empty store): RSS empty, then with every device registered and live; with
    ``reconnects`` > 0, then :func:`_steady_reconnects` on the same bridge (else None)."""
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
    idle = {
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
    again = await _steady_reconnects(h, idle, reconnects) if reconnects > 0 else None
    await h.stop_bridge()
    return idle, again


async def _steady_reconnects(h: Harness, idle: dict[str, Any], rounds: int) -> dict[str, Any]:
    """``rounds`` times on the bridge of the ``idle`` phase: IMKIT drops every upstream socket
    (``POST /sim/drop``, as an IMKIT restart would), every session that was live connects again
    (paced by BRIDGE_CONNECT_RATE) and the after-connect REST calls settle; then the bridge's RSS.

    Each round's RSS per live session is the idle figure's formula from the same pre-bridge
    baseline, ``(RSS − RSS empty) / N``; its growth is ``(RSS − RSS at the idle figure) / N``.
    A session whose old connection stays behind (in the frozen heap, say) shows as growth."""
    n, rss_empty, rss_idle = idle["sessions"], idle["rss_empty_kib"], idle["rss_live_kib"]
    target = n - int(idle["not_live"])  # a session that never went live has nothing to drop
    rate = h.opts.connect_rate or 1000.0
    out: list[dict[str, Any]] = []
    for i in range(1, rounds + 1):
        reasons0 = await h.reconnects()
        gc_before = await gc_pause_s(h)
        since = time.monotonic()
        dropped = int((await h.post_json(f"{h.imkit_url}/sim/drop", {}))["dropped"])
        # IMKIT's count of new connects tells a reconnected session from one that has not
        # noticed the drop yet (the bridge still counts that one live).
        seconds = await h.wait_live(
            target,
            f"round {i}/{rounds}: {target:,} sessions live again after IMKIT dropped {dropped:,}",
            60 + n / 20 + n / rate,
            t0=since,
            imkit_since=since,
        )
        settle = await h.wait_quiet()
        rss, _ = h.bridge_usage()
        gc = gc_phase(gc_before, await gc_pause_s(h))
        reasons = await h.reconnects()
        by_reason = {
            k: v - reasons0.get(k, 0) for k, v in reasons.items() if v > reasons0.get(k, 0)
        }
        connects = (await h.sims_stats("imkit", since))["imkit"]["connects_since"]
        out.append(
            {
                "round": i,
                "dropped": dropped,
                "seconds_to_all_live": round(seconds, 2),
                "connects": int(connects),
                "upstream_reconnects": sum(by_reason.values()),
                "reconnect_reasons": by_reason,
                "after_live_settle": settle,
                "rss_kib": rss,
                "kib_per_session": round((rss - rss_empty) / n, 1),
                "growth_kib_per_session": round((rss - rss_idle) / n, 2),
                "gc_longest_pause": gc,
            }
        )
    return {"sessions": n, "live_before": target, "connect_rate": rate, "rounds": out}


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
    again: dict[str, Any] | None = None
    for n in counts:
        if len(pool) < n:
            pool += await h.create_devices(n - len(pool))
        # The reconnect rounds run at the largest count only (the counts ascend).
        rounds = o.reconnects if n == counts[-1] else 0
        figure, after = await _steady_idle(h, pool[:n], limit, rounds)
        idle.append(figure)
        again = after or again
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
    if again:
        rows += _reconnect_rows(again, idle[-1])
    if growth:
        kib = growth["kib_per_device"]
        rows.append((f"RSS growth per device after {growth['messages']:,} messages",
                     f"{kib:.1f} KiB ({growth['devices']} devices, {growth['state']}; "
                     f"{growth['rss_before_kib'] / 1024:.0f} → {growth['rss_after_kib'] / 1024:.0f} MiB)",
                     goal_status(kib <= GOALS["steady_growth_kib_per_device"], "≤ 16 KiB")))  # fmt: skip
        rows.append(gc_row("  longest GC pause", growth["gc_longest_pause"], goal=False))
    result: Result = {"idle": idle, "growth": growth, "summary": rows}
    if again is not None:
        result["reconnects"] = again
    return result


def _reconnect_rows(again: dict[str, Any], idle: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The summary rows of :func:`_steady_reconnects`: a figure, reconnects and GC per round."""
    limit = GOALS["steady_reconnect_growth_kib_per_session"]
    rows: list[tuple[str, str, str]] = []
    for r in again["rounds"]:
        kib, growth = r["kib_per_session"], r["growth_kib_per_session"]
        rows.append((f"RSS per live session after reconnect {r['round']} at {again['sessions']:,}",
                     f"{kib:.1f} KiB ({growth:+.2f} KiB since idle {idle['kib_per_session']:.1f}; "
                     f"{r['rss_kib'] / 1024:.0f} MiB)",
                     f"≤ idle + {limit:g} KiB: {'met' if growth <= limit else 'not met'} (informational)"))  # fmt: skip
        rows.append((
            "  upstream reconnects, all live again",
            f"{r['upstream_reconnects']:,} in {r['seconds_to_all_live']:.1f} s "
            f"({r['dropped']:,} sockets dropped)",
            "",
        ))  # fmt: skip
        rows.append(gc_row("  longest GC pause", r["gc_longest_pause"], goal=False))
    return rows
