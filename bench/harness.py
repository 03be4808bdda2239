"""The harness of a benchmark run: the simulator processes (``python -m bench.sims``), the bridge
(one ``python -m bridge serve``, or with ``--workers N`` an api and N workers on Redis: see
:mod:`bench.bridge_procs`), the simulated devices, and the HTTP calls and waits that every
scenario is made of."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.bridge_procs import BridgeProcs, ServeBridge, WorkerCluster
from bench.console import Ui
from bench.machine import proc_usage
from bench.options import Options
from bench.processes import BenchError, Child, bench_env, wait_until
from bench.profiler import Profiler
from bench.stats import parse_metrics, summarize

ADMIN_TOKEN = "bench-admin-token"


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


class Harness:
    """Simulators, the bridge's processes and the HTTP plumbing of a benchmark run."""

    def __init__(self, opts: Options, ui: Ui) -> None:
        self.opts = opts
        self.ui = ui
        self.tmp = Path(tempfile.mkdtemp(prefix="push-bridge-bench-"))
        self.sims: dict[str, Child] = {}
        self.sims_info: dict[str, dict[str, Any]] = {}
        self.sims_env: dict[str, str] = {}
        self.bridge: BridgeProcs | None = None
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
        """Start the bridge: ``python -m bridge serve``, or with ``--workers N`` (N ≥ 2) a
        ``redis-server``, ``python -m bridge api`` and N ``python -m bridge worker`` processes
        (``env`` overrides the settings of each; the cluster's own store wins). Returns its spawn
        time (monotonic) once it is ready: /readyz 200, and every worker a settled member.

        With ``profile``, the profiler's phase of that name starts right after the spawn (with
        ``--workers``: of the first worker).
        """
        if self.bridge is not None:
            raise BenchError("a bridge is already running")
        base = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        rate = self.opts.connect_rate or 1000.0
        settings = {
            **self.sims_env,
            "BRIDGE_HOST": "127.0.0.1",
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
        if self.opts.mute_refresh_interval is not None:
            settings["BRIDGE_MUTE_REFRESH_INTERVAL"] = str(self.opts.mute_refresh_interval)
        settings.update({k: str(v) for k, v in env.items()})
        procs: BridgeProcs = (
            ServeBridge(self.tmp, base, settings)
            if self.opts.workers == 1
            else WorkerCluster(self.tmp, base, settings, self.opts.workers)
        )
        self.bridge = procs  # set before anything can fail: stop_bridge stops what was started
        await procs.spawn()
        self.bridge_url = procs.url
        if profile:
            self.profile(profile)
        await procs.wait_ready(self.http, 120 + self.opts.sessions / 100)
        return procs.started

    async def stop_bridge(self) -> None:
        await self.prof.stop()  # py-spy follows the process it samples
        if self.bridge is not None:
            await self.bridge.stop()
            self.bridge = None

    def bridge_usage(self) -> tuple[int, float]:
        """``(RSS KiB, CPU seconds)`` of the bridge, summed over its processes (not Redis)."""
        if self.bridge is None:
            raise BenchError("no bridge is running")
        return self.bridge.usage()

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

    async def metrics_each(self) -> dict[str, dict[str, float]]:
        """The ``/metrics`` samples of each bridge process holding sessions, by process name."""
        if self.bridge is None:
            raise BenchError("no bridge is running")
        self.bridge.check()
        out: dict[str, dict[str, float]] = {}
        for name, url in self.bridge.metrics_urls.items():
            async with self.http.get(url) as r:
                out[name] = parse_metrics(await r.text())
        return out

    async def metrics(self) -> dict[str, float]:
        """The bridge's ``/metrics`` samples, summed over its processes holding sessions."""
        total: dict[str, float] = {}
        for m in (await self.metrics_each()).values():
            for k, v in m.items():
                total[k] = total.get(k, 0.0) + v
        return total

    async def sessions(self) -> dict[str, int]:
        """The bridge's sessions by state (``bridge_sessions``, summed over its processes)."""
        return _sessions(await self.metrics())

    async def sessions_each(self) -> dict[str, dict[str, int]]:
        """The sessions by state of each bridge process holding sessions, by process name."""
        return {name: _sessions(m) for name, m in (await self.metrics_each()).items()}

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

    async def rest_requests(self) -> int:
        """IMKIT's REST request count so far (the bench's own control calls are not among them)."""
        return int((await self.sims_stats("imkit"))["imkit"]["rest_requests_total"])

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
                # still loading its devices and not yet serving /metrics. A simulator busy with
                # thousands of connects may not answer in time: ask again, within the deadline.
                try:
                    stats = (await self.sims_stats("imkit", imkit_since or 0.0))["imkit"]
                except (TimeoutError, aiohttp.ClientError):
                    return False
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
                n = await self.rest_requests()
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


def _sessions(metrics: dict[str, float]) -> dict[str, int]:
    prefix = 'bridge_sessions{state="'
    return {k[len(prefix) : -2]: int(v) for k, v in metrics.items() if k.startswith(prefix)}


def bare_library_env(h: Harness) -> dict[str, str]:
    """The environment of a bare-library child: it trusts the simulators' CA the only way
    firebase-admin can, through process-wide variables."""
    env = dict(os.environ)
    env["SSL_CERT_FILE"] = env["REQUESTS_CA_BUNDLE"] = h.sims_env["BRIDGE_FCM_CA_FILE"]
    return env
