"""``python -m bench.floor {receive|send} SPEC OUT``: the bare-library floor of ``bench rooms``.

What the libraries cost with no bridge logic at all, against the same simulators the bridge ran
against, each in a process of its own and never while the bridge runs:

- ``receive``: one python-socketio ``AsyncClient`` per device, handshaking as the bridge's
  sessions do (``conf`` base64, ``auth2``), each noting when a ``chat message`` arrives and its
  ``_id``. It rewrites ``SPEC["status"]`` (``{ready, live, failed, received}``) as it goes, and
  writes OUT when it gets SIGTERM (the bench decides when the load is over).
- ``send``: aioapns and firebase-admin (``send_each_async``) sending each message's pushes as one
  burst to its room's tokens, paced like the simulated IMKIT's emitter, after a warm-up; OUT
  holds each message's send time. The simulated providers note the arrivals.

Both run on the bridge's event loop (uvloop when installed, as ``push-bridge serve`` does). With
``SPEC["freeze"]`` the heap is frozen (``gc.freeze()``) once set up, as the issue's floor was
measured. Times are ``time.monotonic()``, the simulators' clock.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gc
import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import socketio

from bench.baselines import BareApns, BareFcm
from bench.machine import proc_usage, raise_nofile, run_queue_wait
from bridge.cli import _run as run_on_bridge_loop
from bridge.upstream.transport import make_http_session


def _decoded(raw: Any) -> Any:
    """A payload or ack as the simulated IMKIT sends it in base64 mode (plain objects pass)."""
    if isinstance(raw, str):
        with contextlib.suppress(binascii.Error, ValueError):
            return json.loads(base64.b64decode(raw))
    return raw


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)  # atomic: the bench never reads half a file


async def receive(spec: dict[str, Any]) -> dict[str, Any]:
    """Connect a client per token, then note every ``chat message`` until SIGTERM."""
    url, tokens, status = spec["url"], spec["tokens"], Path(spec["status"])
    arrivals: list[tuple[str, int, float]] = []
    counts = {"live": 0, "failed": 0}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    http = make_http_session(connect_timeout=30)
    gate = asyncio.Semaphore(int(spec.get("concurrency", 200)))
    clients: list[socketio.AsyncClient] = []

    def on_message(index: int) -> Any:
        async def handler(raw: Any) -> None:
            at = time.monotonic()
            message = _decoded(raw)
            if isinstance(message, dict) and isinstance(message.get("_id"), str):
                arrivals.append((message["_id"], index, at))

        return handler

    async def connect(index: int, token: str) -> None:
        async with gate:
            sio = socketio.AsyncClient(reconnection=False, handle_sigint=False, http_session=http)
            sio.on("chat message", on_message(index))
            clients.append(sio)
            try:
                await sio.connect(url, headers={}, transports=["websocket"], wait_timeout=30)
                await sio.emit("conf", {"encoding": "base64"})
                ack = _decoded(
                    await sio.call("auth2", (token, {"IM-Authorization": token}), timeout=30)
                )
                ok = isinstance(ack, dict) and ack.get("RC") == 0
            except Exception:  # connect errors, timeouts, a socket dropped mid-handshake: counted
                ok = False
            counts["live" if ok else "failed"] += 1

    async def report(ready: bool = False) -> None:
        state = {"ready": ready, **counts, "received": len(arrivals)}
        await asyncio.to_thread(_write_json, status, state)

    async def keep_reporting() -> None:
        while True:
            await report(ready=ready.is_set())
            await asyncio.sleep(0.25)

    ready = asyncio.Event()
    reporter = asyncio.create_task(keep_reporting())
    t0 = time.monotonic()
    await asyncio.gather(*(connect(i, t) for i, t in enumerate(tokens)))
    connect_seconds = time.monotonic() - t0
    if spec.get("freeze"):
        gc.collect()
        gc.freeze()
    ready.set()
    await report(ready=True)
    await stop.wait()
    reporter.cancel()
    # No goodbyes: closing the connections is enough, the simulated IMKIT sees them go.
    with contextlib.suppress(Exception):
        await http.close()
    return {
        "live": counts["live"],
        "failed": counts["failed"],
        "connect_seconds": round(connect_seconds, 2),
        "arrivals": arrivals,
    }


async def send(spec: dict[str, Any]) -> dict[str, Any]:
    """A warm-up, then ``count`` bursts at ``rate`` per second, each to one room's tokens."""
    env, rooms = spec["env"], spec["rooms"]
    rate, count, warm = float(spec["rate"]), int(spec["count"]), int(spec["warm"])
    providers = {provider for room in rooms for provider, _ in room}
    apns = await BareApns.open(env, window_guard=True) if "apns" in providers else None
    fcm = BareFcm(env) if "fcm" in providers else None
    outcomes: Counter[str] = Counter()

    async def burst(i: int, message_id: str) -> None:
        room = rooms[i % len(rooms)]
        jobs: list[Any] = []
        if apns is not None:
            body = apns.body(message_id)
            jobs += [apns.send(t, body, message_id) for p, t in room if p == "apns"]
        fcm_tokens = [t for p, t in room if p == "fcm"]
        if fcm is not None and fcm_tokens:
            jobs.append(fcm.send(fcm_tokens, fcm.data(message_id)))
        for result in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(result, BaseException):
                outcomes[type(result).__name__] += 1
            elif isinstance(result, list):
                outcomes.update(result)
            else:
                outcomes[result] += 1

    async def paced(prefix: str, n: int) -> tuple[dict[str, float], float]:
        # Paced by deadline, as the simulated IMKIT emits: a late burst is followed at once by
        # the next, and a slow one does not hold the next back (a backlog shows as latency).
        emitted: dict[str, float] = {}
        tasks = []
        t0 = time.monotonic()
        for i in range(n):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            message_id = f"{prefix}-{i:07d}"
            emitted[message_id] = time.monotonic()
            tasks.append(asyncio.create_task(burst(i, message_id)))
        await asyncio.gather(*tasks)
        return emitted, t0

    try:
        await paced("fw", warm)
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{spec['control']}/bench/reset", json={"per_push": True}) as r,
        ):
            r.raise_for_status()
        outcomes.clear()
        if spec.get("freeze"):
            gc.collect()
            gc.freeze()
        cpu0, wait0 = proc_usage()[1], run_queue_wait()
        w0 = time.monotonic()
        emitted, started = await paced("f1", count)
        seconds = time.monotonic() - w0
        cpu, wait = proc_usage()[1] - cpu0, run_queue_wait() - wait0
    finally:
        if apns is not None:
            apns.close()
        if fcm is not None:
            await fcm.close()
    last = max(emitted.values(), default=started)
    achieved = (count - 1) / (last - started) if count > 1 and last > started else None
    return {
        "emitted": emitted,
        "started": started,
        "achieved_rate": None if achieved is None else round(achieved, 1),
        "outcomes": dict(outcomes),
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "cpu_wait_seconds": round(wait, 3),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] not in ("receive", "send"):
        sys.stderr.write("usage: python -m bench.floor {receive|send} SPEC OUT\n")
        return 2
    role, spec_file, out = args
    raise_nofile()
    spec = json.loads(Path(spec_file).read_text())
    result = run_on_bridge_loop(receive(spec) if role == "receive" else send(spec))
    _write_json(Path(out), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
