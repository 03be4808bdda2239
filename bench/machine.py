"""The machine and its processes as ``/proc`` tells them: a process's RSS, CPU time, run-queue
wait and open files; the open-files limit; the facts a result records about the machine."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
from pathlib import Path
from typing import Any


def proc_usage(pid: int | str = "self") -> tuple[int, float]:
    """``(VmRSS in KiB, user+system CPU seconds)`` of a process, read from ``/proc``."""
    rss = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                break
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
        fields = f.read().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return rss, ticks / os.sysconf("SC_CLK_TCK")


def run_queue_wait(pid: int | str = "self") -> float:
    """Seconds the main thread of a process has been ready to run but waiting for a CPU.

    From ``/proc/<pid>/schedstat``: on a shared machine, the share of a window a process spent
    waiting is what the other processes cost it (the event loop is that thread).
    """
    with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
        return int(f.read().split()[1]) / 1e9


def raise_nofile() -> int:
    """Raise this process's open-files soft limit to its hard limit; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return int(hard)
    return int(soft)


def open_files(pid: int) -> int:
    """How many file descriptors ``pid`` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def machine_info() -> dict[str, Any]:
    """The facts docs/benchmarks.md records: cores, CPU model, RAM, Python, load at the start."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        # Read-only: which code was measured (the bench runs from a checkout of the repository).
        repo = Path(__file__).resolve().parent.parent
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=5,
        )
        commit = out.stdout.strip() or None
    return {
        "git_head": commit,
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "nofile_limit": raise_nofile(),
    }
