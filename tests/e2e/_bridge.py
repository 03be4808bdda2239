"""Run a real bridge (uvicorn, real HTTP) in the test's event loop, on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import uvicorn

from bridge.api.app import create_app
from bridge.config import Settings
from bridge.service import Bridge, Role
from tests._poll import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_port_run(n: int) -> int:
    """The first of ``n`` consecutive free ports (``sim all`` binds P, P+1 and P+2)."""
    for _ in range(200):
        base = free_port()
        held: list[socket.socket] = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no run of {n} free ports found")


@dataclass
class RunningBridge:
    url: str
    bridge: Bridge

    def client(self, token: str | None = None, **headers: str) -> httpx.AsyncClient:
        h = dict(headers)
        if token is not None:
            h["IM-Authorization"] = token
        return httpx.AsyncClient(base_url=self.url, headers=h, timeout=10)


@contextlib.asynccontextmanager
async def running_bridge(settings: Settings, role: Role = "serve") -> AsyncIterator[RunningBridge]:
    """Start ``create_app(settings)`` under uvicorn; stop it (graceful shutdown) afterwards."""
    port = free_port()
    settings = settings.model_copy(update={"port": port})
    bridge = Bridge(settings, role=role)
    app = create_app(settings, bridge=bridge)
    server = uvicorn.Server(
        # proxy_headers=False as in `push-bridge serve`: only BRIDGE_TRUSTED_PROXY_HEADER names the caller.
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on", proxy_headers=False)
    )
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started or task.done(), 15, message="bridge startup")
        if task.done():
            task.result()
            raise RuntimeError("bridge exited during startup")
        yield RunningBridge(url=f"http://127.0.0.1:{port}", bridge=bridge)
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 20)
