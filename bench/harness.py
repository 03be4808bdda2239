"""``push-bridge bench SCENARIO``: load and latency benchmarks of a real bridge process.

Each party runs in a process of its own, so each is measured alone:

- the simulators: ``python -m bench.sims`` (IMKIT, APNs and FCM in one process, or with
  ``split_sims`` IMKIT in one and the two providers in another);
- the bridge: ``python -m bridge serve`` with an SQLite store in a temporary directory, its RSS and
  CPU read from ``/proc/<pid>``;
- the load: this process (users, registrations, control calls), a separate ``python -m
  bench.harness api-load`` process for ``api``, ``python -m bench.harness bare`` for the
  bare-library baseline of ``throughput``, and ``python -m bench.floor`` for the floor of
  ``rooms`` (run after the bridge has stopped, never beside it).

Scenarios (see docs/benchmarks.md for what each one measures and the goals):

- ``sessions``: N live sessions in one worker process: RSS per session, idle CPU;
- ``storm``: N sessions to all live after IMKIT drops them all, and from a cold start;
- ``latency``: R chat messages per second over N backgrounded devices, emit → provider p50..max;
- ``throughput``: pushes per second through the whole bridge vs. a bare library loop;
- ``api``: subscribe and state calls per second and their latency, from a load process;
- ``rooms``: chat-shaped fan-out (N devices in rooms of M, R messages/s), emit → provider per
  push, per tenth of the run, bridge CPU, the highest sustained rate (``find_max``), beside the
  bare-library floor measured in the same run (``python -m bench.floor``);
- ``steady``: idle RSS per live session at several counts, RSS growth per device after K
  messages each, and the longest GC pause (``bridge_gc_longest_pause_seconds``).

:func:`run_bench` returns a JSON-able dict; the CLI writes it to ``--output``. Narration goes to a
rich console (progress bars, a summary table); nothing here uses ``print``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

import aiohttp
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from bench.sims import proc_usage, raise_nofile, run_queue_wait

SCENARIOS = ("sessions", "storm", "latency", "throughput", "api", "rooms", "steady")
ADMIN_TOKEN = "bench-admin-token"
SENDER = "bench-sender"
#: The goals of issue 7 and issue 12 (reported against, never asserted).
GOALS = {
    "kib_per_session": 40.0,
    "storm_seconds": 20.0,
    "latency_p99_ms": 25.0,
    "throughput_ratio": 0.8,
    # rooms: p99 within this many times the floor's; max sustained at least this share of it
    "rooms_p99_vs_floor": 2.0,
    "rooms_max_vs_floor": 0.8,
    # steady: KiB per idle live session below 10,000 sessions / from 10,000 on
    "steady_kib_per_session": 32.0,
    "steady_kib_per_session_10k": 30.0,
    "steady_growth_kib_per_device": 16.0,
    "steady_gc_pause_ms": 50.0,
}
#: Defaults that differ by scenario (an option the caller leaves at None takes these).
SCENARIO_DEFAULTS: dict[str, dict[str, Any]] = {
    "rooms": {"sessions": 2000, "rate": 20.0, "duration": 30.0, "ios_share": 1.0},
    "steady": {"sessions": ["2000", "10000"]},
}
#: ``steady --sessions max`` leaves this many descriptors of the open-files limit for the rest.
NOFILE_RESERVE = 1000


class BenchError(RuntimeError):
    """A benchmark could not run to the end (a process died, a wait timed out)."""


# ---------------------------------------------------------------------- options and small helpers


@dataclass
class Options:
    """What ``run_bench`` takes (the CLI's ``vars(args)``; unknown keys are ignored)."""

    sessions: int = 1000
    rate: float = 200.0
    duration: float = 10.0
    output: str | None = None
    plots: str | None = None
    profile: str | None = None
    connect_rate: float | None = None
    concurrency: int = 32
    pushes: int = 20_000
    push_concurrency: int = 100
    ios_share: float = 0.5
    split_sims: bool = False
    keep: bool = False
    quiet: bool = False
    # rooms
    room_size: int = 50
    fcm_share: float | None = None
    find_max: bool = False
    step_rates: str = "250,500,750,1000,1250,1500"
    step_duration: float = 10.0
    max_growth_ms: float = 100.0
    floor: bool = True
    floor_gc: str = "frozen"
    # steady: idle session counts ("max": the open-files limit less NOFILE_RESERVE), growth phase
    session_counts: tuple[str, ...] = ()
    messages: int = 3000
    growth_devices: int = 20
    growth_state: str = "foreground"
    growth_rate: float | None = None

    @classmethod
    def from_dict(cls, opts: dict[str, Any], scenario: str | None = None) -> Options:
        """``opts`` over the scenario's defaults; ``sessions`` may be a list (the CLI's ``-n A B``)."""
        names = {f.name for f in fields(cls)}
        given = {k: v for k, v in opts.items() if k in names and v is not None}
        merged = {**SCENARIO_DEFAULTS.get(scenario or "", {}), **given}
        sessions = merged.get("sessions")
        if isinstance(sessions, list | tuple):
            counts = tuple(str(x) for x in sessions)
            if scenario != "steady" and (len(counts) != 1 or not counts[0].isdigit()):
                raise ValueError(f"{scenario} takes one number of sessions, not {' '.join(counts)}")
            merged["session_counts"] = counts
            merged["sessions"] = max((int(c) for c in counts if c.isdigit()), default=1000)
        if merged.get("fcm_share") is not None:
            merged["ios_share"] = 1.0 - float(merged["fcm_share"])
        return cls(**merged)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Count, mean and nearest-rank p50/p95/p99/max of ``values`` (empty: ``{"n": 0}``)."""
    if not values:
        return {"n": 0}
    s = sorted(values)
    n = len(s)

    def q(p: float) -> float:
        return s[min(n - 1, max(0, math.ceil(p * n) - 1))]

    return {
        "n": n,
        "mean": round(math.fsum(s) / n, 3),
        "p50": round(q(0.50), 3),
        "p95": round(q(0.95), 3),
        "p99": round(q(0.99), 3),
        "max": round(s[-1], 3),
    }


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format as ``{'name{labels}': value}`` (comments and junk skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


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


#: The source checkout holding this package (the bench is not part of the installed wheel).
CHECKOUT = Path(__file__).resolve().parent.parent


def bench_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with :data:`CHECKOUT` first on PYTHONPATH:
    a child started as ``python -m bench.…`` in a temporary directory imports this package."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHECKOUT), env.get("PYTHONPATH", "")) if p)
    return env


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(
    cond: Callable[[], Awaitable[bool]],
    timeout: float,  # noqa: ASYNC109 - a deadline is the point of this helper
    what: str,
    interval: float = 0.25,
) -> float:
    """Poll ``cond`` until true; returns the seconds it took, raises :class:`BenchError` at ``timeout``."""
    t0 = time.monotonic()
    while not await cond():
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic() - t0


# ---------------------------------------------------------------------- child processes


class Child:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log: Path, cwd: Path
    ) -> None:
        self.name = name
        self.log = log
        self._log_file: IO[bytes] = log.open("ab")
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The last lines of its log (for an error message)."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def check(self) -> None:
        """Raise :class:`BenchError` with its last log lines if it has exited."""
        if not self.alive():
            raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    async def stop(self, timeout: float = 30.0) -> int | None:  # noqa: ASYNC109 - a shutdown deadline
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = await asyncio.to_thread(self.proc.wait)
        self._log_file.close()
        return code


@dataclass(frozen=True, slots=True)
class BenchDevice:
    """One simulated app install: an IMKIT user with one device and one push token."""

    client_id: str
    device_id: str
    token: str
    type: str
    push_token: str

    def __repr__(self) -> str:
        # Tokens stay out of reprs, even simulated ones.
        return f"BenchDevice({self.device_id!r}, {self.type!r})"


# ---------------------------------------------------------------------- narration


class Ui:
    """Progress bars and notes on a rich console (or nothing, when ``quiet``)."""

    def __init__(self, console: Console | None = None, *, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}")

    @contextlib.contextmanager
    def progress(self, what: str, total: float | None) -> Iterator[Callable[[float], None]]:
        """A progress bar for one phase; yields ``update(completed)``."""
        if self.quiet:
            yield lambda _done: None
            return
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(what, total=total)
            yield lambda done: bar.update(task, completed=done)


# ---------------------------------------------------------------------- the harness


class Harness:
    """Simulators, one bridge process and the HTTP plumbing of a benchmark run."""

    def __init__(self, opts: Options, ui: Ui) -> None:
        self.opts = opts
        self.ui = ui
        self.tmp = Path(tempfile.mkdtemp(prefix="push-bridge-bench-"))
        self.sims: dict[str, Child] = {}
        self.sims_info: dict[str, dict[str, Any]] = {}
        self.sims_env: dict[str, str] = {}
        self.bridge: Child | None = None
        self.bridge_url = ""
        self._http: aiohttp.ClientSession | None = None
        self._user_seq = 0
        #: ``POST /me/subscribe`` calls repeated after a 429/503 or a connection error
        self.subscribe_retries = 0
        self.prof = Profiler(opts.profile)

    # -- lifecycle

    async def __aenter__(self) -> Harness:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=120), connector=aiohttp.TCPConnector(limit=0)
        )
        try:
            await self._start_sims()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.prof.stop()
        await self.stop_bridge()
        for child in self.sims.values():
            await child.stop(10)
        if self._http is not None:
            await self._http.close()
        if self.opts.keep:
            self.ui.note(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "use the harness as an async context manager"
        return self._http

    async def _start_sims(self) -> None:
        parts = ("imkit", "providers") if self.opts.split_sims else ("all",)
        for part in parts:
            ready = self.tmp / f"sims-{part}.json"
            argv = [
                sys.executable, "-m", "bench.sims",
                "--state-dir", str(self.tmp / "sims"), "--ready-file", str(ready), "--parts", part,
            ]  # fmt: skip
            child = Child(
                f"simulators ({part})",
                argv,
                bench_env(),
                self.tmp / f"sims-{part}.log",
                self.tmp,
            )
            self.sims[part] = child

            async def is_ready(child: Child = child, ready: Path = ready) -> bool:
                child.check()
                return await asyncio.to_thread(ready.exists)

            await wait_until(is_ready, 60, "the simulators to start", interval=0.05)
            info = json.loads(ready.read_text())
            self.sims_info[part] = info
            self.sims_env.update(info["env"])

    def control(self, role: str) -> str:
        """Control URL of the simulator process that runs ``role`` (``imkit`` or ``providers``)."""
        return str(self.sims_info["all" if "all" in self.sims_info else role]["control"])

    @property
    def imkit_url(self) -> str:
        return self.sims_env["BRIDGE_IMKIT_URL"]

    def sims_pids(self) -> dict[str, int]:
        return {part: int(info["pid"]) for part, info in self.sims_info.items()}

    def profile(self, phase: str) -> None:
        """Start profiling the bridge for ``phase`` (with ``--profile``); ``await prof.stop()`` ends it."""
        if self.bridge is not None:
            self.prof.start(self.bridge.pid, phase)

    async def start_bridge(self, *, profile: str | None = None, **env: object) -> float:
        """Start ``python -m bridge serve``; returns its spawn time (monotonic) once /readyz is 200.

        With ``profile``, the profiler's phase of that name starts right after the spawn.
        """
        if self.bridge is not None:
            raise BenchError("a bridge is already running")
        port = free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        rate = self.opts.connect_rate or 1000.0
        settings = {
            **self.sims_env,
            "BRIDGE_HOST": "127.0.0.1",
            "BRIDGE_PORT": str(port),
            "BRIDGE_STORE": f"sqlite:///{self.tmp / 'bridge.db'}",
            "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN,
            "BRIDGE_LOG_LEVEL": os.environ.get("BENCH_BRIDGE_LOG_LEVEL", "WARNING"),
            "BRIDGE_LOG_FORMAT": os.environ.get("BENCH_BRIDGE_LOG_FORMAT", "text"),
            # The load is the bench, not an abusive app: no per-user API limit.
            "BRIDGE_RATE_LIMIT_PER_MINUTE": "1000000",
            "BRIDGE_CONNECT_RATE": str(rate),
            "BRIDGE_CONNECT_BURST": str(max(1, int(rate))),
            "BRIDGE_PUSH_CONCURRENCY": str(self.opts.push_concurrency),
        }
        settings.update({k: str(v) for k, v in env.items()})
        # cwd is the temp dir: a stray .env in the caller's directory must not configure the bridge.
        child = Child(
            "bridge",
            [sys.executable, "-m", "bridge", "serve"],
            {**base, **settings},
            self.tmp / "bridge.log",
            self.tmp,
        )
        self.bridge = child
        self.bridge_url = f"http://127.0.0.1:{port}"
        if profile:
            self.profile(profile)

        async def ready() -> bool:
            child.check()
            try:
                async with self.http.get(f"{self.bridge_url}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(
            ready, 120 + self.opts.sessions / 100, "the bridge to be ready", interval=0.05
        )
        return child.started

    async def stop_bridge(self) -> None:
        await self.prof.stop()  # py-spy follows the process it samples
        if self.bridge is not None:
            await self.bridge.stop(60)
            self.bridge = None

    def bridge_usage(self) -> tuple[int, float]:
        """``(RSS KiB, CPU seconds)`` of the bridge process."""
        if self.bridge is None:
            raise BenchError("no bridge is running")
        self.bridge.check()
        return proc_usage(self.bridge.pid)

    # -- HTTP helpers

    async def get_json(self, url: str) -> Any:
        async with self.http.get(url) as r:
            r.raise_for_status()
            return await r.json()

    async def post_json(self, url: str, body: object) -> Any:
        async with self.http.post(url, json=body) as r:
            if r.status >= 400:
                raise BenchError(f"POST {url} answered {r.status}: {(await r.text())[:300]}")
            return await r.json()

    async def metrics(self) -> dict[str, float]:
        if self.bridge is not None:
            self.bridge.check()
        async with self.http.get(f"{self.bridge_url}/metrics") as r:
            return parse_metrics(await r.text())

    async def sessions(self) -> dict[str, int]:
        """The bridge's sessions by state (``bridge_sessions``)."""
        m = await self.metrics()
        prefix = 'bridge_sessions{state="'
        return {k[len(prefix) : -2]: int(v) for k, v in m.items() if k.startswith(prefix)}

    async def reconnects(self) -> dict[str, int]:
        """``bridge_upstream_reconnects_total`` by reason (why sessions had to connect again)."""
        prefix = 'bridge_upstream_reconnects_total{reason="'
        m = await self.metrics()
        return {k[len(prefix) : -2]: int(v) for k, v in m.items() if k.startswith(prefix)}

    def sims_cpu(self) -> float:
        """CPU seconds used so far by the simulator processes."""
        return sum(proc_usage(pid)[1] for pid in self.sims_pids().values())

    async def live(self) -> int:
        try:
            return (await self.sessions()).get("live", 0)
        except aiohttp.ClientError:
            return 0  # not serving yet (a cold start still loading its devices)

    async def sims_stats(self, role: str, since: float = 0.0) -> dict[str, Any]:
        stats: dict[str, Any] = await self.get_json(
            f"{self.control(role)}/bench/stats?since={since}"
        )
        return stats

    async def reset_arrivals(self, *, per_push: bool = False) -> None:
        """Forget emits and arrivals; ``per_push`` also records every push (``GET /bench/pushes``)."""
        for part in self.sims_info:
            await self.post_json(
                f"{self.sims_info[part]['control']}/bench/reset", {"per_push": per_push}
            )

    def spawn(
        self, name: str, argv: list[str], spec: dict[str, Any], env: dict[str, str] | None = None
    ) -> tuple[Child, Path]:
        """Start ``python -m ARGV... SPEC OUT`` with ``spec`` as a JSON file; returns it and OUT."""
        slug = name.replace(" ", "-")
        spec_file, out = self.tmp / f"{slug}.json", self.tmp / f"{slug}.out.json"
        spec_file.write_text(json.dumps(spec))
        child = Child(
            name,
            [sys.executable, "-m", *argv, str(spec_file), str(out)],
            bench_env(env),
            self.tmp / f"{slug}.log",
            self.tmp,
        )
        return child, out

    async def run_to_end(
        self,
        child: Child,
        what: str,
        timeout: float,  # noqa: ASYNC109 - a deadline for the whole child
        *,
        total: int | None = None,
        done_so_far: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        """Wait for ``child`` to exit 0 (a progress bar of ``done_so_far()`` out of ``total``)."""
        with self.ui.progress(what, total) as update:

            async def finished() -> bool:
                if self.bridge is not None:
                    self.bridge.check()
                if done_so_far is not None:
                    with contextlib.suppress(aiohttp.ClientError, KeyError):
                        update(await done_so_far())
                if child.alive():
                    return False
                if child.proc.returncode != 0:
                    raise BenchError(f"{child.name} failed:\n{child.tail()}")
                return True

            await wait_until(finished, timeout, child.name)
        await child.stop()

    # -- population

    async def create_devices(self, n: int, ios_share: float | None = None) -> list[BenchDevice]:
        """Make ``n`` IMKIT users, each with one device (``ios`` or ``fcm``), not yet registered."""
        share = self.opts.ios_share if ios_share is None else ios_share
        devices: list[BenchDevice] = []
        start = self._user_seq
        self._user_seq += n
        for lo in range(start, start + n, 2000):
            k = min(2000, start + n - lo)
            answer = await self.post_json(
                f"{self.control('imkit')}/bench/users", {"prefix": "u", "n": k, "start": lo}
            )
            for i, token in zip(range(lo, lo + k), answer["tokens"], strict=True):
                # Spread evenly: device i is an iPhone when the running share of iPhones grows.
                ios = math.floor((i + 1) * share) > math.floor(i * share)
                devices.append(
                    BenchDevice(
                        client_id=f"u{i:06d}",
                        device_id=f"dev-{i:06d}",
                        token=token,
                        type="ios" if ios else "fcm",
                        push_token=f"{i:064x}" if ios else f"fcm-token-{i:06d}",
                    )
                )
        return devices

    async def register(
        self, devices: list[BenchDevice], concurrency: int = 64, *, state: str = "background"
    ) -> dict[str, Any]:
        """``POST /me/subscribe`` every device (in ``state``); returns the rate and latency seen."""
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        queue = list(reversed(devices))
        done = 0

        async def worker(update: Callable[[float], None]) -> None:
            nonlocal done
            while queue:
                d = queue.pop()
                t = time.monotonic()
                status = await self._subscribe(d, state)
                latencies.append((time.monotonic() - t) * 1000)
                statuses[status] += 1
                done += 1
                update(done)

        t0 = time.monotonic()
        retries0 = self.subscribe_retries
        with self.ui.progress(f"registering {len(devices)} devices", len(devices)) as update:
            await asyncio.gather(*(worker(update) for _ in range(min(concurrency, len(devices)))))
        seconds = time.monotonic() - t0
        if set(statuses) != {200}:
            raise BenchError(f"subscribe failed: statuses {dict(statuses)}")
        return {
            "devices": len(devices),
            "seconds": round(seconds, 2),
            "per_second": round(len(devices) / seconds, 1) if seconds else None,
            "latency_ms": summarize(latencies),
            "retries": self.subscribe_retries - retries0,
        }

    async def _subscribe(self, d: BenchDevice, state: str = "background") -> int:
        body: dict[str, Any] = {
            "type": d.type,
            "token": d.push_token,
            "deviceId": d.device_id,
            "state": state,
        }
        if state == "foreground":
            body["ttl"] = 3600  # the longest allowed: a run must not see it lapse
        status = 503
        for attempt in range(8):
            delay = 0.2 * (attempt + 1)
            try:
                async with self.http.post(
                    f"{self.bridge_url}/me/subscribe",
                    json=body,
                    headers={"IM-Authorization": d.token},
                ) as r:
                    await r.read()
                    status = r.status
                    if status not in (429, 503):
                        return status
                    # As an app would: wait as told (a busy IMKIT behind a connect burst).
                    with contextlib.suppress(ValueError):
                        delay = min(5.0, float(r.headers.get("Retry-After", delay)))
            except aiohttp.ClientError:
                if self.bridge is not None:
                    self.bridge.check()
            self.subscribe_retries += 1
            await asyncio.sleep(delay)
        return status

    async def wait_live(
        self,
        n: int,
        what: str,
        timeout: float,  # noqa: ASYNC109 - a deadline for the whole phase
        *,
        samples: list[dict[str, float]] | None = None,
        t0: float | None = None,
        imkit_since: float | None = None,
    ) -> float:
        """Wait until ``n`` sessions are live (and, with ``imkit_since``, IMKIT saw ``n`` new connects).

        Returns seconds since ``t0`` (default: now). ``samples`` collects ``{t, live, rss_kib}``.
        """
        start = time.monotonic() if t0 is None else t0
        with self.ui.progress(what, n) as update:

            async def cond() -> bool:
                # IMKIT's count of authenticated sockets: known even while a starting bridge is
                # still loading its devices and not yet serving /metrics.
                stats = (await self.sims_stats("imkit", imkit_since or 0.0))["imkit"]
                live = await self.live()
                update(max(live, int(stats["live_sockets"])))
                if samples is not None and self.bridge is not None:
                    rss, _ = self.bridge_usage()
                    samples.append(
                        {
                            "t": round(time.monotonic() - start, 3),
                            "live": int(stats["live_sockets"]),
                            "rss_kib": rss,
                        }
                    )
                if live < n:
                    return False
                return imkit_since is None or int(stats["connects_since"]) >= n

            try:
                await wait_until(cond, timeout, what, interval=0.2)
            except BenchError:
                raise BenchError(
                    f"timed out waiting for {what}: sessions {await self.sessions()}"
                ) from None
        return time.monotonic() - start

    async def wait_mostly_live(self, n: int, what: str, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109 - a deadline
        """Like :meth:`wait_live`, for scenarios that measure something else: settles for
        ≥ 99.9 % live when the count has not moved for 15 s, and says how many never went live."""
        t0 = time.monotonic()
        last, still = -1, 0
        with self.ui.progress(what, n) as update:

            async def cond() -> bool:
                nonlocal last, still
                live = await self.live()
                update(live)
                still = still + 1 if live == last else 0
                last = live
                return live >= n or (live >= n - max(1, n // 1000) and still >= 75)

            try:
                await wait_until(cond, timeout, what, interval=0.2)
            except BenchError:
                raise BenchError(
                    f"timed out waiting for {what}: sessions {await self.sessions()}"
                ) from None
        stuck = n - last
        if stuck:
            self.ui.note(
                f"[yellow]{stuck} of {n} sessions never went live: {await self.sessions()}[/yellow]"
            )
        return {
            "seconds": round(time.monotonic() - t0, 1),
            "not_live": stuck,
            "sessions": await self.sessions(),
        }

    async def sample_memory(self, samples: list[dict[str, float]], interval: float = 0.5) -> None:
        """Append ``{t, live, rss_kib}`` every ``interval`` seconds until cancelled (``live``: the
        sockets IMKIT has authenticated, i.e. the bridge's live sessions)."""
        t0 = time.monotonic()
        while True:
            with contextlib.suppress(aiohttp.ClientError, BenchError):
                live = int((await self.sims_stats("imkit"))["imkit"]["live_sockets"])
                rss, _ = self.bridge_usage()
                samples.append({"t": round(time.monotonic() - t0, 2), "live": live, "rss_kib": rss})
            await asyncio.sleep(interval)

    async def wait_quiet(self, timeout: float | None = None) -> dict[str, float]:  # noqa: ASYNC109 - a deadline
        """Wait until IMKIT's REST counter stops moving for 2 s: the after-connect refreshes and
        backfills are done. Returns how long that took and how many REST calls IMKIT answered."""
        last = first = -1
        still = 0
        t0 = time.monotonic()
        with self.ui.progress(
            "after-connect REST calls (GET /me, /me/badge, /rooms) settling", None
        ):

            async def cond() -> bool:
                nonlocal last, first, still
                n = int((await self.sims_stats("imkit"))["imkit"]["rest_requests_total"])
                first = n if first < 0 else first
                still = still + 1 if n == last else 0
                last = n
                return still >= 8

            await wait_until(
                cond,
                timeout or 120 + self.opts.sessions / 20,
                "the bridge to settle",
                interval=0.25,
            )
        return {"seconds": round(time.monotonic() - t0 - 2.0, 1), "rest_calls": last - first}


# ---------------------------------------------------------------------- profiling


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


# ---------------------------------------------------------------------- scenarios


Result = dict[str, Any]


async def _sessions(h: Harness, o: Options) -> Result:
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
                _goal(per <= GOALS["kib_per_session"], "≤ 40 KiB"),
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


async def _storm(h: Harness, o: Options) -> Result:
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
                _goal(drop_s <= GOALS["storm_seconds"], "≤ 20 s"),
            ),
            ("  peak connect rate IMKIT saw", f"{drop_stats['peak_connect_rate_since']}/s", ""),
            ("  connects IMKIT accepted", f"{drop_stats['connects_since']:,}", ""),
            (
                "cold start → all live",
                f"{cold_s:.1f} s",
                _goal(cold_s <= GOALS["storm_seconds"], "≤ 20 s"),
            ),
            ("  of which to /readyz", f"{ready_s:.1f} s", ""),
            ("  peak connect rate IMKIT saw", f"{cold_stats['peak_connect_rate_since']}/s", ""),
            ("  connects IMKIT accepted", f"{cold_stats['connects_since']:,}", ""),
        ],
    }


async def _latencies(h: Harness) -> tuple[dict[str, list[float]], int]:
    """Emit → arrival in ms per provider, joined across the simulator processes; and emits missed."""
    emitted: dict[str, float] = {}
    arrived: dict[str, dict[str, float]] = {"apns": {}, "fcm": {}}
    for info in h.sims_info.values():
        data = await h.get_json(f"{info['control']}/bench/latencies")
        emitted.update(data["emitted"])
        for provider, times in data["arrived"].items():
            arrived[provider].update(times)
    out: dict[str, list[float]] = {"apns": [], "fcm": []}
    seen = 0
    for provider, times in arrived.items():
        for mid, t in times.items():
            if mid in emitted:
                out[provider].append((t - emitted[mid]) * 1000)
                seen += 1
    return out, len(emitted) - seen


async def _arrived_total(h: Harness) -> int:
    stats = await h.sims_stats("providers")
    return int(stats["apns"]["received"]) + int(stats["fcm"]["received"])


async def _emit_and_wait(
    h: Harness,
    rooms: list[str],
    count: int,
    rate: float,
    expect: int,
    what: str,
    *,
    arrived_total: Callable[[], Awaitable[int]] | None = None,
) -> dict[str, Any]:
    """Have IMKIT send ``count`` messages; wait for the emission and ``expect`` arrivals
    (counted by ``arrived_total()``, by default the requests the simulated providers received)."""
    count_arrived = arrived_total or (lambda: _arrived_total(h))
    await h.post_json(
        f"{h.control('imkit')}/bench/emit",
        {"rooms": rooms, "count": count, "rate": rate, "sender": SENDER},
    )
    with h.ui.progress(what, expect) as update:
        state: dict[str, Any] = {}

        async def emitted() -> bool:
            state.update(await h.get_json(f"{h.control('imkit')}/bench/emit"))
            if state.get("error"):
                raise BenchError(f"emission failed: {state['error']}")
            update(await count_arrived())
            return bool(state["done"])

        await wait_until(emitted, 60 + count / max(rate, 100) * 3, "the emission")
        last = -1
        still = 0

        async def arrived() -> bool:
            nonlocal last, still
            got = await count_arrived()
            update(got)
            still = still + 1 if got == last else 0
            last = got
            # Done when all arrived, or nothing moved for 10 s (the rest is reported as missing).
            return got >= expect or still >= 40

        await wait_until(arrived, 120 + expect / 200, "the pushes to arrive")
    return state


async def _latency(h: Harness, o: Options) -> Result:
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
    await _emit_and_wait(h, rooms, warm, rate, warm, "warm-up")
    await h.reset_arrivals()
    count = max(1, int(rate * o.duration))
    rss0, cpu0 = h.bridge_usage()
    sims0 = {part: proc_usage(pid)[1] for part, pid in h.sims_pids().items()}
    h.profile("latency")
    t0 = time.monotonic()
    state = await _emit_and_wait(
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
    lat, missing = await _latencies(h)
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
                _goal(p99 <= GOALS["latency_p99_ms"], "≤ 25 ms"),
            ),
            ("emit → provider max", f"{all_s.get('max', 0):.1f} ms", ""),
            ("bridge CPU", f"{100 * (cpu1 - cpu0) / wall:.0f} %", ""),
            ("simulators' CPU", ", ".join(f"{k} {v:.0f} %" for k, v in sims_cpu.items()), ""),
        ],
    }


