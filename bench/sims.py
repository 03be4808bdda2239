"""``python -m bench.sims``: the simulated IMKIT, APNs and FCM for ``push-bridge bench``.

The benchmark keeps the simulators out of the bridge's process (and out of its own), so the
bridge's RSS and CPU are the bridge's alone. This child process runs :class:`ImkitSim`,
:class:`ApnsSim` and :class:`FcmSim` (all of them, or only IMKIT or only the two providers), plus
a small control API that the bench drives:

- ``POST /bench/users {prefix, n, start}``: create users in bulk, answer their client tokens;
- ``POST /bench/rooms {rooms: [{roomId, members}]}``: create rooms in bulk;
- ``POST /bench/emit {rooms, count, rate, sender}``: send ``count`` chat messages round-robin over
  ``rooms`` at ``rate`` per second (0: as fast as possible), remembering when each was emitted;
- ``GET /bench/emit``: how far that got; ``GET /bench/stats``: counters of every simulator, the
  peak connect rate since ``?since=`` (monotonic seconds) and this process's RSS and CPU;
- ``GET /bench/latencies``: emit → provider arrival of every message id seen on both sides;
- ``GET /bench/pushes``: every push request since the last reset as ``[message id, device token,
  arrival time, status]``, per provider (recorded only after ``POST /bench/reset {"per_push":
  true}``: ``rooms`` counts missing and duplicate pushes per device, the other scenarios need not);
- ``POST /bench/reset``: forget emits and arrivals.

Times are ``time.monotonic()``, which on Linux is one clock for every process of the machine,
so emit times of one simulator process compare with arrival times of another. The providers'
``received`` lists are drained every 20 ms into per-message first-arrival times (by the ``_id``
in the push's ``payload``), so memory stays bounded however long a run is.

When ready, the process writes a JSON file (``--ready-file``) with the control URL and the
``BRIDGE_*`` variables that point a bridge at these simulators.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.machine import proc_usage, raise_nofile
from bridge.sim.apns import ApnsSim
from bridge.sim.certs import generate_apns_key, issue_test_certs
from bridge.sim.fcm import FcmSim
from bridge.sim.imkit import ImkitSim
from bridge.sim.stack import TOPIC, apns_settings, as_env, fcm_settings, imkit_settings

logger = logging.getLogger(__name__)

PARTS = ("all", "imkit", "providers")
#: How often the providers' records are folded into arrival times.
DRAIN_INTERVAL = 0.02


def peak_rate(times: list[float], since: float = 0.0, window: float = 1.0) -> int:
    """The most events within any ``window`` seconds among ``times`` at or after ``since``."""
    ts = sorted(t for t in times if t >= since)
    best = lo = 0
    for hi, t in enumerate(ts):
        while t - ts[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def message_id_of(payload: object) -> str | None:
    """The IMKIT message ``_id`` inside a push's ``payload`` field (a JSON string), if any."""
    if not isinstance(payload, str):
        return None
    try:
        obj = json.loads(payload)
    except ValueError:
        return None
    mid = obj.get("_id") if isinstance(obj, dict) else None
    return mid if isinstance(mid, str) else None


class _Arrivals:
    """What one simulated provider received: counts, statuses, first/last time, per-message time."""

    def __init__(self) -> None:
        self.total = 0
        self.statuses: Counter[int] = Counter()
        self.first: float | None = None
        self.last: float | None = None
        #: message id -> monotonic time of its first accepted (200) request
        self.by_message: dict[str, float] = {}
        #: With ``per_push``: every request with a message id, as (id, token, time, status).
        self.per_push = False
        self.pushes: list[tuple[str, str, float, int]] = []

    def add(
        self, at: float, status: int | None, message_id: str | None, token: str | None = None
    ) -> None:
        self.total += 1
        self.statuses[status or 0] += 1
        self.first = at if self.first is None else min(self.first, at)
        self.last = at if self.last is None else max(self.last, at)
        if status == 200 and message_id is not None and message_id not in self.by_message:
            self.by_message[message_id] = at
        if self.per_push and message_id is not None and token is not None:
            self.pushes.append((message_id, token, at, status or 0))

    def reset(self, *, per_push: bool = False) -> None:
        self.total = 0
        self.statuses = Counter()
        self.first = self.last = None
        self.by_message = {}
        self.per_push = per_push
        self.pushes = []

    def stats(self) -> dict[str, Any]:
        return {
            "received": self.total,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "first": self.first,
            "last": self.last,
        }


