"""The bridge under test as processes, behind one interface the harness uses for both modes:

- :class:`ServeBridge`: one ``python -m bridge serve`` on SQLite (the default);
- :class:`WorkerCluster` (``--workers N``, N ≥ 2): a private ``redis-server``, one ``python -m
  bridge api`` and N ``python -m bridge worker`` processes sharing it, the devices sharded over
  the workers, so the bridge can use more than one core.

Both are configured by the same ``BRIDGE_*`` settings (:meth:`Harness.start_bridge
<bench.harness.Harness.start_bridge>`); each adds only what its processes need apart (ports, the
Redis store and its key, worker ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path

import aiohttp
from cryptography.fernet import Fernet
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bench.machine import proc_usage
from bench.processes import BenchError, Child, free_port, wait_until
from bridge.redis_keys import WORKER_PREFIX
from bridge.worker.coordinator import SETTLE_TICKS


def _bridge(role: str) -> list[str]:
    return [sys.executable, "-m", "bridge", role]


async def _status(http: aiohttp.ClientSession, url: str) -> int | None:
    """The HTTP status of ``GET url``, None when nothing answers yet."""
    try:
        async with http.get(url) as r:
            return r.status
    except aiohttp.ClientError:
        return None


class BridgeProcs(ABC):
    """The processes of the bridge under test: :meth:`spawn`, :meth:`wait_ready`, then the
    app API at :attr:`url`, the ``/metrics`` of the processes holding sessions, and ``/proc``
    figures of each process; :meth:`stop` ends them all.

    ``env`` is the environment without ``BRIDGE_*`` variables, ``settings`` the bridge's
    ``BRIDGE_*`` settings; logs go to ``tmp``, which is also the processes' working directory (a
    stray ``.env`` in the caller's directory must not configure the bridge).
    """

    def __init__(self, tmp: Path, env: dict[str, str], settings: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.settings = settings
        #: The bridge's processes by name, in the order they were started.
        self.children: dict[str, Child] = {}
        #: What the bridge needs that is not the bridge (a Redis server), by name.
        self.support: dict[str, Child] = {}
        #: The app API (``POST /me/subscribe``, ``/readyz``), set by :meth:`spawn`.
        self.url = ""

    @property
    @abstractmethod
    def metrics_urls(self) -> dict[str, str]:
        """``/metrics`` of each process holding sessions, by process name."""

    @abstractmethod
    async def spawn(self) -> None:
        """Start the processes (what they depend on first, waited for)."""

    @abstractmethod
    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float) -> None:  # noqa: ASYNC109 - a deadline
        """Return once every process is ready to take devices; :class:`BenchError` at ``timeout``."""

    @property
    def pid(self) -> int:
        """The process ``--profile`` samples: the first one holding sessions."""
        name = next(iter(self.metrics_urls))
        return self.children[name].pid

    @property
    def started(self) -> float:
        """``time.monotonic()`` of the first bridge process's spawn."""
        return min(c.started for c in self.children.values())

    def _spawn(self, name: str, argv: list[str], settings: dict[str, str]) -> Child:
        child = Child(name, argv, {**self.env, **settings}, self.tmp / f"{name}.log", self.tmp)
        self.children[name] = child
        return child

    def check(self) -> None:
        """Raise :class:`BenchError` with its last log lines if any of the processes has exited."""
        for child in [*self.support.values(), *self.children.values()]:
            child.check()

    def pids(self) -> dict[str, int]:
        """The bridge's processes (not their Redis) by name."""
        return {name: c.pid for name, c in self.children.items()}

    def support_pids(self) -> dict[str, int]:
        return {name: c.pid for name, c in self.support.items()}

    def usage_by_process(self) -> dict[str, tuple[int, float]]:
        """``(RSS KiB, CPU seconds)`` of each of the bridge's processes."""
        self.check()
        return {name: proc_usage(pid) for name, pid in self.pids().items()}

    def usage(self) -> tuple[int, float]:
        """``(RSS KiB, CPU seconds)`` summed over the bridge's processes."""
        each = self.usage_by_process().values()
        return sum(rss for rss, _ in each), sum(cpu for _, cpu in each)

    async def stop(self) -> None:
        """Stop every process, the ones holding sessions first (they close them), Redis last."""
        holding = set(self.metrics_urls)
        await asyncio.gather(*(c.stop(60) for name, c in self.children.items() if name in holding))
        for name, child in self.children.items():
            if name not in holding:
                await child.stop(60)
        for child in self.support.values():
            await child.stop(10)


class ServeBridge(BridgeProcs):
    """One ``python -m bridge serve``: the API and the worker pool in one process (``settings``
    hold its store, SQLite)."""

    NAME = "bridge"

    @property
    def metrics_urls(self) -> dict[str, str]:
        return {self.NAME: f"{self.url}/metrics"}

    async def spawn(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._spawn(self.NAME, _bridge("serve"), {**self.settings, "BRIDGE_PORT": str(port)})

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float) -> None:  # noqa: ASYNC109 - a deadline
        async def ready() -> bool:
            self.check()
            return await _status(http, f"{self.url}/readyz") == 200

        await wait_until(ready, timeout, "the bridge to be ready", interval=0.05)