async def _throughput(h: Harness, o: Options) -> Result:
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
        await _emit_and_wait(h, [f"tp-{provider}"], 1, 0, len(members), f"warm-up {provider}")
        await h.reset_arrivals()
        messages = max(1, math.ceil(o.pushes / len(members)))
        expect = messages * len(members)
        cpu0 = h.bridge_usage()[1]
        t0 = time.monotonic()
        h.profile(f"throughput-{provider}")
        await _emit_and_wait(
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
                _goal(ratio >= GOALS["throughput_ratio"], "≥ 0.8"),
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


def bare_library_env(h: Harness) -> dict[str, str]:
    """The environment of a bare-library child: it trusts the simulators' CA the only way
    firebase-admin can, through process-wide variables."""
    env = dict(os.environ)
    env["SSL_CERT_FILE"] = env["REQUESTS_CA_BUNDLE"] = h.sims_env["BRIDGE_FCM_CA_FILE"]
    return env


async def _run_bare(h: Harness, provider: str, count: int, concurrency: int) -> dict[str, Any]:
    spec = {
        "provider": provider,
        "count": count,
        "concurrency": concurrency,
        "env": h.sims_env,
        "control": h.control("providers"),
    }
    child, out = h.spawn(
        f"bare {provider} loop", ["bench.harness", "bare"], spec, bare_library_env(h)
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


async def _api(h: Harness, o: Options) -> Result:
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
    child, out = h.spawn("api load", ["bench.harness", "api-load"], spec)
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


# ---------------------------------------------------------------------- rooms: chat-shaped fan-out


def message_index(message_id: str) -> int:
    """The number that ends a bench message id (``b3-0000042`` → 42): its place in the emission."""
    return int(message_id.rpartition("-")[2])


@dataclass
class RoomPlan:
    """Devices in rooms: ``rooms[r]`` holds the indices (into ``devices``) of room ``r``'s members.

    Messages go round-robin over the rooms (the emitter's and the floor's alike), so message ``i``
    goes to room ``i % len(rooms)`` and owes a push to every member of it.
    """

    devices: list[BenchDevice]
    rooms: list[list[int]]
    #: push token -> device index
    by_token: dict[str, int]

    @classmethod
    def build(cls, devices: list[BenchDevice], size: int) -> RoomPlan:
        idx = list(range(len(devices)))
        rooms = [idx[i : i + size] for i in range(0, len(devices), max(1, size))]
        return cls(devices, rooms, {d.push_token: i for i, d in enumerate(devices)})

    @property
    def ids(self) -> list[str]:
        return [f"room-{r:05d}" for r in range(len(self.rooms))]

    @property
    def per_message(self) -> float:
        """Pushes per message, on average over the rooms."""
        return len(self.devices) / len(self.rooms)

    def expected(self, count: int) -> int:
        """Pushes owed for messages ``0 .. count-1``."""
        return sum(len(self.rooms[i % len(self.rooms)]) for i in range(count))


def _p50_p99(values: list[float]) -> dict[str, float]:
    s = summarize(values)
    return {k: s[k] for k in ("n", "p50", "p99") if k in s}


def analyse_pushes(
    emitted: dict[str, float],
    arrivals: Iterable[tuple[str, int, float, str]],
    plan: RoomPlan,
    *,
    started: float,
    span: float,
) -> dict[str, Any]:
    """Per-push figures of one window, from ``(message id, device index, time, channel)`` arrivals.

    Only messages in ``emitted`` (id → emit time) count. Each owes a push to every member of its
    room; a (message, device) pair seen again is a duplicate, a device outside the room (index -1:
    an unknown token) unexpected. Latency is arrival − emit in ms, per channel (provider, or
    ``socket.io`` for the receiving floor), and per tenth of ``span`` seconds after ``started``
    by emit time, so warm-up and a growing backlog show.
    """
    members = [set(room) for room in plan.rooms]
    seen: set[tuple[str, int]] = set()
    duplicate = unexpected = 0
    by_channel: dict[str, list[float]] = {}
    tenths: list[list[float]] = [[] for _ in range(10)]
    channel_tenths: dict[str, list[list[float]]] = {}
    for mid, device, at, channel in arrivals:
        emit = emitted.get(mid)
        if emit is None:
            continue
        if device not in members[message_index(mid) % len(members)]:
            unexpected += 1
            continue
        if (mid, device) in seen:
            duplicate += 1
            continue
        seen.add((mid, device))
        ms = (at - emit) * 1000
        by_channel.setdefault(channel, []).append(ms)
        k = min(9, max(0, int((emit - started) / span * 10))) if span > 0 else 0
        tenths[k].append(ms)
        channel_tenths.setdefault(channel, [[] for _ in range(10)])[k].append(ms)
    expected = sum(len(plan.rooms[message_index(mid) % len(plan.rooms)]) for mid in emitted)
    everything = [ms for values in by_channel.values() for ms in values]
    return {
        "messages": len(emitted),
        "expected": expected,
        "received": len(seen),
        "missing": expected - len(seen),
        "duplicate": duplicate,
        "unexpected": unexpected,
        "latency_ms": {
            "all": summarize(everything),
            **{c: summarize(v) for c, v in sorted(by_channel.items())},
        },
        "tenths": [{"tenth": k + 1, **_p50_p99(v)} for k, v in enumerate(tenths)],
        "channel_tenths": {
            c: [{"tenth": k + 1, **_p50_p99(v)} for k, v in enumerate(t)]
            for c, t in sorted(channel_tenths.items())
        },
    }


def backlog_growth_ms(window: dict[str, Any]) -> float | None:
    """p50 of the last tenth with pushes minus the first's (> 0 when the backlog grew), for each
    channel (provider) when the window has them, and the largest of those: with two providers, a
    growing backlog at one must not hide behind the other's fast pushes in an overall p50."""
    series = list(window.get("channel_tenths", {}).values()) or [window["tenths"]]
    growths = [g for g in map(_growth, series) if g is not None]
    return max(growths) if growths else None


def _growth(tenths: list[dict[str, Any]]) -> float | None:
    present = [t for t in tenths if t.get("n")]
    if len(present) < 2:
        return None
    return float(present[-1]["p50"] - present[0]["p50"])


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
    cpu0, wait0 = h.bridge_usage()[1], run_queue_wait(h.bridge.pid)
    load0 = os.getloadavg()[0]
    sims0 = {part: proc_usage(pid)[1] for part, pid in h.sims_pids().items()}
    if profile:
        h.profile(profile)
    t0 = time.monotonic()
    state = await _emit_and_wait(h, plan.ids, count, rate, plan.expected(count), what)
    wall = time.monotonic() - t0
    cpu, wait = h.bridge_usage()[1] - cpu0, run_queue_wait(h.bridge.pid) - wait0
    sims_cpu = {
        part: round(100 * (proc_usage(pid)[1] - sims0[part]) / wall, 1)
        for part, pid in h.sims_pids().items()
    }
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
        "bridge_cpu_percent": round(100 * cpu / wall, 1),
        # Ready to run but no CPU free: what other processes on the machine cost the bridge.
        "bridge_cpu_wait_percent": round(100 * wait / wall, 1),
        "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "sims_cpu_percent": sims_cpu,
    }


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
                                     "bridge_cpu_percent", "bridge_cpu_wait_percent",
                                     "load_average", "sims_cpu_percent")},
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
        await _emit_and_wait(
            h, plan.ids, warm, rate, plan.expected(warm), "floor: warm-up", arrived_total=received
        )
        await h.reset_arrivals()
        base = int(_status_of(status)["received"])
        count = max(1, round(rate * duration))
        cpu0, wait0 = proc_usage(child.pid)[1], run_queue_wait(child.pid)
        t0 = time.monotonic()
        state = await _emit_and_wait(
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
        done_so_far=lambda: _arrived_total(h),
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


def _ms(s: dict[str, Any], key: str) -> str:
    return f"{s[key]:,.1f}" if key in s else "–"


async def _rooms(h: Harness, o: Options) -> Result:
    n, m, rate = o.sessions, o.room_size, o.rate
    await h.start_bridge()
    devices = await h.create_devices(n, o.ios_share)
    registration = await h.register(devices)
    went_live = await h.wait_mostly_live(n, "sessions going live", 60 + n / 20)
    plan = RoomPlan.build(devices, m)
    # Rooms only now: each connect's backfill scans the user's rooms, and this keeps it cheap.
    await _create_rooms(h, plan)
    await h.wait_quiet()
    # Warm-up: a message to every room (provider connections, tokens, each room's first event).
    warm = len(plan.rooms)
    await h.reset_arrivals()
    await _emit_and_wait(
        h, plan.ids, warm, rate, plan.expected(warm), "warm-up: a message to every room"
    )
    pushes_s = rate * plan.per_message
    gc_before = await _gc_pause_s(h)
    main = await _rooms_window(
        h, plan, rate, o.duration,
        f"{rate:g} messages/s × {plan.per_message:g} = {pushes_s:,.0f} pushes/s for {o.duration:g} s",
        profile="rooms",
    )  # fmt: skip
    gc = gc_phase(gc_before, await _gc_pause_s(h))
    found = await _find_max(h, o, plan) if o.find_max else None
    rss, _ = h.bridge_usage()
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
        "bridge_rss_kib": rss,
        "bridge_gc_longest_pause": gc,
    }
    out["summary"], out["tables"] = _rooms_report(out)
    return out


