"""``push-bridge bench``: a small run through the CLI, as a user would start it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bridge.bench import summarize


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
