"""``rooms``: chat-shaped fan-out. N devices in rooms of M, R messages/s: emit → provider per push,
per tenth of the run, the bridge's CPU, the highest sustained rate (``--find-max``), beside the
bare-library floor measured in the same run (``python -m bench.floor``, after the bridge stopped).
With ``--workers N`` the bridge is an api and N workers on Redis; its CPU and RSS are their sums."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.emission import emit_and_wait, provider_arrivals
from bench.gc_pauses import gc_pause_s, gc_phase
from bench.harness import Harness, bare_library_env
from bench.machine import proc_usage, run_queue_wait
from bench.options import SENDER, Options, Result
from bench.processes import BenchError, wait_until
from bench.scenarios.room_pushes import RoomPlan, analyse_pushes, backlog_growth_ms
from bench.scenarios.rooms_report import rooms_report


async def _create_rooms(h: Harness, plan: RoomPlan) -> None:
    rooms = [
        {"roomId": rid, "members": [SENDER, *(plan.devices[i].client_id for i in room)]}
        for rid, room in zip(plan.ids, plan.rooms, strict=True)
    ]
    for lo in range(0, len(rooms), 200):
        await h.post_json(f"{h.control('imkit')}/bench/rooms", {"rooms": rooms[lo : lo + 200]})


async def _rooms_window(
    h: Harness, plan: RoomPlan, rate: float, duration: float, what: str, profile: str | None = None
) -> dict[str, Any]:
    """One measured emission through the bridge, ``rate`` messages/s for ``duration`` s: every
    push joined with its message's emit time, bridge and simulators' CPU over emission + drain."""
    await h.reset_arrivals(per_push=True)
    count = max(1, round(rate * duration))
    assert h.bridge is not None
    bridge_pids, support_pids = h.bridge.pids(), h.bridge.support_pids()
    cpu0 = _cpu_seconds(bridge_pids)
    wait0 = sum(run_queue_wait(pid) for pid in bridge_pids.values())
    load0 = os.getloadavg()[0]
    sims0, support0 = _cpu_seconds(h.sims_pids()), _cpu_seconds(support_pids)
    rest0 = await h.rest_requests()
    if profile:
        h.profile(profile)
    t0 = time.monotonic()
    state = await emit_and_wait(h, plan.ids, count, rate, plan.expected(count), what)
    wall = time.monotonic() - t0
    rest_calls = await h.rest_requests() - rest0
    h.bridge.check()
    cpu = _cpu_percent(cpu0, _cpu_seconds(bridge_pids), wall)
    wait = sum(run_queue_wait(pid) for pid in bridge_pids.values()) - wait0
    sims_cpu = _cpu_percent(sims0, _cpu_seconds(h.sims_pids()), wall)
    support_cpu = _cpu_percent(support0, _cpu_seconds(support_pids), wall)
    await h.prof.stop()
    emitted = (await h.get_json(f"{h.control('imkit')}/bench/latencies"))["emitted"]
    pushes = await h.get_json(f"{h.control('providers')}/bench/pushes")
    refused: Counter[str] = Counter()
    arrivals: list[tuple[str, int, float, str]] = []
    for provider, records in pushes.items():
        for mid, token, at, status in records:
            if status == 200:
                arrivals.append((mid, plan.by_token.get(token, -1), at, provider))
            else:
                refused[f"{provider} {status}"] += 1
    figures = analyse_pushes(emitted, arrivals, plan, started=state["started"], span=duration)
    span = state["finished"] - state["started"]
    emit_rate = (state["emitted"] - 1) / span if state["emitted"] > 1 and span > 0 else rate
    return {
        "rate": rate,
        "pushes_per_second": round(rate * plan.per_message, 1),
        "duration": duration,
        "emitted": state["emitted"],
        "achieved_emit_rate": round(emit_rate, 1),
        **figures,
        "refused": dict(refused),
        "seconds_incl_drain": round(wall, 2),
        "bridge_cpu_percent": round(sum(cpu.values()), 1),
        # Each of the bridge's processes: "bridge" (serve), or "api", "worker-1", ... (--workers).
        "bridge_cpu_by_process": cpu,
        # Ready to run but no CPU free: what other processes on the machine cost the bridge
        # (summed over its processes, as its CPU).
        "bridge_cpu_wait_percent": round(100 * wait / wall, 1),
        "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "sims_cpu_percent": sims_cpu,
        # The bridge's Redis with --workers (not counted in the bridge's CPU); None without.
        "redis_cpu_percent": support_cpu.get("redis"),
        # REST calls the bridge made to IMKIT during emission + drain (user refreshes, mostly).
        "imkit_rest_calls": rest_calls,
    }


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each process, by name."""
    return {name: proc_usage(pid)[1] for name, pid in pids.items()}


def _cpu_percent(
    before: dict[str, float], after: dict[str, float], wall: float
) -> dict[str, float]:
    """CPU % of a core each process used between two :func:`_cpu_seconds` readings."""
    return {name: round(100 * (after[name] - before[name]) / wall, 1) for name in before}