class WorkerCluster(BridgeProcs):
    """A private ``redis-server`` (no persistence), one ``python -m bridge api`` and ``n``
    ``python -m bridge worker`` processes (``worker-1`` … ``worker-N``, each with its own
    ``/metrics`` port) sharing it, with a generated ``BRIDGE_SECRET_KEY``."""

    def __init__(self, tmp: Path, env: dict[str, str], settings: dict[str, str], n: int) -> None:
        if n < 2:
            raise ValueError("a worker cluster has 2 workers or more")
        super().__init__(tmp, env, settings)
        self.worker_ids = [f"worker-{i + 1}" for i in range(n)]
        self._metrics_ports: dict[str, int] = {}  # chosen as each worker starts
        self.redis_url = ""

    @property
    def metrics_urls(self) -> dict[str, str]:
        return {w: f"http://127.0.0.1:{p}/metrics" for w, p in self._metrics_ports.items()}

    async def spawn(self) -> None:
        await self._start_redis()
        common = {
            **self.settings,
            "BRIDGE_STORE": self.redis_url,
            "BRIDGE_SECRET_KEY": Fernet.generate_key().decode(),
        }
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._spawn("api", _bridge("api"), {**common, "BRIDGE_PORT": str(port)})
        for w in self.worker_ids:
            self._metrics_ports[w] = free_port()
            worker = {"BRIDGE_WORKER_ID": w, "BRIDGE_METRICS_PORT": str(self._metrics_ports[w])}
            self._spawn(w, _bridge("worker"), {**common, **worker})

    async def _start_redis(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise BenchError(
                "--workers needs redis-server on PATH (e.g. apt-get install redis-server)"
            )
        port = free_port()
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        directory = self.tmp / "redis"
        directory.mkdir(exist_ok=True)
        argv = [
            exe, "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(directory),
        ]  # fmt: skip
        child = Child("redis-server", argv, self.env, self.tmp / "redis.log", self.tmp)
        self.support["redis"] = child
        client = Redis.from_url(self.redis_url, socket_timeout=1)

        async def pong() -> bool:
            child.check()
            with contextlib.suppress(RedisError, OSError):
                return bool(await client.ping())
            return False

        try:
            await wait_until(pong, 30, "redis-server to answer PING", interval=0.05)
        finally:
            await client.aclose()

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float) -> None:  # noqa: ASYNC109 - a deadline
        """The api and every worker answer ``/readyz`` 200, and every worker is a settled member:
        a device registered earlier could be taken by a worker that has not seen all the others
        yet, then handed over to its rendezvous owner mid-setup."""
        deadline = time.monotonic() + timeout
        readyz = [f"{self.url}/readyz"] + [
            url.removesuffix("/metrics") + "/readyz" for url in self.metrics_urls.values()
        ]

        async def ready() -> bool:
            self.check()
            statuses = await asyncio.gather(*(_status(http, url) for url in readyz))
            return all(s == 200 for s in statuses)

        await wait_until(ready, timeout, "the api and the workers to be ready", interval=0.05)
        client = Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            await self._wait_settled(client, max(1.0, deadline - time.monotonic()))
        finally:
            await client.aclose()

    async def _wait_settled(self, redis: Redis, timeout: float) -> None:  # noqa: ASYNC109 - a deadline
        """Wait until every worker has written its heartbeat (``pb:worker:<id>``, a JSON with
        ``ts``) ``SETTLE_TICKS + 1`` times since all of them were live members.

        Each heartbeat opens a coordinator step, and a step reads the members after it: from the
        first such beat on, every worker's member list holds all of them; from the
        ``SETTLE_TICKS + 1``-th on, its start-up pause (no new leases for ``SETTLE_TICKS`` ticks
        after its first beat) is over, so it takes each device it wins as soon as it registers.
        A beat missed between two polls only makes this wait one beat longer. (With no devices
        yet, no step is long enough to beat again within itself.)
        """
        keys = [WORKER_PREFIX + w for w in self.worker_ids]
        beats: dict[str, set[float]] = {w: set() for w in self.worker_ids}
        since: float | None = None

        async def settled() -> bool:
            nonlocal since
            self.check()
            try:
                values = await redis.mget(keys)
            except (RedisError, OSError):
                return False
            if since is None:
                if all(v is not None for v in values):
                    since = time.time()  # the workers' clock: the same machine
                return False
            for w, value in zip(self.worker_ids, values, strict=True):
                if value is not None:
                    ts = float(json.loads(value)["ts"])
                    if ts > since:
                        beats[w].add(ts)
            return all(len(b) > SETTLE_TICKS for b in beats.values())

        what = f"the {len(self.worker_ids)} workers to be settled members"
        await wait_until(settled, timeout, what, interval=0.05)