def _rooms_report(r: dict[str, Any]) -> tuple[list[tuple[str, str, str]], list[dict[str, Any]]]:
    """The summary rows and the per-tenth / find-max tables of a ``rooms`` result."""
    b, floor, found = r["bridge"], r["floor"], r["find_max"]
    lat = b["latency_ms"]
    rows: list[tuple[str, str, str]] = [
        ("devices", f"{r['devices']:,} in {r['rooms']:,} rooms of {r['room_size']} "
                    f"(APNs {r['apns_devices']:,}, FCM {r['fcm_devices']:,})"
                    + (f"; {r['went_live']['not_live']:,} never went live" if r["went_live"]["not_live"] else ""),
         ""),
        ("load", f"{r['rate']:g} msg/s = {r['pushes_per_second']:,.0f} pushes/s for {r['duration']:g} s "
                 f"(emitted {b['emitted']:,} at {b['achieved_emit_rate']:g}/s)", ""),
        ("pushes expected / received", f"{b['expected']:,} / {b['received']:,}", ""),
        ("  missing / duplicate", f"{b['missing']:,} / {b['duplicate']:,}",
         _goal(b["missing"] == 0 and b["duplicate"] == 0, "none")),
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
    rows.append(
        (
            "simulators' CPU",
            ", ".join(f"{k} {v:.0f} %" for k, v in b["sims_cpu_percent"].items()),
            "",
        )
    )
    rows.append(
        _gc_row(
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
                             _goal(ratio <= GOALS["rooms_p99_vs_floor"], "≤ 2×")))  # fmt: skip
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
            _goal(best >= GOALS["rooms_max_vs_floor"] * cap, f"≥ 0.8 × {cap:,.0f}") if cap else ""
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


# ---------------------------------------------------------------------- steady: memory and GC


def open_files(pid: int) -> int:
    """How many file descriptors ``pid`` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def session_counts(counts: Sequence[str], limit: int) -> list[int]:
    """``steady``'s idle counts, ascending: numbers, or ``max`` (the open-files ``limit`` less
    :data:`NOFILE_RESERVE` for the store, the API, the providers and IMKIT's REST calls)."""
    out: set[int] = set()
    for c in counts:
        if c == "max":
            out.add(limit - NOFILE_RESERVE)
        elif c.isdigit() and int(c) > 0:
            out.add(int(c))
        else:
            raise BenchError(f"--sessions takes numbers or 'max', not {c!r}")
    return sorted(out)


async def _gc_pause_s(h: Harness) -> float | None:
    return (await h.metrics()).get("bridge_gc_longest_pause_seconds")


def gc_phase(before: float | None, after: float | None) -> dict[str, Any]:
    """The longest GC pause of a phase from ``bridge_gc_longest_pause_seconds`` (the longest since
    the process started) read before and after it: exact when it grew during the phase, else only
    an upper bound (a pause before the phase, at start-up say, was at least as long)."""
    if before is None or after is None:
        return {"seconds": None, "exact": False, "before_phase": before}
    return {"seconds": after, "exact": after > before, "before_phase": before}


def _gc_row(label: str, gc: dict[str, Any], *, goal: bool) -> tuple[str, str, str]:
    if gc["seconds"] is None:
        return label, "– (no bridge_gc_longest_pause_seconds)", ""
    ms = 1000 * gc["seconds"]
    limit = GOALS["steady_gc_pause_ms"]
    if gc["exact"]:
        return label, f"{ms:,.0f} ms", _goal(ms <= limit, f"≤ {limit:g} ms") if goal else ""
    verdict = "met" if ms <= limit else "not known"
    text = f"≤ {ms:,.0f} ms (none in this phase beat the one before it)"
    return label, text, f"≤ {limit:g} ms: {verdict}" if goal else ""


async def _steady_idle(h: Harness, devices: list[BenchDevice], limit: int) -> dict[str, Any]:
    """A fresh bridge (empty store): RSS empty, then with every device registered and live."""
    n = len(devices)
    h.opts.sessions = n  # the harness's deadlines scale with it
    await h.start_bridge(BRIDGE_STORE=f"sqlite:///{h.tmp / f'steady-{n}.db'}")
    assert h.bridge is not None
    pid = h.bridge.pid
    await asyncio.sleep(1.0)
    rss_empty, _ = h.bridge_usage()
    gc_before = await _gc_pause_s(h)
    peak_files = open_files(pid)

    async def sample_files() -> None:
        nonlocal peak_files
        while True:
            with contextlib.suppress(OSError):
                peak_files = max(peak_files, await asyncio.to_thread(open_files, pid))
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample_files())
    try:
        registration = await h.register(devices)
        went_live = await h.wait_mostly_live(n, f"{n:,} sessions going live", 60 + n / 20)
        settle = await h.wait_quiet()
    finally:
        sampler.cancel()
    rss_live, _ = h.bridge_usage()
    gc = gc_phase(gc_before, await _gc_pause_s(h))
    await h.stop_bridge()
    return {
        "sessions": n,
        "not_live": went_live["not_live"],
        "registration": registration,
        "after_live_settle": settle,
        "rss_empty_kib": rss_empty,
        "rss_live_kib": rss_live,
        "kib_per_session": round((rss_live - rss_empty) / n, 1),
        "gc_longest_pause": gc,
        "open_files_peak": peak_files,
        "open_files_limit": limit,
    }