async def _find_max(h: Harness, o: Options, plan: RoomPlan) -> dict[str, Any]:
    """Step the push rate up (``o.step_rates``) until a step is not sustained; each step starts
    with an empty backlog. Sustained: the simulator emitted at ≥ 95 % of the rate, every push
    arrived, and, for each provider, the p50 of the last tenth is at most ``o.max_growth_ms``
    above the first's."""
    rates = [float(r) for r in o.step_rates.split(",") if r.strip()]
    steps: list[dict[str, Any]] = []
    best = 0.0
    for pushes in rates:
        w = await _rooms_window(
            h, plan, pushes / plan.per_message, o.step_duration,
            f"find-max: {pushes:,.0f} pushes/s for {o.step_duration:g} s",
        )  # fmt: skip
        growth = backlog_growth_ms(w)
        emitter_ok = w["achieved_emit_rate"] >= 0.95 * w["rate"]
        sustained = (
            emitter_ok and w["missing"] == 0 and growth is not None and growth <= o.max_growth_ms
        )
        steps.append(
            {
                "pushes_per_second": pushes,
                "sustained": sustained,
                "emitter_ok": emitter_ok,
                "backlog_growth_ms": None if growth is None else round(growth, 1),
                **{k: w[k] for k in ("rate", "achieved_emit_rate", "expected", "received",
                                     "missing", "duplicate", "latency_ms", "tenths",
                                     "bridge_cpu_percent", "bridge_cpu_by_process",
                                     "bridge_cpu_wait_percent", "load_average",
                                     "sims_cpu_percent", "redis_cpu_percent")},
            }
        )  # fmt: skip
        if not sustained:
            break
        best = pushes
    return {
        "max_sustained_pushes_per_second": best,
        "top_step_sustained": bool(steps) and steps[-1]["sustained"],
        "max_growth_ms": o.max_growth_ms,
        "step_duration": o.step_duration,
        "steps": steps,
    }


def _status_of(path: Path) -> dict[str, Any]:
    """The JSON a floor child rewrites as it goes (``{}`` before its first write)."""
    with contextlib.suppress(OSError, ValueError):
        status: dict[str, Any] = json.loads(path.read_text())
        return status
    return {}


async def _floor_receive(
    h: Harness, o: Options, plan: RoomPlan, rate: float, duration: float
) -> dict[str, Any]:
    """Bare python-socketio clients, one per device, receiving the same load from the same IMKIT."""

    async def bridge_gone() -> bool:
        return int((await h.sims_stats("imkit"))["imkit"]["connected_sockets"]) == 0

    await wait_until(bridge_gone, 60, "the bridge's sockets to close")
    n = len(plan.devices)
    status = h.tmp / "floor-receive.status.json"
    spec = {
        "url": h.imkit_url,
        "tokens": [d.token for d in plan.devices],
        "freeze": o.floor_gc == "frozen",
        "status": str(status),
    }
    child, out = h.spawn("floor receive", ["bench.floor", "receive"], spec)
    try:
        with h.ui.progress(f"floor: {n:,} bare socket.io clients connecting", n) as update:

            async def connected() -> bool:
                child.check()
                st = _status_of(status)
                update(st.get("live", 0))
                return bool(st.get("ready"))

            await wait_until(connected, 60 + n / 20, "the bare clients to connect")
        st = _status_of(status)
        if st["failed"]:
            h.ui.note(f"[yellow]{st['failed']} of {n} bare clients could not connect[/yellow]")
        base = 0

        async def received() -> int:
            child.check()
            return int(_status_of(status).get("received", 0)) - base

        await h.reset_arrivals()
        base = int(st["received"])
        warm = len(plan.rooms)
        await emit_and_wait(
            h, plan.ids, warm, rate, plan.expected(warm), "floor: warm-up", arrived_total=received
        )
        await h.reset_arrivals()
        base = int(_status_of(status)["received"])
        count = max(1, round(rate * duration))
        cpu0, wait0 = proc_usage(child.pid)[1], run_queue_wait(child.pid)
        t0 = time.monotonic()
        state = await emit_and_wait(
            h, plan.ids, count, rate, plan.expected(count),
            f"floor: bare socket.io clients receiving {rate:g} messages/s", arrived_total=received,
        )  # fmt: skip
        wall = time.monotonic() - t0
        cpu, wait = proc_usage(child.pid)[1] - cpu0, run_queue_wait(child.pid) - wait0
    finally:
        code = await child.stop()
    if code != 0 or not out.exists():
        raise BenchError(f"{child.name} failed:\n{child.tail()}")
    answer = json.loads(out.read_text())
    emitted = (await h.get_json(f"{h.control('imkit')}/bench/latencies"))["emitted"]
    arrivals = [(mid, i, t, "socket.io") for mid, i, t in answer["arrivals"]]
    figures = analyse_pushes(emitted, arrivals, plan, started=state["started"], span=duration)
    return {
        "clients": n,
        "connected": answer["live"],
        "failed": answer["failed"],
        "connect_seconds": answer["connect_seconds"],
        "gc": o.floor_gc,
        **figures,
        "cpu_percent": round(100 * cpu / wall, 1),
        "cpu_wait_percent": round(100 * wait / wall, 1),
    }