class BenchSims:
    """The simulators of one benchmark run and their control API. ``start()``, then ``stop()``."""

    def __init__(self, state_dir: Path, *, parts: str = "all", host: str = "127.0.0.1") -> None:
        if parts not in PARTS:
            raise ValueError(f"parts must be one of {PARTS}")
        self.state_dir = state_dir
        self.parts = parts
        self.host = host
        self.imkit: ImkitSim | None = None
        self.apns: ApnsSim | None = None
        self.fcm: FcmSim | None = None
        self.arrivals = {"apns": _Arrivals(), "fcm": _Arrivals()}
        #: message id -> monotonic emit time
        self.emitted: dict[str, float] = {}
        self._emit_task: asyncio.Task[None] | None = None
        self._emit_state: dict[str, Any] = {"emitted": 0, "count": 0, "done": True}
        self._emit_run = 0
        self._drain_task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.control_url = ""
        self.env: dict[str, str] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self, control_port: int = 0) -> dict[str, Any]:
        """Start the simulators and the control API; returns what the ready file holds."""
        d = self.state_dir
        d.mkdir(parents=True, exist_ok=True)
        if self.parts in ("all", "imkit"):
            self.imkit = ImkitSim()
            await self.imkit.start(self.host, 0)
            self.env.update(as_env(imkit_settings(self.imkit.url)))
        if self.parts in ("all", "providers"):
            certs = await asyncio.to_thread(issue_test_certs, d / "certs")
            key = await asyncio.to_thread(generate_apns_key, d / "keys")
            # No keep_received: drain() empties the list every DRAIN_INTERVAL anyway.
            self.apns = ApnsSim(certs.cert_file, certs.key_file, topics=[TOPIC], keys=[key])
            await self.apns.start(self.host, 0)
            # TLS, so the bridge's FCM client speaks HTTP/2 as it does with Google.
            self.fcm = FcmSim(
                tls=True,
                cert_file=str(certs.cert_file),
                key_file=str(certs.key_file),
                max_concurrent_streams=1000,
            )
            await self.fcm.start(self.host, 0)
            sa = self.fcm.write_service_account(d / "fcm-service-account.json")
            apns = apns_settings(
                host=self.host, port=self.apns.port, ca_file=certs.ca_file, key=key, topic=TOPIC
            )
            fcm = fcm_settings(url=self.fcm.url, service_account=sa, ca_file=certs.ca_file)
            self.env.update(as_env({**apns, **fcm}))
            self._drain_task = asyncio.create_task(self._drain_loop(), name="bench-sims-drain")
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self._routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, control_port).start()
        self._runner = runner
        self.control_url = f"http://{self.host}:{runner.addresses[0][1]}"
        return {
            "control": self.control_url,
            "parts": self.parts,
            "pid": os.getpid(),
            "env": self.env,
        }

    async def stop(self) -> None:
        """Stop emitting, stop every simulator and the control API. Idempotent."""
        for task in (self._emit_task, self._drain_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._emit_task = self._drain_task = None
        for sim in (self.imkit, self.apns, self.fcm):
            if sim is not None:
                with contextlib.suppress(Exception):
                    await sim.stop()
        self.imkit = self.apns = self.fcm = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ arrivals

    async def _drain_loop(self) -> None:
        while True:
            await asyncio.sleep(DRAIN_INTERVAL)
            self.drain()

    def drain(self) -> None:
        """Fold the providers' new records into :attr:`arrivals` and empty their lists."""
        if self.apns is not None:
            a = self.arrivals["apns"]
            for rec in self.apns.received:
                a.add(rec.arrived, rec.status, message_id_of(rec.payload.get("payload")), rec.token)
            self.apns.received.clear()
        if self.fcm is not None:
            f = self.arrivals["fcm"]
            for frec in self.fcm.received:
                data = frec.message.get("data")
                mid = message_id_of(data.get("payload")) if isinstance(data, dict) else None
                f.add(frec.at, frec.status, mid, frec.token)
            self.fcm.received.clear()

    # ------------------------------------------------------------------ emitting

    async def _emit(self, rooms: list[str], count: int, rate: float, sender: str | None) -> None:
        imkit = self.imkit
        assert imkit is not None
        self._emit_run += 1
        run = self._emit_run
        state = {
            "emitted": 0,
            "count": count,
            "done": False,
            "rate": rate,
            "started": time.monotonic(),
        }
        self._emit_state = state
        t0 = time.monotonic()
        try:
            for i in range(count):
                if rate > 0:
                    # Paced by deadline: a late emit is followed at once by the next one, so
                    # the average rate holds even when the loop was held up.
                    delay = t0 + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                elif i % 20 == 0:
                    await asyncio.sleep(0)  # give the sockets a chance to be written
                mid = f"b{run}-{i:07d}"
                self.emitted[mid] = time.monotonic()
                await imkit.send_message(
                    rooms[i % len(rooms)], sender, f"bench message {i}", message_id=mid
                )
                state["emitted"] = i + 1
        finally:
            state["done"] = True
            state["finished"] = time.monotonic()

    # ------------------------------------------------------------------ control API

    def _routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/bench/users", self._h_users)
        r.add_post("/bench/rooms", self._h_rooms)
        r.add_post("/bench/emit", self._h_emit)
        r.add_get("/bench/emit", self._h_emit_state)
        r.add_get("/bench/stats", self._h_stats)
        r.add_get("/bench/latencies", self._h_latencies)
        r.add_get("/bench/pushes", self._h_pushes)
        r.add_post("/bench/reset", self._h_reset)

    def _need_imkit(self) -> ImkitSim:
        if self.imkit is None:
            raise web.HTTPConflict(text="this process does not run the simulated IMKIT")
        return self.imkit

    async def _h_users(self, request: web.Request) -> web.Response:
        imkit = self._need_imkit()
        body = await request.json()
        prefix, n, start = str(body.get("prefix", "u")), int(body["n"]), int(body.get("start", 0))
        tokens = []
        for i in range(start, start + n):
            cid = f"{prefix}{i:06d}"
            imkit.create_user(cid)
            tokens.append(imkit.issue_token(cid))
        return web.json_response({"tokens": tokens})

    async def _h_rooms(self, request: web.Request) -> web.Response:
        imkit = self._need_imkit()
        body = await request.json()
        rooms = body.get("rooms", [])
        for room in rooms:
            imkit.create_room(str(room["roomId"]), [str(m) for m in room["members"]])
        return web.json_response({"rooms": len(rooms)})

    async def _h_emit(self, request: web.Request) -> web.Response:
        self._need_imkit()
        body = await request.json()
        if self._emit_task is not None and not self._emit_task.done():
            raise web.HTTPConflict(text="an emission is running")
        rooms = [str(r) for r in body["rooms"]]
        if not rooms:
            raise web.HTTPBadRequest(text="rooms must not be empty")
        sender = body.get("sender")
        # A full collection over 10,000 sockets' objects stalls this process for over a second,
        # which would land between an emit time and its socket write (or delay an arrival time):
        # freeze what exists and collect nothing until the results are read (GET /bench/latencies).
        gc.collect()
        gc.freeze()
        gc.disable()
        self._emit_task = asyncio.create_task(
            self._emit(rooms, int(body["count"]), float(body.get("rate", 0.0)), sender)
        )
        return web.json_response({"started": True})

    async def _h_emit_state(self, _: web.Request) -> web.Response:
        task = self._emit_task
        error = None
        if (
            task is not None
            and task.done()
            and not task.cancelled()
            and task.exception() is not None
        ):
            error = repr(task.exception())
        return web.json_response({**self._emit_state, "error": error})

    async def _h_stats(self, request: web.Request) -> web.Response:
        since = float(request.query.get("since", "0"))
        self.drain()
        rss, cpu = proc_usage()
        out: dict[str, Any] = {"rss_kib": rss, "cpu_seconds": cpu, "now": time.monotonic()}
        if self.imkit is not None:
            imkit = self.imkit
            out["imkit"] = {
                "connections_total": imkit.connections_total,
                "auths_total": imkit.auths_total,
                "rest_requests_total": imkit.rest_requests_total,
                "live_sockets": imkit.live_sockets(),
                "connected_sockets": imkit.connected_sockets(),
                "connects_since": sum(1 for t in imkit.connect_times if t >= since),
                "peak_connect_rate_since": peak_rate(imkit.connect_times, since),
            }
        if self.apns is not None:
            out["apns"] = self.arrivals["apns"].stats()
        if self.fcm is not None:
            out["fcm"] = self.arrivals["fcm"].stats()
        return web.json_response(out)

    async def _h_latencies(self, request: web.Request) -> web.Response:
        """Per provider, [emit time, arrival time] of each message seen by this process.

        With the simulators split over two processes, the bench joins the emits of one with the
        arrivals of the other; ``emitted`` and ``arrived`` are therefore given separately.
        """
        self.drain()
        gc.enable()
        return web.json_response(
            {
                "emitted": self.emitted,
                "arrived": {name: a.by_message for name, a in self.arrivals.items()},
            }
        )

    async def _h_pushes(self, _: web.Request) -> web.Response:
        self.drain()
        return web.json_response({name: a.pushes for name, a in self.arrivals.items()})

    async def _h_reset(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        per_push = bool(body.get("per_push")) if isinstance(body, dict) else False
        self.drain()
        self.emitted.clear()
        for a in self.arrivals.values():
            a.reset(per_push=per_push)
        return web.json_response({"ok": True})


async def _serve(args: argparse.Namespace) -> int:
    sims = BenchSims(Path(args.state_dir), parts=args.parts, host=args.host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        info = await sims.start(args.control_port)
        ready = Path(args.ready_file)
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(ready)  # atomic: the bench never reads half a file
        await stop.wait()
    finally:
        await sims.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.sims``."""
    p = argparse.ArgumentParser(
        prog="python -m bench.sims", description=__doc__.split("\n")[0]
    )
    p.add_argument("--state-dir", required=True, help="where certificates, keys and credentials go")
    p.add_argument("--ready-file", required=True, help="JSON written here once everything listens")
    p.add_argument("--parts", choices=PARTS, default="all")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--control-port", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raise_nofile()
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    raise SystemExit(main())
