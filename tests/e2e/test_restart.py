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

from bridge.models import Device, Registration
from bridge.service import Bridge
from bridge.sim.apns import ApnsSim
from bridge.sim.imkit import ImkitSim
from bridge.sim.stack import SimStack
from bridge.upstream.protocol import Message
from tests._poll import wait_for
from tests.e2e._bridge import free_port
from tests.e2e._stack import stack_settings

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
    # Checkpoints are written within a second of the provider's answer; let that happen. A
    # checkpoint written while the push was still pending stops just short of the message, and a
    # SIGKILL before the next flush would rightly push it again after the restart.
    await wait_for(
        lambda: _checkpoints(world["tmp"] / "bridge.db", at_least=first["updatedAtMS"]) == N,
        10,
        interval=0.1,
        message="checkpoints past the first message persisted",
    )

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


def _checkpoints(db: Path, at_least: int) -> int:
    """How many devices have a stored checkpoint at or past ``at_least`` (ms)."""
    import sqlite3

    with sqlite3.connect(db) as con:
        cols = [r[1] for r in con.execute("PRAGMA table_info(devices)")]
        if "checkpoint_ms" not in cols:
            return 0
        query = "SELECT COUNT(*) FROM devices WHERE checkpoint_ms >= ?"
        return int(con.execute(query, (at_least,)).fetchone()[0])




async def test_clean_shutdown_answers_pushes_in_flight_and_restart_pushes_nothing_twice(
    tmp_path: Path,
) -> None:
    """A push still waiting for APNs at shutdown is answered, checkpointed and never re-sent.

    The pool must stay listening while the dispatcher drains: an answer dropped there leaves the
    checkpoint before the message, and the next start backfills and pushes it a second time.
    """
    sims = await SimStack.start(tmp_path)
    imkit, apns = sims.imkit, sims.apns
    imkit.create_user("alice", "Alice")
    imkit.create_user("bob", "Bob")
    imkit.create_room("r1", ["alice", "bob"], name="Lunch")
    settings = stack_settings(sims, tmp_path)  # SQLite; push timeout 3 s, drain 10 s
    ios = "a1" * 32
    device = Device(
        device_id="iphone",
        client_id="alice",
        client_token=imkit.issue_token("alice"),
        registrations={"ios": Registration("ios", ios)},
    )

    def sent(message_id: str) -> int:
        return sum(json.loads(r.payload.get("payload", "{}")).get("_id") == message_id for r in apns.received)

    try:
        first = Bridge(settings)
        await first.start()
        try:
            await first.store.put_device(device)
            await first.device_changed("iphone")
            await wait_for(lambda: imkit.live_sockets("alice") == 1, 10, message="live")
            # APNs answers this one only after a second: the shutdown begins meanwhile.
            apns.script(ios, stall=1.0, times=1)
            in_flight = await imkit.send_message("r1", "bob", "in flight at shutdown")
            await wait_for(lambda: sent(in_flight["_id"]) == 1, 10, message="push sent, not answered")
        finally:
            await first.close()
        missed = await imkit.send_message("r1", "bob", "while the bridge was down")

        second = Bridge(settings)
        await second.start()
        try:
            stored = await second.store.get_device("iphone")
            assert stored is not None
            assert stored.checkpoint_ms == Message.model_validate(in_flight).version_ms  # answered
            await wait_for(lambda: sent(missed["_id"]) == 1, 15, message="missed message backfilled")
            assert await second.dispatcher.drain(5)  # whatever that backfill queued is finished
            assert sent(in_flight["_id"]) == 1  # not pushed twice across the restart
        finally:
            await second.close()
    finally:
        await sims.stop()
