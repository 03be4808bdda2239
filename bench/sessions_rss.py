"""Memory per live upstream session: RSS of this process before and after N sessions go live.

The simulated IMKIT runs in a separate process, so only the bridge side is measured. Each N runs
in a fresh child process of this script (a process that already held and freed sessions keeps
part of that memory, which would skew the next number).

    .venv/bin/python -m bench.sessions_rss                  # N = 1000 and 5000
    .venv/bin/python -m bench.sessions_rss --sessions 200 --rate 400
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import time
from typing import Any

import aiohttp

from bridge.models import SessionState
from bridge.upstream.idle import IdleWatch
from bridge.upstream.ratelimit import ConnectLimiter
from bridge.upstream.session import UpstreamSession
from bridge.upstream.transport import make_http_session


def rss_kib(pid: int | str = "self") -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of a process in KiB, from /proc (psutil is not a dependency)."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def raise_nofile(wanted: int) -> int:
    """Raise the open-files soft limit towards ``wanted`` (up to the hard limit); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sim(port: int) -> subprocess.Popen[bytes]:
    code = (
        "import asyncio, logging; logging.basicConfig(level=logging.WARNING);"
        "from bridge.sim.imkit import run;"
        f"asyncio.run(run('127.0.0.1', {port}))"
    )
    return subprocess.Popen([sys.executable, "-W", "ignore", "-c", code])


async def wait_sim(http: aiohttp.ClientSession, url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with http.get(f"{url}/sim/stats") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the simulated IMKIT did not come up")
        await asyncio.sleep(0.1)


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with http.post(url, json=body) as r:
        r.raise_for_status()
        return await r.json()


async def create_users(http: aiohttp.ClientSession, url: str, n: int) -> list[tuple[str, str]]:
    users: list[tuple[str, str]] = []
    for start in range(0, n, 200):
        batch = [f"bench{i:05d}" for i in range(start, min(n, start + 200))]
        answers = await asyncio.gather(
            *(post(http, f"{url}/sim/users", {"clientId": c}) for c in batch)
        )
        users += [(c, a["token"]) for c, a in zip(batch, answers, strict=True)]
    await post(
        http,
        f"{url}/sim/rooms",
        {"roomId": "bench", "members": [c for c, _ in users], "name": "bench"},
    )
    return users


async def wait_until(cond: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def measure(n: int, rate: float, idle_watch: bool = True) -> dict[str, Any]:
    raise_nofile(n + 1000)
    port = free_port()
    sim = start_sim(port)
    url = f"http://127.0.0.1:{port}"
    control = aiohttp.ClientSession()
    http = make_http_session()
    # As a worker runs them: one silent-server watch for all sockets (--per-read-timeouts: none).
    watch = IdleWatch() if idle_watch else None
    sessions: list[UpstreamSession] = []
    try:
        await wait_sim(control, url)
        users = await create_users(control, url, n)
        received: set[str] = set()

        def on_event_for(device_id: str) -> Any:
            async def on_event(name: str, payload: Any) -> None:
                received.add(device_id)

            return on_event

        limiter = ConnectLimiter(rate, min(int(rate), 100))
        gc.collect()
        before, _ = rss_kib()
        t0 = time.monotonic()
        for i, (_, token) in enumerate(users):
            device_id = f"dev{i:05d}"
            s = UpstreamSession(
                device_id=device_id,
                client_token=token,
                url=url,
                http=http,
                limiter=limiter,
                on_event=on_event_for(device_id),
                idle_watch=watch,
            )
            s.start()
            sessions.append(s)
        await wait_until(
            lambda: all(s.state is SessionState.LIVE for s in sessions),
            60 + n / rate * 2,
            "all live",
        )
        t_live = time.monotonic() - t0
        gc.collect()
        after, peak = rss_kib()
        await post(
            control, f"{url}/sim/messages", {"roomId": "bench", "senderId": None, "message": "ping"}
        )
        t_event = await wait_until(lambda: len(received) == n, 60.0, "the event on every session")
        after_event, peak = rss_kib()
        sim_rss, _ = rss_kib(sim.pid)
        reconnects = sum(s.connects_total - 1 for s in sessions)
        return {
            "sessions": n,
            "connect_rate": rate,
            "rss_before_kib": before,
            "rss_live_kib": after,
            "rss_after_event_kib": after_event,
            "peak_rss_kib": peak,
            "kib_per_live_session": round((after - before) / n, 1),
            "kib_per_session_after_event": round((after_event - before) / n, 1),
            "seconds_to_all_live": round(t_live, 1),
            "seconds_event_to_all": round(t_event, 2),
            "extra_connects": reconnects,
            "sim_process_rss_kib": sim_rss,
            "idle_watch": idle_watch,
        }
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
        if watch is not None:
            await watch.close()
        await http.close()
        await control.close()
        sim.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            sim.wait(10)
        if sim.poll() is None:
            sim.kill()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument(
        "--rate", type=float, default=250.0, help="connects per second (default 250)"
    )
    parser.add_argument(
        "--per-read-timeouts",
        action="store_true",
        help="a timeout per read on each socket instead of the worker's one idle watch (for comparison)",
    )
    parser.add_argument(
        "--one", action="store_true", help=argparse.SUPPRESS
    )  # internal: measure in-process
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.one:
        result = asyncio.run(
            measure(args.sessions[0], args.rate, idle_watch=not args.per_read_timeouts)
        )
        print(json.dumps(result))
        return
    for n in args.sessions:
        print(f"N={n}: opening sessions at {args.rate:g}/s ...", flush=True)
        out = subprocess.run(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--one",
                "--sessions",
                str(n),
                "--rate",
                str(args.rate),
                *(["--per-read-timeouts"] if args.per_read_timeouts else []),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"N={r['sessions']}: RSS {r['rss_before_kib'] / 1024:.1f} MiB -> {r['rss_live_kib'] / 1024:.1f} MiB "
            f"live ({r['kib_per_live_session']} KiB per live session; "
            f"{r['kib_per_session_after_event']} KiB after one event each); "
            f"all live in {r['seconds_to_all_live']} s, event reached all in {r['seconds_event_to_all']} s, "
            f"extra connects {r['extra_connects']}, simulator RSS {r['sim_process_rss_kib'] / 1024:.1f} MiB"
        )
        print("  " + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
