"""``--profile``: py-spy samples of the bridge during named phases, each summarised by function."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.processes import BenchError


class Profiler:
    """``py-spy record`` of the bridge during named phases, each summarised by function.

    py-spy samples only threads that are running Python (idle ones waiting in epoll are left out),
    so the samples show where the CPU goes; ``busy_share`` is samples / (rate × seconds), about
    the share of one core the bridge's Python code used. Without ``out_dir`` nothing is recorded.
    """

    RATE = 100

    def __init__(self, out_dir: str | None) -> None:
        self.out_dir = Path(out_dir) if out_dir else None
        self.results: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._name = ""
        self._t0 = 0.0

    def start(self, pid: int, name: str) -> None:
        """Start sampling ``pid`` for the phase ``name`` (stopping any phase still running)."""
        if self.out_dir is None:
            return
        if self._proc is not None:
            raise BenchError(f"profile phase {self._name} is still running")
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            raise BenchError("--profile needs py-spy (pip install py-spy)")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._name = name
        self._t0 = time.monotonic()
        out = self.out_dir / f"{name}.collapsed.txt"
        argv = [
            exe,
            "record",
            "-p",
            str(pid),
            "-r",
            str(self.RATE),
            "--nonblocking",
            "-f",
            "raw",
            "-o",
            str(out),
        ]
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def stop(self) -> None:
        """End the current phase (py-spy writes its file on SIGINT) and summarise it."""
        if self._proc is None or self.out_dir is None:
            return
        proc, self._proc = self._proc, None
        seconds = time.monotonic() - self._t0
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        out = self.out_dir / f"{self._name}.collapsed.txt"
        if not await asyncio.to_thread(out.exists):
            self.results[self._name] = {"error": "py-spy wrote nothing (is ptrace allowed?)"}
            return
        text = await asyncio.to_thread(out.read_text)
        summary = summarize_profile(text, self.RATE * max(0.1, seconds))
        self.results[self._name] = {"seconds": round(seconds, 1), **summary, "file": str(out)}


def _frame_name(frame: str) -> str:
    """``func (path/to/module.py:123)`` → ``func (module path)`` without the line number."""
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    for marker in ("site-packages/", "/bridge/", "lib/python3"):
        if marker in path:
            path = path.rpartition(marker)[2]
            if marker == "/bridge/":
                path = "bridge/" + path
            break
    return f"{func} ({path})"


def summarize_profile(collapsed: str, possible: float, top: int = 15) -> dict[str, Any]:
    """Sample shares from py-spy's raw (collapsed) output: per function (self), per package (self),
    and per ``bridge/`` function including what it calls (where the bridge's own code spends)."""
    self_counts: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = [
            _frame_name(f)
            for f in stack.split(";")
            if f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        self_counts[frames[-1]] += count
        for name in set(frames):
            if (
                "(bridge/" in name
                and "(bridge/cli.py)" not in name
                and "(bridge/__main__.py)" not in name
            ):
                incl[name] += count
        packages[frames[-1].rpartition("(")[2].rstrip(")").split("/")[0]] += count

    def share(c: Counter[str]) -> list[list[Any]]:
        return (
            [[name, round(100 * n / total, 1)] for name, n in c.most_common(top)] if total else []
        )

    return {
        "samples": total,
        "busy_share": round(total / possible, 3) if possible else None,
        "self_percent": share(self_counts),
        "self_by_package_percent": share(packages),
        "bridge_inclusive_percent": share(incl),
    }
