"""Run a real bridge (uvicorn, real HTTP) in the test's event loop, on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import uvicorn
from conftest import wait_for

from bridge.api.app import create_app
from bridge.config import Settings
from bridge.runtime import Bridge


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
async def running_bridge(settings: Settings) -> AsyncIterator[RunningBridge]:
    """Start ``create_app(settings)`` under uvicorn; stop it (graceful shutdown) afterwards."""
    port = free_port()
    settings = settings.model_copy(update={"port": port})
    bridge = Bridge(settings)
    app = create_app(settings, bridge=bridge)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
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
