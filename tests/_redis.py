"""A real ``redis-server`` for tests: start on a free port, wait for PING, stop, restart.

Use the fixtures from a test module (or a conftest); pytest finds them by name once imported::

    from tests._redis import RedisServer, redis_server, redis_server_factory  # noqa: F401

``redis_server`` is a throwaway server without persistence; ``redis_server_factory(appendonly=
True)`` gives one that keeps its data across ``restart()``. The ``redis`` fixture (imported as
``redis_client``, with ``redis_server``) is a client of ``redis_server``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests._poll import holds_within, wait_for

REDIS_SERVER = os.environ.get("REDIS_SERVER", shutil.which("redis-server") or "/usr/bin/redis-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` subprocess in its own directory, on one port for its whole life."""

    def __init__(self, directory: Path, *, port: int | None = None, appendonly: bool = False) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it answers PING (or raise with its log)."""
        if self.proc is not None:
            raise RuntimeError("redis-server already running")
        log_path = self.directory / "redis.log"
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "yes" if self.appendonly else "no",
                "--dir", str(self.directory),
                "--logfile", str(log_path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        proc = self.proc
        # Stops early if the server died (a taken port, say): no PONG will come.
        up = holds_within(lambda: proc.poll() is not None or _pong(self.port), timeout, interval=0.02)
        code = proc.poll()
        if not up or code is not None:
            proc.kill()
            proc.wait()
            self.proc = None
            log = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise RuntimeError(f"redis-server on port {self.port} did not start (exit {code}):\n{log}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (redis flushes its append-only file) and wait for exit. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again on the same port and directory."""
        self.stop(timeout)
        self.start(timeout)


class RedisServers:
    """Starts ``RedisServer``s under one directory and stops them all at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.servers: list[RedisServer] = []

    def __call__(self, *, appendonly: bool = False) -> RedisServer:
        server = RedisServer(self.directory / f"redis-{len(self.servers)}", appendonly=appendonly)
        for attempt in range(3):  # another process may take the free port before redis binds it
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                server.port = free_port()
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Make started ``RedisServer``s (``appendonly=True`` to survive restarts); all stopped after."""
    servers = RedisServers(tmp_path / "redis-servers")
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A started redis-server without persistence, stopped after the test."""
    servers = RedisServers(tmp_path / "redis-server")
    try:
        yield servers()
    finally:
        servers.stop_all()


@pytest.fixture(name="redis")
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of ``redis_server`` (bytes replies), closed after the test."""
    client = Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def expire_now(redis: Redis, key: str) -> None:
    """Let ``key`` run out of time now (as its TTL would), without racing a real short TTL."""
    await redis.pexpire(key, 1)
    await wait_for(lambda: gone(redis, key), timeout=3.0, interval=0.005, message=f"{key} expired")


async def gone(redis: Redis, key: str) -> bool:
    """Whether ``key`` no longer exists."""
    return await redis.exists(key) == 0
