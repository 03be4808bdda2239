"""``latency``: chat messages per second over backgrounded devices, emit → provider p50..max."""

from __future__ import annotations

import math
import time

from bench.emission import emit_and_wait, latencies
from bench.goals import GOALS, goal_status
from bench.harness import Harness
from bench.machine import proc_usage
from bench.options import SENDER, Options, Result
from bench.stats import summarize


async def run_latency(h: Harness, o: Options) -> Result:
    n, rate = o.sessions, o.rate
    await h.start_bridge()
    devices = await h.create_devices(n)
    registration = await h.register(devices)
    went_live = await h.wait_mostly_live(n, "sessions going live", 60 + n / 20)
    # Rooms only now: each connect's backfill scans the user's rooms, and this keeps it cheap.
    rooms = [f"r-{d.client_id}" for d in devices]
    for lo in range(0, n, 2000):
        batch = [
            {"roomId": f"r-{d.client_id}", "members": [SENDER, d.client_id]}
            for d in devices[lo : lo + 2000]
        ]
        await h.post_json(f"{h.control('imkit')}/bench/rooms", {"rooms": batch})
    await h.wait_quiet()
    # Warm-up: provider connections, the OAuth token, code paths; then forget it.
    warm = min(n, max(50, int(rate)))
    await emit_and_wait(h, rooms, warm, rate, warm, "warm-up")
    await h.reset_arrivals()
    count = max(1, int(rate * o.duration))
    rss0, cpu0 = h.bridge_usage()
    sims0 = {part: proc_usage(pid)[1] for part, pid in h.sims_pids().items()}
    h.profile("latency")
    t0 = time.monotonic()
    state = await emit_and_wait(
        h,
        rooms[warm % n :] + rooms[: warm % n],
        count,
        rate,
        count,
        f"{rate:g} events/s for {o.duration:g} s",
    )
    wall = time.monotonic() - t0
    rss1, cpu1 = h.bridge_usage()
    # The simulators share the machine: if they run out of CPU, the figures are theirs.
    sims_cpu = {
        part: round(100 * (proc_usage(pid)[1] - sims0[part]) / wall, 1)
        for part, pid in h.sims_pids().items()
    }
    await h.prof.stop()
    lat, missing = await latencies(h)
    both = lat["apns"] + lat["fcm"]
    all_s = summarize(both)
    emit_rate = state["emitted"] / max(1e-9, state.get("finished", 0) - state.get("started", 0))
    p99 = all_s.get("p99", math.inf)
    return {
        "sessions": n,
        "rate": rate,
        "duration": o.duration,
        "registration": registration,
        "went_live": went_live,
        "emitted": state["emitted"],
        "achieved_emit_rate": round(emit_rate, 1),
        "missing": missing,
        "latency_ms": {"all": all_s, "apns": summarize(lat["apns"]), "fcm": summarize(lat["fcm"])},
        "bridge_cpu_percent": round(100 * (cpu1 - cpu0) / wall, 1),
        "sims_cpu_percent": sims_cpu,
        "bridge_rss_kib": rss1,
        "latencies_ms": {k: [round(x, 2) for x in v] for k, v in lat.items()},
        "summary": [
            ("sessions live", f"{n - went_live['not_live']:,} / {n:,}", ""),
            ("events emitted", f"{state['emitted']:,} at {emit_rate:.0f}/s", ""),
            ("pushes matched", f"{len(both):,} ({missing} missing)", ""),
            ("emit → provider p50", f"{all_s.get('p50', 0):.1f} ms", ""),
            ("emit → provider p95", f"{all_s.get('p95', 0):.1f} ms", ""),
            (
                "emit → provider p99",
                f"{p99:.1f} ms",
                goal_status(p99 <= GOALS["latency_p99_ms"], "≤ 25 ms"),
            ),
            ("emit → provider max", f"{all_s.get('max', 0):.1f} ms", ""),
            ("bridge CPU", f"{100 * (cpu1 - cpu0) / wall:.0f} %", ""),
            ("simulators' CPU", ", ".join(f"{k} {v:.0f} %" for k, v in sims_cpu.items()), ""),
        ],
    }
