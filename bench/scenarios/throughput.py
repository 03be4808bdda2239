"""``throughput``: pushes per second through the whole bridge against a bare library loop
(``python -m bench.baselines``), per provider."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from bench.emission import emit_and_wait
from bench.goals import GOALS, goal_status
from bench.harness import Harness, bare_library_env
from bench.options import SENDER, Options, Result


async def run_throughput(h: Harness, o: Options) -> Result:
    n = max(2, o.sessions)
    await h.start_bridge()
    devices = await h.create_devices(n)
    registration = await h.register(devices)
    went_live = await h.wait_mostly_live(n, "sessions going live", 60 + n / 20)
    groups = {
        "apns": [d.client_id for d in devices if d.type == "ios"],
        "fcm": [d.client_id for d in devices if d.type == "fcm"],
    }
    rooms = [{"roomId": f"tp-{p}", "members": [SENDER, *members]} for p, members in groups.items()]
    await h.post_json(f"{h.control('imkit')}/bench/rooms", {"rooms": rooms})
    await h.wait_quiet()
    out: dict[str, Any] = {
        "sessions": n,
        "pushes": o.pushes,
        "concurrency": o.push_concurrency,
        "registration": registration,
        "went_live": went_live,
    }
    summary: list[tuple[str, str, str]] = []
    for provider, members in groups.items():
        if not members:
            continue
        # Warm-up through the bridge: connections and the OAuth token exist before the clock starts.
        await emit_and_wait(h, [f"tp-{provider}"], 1, 0, len(members), f"warm-up {provider}")
        await h.reset_arrivals()
        messages = max(1, math.ceil(o.pushes / len(members)))
        expect = messages * len(members)
        cpu0 = h.bridge_usage()[1]
        t0 = time.monotonic()
        h.profile(f"throughput-{provider}")
        await emit_and_wait(
            h,
            [f"tp-{provider}"],
            messages,
            0,
            expect,
            f"{expect:,} pushes to {provider} through the bridge",
        )
        wall = time.monotonic() - t0
        cpu = h.bridge_usage()[1] - cpu0
        await h.prof.stop()
        bridge_stats = (await h.sims_stats("providers"))[provider]
        bridge_rate = _rate(bridge_stats)
        await h.reset_arrivals()
        bare = await _run_bare(h, provider, expect, o.push_concurrency)
        bare_stats = (await h.sims_stats("providers"))[provider]
        bare_rate = _rate(bare_stats)
        ratio = bridge_rate / bare_rate if bare_rate else 0.0
        out[provider] = {
            "bridge": {
                **bridge_stats,
                "per_second": round(bridge_rate, 1),
                "cpu_percent": round(100 * cpu / wall, 1),
            },
            "bare": {**bare_stats, "per_second": round(bare_rate, 1), "client": bare},
            "ratio": round(ratio, 3),
        }
        await h.reset_arrivals()
        summary += [
            (
                f"{provider}: whole bridge",
                f"{bridge_rate:,.0f} pushes/s ({bridge_stats['received']:,})",
                "",
            ),
            (
                f"{provider}: bare library loop",
                f"{bare_rate:,.0f} pushes/s ({bare_stats['received']:,})",
                "",
            ),
            (
                f"{provider}: ratio",
                f"{ratio:.2f}",
                goal_status(ratio >= GOALS["throughput_ratio"], "≥ 0.8"),
            ),
        ]
    out["summary"] = summary
    return out


def _rate(stats: dict[str, Any]) -> float:
    """Requests per second between the first and the last arrival."""
    n, first, last = int(stats["received"]), stats["first"], stats["last"]
    if n < 2 or first is None or last is None or last <= first:
        return 0.0
    return float((n - 1) / (last - first))


async def _run_bare(h: Harness, provider: str, count: int, concurrency: int) -> dict[str, Any]:
    spec = {
        "provider": provider,
        "count": count,
        "concurrency": concurrency,
        "env": h.sims_env,
        "control": h.control("providers"),
    }
    child, out = h.spawn(
        f"bare {provider} loop", ["bench.baselines"], spec, bare_library_env(h)
    )

    async def received() -> int:
        return int((await h.sims_stats("providers"))[provider]["received"])

    await h.run_to_end(
        child,
        f"{count:,} pushes to {provider} from a bare library loop",
        120 + count / 100,
        total=count,
        done_so_far=received,
    )
    answer: dict[str, Any] = json.loads(out.read_text())
    return answer
