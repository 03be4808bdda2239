"""CPU per IMKIT REST call of the bridge's client (:class:`bridge.upstream.rest.ImkitRest`).

A mass reconnect makes three calls per user (``GET /me``, ``/me/badge``, ``/rooms``): 39,000 at
10,000 devices. This starts a minimal IMKIT ``GET /me/badge`` in a child process (so its CPU is
not counted), makes ``--calls`` calls at once through one client (its own bound of requests in
flight applies) after a warm-up, and prints the CPU this process spent per call.

    .venv/bin/python -m bench.rest_calls
    .venv/bin/python -m bench.rest_calls --calls 20000

To compare with older code, run it from a checkout of that commit (``PYTHONPATH=<checkout>``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import resource
import time

from aiohttp import web

from bench.processes import free_port, wait_until
from bridge.upstream.rest import ImkitRest, UpstreamUnavailable


def _serve(port: int) -> None:
    async def badge(_request: web.Request) -> web.Response:
        return web.json_response({"RC": 0, "RM": "OK", "result": {"badge": 3}})

    app = web.Application()
    app.router.add_get("/me/badge", badge)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(url: str, calls: int) -> tuple[float, float]:
    """``(CPU µs per call, calls per second)`` for ``calls`` badge calls started at once."""
    rest = ImkitRest(url, client_key="bench-key")
    logging.getLogger("bridge.upstream.rest").setLevel(logging.ERROR)  # refused while it starts

    async def answers() -> bool:  # the server is up when a call succeeds
        try:
            await rest.badge("warm")
        except UpstreamUnavailable:
            return False
        return True

    try:
        await wait_until(answers, 10, "the badge server", interval=0.05)
        await asyncio.gather(*(rest.badge("warm") for _ in range(200)))
        cpu0, t0 = _cpu(), time.monotonic()
        badges = await asyncio.gather(*(rest.badge(f"token-{i}") for i in range(calls)))
        cpu, wall = _cpu() - cpu0, time.monotonic() - t0
        if badges != [3] * calls:
            raise RuntimeError("unexpected answers")
        return cpu / calls * 1e6, calls / wall
    finally:
        await rest.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(port,), daemon=True)
    server.start()
    try:
        per_call, rate = asyncio.run(measure(f"http://127.0.0.1:{port}", args.calls))
    finally:
        server.terminate()
        server.join(5)
    print(f"{args.calls} calls: {per_call:.0f} µs of CPU per call, {rate:.0f} calls/s")


if __name__ == "__main__":
    main()
