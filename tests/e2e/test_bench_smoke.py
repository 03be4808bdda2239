"""``push-bridge bench``: a small run through the CLI, as a user would start it."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.bridge_procs import WorkerCluster
from bench.gc_pauses import gc_phase
from bench.harness import BenchDevice
from bench.options import NOFILE_RESERVE, Options
from bench.processes import BenchError
from bench.run import run_bench
from bench.scenarios.room_pushes import RoomPlan, analyse_pushes, backlog_growth_ms, message_index
from bench.scenarios.steady import session_counts
from bench.sims import _Arrivals
from bench.stats import summarize
from bridge.cli import build_parser
from bridge.metrics import GC_PAUSES, Metrics


def test_bench_sessions_smoke(tmp_path: Path) -> None:
    """20 sessions: the bridge and the simulators run as child processes and a JSON result is written."""
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "bench", "sessions", "-n", "20", "--duration", "1",
         "--output", str(out), "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["scenario"] == "sessions"
    assert result["sessions"] == 20
    assert result["live_at_end"] == 20
    assert result["registration"]["devices"] == 20
    # Real processes: a Python bridge with FastAPI, aiohttp and the push libraries is tens of MiB.
    assert 20 * 1024 < result["rss_empty_kib"] < 1024 * 1024
    assert result["rss_live_kib"] > 20 * 1024
    assert isinstance(result["kib_per_session"], float)
    assert 0 < result["cold_start_to_all_live_s"] < 60
    assert 0 <= result["idle_cpu_percent"] < 200  # two cores at most
    assert result["idle_window_s"] >= 1
    assert result["machine"]["nproc"] >= 1
    assert result["curve"] == [] or all(c["live"] <= 20 for c in result["curve"])


def test_summarize_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    s = summarize(values)
    assert (s["n"], s["p50"], s["p95"], s["p99"], s["max"]) == (100, 50.0, 95.0, 99.0, 100.0)
    assert summarize([]) == {"n": 0}
    assert summarize([7.0])["p99"] == 7.0


def _bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    """``push-bridge bench ARGS --output ... --quiet`` as a child process; its JSON result."""
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "bench", *args, "--output", str(out), "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_bench_rooms_smoke(tmp_path: Path) -> None:
    """20 devices in rooms of 5, half on FCM: every push arrives once, through the bridge and
    through the bare-library floor, and every figure of the summary is there."""
    r = _bench(tmp_path, "rooms", "-n", "20", "--room-size", "5", "--rate", "10",
               "--duration", "2", "--fcm-share", "0.5")  # fmt: skip
    assert (r["scenario"], r["devices"], r["rooms"], r["room_size"]) == ("rooms", 20, 4, 5)
    assert (r["apns_devices"], r["fcm_devices"]) == (10, 10)
    assert r["options"]["split_sims"] is True  # IMKIT in a process of its own
    b = r["bridge"]
    assert (b["messages"], b["expected"]) == (20, 100)
    assert (b["received"], b["missing"], b["duplicate"], b["unexpected"]) == (100, 0, 0, 0)
    for channel in ("all", "apns", "fcm"):
        s = b["latency_ms"][channel]
        assert 0 < s["p50"] <= s["p95"] <= s["p99"] <= s["max"] < 10_000
    assert [t["tenth"] for t in b["tenths"]] == list(range(1, 11))
    assert sum(t.get("n", 0) for t in b["tenths"]) == 100
    assert 0 < b["bridge_cpu_percent"] < 200
    assert set(b["sims_cpu_percent"]) == {"imkit", "providers"}
    assert r["bridge_gc_longest_pause"]["seconds"] is not None
    receive, send = r["floor"]["receive"], r["floor"]["send"]
    assert (receive["connected"], receive["failed"]) == (20, 0)
    assert (receive["expected"], receive["missing"], receive["duplicate"]) == (100, 0, 0)
    assert (send["expected"], send["missing"], send["duplicate"]) == (100, 0, 0)
    assert send["outcomes"] == {"200": 100}
    assert set(send["latency_ms"]) == {"all", "apns", "fcm"}
    assert receive["cpu_percent"] > 0 and send["cpu_percent"] > 0
    assert r["floor"]["capacity_estimate"] > 0
    labels = [row[0] for row in r["summary"]]
    assert "bridge apns p99 vs floor (receive p99 + send p99)" in labels
    assert "bridge fcm p99 vs floor (receive p99 + send p99)" in labels
    assert r["tables"][0]["columns"][:4] == ["tenth", "pushes", "bridge p50", "bridge p99"]


def test_bench_rooms_find_max_smoke(tmp_path: Path) -> None:
    """--find-max steps the rate up and stops at the first step that is not sustained."""
    r = _bench(tmp_path, "rooms", "-n", "20", "--room-size", "5", "--rate", "10",
               "--duration", "1", "--no-floor", "--find-max", "--step-rates", "50,100",
               "--step-duration", "1")  # fmt: skip
    assert r["floor"] is None
    assert r["bridge"]["missing"] == 0
    found = r["find_max"]
    steps = found["steps"]
    assert [s["pushes_per_second"] for s in steps] == [50.0, 100.0][: len(steps)]
    assert all(s["sustained"] for s in steps[:-1])
    sustained = [s["pushes_per_second"] for s in steps if s["sustained"]]
    assert found["max_sustained_pushes_per_second"] == max(sustained, default=0.0)
    assert steps[0]["expected"] == 50 and steps[0]["received"] + steps[0]["missing"] == 50
    assert r["tables"][1]["columns"][0] == "pushes/s"


@pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="--workers needs redis-server on PATH (scripts/test.sh installs it from Debian's packages)",
)
def test_bench_rooms_workers_smoke(tmp_path: Path) -> None:
    """--workers 2: a push-bridge api and two workers on a private redis-server. Every push
    arrives once, both workers hold sessions, and CPU and RSS are reported per process."""
    r = _bench(tmp_path, "rooms", "-n", "40", "--room-size", "10", "--rate", "10",
               "--duration", "3", "--fcm-share", "0.5", "--no-floor", "--workers", "2")  # fmt: skip
    assert (r["workers"], r["options"]["workers"], r["devices"], r["rooms"]) == (2, 2, 40, 4)
    assert r["went_live"]["not_live"] == 0
    b = r["bridge"]
    assert (b["messages"], b["expected"]) == (30, 300)
    assert (b["received"], b["missing"], b["duplicate"], b["unexpected"]) == (300, 0, 0, 0)
    live = {w: s.get("live", 0) for w, s in r["bridge_sessions_by_process"].items()}
    assert set(live) == {"worker-1", "worker-2"}
    assert all(n > 0 for n in live.values()) and sum(live.values()) == 40, live
    processes = {"api", "worker-1", "worker-2"}
    assert set(b["bridge_cpu_by_process"]) == processes
    assert b["bridge_cpu_percent"] == pytest.approx(
        sum(b["bridge_cpu_by_process"].values()), abs=0.2
    )
    assert b["redis_cpu_percent"] is not None
    assert set(r["bridge_rss_kib_by_process"]) == processes
    assert r["bridge_rss_kib"] == sum(r["bridge_rss_kib_by_process"].values()) > 3 * 20 * 1024
    assert r["bridge_gc_longest_pause"]["seconds"] is not None
    rows = {row[0]: row[1] for row in r["summary"]}
    assert rows["bridge processes"].startswith("push-bridge api + 2 workers on Redis")
    assert "by process" in " ".join(rows)


def test_bench_steady_smoke(tmp_path: Path) -> None:
    """Idle RSS per session at one count, RSS growth per device, and the GC pauses."""
    r = _bench(tmp_path, "steady", "-n", "20", "--messages", "30", "--growth-devices", "5")
    (idle,) = r["idle"]
    assert (idle["sessions"], idle["not_live"]) == (20, 0)
    assert 20 * 1024 < idle["rss_empty_kib"] <= idle["rss_live_kib"]
    assert idle["kib_per_session"] == round((idle["rss_live_kib"] - idle["rss_empty_kib"]) / 20, 1)
    assert idle["open_files_peak"] >= 20  # a socket per session at least
    assert idle["gc_longest_pause"]["seconds"] > 0
    g = r["growth"]
    assert (g["devices"], g["messages"], g["state"]) == (5, 30, "foreground")
    assert isinstance(g["kib_per_device"], float)
    assert g["gc_longest_pause"]["seconds"] > 0
    assert "reconnects" not in r  # --reconnects 0, the default: no rounds, no rows
    assert not any("reconnect" in row[0] for row in r["summary"])


def test_bench_steady_reconnects_smoke(tmp_path: Path) -> None:
    """--reconnects 2: after the idle figure, IMKIT drops every socket twice; each round every
    session goes live again and RSS per live session is reported beside the idle figure."""
    n = 50
    r = _bench(tmp_path, "steady", "-n", str(n), "--messages", "0", "--reconnects", "2")
    (idle,) = r["idle"]
    assert (idle["sessions"], idle["not_live"], r["growth"]) == (n, 0, None)
    again = r["reconnects"]
    assert (again["sessions"], again["live_before"], again["connect_rate"]) == (n, n, 1000.0)
    assert [x["round"] for x in again["rounds"]] == [1, 2]
    for x in again["rounds"]:
        assert x["dropped"] >= n and x["connects"] >= n
        assert x["upstream_reconnects"] >= n  # every session left live and came back
        assert x["upstream_reconnects"] == sum(x["reconnect_reasons"].values())
        assert 0 < x["seconds_to_all_live"] < 30
        assert x["rss_kib"] > 20 * 1024
        rss_empty, rss_live = idle["rss_empty_kib"], idle["rss_live_kib"]
        assert x["kib_per_session"] == round((x["rss_kib"] - rss_empty) / n, 1)
        assert x["growth_kib_per_session"] == round((x["rss_kib"] - rss_live) / n, 2)
        assert isinstance(x["kib_per_session"], float)
        assert isinstance(x["growth_kib_per_session"], float)
        assert x["gc_longest_pause"]["seconds"] is not None
    assert sum(x["upstream_reconnects"] for x in again["rounds"]) >= 2 * n
    rows = [
        row for row in r["summary"] if row[0].startswith("RSS per live session after reconnect")
    ]
    assert [row[0] for row in rows] == [
        f"RSS per live session after reconnect {i} at {n}" for i in (1, 2)
    ]
    assert all(row[2].startswith("≤ idle + 1 KiB: ") for row in rows)
    assert all(row[2].endswith("(informational)") for row in rows)


# ---------------------------------------------------------------------- the pieces, no processes


def _plan(devices: int, size: int) -> RoomPlan:
    ds = [BenchDevice(f"u{i}", f"d{i}", "t", "ios", f"tok{i}") for i in range(devices)]
    return RoomPlan.build(ds, size)


def test_room_plan_round_robin() -> None:
    plan = _plan(7, 3)
    assert plan.rooms == [[0, 1, 2], [3, 4, 5], [6]]
    assert plan.ids == ["room-00000", "room-00001", "room-00002"]
    assert plan.expected(4) == 3 + 3 + 1 + 3
    assert plan.by_token["tok4"] == 4
    assert message_index("b3-0000042") == 42


def test_analyse_pushes_counts_missing_duplicate_unexpected() -> None:
    plan = _plan(4, 2)  # rooms [0, 1] and [2, 3]
    emitted = {"b1-0000000": 10.0, "b1-0000001": 10.5}  # room 0, then room 1
    arrivals = [
        ("b1-0000000", 0, 10.010, "apns"),
        ("b1-0000000", 0, 10.020, "apns"),  # again: a duplicate
        ("b1-0000000", 2, 10.030, "apns"),  # not a member of room 0
        ("b1-0000001", 2, 10.600, "fcm"),
        ("b9-0000000", 1, 10.700, "apns"),  # not emitted in this window: ignored
    ]  # device 1 (room 0) and device 3 (room 1) never got theirs
    a = analyse_pushes(emitted, arrivals, plan, started=10.0, span=1.0)
    assert (a["expected"], a["received"], a["missing"]) == (4, 2, 2)
    assert (a["duplicate"], a["unexpected"]) == (1, 1)
    assert a["latency_ms"]["apns"]["max"] == pytest.approx(10.0)
    assert a["latency_ms"]["fcm"]["max"] == pytest.approx(100.0)
    assert a["tenths"][0]["n"] == 1 and a["tenths"][5]["n"] == 1
    assert {c: sum(t["n"] for t in ts) for c, ts in a["channel_tenths"].items()} == {
        "apns": 1,
        "fcm": 1,
    }


def test_backlog_growth_is_last_tenth_p50_minus_first() -> None:
    tenths = [{"tenth": k + 1, "n": 1, "p50": 10.0 + 100 * k, "p99": 0.0} for k in range(10)]
    assert backlog_growth_ms({"tenths": tenths}) == 900.0
    assert backlog_growth_ms({"tenths": [{"tenth": 1, "n": 1, "p50": 5.0}]}) is None


def test_backlog_growth_is_judged_per_provider() -> None:
    """Half the pushes fast (APNs), half piling up (FCM): the overall p50 can stay flat while one
    provider's backlog grows; the growth is that provider's."""
    flat = [{"tenth": k + 1, "n": 1, "p50": 20.0, "p99": 0.0} for k in range(10)]
    piling = [{"tenth": k + 1, "n": 1, "p50": 20.0 + 1_000 * k, "p99": 0.0} for k in range(10)]
    window = {"tenths": flat, "channel_tenths": {"apns": flat, "fcm": piling}}
    assert backlog_growth_ms(window) == 9_000.0
    assert backlog_growth_ms({"tenths": flat, "channel_tenths": {"apns": flat}}) == 0.0


def test_scenario_defaults_and_session_counts() -> None:
    rooms = Options.from_dict({"sessions": None, "rate": None, "fcm_share": 0.5}, "rooms")
    assert (rooms.sessions, rooms.rate, rooms.duration, rooms.ios_share) == (2000, 20.0, 30.0, 0.5)
    latency = Options.from_dict({"sessions": ["300"], "rate": None}, "latency")
    assert (latency.sessions, latency.rate, latency.ios_share) == (300, 200.0, 0.5)
    steady = Options.from_dict({"sessions": None}, "steady")
    assert steady.session_counts == ("2000", "10000")
    with pytest.raises(ValueError, match="one number"):
        Options.from_dict({"sessions": ["1", "2"]}, "latency")
    most = 20_000 - NOFILE_RESERVE
    assert session_counts(["10000", "max", "2000"], 20_000) == [2000, 10000, most]


def test_reconnects_option_is_for_steady_only() -> None:
    assert Options.from_dict({"reconnects": None}, "steady").reconnects == 0
    assert Options.from_dict({"reconnects": 0}, "latency").reconnects == 0
    assert Options.from_dict({"reconnects": 3}, "steady").reconnects == 3
    args = build_parser().parse_args(["bench", "steady", "-n", "50", "--reconnects", "2"])
    assert Options.from_dict(vars(args), args.scenario).reconnects == 2
    assert build_parser().parse_args(["bench", "steady"]).reconnects is None
    with pytest.raises(ValueError, match="0 or more"):
        Options.from_dict({"reconnects": -1}, "steady")
    # Before any process starts: the run says why and stops.
    with pytest.raises(BenchError, match="--reconnects 2 is for the steady scenario only"):
        asyncio.run(run_bench("rooms", {"reconnects": 2, "quiet": True}))


def test_workers_option_is_for_rooms_only() -> None:
    assert Options.from_dict({"workers": None}, "sessions").workers == 1
    assert Options.from_dict({"workers": 1}, "latency").workers == 1
    assert Options.from_dict({"workers": 2}, "rooms").workers == 2
    with pytest.raises(ValueError, match="1 or more"):
        Options.from_dict({"workers": 0}, "rooms")
    # Before any process starts: the run says why and stops.
    with pytest.raises(BenchError, match="--workers 2 is for the rooms scenario only"):
        asyncio.run(run_bench("latency", {"workers": 2, "quiet": True}))


async def test_workers_without_redis_server_name_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server there
    cluster = WorkerCluster(tmp_path, {}, {}, 2)
    with pytest.raises(BenchError, match="--workers needs redis-server on PATH"):
        await cluster.spawn()
    assert cluster.children == {} and cluster.support == {}
    await cluster.stop()


def test_gc_phase_is_exact_only_when_the_gauge_grew() -> None:
    assert gc_phase(0.2, 0.5) == {"seconds": 0.5, "exact": True, "before_phase": 0.2}
    assert gc_phase(0.2, 0.2)["exact"] is False
    assert gc_phase(None, 0.2)["seconds"] is None


def test_gc_longest_pause_metric() -> None:
    """bridge_gc_longest_pause_seconds reports a collection the process just made."""
    metrics = Metrics()
    garbage = [[i] for i in range(200_000)]
    t0 = time.perf_counter()
    gc.collect()
    took = time.perf_counter() - t0
    del garbage
    value = metrics.registry.get_sample_value("bridge_gc_longest_pause_seconds")
    assert value is not None and 0 < value
    assert GC_PAUSES.longest >= 0.5 * took  # this collection, or a longer one before it
    assert gc.callbacks.count(GC_PAUSES) == 1
    Metrics()
    assert gc.callbacks.count(GC_PAUSES) == 1  # one timer per process, however many registries


def test_sims_record_every_push_only_when_asked() -> None:
    arrivals = _Arrivals()
    arrivals.add(1.0, 200, "b1-0000000", "tok")
    assert arrivals.pushes == [] and arrivals.by_message == {"b1-0000000": 1.0}
    arrivals.reset(per_push=True)
    arrivals.add(2.0, 200, "b1-0000000", "tok")
    arrivals.add(2.5, 200, "b1-0000000", "tok")
    arrivals.add(3.0, 500, None, "tok")  # no message id: nothing to join
    assert arrivals.pushes == [("b1-0000000", "tok", 2.0, 200), ("b1-0000000", "tok", 2.5, 200)]
