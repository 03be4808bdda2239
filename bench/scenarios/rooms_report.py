"""The summary rows and the per-tenth and find-max tables of a ``rooms`` result."""

from __future__ import annotations

import math
from typing import Any

from bench.gc_pauses import gc_row
from bench.goals import GOALS, goal_status


def _ms(s: dict[str, Any], key: str) -> str:
    return f"{s[key]:,.1f}" if key in s else "–"


def _processes(r: dict[str, Any]) -> str:
    if r["workers"] == 1:
        return "1: push-bridge serve (SQLite)"
    live = ", ".join(
        f"{name} {states.get('live', 0):,}"
        for name, states in r["bridge_sessions_by_process"].items()
    )
    return f"push-bridge api + {r['workers']} workers on Redis (live sessions: {live})"


def rooms_report(r: dict[str, Any]) -> tuple[list[tuple[str, str, str]], list[dict[str, Any]]]:
    """The summary rows and the per-tenth / find-max tables of a ``rooms`` result."""
    b, floor, found = r["bridge"], r["floor"], r["find_max"]
    lat = b["latency_ms"]
    rows: list[tuple[str, str, str]] = [
        ("devices", f"{r['devices']:,} in {r['rooms']:,} rooms of {r['room_size']} "
                    f"(APNs {r['apns_devices']:,}, FCM {r['fcm_devices']:,})"
                    + (f"; {r['went_live']['not_live']:,} never went live" if r["went_live"]["not_live"] else ""),
         ""),
        ("bridge processes", _processes(r), ""),
        ("load", f"{r['rate']:g} msg/s = {r['pushes_per_second']:,.0f} pushes/s for {r['duration']:g} s "
                 f"(emitted {b['emitted']:,} at {b['achieved_emit_rate']:g}/s)", ""),
        ("pushes expected / received", f"{b['expected']:,} / {b['received']:,}", ""),
        ("  missing / duplicate", f"{b['missing']:,} / {b['duplicate']:,}",
         goal_status(b["missing"] == 0 and b["duplicate"] == 0, "none")),
    ]  # fmt: skip
    for channel in [c for c in ("all", "apns", "fcm") if c in lat]:
        if channel != "all" and len(lat) <= 2:
            continue  # one provider: "all" says it
        s = lat[channel]
        who = "bridge" if channel == "all" else f"  {channel}"
        rows.append((f"{who}: emit → provider p50 / p95 / p99 / max",
                     f"{_ms(s, 'p50')} / {_ms(s, 'p95')} / {_ms(s, 'p99')} / {_ms(s, 'max')} ms", ""))  # fmt: skip
    rows.append(("bridge CPU (emission + drain)",
                 f"{b['bridge_cpu_percent']:.0f} % of a core; waited for a CPU "
                 f"{b['bridge_cpu_wait_percent']:.0f} % of the time (load {b['load_average'][0]:g})", ""))  # fmt: skip
    if r["workers"] > 1:
        each = ", ".join(f"{k} {v:.0f} %" for k, v in b["bridge_cpu_by_process"].items())
        rows.append(("  by process", f"{each}; redis {b['redis_cpu_percent']:.0f} %", ""))
    rows.append(
        (
            "simulators' CPU",
            ", ".join(f"{k} {v:.0f} %" for k, v in b["sims_cpu_percent"].items()),
            "",
        )
    )
    if "imkit_rest_calls" in b:  # results before it was recorded lack it
        rest = b["imkit_rest_calls"]
        per_s = rest / b["seconds_incl_drain"] if b["seconds_incl_drain"] else 0.0
        rows.append(("IMKIT REST calls in the window", f"{rest:,} ({per_s:.0f}/s)", ""))
    rows.append(
        gc_row(
            "bridge longest GC pause (measured window)", r["bridge_gc_longest_pause"], goal=False
        )
    )
    if floor:
        rec, snd = floor["receive"], floor["send"]
        rs = rec["latency_ms"]["all"]
        rows.append((f"floor: receive, {rec['clients']:,} bare socket.io clients ({rec['gc']} heap)",
                     f"p50 {_ms(rs, 'p50')} / p99 {_ms(rs, 'p99')} ms at {rec['cpu_percent']:.0f} % CPU "
                     f"(waited {rec['cpu_wait_percent']:.0f} %); {rec['missing']:,} missing", ""))  # fmt: skip
        for provider, lib in (("apns", "aioapns"), ("fcm", "firebase-admin send_each_async")):
            ss = snd["latency_ms"].get(provider)
            if ss:
                rows.append((f"floor: send {provider}, {lib}, a burst per message",
                             f"p50 {_ms(ss, 'p50')} / p99 {_ms(ss, 'p99')} ms", ""))  # fmt: skip
        rows.append(
            (
                "floor: send CPU",
                f"{snd['cpu_percent']:.0f} % (waited {snd['cpu_wait_percent']:.0f} %); "
                f"{snd['missing']:,} missing",
                "",
            )
        )
        for provider in ("apns", "fcm"):
            mine, ss = lat.get(provider), snd["latency_ms"].get(provider)
            if mine and ss and "p99" in rs:
                ref = rs["p99"] + ss["p99"]
                ratio = mine["p99"] / ref if ref else math.inf
                rows.append((f"bridge {provider} p99 vs floor (receive p99 + send p99)",
                             f"{mine['p99']:,.1f} vs {ref:,.1f} ms = {ratio:.2f}×",
                             goal_status(ratio <= GOALS["rooms_p99_vs_floor"], "≤ 2×")))  # fmt: skip
        cap = floor["capacity_estimate"]
        if cap:
            rows.append(
                ("floor: pushes/s in one core (rate ÷ receive + send CPU)", f"{cap:,.0f}", "")
            )
    if found:
        best = found["max_sustained_pushes_per_second"]
        tried = ", ".join(
            f"{s['pushes_per_second']:,.0f}{'' if s['sustained'] else ' ✗'}" for s in found["steps"]
        )
        text = f"{'≥ ' if found['top_step_sustained'] else ''}{best:,.0f} (steps: {tried})"
        cap = floor["capacity_estimate"] if floor else None
        goal = (
            goal_status(best >= GOALS["rooms_max_vs_floor"] * cap, f"≥ 0.8 × {cap:,.0f}")
            if cap
            else ""
        )
        rows.append(("bridge: max sustained pushes/s", text, goal))
    tenth_cols = ["tenth", "pushes", "bridge p50", "bridge p99"]
    floor_tenths: list[list[dict[str, Any]]] = []
    if floor:
        tenth_cols += ["receive floor p50", "p99", "send floor p50", "p99"]
        floor_tenths = [floor["receive"]["tenths"], floor["send"]["tenths"]]
    tenth_rows = []
    for k, t in enumerate(b["tenths"]):
        row = [str(t["tenth"]), f"{t.get('n', 0):,}", _ms(t, "p50"), _ms(t, "p99")]
        for ft in floor_tenths:
            row += [_ms(ft[k], "p50"), _ms(ft[k], "p99")]
        tenth_rows.append(row)
    tables = [
        {
            "title": "per tenth of the run (by emit time), ms",
            "columns": tenth_cols,
            "rows": tenth_rows,
        }
    ]
    if found:
        tables.append({
            "title": f"find-max: {found['step_duration']:g} s per step, sustained if all arrive and "
                     f"each provider's last-tenth p50 ≤ its first's + {found['max_growth_ms']:g} ms",
            "columns": ["pushes/s", "emitted", "received", "missing", "p50 1st → last",
                        "p99", "CPU / wait", "ok"],
            "rows": [
                [f"{s['pushes_per_second']:,.0f}",
                 f"{s['achieved_emit_rate'] * s['pushes_per_second'] / s['rate']:,.0f}/s"
                 + ("" if s["emitter_ok"] else " (IMKIT short)"),
                 f"{s['received']:,}", f"{s['missing']:,}",
                 " → ".join(_ms(t, "p50") for t in (s["tenths"][0], s["tenths"][-1])),
                 _ms(s["latency_ms"]["all"], "p99"),
                 f"{s['bridge_cpu_percent']:.0f} / {s['bridge_cpu_wait_percent']:.0f} %",
                 "yes" if s["sustained"] else "no"]
                for s in found["steps"]
            ],
        })  # fmt: skip
    return rows, tables
