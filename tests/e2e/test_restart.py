"""`push-bridge serve` as a real process: killed with SIGKILL and restarted, nothing is lost;
and no client token or push token ever appears in its logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_for

from bridge.sim.apns import ApnsSim
from bridge.sim.imkit import ImkitSim
from bridge.sim.stack import SimStack
from tests.e2e._bridge import free_port

N = 20


class BridgeProcess:
    def __init__(self, env: dict[str, str], log_file: Path) -> None:
        self.env = env
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{env['BRIDGE_PORT']}"

    def start(self) -> None:
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT)

    async def ready(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as c:
                return (await c.get(self.url + "/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(30)
        return self.proc.returncode


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    sims = await SimStack.start(tmp_path)
    imkit, apns = sims.imkit, sims.apns
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        sims.env(),
        BRIDGE_PORT=str(free_port()),
        BRIDGE_STORE=f"sqlite:///{tmp_path / 'bridge.db'}",
        BRIDGE_BACKOFF_BASE="0.05",
        BRIDGE_BACKOFF_CAP="0.5",
        BRIDGE_LOG_LEVEL="DEBUG",
        BRIDGE_RATE_LIMIT_PER_MINUTE="100000",
    )
    proc = BridgeProcess(env, tmp_path / "bridge.log")
    try:
        yield {"imkit": imkit, "apns": apns, "proc": proc, "tmp": tmp_path}
    finally:
        if proc.proc is not None:
            proc.stop()
        await sims.stop()


def delivered(apns: ApnsSim) -> list[str]:
    return [json.loads(r.payload["payload"])["_id"] for r in apns.received if r.status == 200 and "payload" in r.payload]


async def test_sigkill_and_restart_keeps_registrations_and_backfills(world: dict[str, Any]) -> None:
    imkit: ImkitSim = world["imkit"]
    apns: ApnsSim = world["apns"]
    proc: BridgeProcess = world["proc"]
    users = [f"u{i}" for i in range(N)]
    for u in users:
        imkit.create_user(u, u.upper())
    imkit.create_user("bob", "Bob")
    imkit.create_room("room", [*users, "bob"], name="Everyone")
    tokens = {u: imkit.issue_token(u) for u in users}
    push_tokens = {u: f"{i + 1:064x}" for i, u in enumerate(users)}

    proc.start()
    await wait_for(proc.ready, 20, interval=0.1, message="bridge ready")
    async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
        for u in users:
            r = await http.post("/me/subscribe", json={"type": "ios", "token": push_tokens[u], "deviceId": f"dev-{u}"}, headers={"IM-Authorization": tokens[u]})
            assert r.status_code == 200, r.text
    await wait_for(lambda: imkit.live_sockets() == N, 20, interval=0.05, message="all live")
    first = await imkit.send_message("room", "bob", "before the crash")
    await wait_for(lambda: delivered(apns).count(first["_id"]) == N, 15, interval=0.05, message="first message to everyone")
    # Checkpoints are written within a second of the provider's answer; let that happen.
    await wait_for(lambda: _checkpoints(world["tmp"] / "bridge.db") == N, 10, interval=0.1, message="checkpoints persisted")

    proc.kill()
    await wait_for(lambda: imkit.live_sockets() == 0, 10, message="sockets gone with the process")
    missed = await imkit.send_message("room", "bob", "while the bridge was down")

    proc.start()
    await wait_for(proc.ready, 20, interval=0.1, message="bridge ready again")
    await wait_for(lambda: imkit.live_sockets() == N, 20, interval=0.05, message="every session back")
    await wait_for(lambda: delivered(apns).count(missed["_id"]) == N, 15, interval=0.05, message="missed message backfilled to everyone")
    after = await imkit.send_message("room", "bob", "after the restart")
    await wait_for(lambda: delivered(apns).count(after["_id"]) == N, 15, interval=0.05, message="live again")
    got = delivered(apns)
    assert got.count(first["_id"]) == N  # nothing pushed twice across the restart

    async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
        r = await http.get("/me/devices/dev-u0", headers={"IM-Authorization": tokens["u0"]})
        assert r.status_code == 200 and r.json()["result"]["session"] == "live"
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the process ends "by" the signal.
    assert proc.stop() in (0, -signal.SIGTERM)
    logs = (world["tmp"] / "bridge.log").read_text()
    assert "worker pool closed" in logs  # sessions were closed and pushes drained
    assert logs.count("\n") > 20
    for secret in [*tokens.values(), *push_tokens.values()]:
        assert secret not in logs
    for line in logs.splitlines():
        if line.startswith("{"):
            json.loads(line)  # every log line of the bridge is a JSON object


def _checkpoints(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as con:
        cols = [r[1] for r in con.execute("PRAGMA table_info(devices)")]
        col = "checkpoint_ms" if "checkpoint_ms" in cols else None
        if col is None:
            return 0
        return int(con.execute(f"SELECT COUNT(*) FROM devices WHERE {col} IS NOT NULL").fetchone()[0])