async def _floor_send(
    h: Harness, o: Options, plan: RoomPlan, rate: float, duration: float
) -> dict[str, Any]:
    """aioapns / firebase-admin alone sending each message's pushes as one burst, at ``rate``."""
    count = max(1, round(rate * duration))
    spec = {
        "env": h.sims_env,
        "control": h.control("providers"),
        "rooms": [
            [["apns" if plan.devices[i].type == "ios" else "fcm", plan.devices[i].push_token]
             for i in room]
            for room in plan.rooms
        ],
        "rate": rate,
        "count": count,
        "warm": len(plan.rooms),
        "freeze": o.floor_gc == "frozen",
    }  # fmt: skip
    child, out = h.spawn("floor send", ["bench.floor", "send"], spec, bare_library_env(h))
    await h.run_to_end(
        child,
        f"floor: bare libraries sending {rate:g} bursts/s",
        120 + 3 * duration + count / 10,
        total=plan.expected(count),
        done_so_far=lambda: provider_arrivals(h),
    )
    answer = json.loads(out.read_text())
    pushes = await h.get_json(f"{h.control('providers')}/bench/pushes")
    arrivals = [
        (mid, plan.by_token.get(token, -1), at, provider)
        for provider, records in pushes.items()
        for mid, token, at, status in records
        if status == 200
    ]
    figures = analyse_pushes(
        answer["emitted"], arrivals, plan, started=answer["started"], span=duration
    )
    return {
        **figures,
        "outcomes": answer["outcomes"],
        "achieved_rate": answer["achieved_rate"],
        "gc": o.floor_gc,
        "cpu_percent": round(100 * answer["cpu_seconds"] / answer["seconds"], 1),
        "cpu_wait_percent": round(100 * answer["cpu_wait_seconds"] / answer["seconds"], 1),
    }


async def run_rooms(h: Harness, o: Options) -> Result:
    n, m, rate = o.sessions, o.room_size, o.rate
    await h.start_bridge()
    devices = await h.create_devices(n, o.ios_share)
    registration = await h.register(devices)
    went_live = await h.wait_mostly_live(n, "sessions going live", 60 + n / 20)
    # Per worker with --workers: how the devices were sharded.
    sessions_by_process = await h.sessions_each()
    plan = RoomPlan.build(devices, m)
    # Rooms only now: each connect's backfill scans the user's rooms, and this keeps it cheap.
    await _create_rooms(h, plan)
    await h.wait_quiet()
    # Warm-up: a message to every room (provider connections, tokens, each room's first event).
    warm = len(plan.rooms)
    await h.reset_arrivals()
    await emit_and_wait(
        h, plan.ids, warm, rate, plan.expected(warm), "warm-up: a message to every room"
    )
    pushes_s = rate * plan.per_message
    gc_before = await gc_pause_s(h)
    main = await _rooms_window(
        h, plan, rate, o.duration,
        f"{rate:g} messages/s × {plan.per_message:g} = {pushes_s:,.0f} pushes/s for {o.duration:g} s",
        profile="rooms",
    )  # fmt: skip
    gc = gc_phase(gc_before, await gc_pause_s(h))
    found = await _find_max(h, o, plan) if o.find_max else None
    assert h.bridge is not None
    rss_by_process = {name: rss for name, (rss, _) in h.bridge.usage_by_process().items()}
    await h.stop_bridge()
    floor: dict[str, Any] | None = None
    if o.floor:
        floor = {
            "receive": await _floor_receive(h, o, plan, rate, o.duration),
            "send": await _floor_send(h, o, plan, rate, o.duration),
        }
        cpu = floor["receive"]["cpu_percent"] + floor["send"]["cpu_percent"]
        # Receiving and sending in one process would need both shares of one core.
        floor["capacity_estimate"] = round(pushes_s * 100 / cpu, 1) if cpu > 0 else None
    ios = sum(1 for d in devices if d.type == "ios")
    out: dict[str, Any] = {
        # Processes holding sessions: 1 is one python -m bridge serve; N an api and N workers.
        "workers": o.workers,
        "devices": n,
        "room_size": m,
        "rooms": len(plan.rooms),
        "apns_devices": ios,
        "fcm_devices": n - ios,
        "rate": rate,
        "pushes_per_second": round(pushes_s, 1),
        "duration": o.duration,
        "registration": registration,
        "went_live": went_live,
        "bridge": main,
        "find_max": found,
        "floor": floor,
        "bridge_rss_kib": sum(rss_by_process.values()),
        "bridge_rss_kib_by_process": rss_by_process,
        "bridge_sessions_by_process": sessions_by_process,
        "bridge_gc_longest_pause": gc,
    }
    out["summary"], out["tables"] = rooms_report(out)
    return out
