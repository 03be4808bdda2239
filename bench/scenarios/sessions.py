"""``sessions``: live sessions in one bridge process (RSS per session, idle CPU, cold start to all
live); ``storm``: every session back to live after IMKIT drops them all, and from a cold start."""

from __future__ import annotations

import asyncio
import time

from bench.goals import GOALS, goal_status
from bench.harness import Harness
from bench.machine import proc_usage
from bench.options import Options, Result


async def run_sessions(h: Harness, o: Options) -> Result:
    n = o.sessions
    await h.start_bridge()
    # Baseline: a fresh bridge process with no devices, after it settled.
    await asyncio.sleep(1.0)
    rss_empty, _ = h.bridge_usage()
    h.ui.note(f"empty bridge: RSS {rss_empty / 1024:.1f} MiB")
    devices = await h.create_devices(n)
    h.profile("sessions-registration")
    ramp: list[dict[str, float]] = []
    sampler = asyncio.create_task(h.sample_memory(ramp))
    try:
        registration = await h.register(devices)
        first_live = await h.wait_mostly_live(n, "sessions going live (first start)", 60 + n / 20)
    finally:
        sampler.cancel()
    await h.prof.stop()
    rss_first, _ = h.bridge_usage()
    # A new process holding the same N sessions: nothing in it but sessions (no API caches).
    await h.stop_bridge()
    samples: list[dict[str, float]] = []
    since = time.monotonic()
    spawned = await h.start_bridge(profile="sessions-cold-start")
    ready_s = time.monotonic() - spawned
    seconds = await h.wait_live(
        n,
        "sessions going live (cold start)",
        60 + n / 20,
        samples=samples,
        t0=spawned,
        imkit_since=since,
    )
    settle = await h.wait_quiet()
    await h.prof.stop()
    rss0, cpu0 = h.bridge_usage()
    t0 = time.monotonic()
    with h.ui.progress(f"idle {o.duration:g} s with {n} live sessions", None):
        await asyncio.sleep(o.duration)  # a measurement window: CPU used while nothing happens
    rss1, cpu1 = h.bridge_usage()
    window = time.monotonic() - t0
    live = await h.live()
    sims = {part: proc_usage(pid)[0] for part, pid in h.sims_pids().items()}
    rss_live = max(rss0, rss1)
    per = (rss_live - rss_empty) / n

    def per_session(points: list[dict[str, float]]) -> list[dict[str, float]]:
        return [
            {**p, "kib_per_session": round((p["rss_kib"] - rss_empty) / p["live"], 1)}
            for p in points
            if p["live"] >= max(50, n // 50)
        ]

    return {
        "sessions": n,
        "live_at_end": live,
        "registration": registration,
        "first_start_live": first_live,
        "rss_empty_kib": rss_empty,
        "rss_after_registration_kib": rss_first,
        "rss_live_kib": rss_live,
        "kib_per_session": round(per, 1),
        "kib_per_session_incl_api_warmup": round((rss_first - rss_empty) / n, 1),
        "cold_start_to_ready_s": round(ready_s, 2),
        "cold_start_to_all_live_s": round(seconds, 2),
        "after_live_settle": settle,
        "idle_cpu_percent": round(100 * (cpu1 - cpu0) / window, 2),
        "idle_window_s": round(window, 1),
        "sims_rss_kib": sims,
        # While devices register one by one (first process, API caches included) ...
        "registration_curve": per_session(ramp),
        # ... and in the cold start, where every session object exists before most are live.
        "curve": per_session(samples),
        "summary": [
            ("live sessions", f"{live:,} / {n:,}", ""),
            ("RSS, empty bridge", f"{rss_empty / 1024:.1f} MiB", ""),
            ("RSS, N live sessions", f"{rss_live / 1024:.1f} MiB", ""),
            (
                "RSS per session",
                f"{per:.1f} KiB",
                goal_status(per <= GOALS["kib_per_session"], "≤ 40 KiB"),
            ),
            ("idle CPU", f"{100 * (cpu1 - cpu0) / window:.1f} %", ""),
            ("cold start → all live", f"{seconds:.1f} s", ""),
            ("  of which to /readyz", f"{ready_s:.1f} s", ""),
            (
                "then after-connect REST calls",
                f"{settle['rest_calls']:,} in {settle['seconds']:.1f} s more",
                "",
            ),
            ("registration", f"{registration['per_second']}/s", ""),
        ],
    }


async def run_storm(h: Harness, o: Options) -> Result:
    n = o.sessions
    rate = o.connect_rate or 2000.0
    h.opts.connect_rate = rate
    await h.start_bridge()
    devices = await h.create_devices(n)
    registration = await h.register(devices)
    first_live = await h.wait_mostly_live(n, "sessions going live", 60 + n / 20)
    target = n - int(first_live["not_live"])
    await h.wait_quiet()

    # 1. IMKIT drops every socket at once (sessions that never went live are left out).
    since = time.monotonic()
    h.profile("storm-drop")
    reasons0 = await h.reconnects()
    sims_cpu0 = h.sims_cpu()
    dropped = (await h.post_json(f"{h.imkit_url}/sim/drop", {}))["dropped"]
    cpu0 = h.bridge_usage()[1]
    drop_curve: list[dict[str, float]] = []
    drop_s = await h.wait_live(
        target,
        f"reconnecting after IMKIT dropped {dropped}",
        60 + n / 10,
        samples=drop_curve,
        t0=since,
        imkit_since=since,
    )
    drop_cpu = h.bridge_usage()[1] - cpu0
    drop_sims_cpu = h.sims_cpu() - sims_cpu0
    reasons = await h.reconnects()
    drop_reasons = {k: v - reasons0.get(k, 0) for k, v in reasons.items() if v > reasons0.get(k, 0)}
    drop_stats = (await h.sims_stats("imkit", since))["imkit"]
    await h.prof.stop()

    # 2. Cold: a new bridge process with N devices in its store.
    await h.stop_bridge()
    since = time.monotonic()
    cold_curve: list[dict[str, float]] = []
    sims_cpu0 = h.sims_cpu()
    spawned = await h.start_bridge(profile="storm-cold")
    ready_s = time.monotonic() - spawned
    cold_s = await h.wait_live(
        n, "cold start to all live", 60 + n / 10, samples=cold_curve, t0=spawned, imkit_since=since
    )
    cold_cpu = h.bridge_usage()[1]
    cold_sims_cpu = h.sims_cpu() - sims_cpu0
    cold_reasons = await h.reconnects()
    await h.prof.stop()
    cold_stats = (await h.sims_stats("imkit", since))["imkit"]
    return {
        "sessions": n,
        "connect_rate_limit": rate,
        "registration": registration,
        "first_start_live": first_live,
        "drop": {
            "dropped": dropped,
            "seconds_to_all_live": round(drop_s, 2),
            "connects": drop_stats["connects_since"],
            "peak_connect_rate": drop_stats["peak_connect_rate_since"],
            "bridge_cpu_seconds": round(drop_cpu, 2),
            "sims_cpu_seconds": round(drop_sims_cpu, 2),
            "reconnect_reasons": drop_reasons,
            "curve": drop_curve,
        },
        "cold": {
            "seconds_to_ready": round(ready_s, 2),
            "seconds_to_all_live": round(cold_s, 2),
            "connects": cold_stats["connects_since"],
            "peak_connect_rate": cold_stats["peak_connect_rate_since"],
            "bridge_cpu_seconds": round(cold_cpu, 2),
            "sims_cpu_seconds": round(cold_sims_cpu, 2),
            "reconnect_reasons": cold_reasons,
            "curve": cold_curve,
        },
        "summary": [
            ("sessions", f"{n:,}", ""),
            ("connect rate limit", f"{rate:g}/s", ""),
            (
                "after IMKIT drop → all live",
                f"{drop_s:.1f} s",
                goal_status(drop_s <= GOALS["storm_seconds"], "≤ 20 s"),
            ),
            ("  peak connect rate IMKIT saw", f"{drop_stats['peak_connect_rate_since']}/s", ""),
            ("  connects IMKIT accepted", f"{drop_stats['connects_since']:,}", ""),
            (
                "cold start → all live",
                f"{cold_s:.1f} s",
                goal_status(cold_s <= GOALS["storm_seconds"], "≤ 20 s"),
            ),
            ("  of which to /readyz", f"{ready_s:.1f} s", ""),
            ("  peak connect rate IMKIT saw", f"{cold_stats['peak_connect_rate_since']}/s", ""),
            ("  connects IMKIT accepted", f"{cold_stats['connects_since']:,}", ""),
        ],
    }
