"""``api``: subscribe and state calls per second and their latency, from a load process
(``python -m bench.api_load``)."""

from __future__ import annotations

import json
import time
from typing import Any

from bench.harness import Harness
from bench.options import Options, Result


async def run_api(h: Harness, o: Options) -> Result:
    n = o.sessions
    await h.start_bridge()
    devices = await h.create_devices(n)
    registration = await h.register(devices)
    went_live = await h.wait_mostly_live(n, "sessions going live", 60 + n / 20)
    await h.wait_quiet()
    spec = {
        "url": h.bridge_url, "concurrency": o.concurrency, "duration": o.duration,
        "devices": [{"deviceId": d.device_id, "token": d.token, "type": d.type, "pushToken": d.push_token} for d in devices],
    }  # fmt: skip
    rss0, cpu0 = h.bridge_usage()
    h.profile("api")
    t0 = time.monotonic()
    child, out = h.spawn("api load", ["bench.api_load"], spec)
    await h.run_to_end(
        child, f"API load, {o.concurrency} concurrent calls for {o.duration:g} s", o.duration + 60
    )
    wall = time.monotonic() - t0
    rss1, cpu1 = h.bridge_usage()
    await h.prof.stop()
    load: dict[str, Any] = json.loads(out.read_text())
    summary: list[tuple[str, str, str]] = [
        ("devices", f"{n:,}", ""),
        ("concurrency", str(o.concurrency), ""),
    ]
    for kind in ("subscribe", "state"):
        k = load["calls"].get(kind, {})
        lat = k.get("latency_ms", {})
        summary.append(
            (
                f"{kind}",
                f"{k.get('per_second', 0):,.0f}/s, p50 {lat.get('p50', 0):.1f} ms, p99 {lat.get('p99', 0):.1f} ms",
                "",
            )
        )
    summary.append(("all calls", f"{load['per_second']:,.0f}/s ({load['errors']} errors)", ""))
    summary.append(("bridge CPU during load", f"{100 * (cpu1 - cpu0) / wall:.0f} %", ""))
    return {
        "devices": n,
        "registration": registration,
        "went_live": went_live,
        "load": load,
        "bridge_cpu_percent": round(100 * (cpu1 - cpu0) / wall, 1),
        "bridge_rss_kib": rss1,
        "summary": summary,
    }