async def _chat_events(h: Harness) -> int:
    return int((await h.metrics()).get('bridge_upstream_events_total{event="chat message"}', 0))


async def _steady_growth(h: Harness, o: Options) -> dict[str, Any]:
    """``growth_devices`` devices in one room, each seeing ``messages`` messages: RSS growth."""
    g, k, state = o.growth_devices, o.messages, o.growth_state
    pushed = state == "background"
    # Foreground: nothing is pushed, the bridge only decides. Background: ~400 pushes/s, below
    # what one bridge process sustains, so no backlog inflates the figure.
    rate = o.growth_rate or (max(1.0, 400.0 / g) if pushed else 100.0)
    h.opts.sessions = g
    await h.start_bridge(BRIDGE_STORE=f"sqlite:///{h.tmp / 'steady-growth.db'}")
    devices = await h.create_devices(g)
    registration = await h.register(devices, state=state)
    await h.wait_mostly_live(g, f"{g} sessions going live ({state})", 60 + g / 20)
    room = "steady-room"
    await h.post_json(
        f"{h.control('imkit')}/bench/rooms",
        {"rooms": [{"roomId": room, "members": [SENDER, *(d.client_id for d in devices)]}]},
    )
    await h.wait_quiet()

    async def send(count: int, what: str) -> None:
        before = await _chat_events(h)
        await h.reset_arrivals()
        await _emit_and_wait(h, [room], count, rate, count * g if pushed else 0, what)

        async def decided() -> bool:
            return await _chat_events(h) >= before + count * g

        await wait_until(decided, 60 + count * g / 500, "the bridge to take every event")

    # Warm-up: code paths, provider connections and per-process caches are not per-device costs.
    warm = max(1, min(100, k // 10))
    await send(warm, f"warm-up: {warm} messages")
    rss0, cpu0 = h.bridge_usage()
    gc_before = await _gc_pause_s(h)
    t0 = time.monotonic()
    await send(k, f"{k:,} messages to {g} devices ({state}, {rate:g}/s)")
    wall = time.monotonic() - t0
    await asyncio.sleep(1.0)  # let the last pushes' buffers go
    rss1, cpu1 = h.bridge_usage()
    gc = gc_phase(gc_before, await _gc_pause_s(h))
    await h.stop_bridge()
    return {
        "devices": g,
        "messages": k,
        "warmup_messages": warm,
        "state": state,
        "rate": rate,
        "registration": registration,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "kib_per_device": round((rss1 - rss0) / g, 1),
        "seconds": round(wall, 1),
        "bridge_cpu_percent": round(100 * (cpu1 - cpu0) / wall, 1),
        "gc_longest_pause": gc,
    }


async def _steady(h: Harness, o: Options) -> Result:
    limit = raise_nofile()
    counts = session_counts(o.session_counts or ("2000", "10000"), limit)
    pool: list[BenchDevice] = []
    idle = []
    for n in counts:
        if len(pool) < n:
            pool += await h.create_devices(n - len(pool))
        idle.append(await _steady_idle(h, pool[:n], limit))
    growth = await _steady_growth(h, o) if o.messages > 0 else None
    rows: list[tuple[str, str, str]] = []
    for r in idle:
        n, kib = r["sessions"], r["kib_per_session"]
        goal = GOALS["steady_kib_per_session" if n < 10_000 else "steady_kib_per_session_10k"]
        stuck = f"; {r['not_live']} not live" if r["not_live"] else ""
        rows.append((f"idle RSS per live session at {n:,}",
                     f"{kib:.1f} KiB ({r['rss_empty_kib'] / 1024:.0f} → {r['rss_live_kib'] / 1024:.0f} MiB{stuck})",
                     _goal(kib <= goal, f"≤ {goal:g} KiB")))  # fmt: skip
        rows.append(_gc_row("  longest GC pause", r["gc_longest_pause"], goal=n >= 10_000))
        rows.append(
            ("  open files, peak", f"{r['open_files_peak']:,} of {r['open_files_limit']:,}", "")
        )
    if growth:
        kib = growth["kib_per_device"]
        rows.append((f"RSS growth per device after {growth['messages']:,} messages",
                     f"{kib:.1f} KiB ({growth['devices']} devices, {growth['state']}; "
                     f"{growth['rss_before_kib'] / 1024:.0f} → {growth['rss_after_kib'] / 1024:.0f} MiB)",
                     _goal(kib <= GOALS["steady_growth_kib_per_device"], "≤ 16 KiB")))  # fmt: skip
        rows.append(_gc_row("  longest GC pause", growth["gc_longest_pause"], goal=False))
    return {"idle": idle, "growth": growth, "summary": rows}


def _goal(met: bool, goal: str) -> str:
    return f"{goal}: {'met' if met else 'NOT met'}"


# ---------------------------------------------------------------------- load and baseline children


async def api_load(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``api`` load: ``concurrency`` workers alternating subscribe and state calls for ``duration``.

    A closed loop: each worker sends its next call when the last one answered, so the rate is
    what the bridge sustains at that concurrency. Devices are taken round-robin.
    """
    url, devices = spec["url"], spec["devices"]
    duration, concurrency = float(spec["duration"]), int(spec["concurrency"])
    lat: dict[str, list[float]] = {"subscribe": [], "state": []}
    statuses: Counter[str] = Counter()
    seq = 0
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as http:
        t0 = time.monotonic()
        end = t0 + duration

        async def worker() -> None:
            nonlocal seq
            while time.monotonic() < end:
                i = seq
                seq += 1
                d = devices[i % len(devices)]
                kind = "subscribe" if i % 2 == 0 else "state"
                if kind == "subscribe":
                    body = {
                        "type": d["type"],
                        "token": d["pushToken"],
                        "deviceId": d["deviceId"],
                        "state": "background",
                    }
                else:
                    fg = (i // 2) % 2 == 0
                    body = {
                        "deviceId": d["deviceId"],
                        "state": "foreground" if fg else "background",
                        "ttl": 60,
                    }
                t = time.monotonic()
                try:
                    async with http.post(
                        f"{url}/me/{kind}", json=body, headers={"IM-Authorization": d["token"]}
                    ) as r:
                        await r.read()
                        status = str(r.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status = type(exc).__name__
                lat[kind].append((time.monotonic() - t) * 1000)
                statuses[f"{kind}:{status}"] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.monotonic() - t0
    total = sum(len(v) for v in lat.values())
    errors = sum(v for k, v in statuses.items() if not k.endswith(":200"))
    return {
        "seconds": round(wall, 2),
        "concurrency": concurrency,
        "per_second": round(total / wall, 1),
        "errors": errors,
        "statuses": dict(statuses),
        "calls": {
            kind: {"n": len(v), "per_second": round(len(v) / wall, 1), "latency_ms": summarize(v)}
            for kind, v in lat.items()
        },
    }


def sample_message(i: int, room: str = "bench-room") -> Any:
    """A chat message like the simulated IMKIT's (same fields, similar size)."""
    from bridge.upstream.protocol import Message

    ms = int(time.time() * 1000)
    mid = f"bare-{i:07d}"
    sender = {"_id": SENDER, "id": SENDER, "nickname": SENDER, "avatarUrl": "", "isRobot": False}
    return Message.model_validate(
        {"_id": mid, "id": mid, "room": room, "messageType": "text", "message": f"bench message {i}",
         "sender": sender, "appID": "SimApp", "messageTimeMS": ms, "createdAtMS": ms, "updatedAtMS": ms,
         "mentions": []}
    )  # fmt: skip


def sample_requests() -> tuple[Any, Any]:
    """``(ApnsRequest, FcmRequest)`` as the bridge composes them for :func:`sample_message`."""
    from bridge import compose

    msg = sample_message(0)
    apns = compose.compose_message(msg, compose.Target(push_type="ios", badge=1), now=time.time())
    fcm = compose.compose_message(msg, compose.Target(push_type="fcm", badge=1), now=time.time())
    return apns, fcm


#: The message ``_id`` of :func:`sample_message(0) <sample_message>`, replaced per message by the floor.
SAMPLE_ID = "bare-0000000"


#: HTTP/2's initial send window. A server returns credit once about half of it is used (h2 does),
#: so only half is sure to be free when a request is written.
H2_SURE_WINDOW = 65_535 // 2


class BareApns:
    """aioapns alone, sending the payload the bridge composes for :func:`sample_message`.

    Only what aioapns needs to reach a simulator is set: its protocol class's host and port
    (aioapns has no endpoint option) and an SSL context trusting the simulator's CA.

    ``window_guard`` caps the requests in flight at what fits :data:`H2_SURE_WINDOW`: past it,
    aioapns' ``send_data`` raises ``FlowControlError`` and aioapns sleeps 1 s before it tries
    again, so a burst of 50 pushes would measure that sleep, not the library (the bridge's
    provider waits for the window instead). The ``throughput`` baseline runs without it.
    """

    def __init__(self, client: Any, *, window_guard: bool = False) -> None:
        self.client = client
        self.template, _ = sample_requests()
        size = len(json.dumps(self.template.payload, ensure_ascii=False).encode())
        self._in_flight = (
            asyncio.Semaphore(max(1, H2_SURE_WINDOW // size)) if window_guard else None
        )

    @classmethod
    async def open(cls, env: dict[str, str], *, window_guard: bool = False) -> BareApns:
        import ssl

        from aioapns import APNs
        from aioapns.connection import APNsProductionClientProtocol

        ctx = ssl.create_default_context(cafile=env["BRIDGE_APNS_CA_FILE"])
        ctx.set_alpn_protocols(["h2"])
        key = await asyncio.to_thread(Path(env["BRIDGE_APNS_KEY_FILE"]).read_text)
        client = APNs(
            key=key, key_id=env["BRIDGE_APNS_KEY_ID"],
            team_id=env["BRIDGE_APNS_TEAM_ID"], topic=env["BRIDGE_APNS_TOPIC"], ssl_context=ctx,
        )  # fmt: skip
        client.pool.protocol_class = type(
            "BenchProtocol", (APNsProductionClientProtocol,),
            {"APNS_SERVER": env["BRIDGE_APNS_HOST"], "APNS_PORT": int(env["BRIDGE_APNS_PORT"])},
        )  # fmt: skip
        return cls(client, window_guard=window_guard)

    def body(self, message_id: str = SAMPLE_ID) -> dict[str, Any]:
        """The APNs JSON body, its ``payload`` naming ``message_id`` (same size as the sample's)."""
        body = dict(self.template.payload)
        body["payload"] = str(body["payload"]).replace(SAMPLE_ID, message_id)
        return body

    async def send(self, token: str, body: dict[str, Any], collapse_id: str = SAMPLE_ID) -> str:
        """One push; returns the HTTP status as text."""
        from aioapns import NotificationRequest, PushType

        request = NotificationRequest(
            device_token=token, message=body, push_type=PushType.ALERT,
            collapse_key=collapse_id, priority=10, time_to_live=3600,
        )  # fmt: skip
        if self._in_flight is None:
            result = await self.client.send_notification(request)
        else:
            async with self._in_flight:
                result = await self.client.send_notification(request)
        return str(result.status)

    def close(self) -> None:
        self.client.pool.close()


class BareFcm:
    """firebase-admin alone (``send_each_async``), sending what the bridge composes for
    :func:`sample_message`.

    Only the messaging service's URL is pointed at the simulator (firebase-admin has no option for
    it); the CA comes from ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE`` as the library reads them.
    """

    def __init__(self, env: dict[str, str]) -> None:
        import uuid

        import firebase_admin
        from firebase_admin import credentials, messaging

        _, self.template = sample_requests()
        cert = credentials.Certificate(env["BRIDGE_FCM_CREDENTIALS_FILE"])
        self.app = firebase_admin.initialize_app(
            cert, {"projectId": cert.project_id}, name=f"bench-bare-{uuid.uuid4().hex[:8]}"
        )
        service = messaging._get_messaging_service(self.app)
        service._fcm_url = f"{env['BRIDGE_FCM_URL']}/v1/projects/{cert.project_id}/messages:send"

    def data(self, message_id: str = SAMPLE_ID) -> dict[str, str]:
        """The FCM ``data`` map, its ``payload`` naming ``message_id``."""
        data = dict(self.template.data)
        data["payload"] = data["payload"].replace(SAMPLE_ID, message_id)
        return data

    async def send(self, tokens: list[str], data: dict[str, str]) -> list[str]:
        """One ``send_each_async`` call with a message per token; returns each outcome."""
        from firebase_admin import messaging

        note = self.template.notification or {}
        collapse = str((self.template.android or {}).get("collapse_key", "")) or None
        msgs = [
            messaging.Message(
                data=data,
                notification=messaging.Notification(title=note.get("title"), body=note.get("body")),
                android=messaging.AndroidConfig(collapse_key=collapse, priority="high"),
                token=token,
            )
            for token in tokens
        ]
        response = await messaging.send_each_async(msgs, app=self.app)
        return ["200" if r.success else type(r.exception).__name__ for r in response.responses]

    async def close(self) -> None:
        import firebase_admin

        await asyncio.to_thread(firebase_admin.delete_app, self.app)


async def bare_apns_loop(
    env: dict[str, str],
    count: int,
    concurrency: int,
    *,
    token_of: Callable[[int], str] | None = None,
) -> dict[str, Any]:
    """``count`` sends with aioapns alone, ``concurrency`` at a time, to ``env``'s APNs endpoint."""
    apns = await BareApns.open(env)
    body = apns.body()
    token = token_of or (lambda i: f"{i:064x}")

    async def send(i: int) -> str:
        return await apns.send(token(i), body)

    try:
        return await _run_loop(send, count, concurrency)
    finally:
        apns.close()


async def bare_fcm_loop(
    env: dict[str, str],
    count: int,
    concurrency: int,
    *,
    token_of: Callable[[int], str] | None = None,
) -> dict[str, Any]:
    """``count`` sends with firebase-admin alone (``send_each_async`` of one message), ``concurrency`` at a time."""
    fcm = BareFcm(env)
    data = fcm.data()
    token = token_of or (lambda i: f"fcm-token-{i:06d}")

    async def send(i: int) -> str:
        return (await fcm.send([token(i)], data))[0]

    try:
        return await _run_loop(send, count, concurrency)
    finally:
        await fcm.close()


async def _run_loop(
    send: Callable[[int], Awaitable[str]], count: int, concurrency: int
) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    nxt = 0

    async def worker() -> None:
        nonlocal nxt
        while nxt < count:
            i = nxt
            nxt += 1
            try:
                outcomes[await send(i)] += 1
            except Exception as exc:  # noqa: BLE001 - a benchmark counts failures, it does not stop
                outcomes[type(exc).__name__] += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.monotonic() - t0
    return {
        "sent": count,
        "seconds": round(seconds, 3),
        "per_second": round(count / seconds, 1),
        "outcomes": dict(outcomes),
    }


async def _bare_main(spec: dict[str, Any]) -> dict[str, Any]:
    env, provider = spec["env"], spec["provider"]
    loop = bare_apns_loop if provider == "apns" else bare_fcm_loop
    # Warm-up (connection, TLS, provider token), then the simulator forgets it.
    warm = await loop(env, min(200, int(spec["count"])), int(spec["concurrency"]))
    async with aiohttp.ClientSession() as http, http.post(f"{spec['control']}/bench/reset") as r:
        r.raise_for_status()
    result = await loop(env, int(spec["count"]), int(spec["concurrency"]))
    result["warmup"] = warm
    return result


# ---------------------------------------------------------------------- reporting


def render_summary(scenario: str, result: Result, console: Console) -> None:
    """The summary table of one run."""
    table = Table(title=f"push-bridge bench {scenario}", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("goal")
    for label, value, goal in result.get("summary", []):
        style = "red" if "NOT met" in goal else ("green" if goal else "")
        table.add_row(label, value, goal, style=style)
    console.print(table)
    for extra in result.get("tables", []):
        more = Table(title=extra["title"], title_justify="left")
        for i, column in enumerate(extra["columns"]):
            more.add_column(column, justify="left" if i == 0 else "right")
        for row in extra["rows"]:
            more.add_row(*row)
        console.print(more)
    m = result.get("machine", {})
    console.print(
        f"[dim]{m.get('nproc')} × {m.get('cpu_model')}, {m.get('ram_gib')} GiB, Python {m.get('python')}; "
        f"load average at start {m.get('loadavg_at_start')}; code at {m.get('git_head')}[/dim]"
    )


def make_plots(scenario: str, result: Result, out_dir: Path) -> list[str]:
    """PNG plots of a result (matplotlib, imported only here); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[str] = []

    def save(fig: Any, name: str) -> None:
        path = out_dir / f"{scenario}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(str(path))

    if scenario == "sessions" and result.get("registration_curve"):
        curve = result["registration_curve"]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(
            [c["live"] for c in curve],
            [c["kib_per_session"] for c in curve],
            label="(RSS − empty RSS) / live",
        )
        ax.axhline(GOALS["kib_per_session"], color="red", linestyle="--", label="goal 40 KiB")
        ax.set_xlabel("live sessions held (while devices register)")
        ax.set_ylabel("KiB per session")
        ax.set_ylim(bottom=0)
        ax2 = ax.twinx()
        ax2.plot(
            [c["live"] for c in curve],
            [c["rss_kib"] / 1024 for c in curve],
            color="gray",
            alpha=0.6,
            label="RSS",
        )
        ax2.set_ylabel("bridge RSS (MiB, gray)")
        ax2.set_ylim(bottom=0)
        ax.set_title(f"Memory per session up to {result['sessions']:,} live (API caches included)")
        ax.legend(loc="lower right")
        save(fig, "memory")
    if scenario == "latency" and result.get("latencies_ms"):
        fig, (ax, cdf) = plt.subplots(1, 2, figsize=(10, 4))
        for provider, values in result["latencies_ms"].items():
            if values:
                ax.hist(values, bins=80, alpha=0.6, label=provider)
                s = sorted(values)
                cdf.plot(s, [i / len(s) for i in range(1, len(s) + 1)], label=provider)
        ax.set_xlabel("emit → provider (ms)")
        ax.set_ylabel("pushes")
        ax.set_yscale("log")
        ax.legend()
        cdf.axvline(GOALS["latency_p99_ms"], color="red", linestyle="--", label="goal p99 25 ms")
        cdf.axhline(0.99, color="gray", linestyle=":")
        cdf.set_xscale("log")
        cdf.set_xlabel("emit → provider (ms)")
        cdf.set_ylabel("fraction")
        cdf.legend()
        fig.suptitle(f"{result['rate']:g} events/s over {result['sessions']:,} sessions")
        save(fig, "distribution")
    if scenario == "storm":
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in ("drop", "cold"):
            curve = result.get(name, {}).get("curve", [])
            ax.plot([c["t"] for c in curve], [c["live"] for c in curve], label=name)
        ax.set_xlabel("seconds")
        ax.set_ylabel("live sessions")
        ax.set_title(
            f"{result['sessions']:,} sessions, connect rate limit {result['connect_rate_limit']:g}/s"
        )
        ax.legend()
        save(fig, "live")
    if scenario == "throughput":
        providers = [p for p in ("apns", "fcm") if p in result]
        if providers:
            fig, ax = plt.subplots(figsize=(6, 4))
            xs = range(len(providers))
            ax.bar(
                [x - 0.2 for x in xs],
                [result[p]["bridge"]["per_second"] for p in providers],
                0.4,
                label="whole bridge",
            )
            ax.bar(
                [x + 0.2 for x in xs],
                [result[p]["bare"]["per_second"] for p in providers],
                0.4,
                label="bare library loop",
            )
            ax.set_xticks(list(xs), providers)
            ax.set_ylabel("pushes per second")
            ax.legend()
            save(fig, "rates")
    return files


def plot_sessions_scaling(results: list[Result], path: Path) -> None:
    """RSS and RSS per session against sessions held, one point per ``sessions`` result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted(
        (r["sessions"], r["rss_live_kib"] / 1024, r["kib_per_session"], r["rss_empty_kib"] / 1024)
        for r in results
    )
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([p[0] for p in pts], [p[2] for p in pts], "o-", label="KiB per session")
    ax.axhline(GOALS["kib_per_session"], color="red", linestyle="--", label="goal 40 KiB")
    ax.set_xlabel("live sessions held (fresh process, all live, settled)")
    ax.set_ylabel("KiB per session")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot([p[0] for p in pts], [p[1] for p in pts], "s--", color="gray", label="RSS")
    ax2.plot([p[0] for p in pts], [p[3] for p in pts], ":", color="gray", label="RSS, no devices")
    ax2.set_ylabel("bridge RSS (MiB, gray)")
    ax2.set_ylim(bottom=0)
    ax.legend(loc="lower right")
    ax.set_title("Bridge memory against sessions held")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- entry points


async def run_bench(scenario: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Run one scenario end to end; returns its result (also rendered as a table unless ``quiet``).

    ``opts`` are :class:`Options` fields (the CLI passes ``vars(args)``); a ``console`` key may
    hold the rich :class:`Console` to narrate on.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    try:
        o = Options.from_dict(opts, scenario)
    except (TypeError, ValueError) as exc:
        raise BenchError(str(exc)) from None
    if scenario == "rooms":
        o.split_sims = True  # IMKIT's fan-out in a process of its own, never the providers'
    console = opts.get("console")
    ui = Ui(console if isinstance(console, Console) else None, quiet=o.quiet)
    machine = machine_info()
    runners: dict[str, Callable[[Harness, Options], Awaitable[Result]]] = {
        "sessions": _sessions,
        "storm": _storm,
        "latency": _latency,
        "throughput": _throughput,
        "api": _api,
        "rooms": _rooms,
        "steady": _steady,
    }
    started = time.time()
    async with Harness(o, ui) as h:
        result = await runners[scenario](h, o)
        await h.prof.stop()
        if h.prof.results:
            result["profile"] = h.prof.results
    result = {
        "scenario": scenario,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "options": {f.name: getattr(o, f.name) for f in fields(Options)},
        "machine": machine,
        **result,
    }
    if o.plots:
        result["plots"] = make_plots(scenario, result, Path(o.plots))
    if not o.quiet:
        render_summary(scenario, result, ui.console)
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.harness {api-load|bare} SPEC OUT``: the load and baseline child processes;
    ``python -m bench.harness plot-sessions OUT.png RESULT.json...``: memory against sessions held."""
    p = argparse.ArgumentParser(prog="python -m bench.harness")
    p.add_argument("role", choices=["api-load", "bare", "plot-sessions"])
    p.add_argument("spec", help="JSON file with the parameters (plot-sessions: the PNG to write)")
    p.add_argument(
        "out", nargs="+", help="JSON file for the result (plot-sessions: sessions results)"
    )
    args = p.parse_args(argv)
    if args.role == "plot-sessions":
        plot_sessions_scaling([json.loads(Path(f).read_text()) for f in args.out], Path(args.spec))
        return 0
    raise_nofile()
    spec = json.loads(Path(args.spec).read_text())
    run = api_load if args.role == "api-load" else _bare_main
    result = asyncio.run(run(spec))
    Path(args.out[0]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
