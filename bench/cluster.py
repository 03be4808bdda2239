"""Several bridge nodes on one Redis: a ``push-bridge api`` and ``push-bridge worker`` processes
against the simulators, a steady stream of chat messages, and what APNs got of it.

The hand-over benchmark (``python -m bench.handover``) runs it at scale; tests/e2e/test_multinode.py
asserts the same properties on a smaller one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Protocol

import httpx
from redis import Redis, RedisError

from bench.processes import free_port
from bridge.sim.apns import ApnsSim
from bridge.sim.imkit import ImkitSim


class Restartable(Protocol):
    """A Redis server the cluster's processes share (tests stop and start it under them)."""

    @property
    def url(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def _bridge(role: str) -> list[str]:
    return [sys.executable, "-m", "bridge", role]


class Node:
    """A process of the cluster (``argv``), its output appended to ``log``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.env = env
        self.log = log
        self.proc = subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Cluster:
    """``push-bridge api`` and ``push-bridge worker`` processes sharing ``redis``, configured by
    ``base_env`` (the simulators' settings and the Redis store), their logs in ``tmp``."""

    def __init__(
        self,
        tmp: Path,
        imkit: ImkitSim,
        apns: ApnsSim,
        redis: Restartable,
        base_env: dict[str, str],
    ) -> None:
        self.tmp = tmp
        self.imkit = imkit
        self.apns = apns
        self.redis = redis
        self.base_env = base_env
        self.workers: dict[str, Node] = {}
        self.metrics_ports: dict[str, int] = {}
        self.api_port = free_port()
        self.api = Node(
            "api", _bridge("api"), {**base_env, "BRIDGE_PORT": str(self.api_port)}, tmp / "api.log"
        )

    def add_worker(self, name: str) -> None:
        port = free_port()
        self.metrics_ports[name] = port
        env = {**self.base_env, "BRIDGE_WORKER_ID": name, "BRIDGE_METRICS_PORT": str(port)}
        self.workers[name] = Node(name, _bridge("worker"), env, self.tmp / f"{name}.log")

    async def worker_devices(self) -> dict[str, int]:
        """``bridge_worker_devices`` of each running worker, from its ``/metrics``."""
        out: dict[str, int] = {}
        async with httpx.AsyncClient(timeout=2) as c:
            for name, port in self.metrics_ports.items():
                if self.workers[name].proc.poll() is not None:
                    continue
                try:
                    text = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
                except httpx.HTTPError:
                    continue
                m = re.search(rf'bridge_worker_devices{{worker="{name}"}} ([0-9.]+)', text)
                out[name] = int(float(m.group(1))) if m else 0
        return out

    def stop(self) -> None:
        for node in [*self.workers.values(), self.api]:
            node.stop()


class LocalRedis:
    """A ``redis-server`` on a free port of 127.0.0.1, its append-only data in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self._node: Node | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start it and return once it answers PING (or raise, naming its log)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes", "--dir", str(self.directory),
        ]  # fmt: skip
        node = self._node = Node("redis", argv, dict(os.environ), self.directory / "redis.log")
        client = Redis(port=self.port, socket_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RedisError):
                if client.ping():
                    break
            if node.proc.poll() is not None or time.monotonic() > deadline:
                node.stop()
                raise RuntimeError(f"redis-server did not start; see {node.log}")
            time.sleep(0.05)  # the pause between PINGs
        client.close()

    def stop(self) -> None:
        if self._node is not None:
            self._node.stop()
            self._node = None


def one_session_each(imkit: ImkitSim, users: list[str]) -> bool:
    """Every user has exactly one live socket at IMKIT: one session, on one worker."""
    return all(imkit.live_sockets(u) == 1 for u in users)


class Stream:
    """Sends a message to the stream room every ``interval`` seconds until stopped."""

    def __init__(self, imkit: ImkitSim, interval: float = 0.2) -> None:
        self.imkit = imkit
        self.interval = interval
        self.sent: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        i = 0
        while True:
            msg = await self.imkit.send_message("stream", "bob", f"tick {i}")
            self.sent.append(msg["_id"])
            i += 1
            await asyncio.sleep(self.interval)  # the traffic's pace, not a wait for an outcome

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def pushes_by_message(apns: ApnsSim) -> Counter[tuple[str, str]]:
    """How often APNs accepted a push of each (device token, message ``_id``)."""
    got: Counter[tuple[str, str]] = Counter()
    for r in apns.received:
        if r.status == 200 and "payload" in r.payload:
            got[(r.token, json.loads(r.payload["payload"])["_id"])] += 1
    return got
