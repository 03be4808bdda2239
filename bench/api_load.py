"""``python -m bench.api_load SPEC OUT``: the load process of the ``api`` scenario."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp

from bench.processes import child_main
from bench.stats import summarize


async def api_load(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``api`` load: ``concurrency`` workers alternating subscribe and state calls for ``duration``.

    A closed loop: each worker sends its next call when the last one answered, so the rate is
    what the bridge sustains at that concurrency. Devices are taken round-robin.
    """
    url, devices = spec["url"], spec["devices"]
    duration, concurrency = float(spec["duration"]), int(spec["concurrency"])
    lat: dict[str, list[float]] = {"subscribe": [], "state": []}
    statuses: Counter[str] = Counter()
    seq = 0
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as http:
        t0 = time.monotonic()
        end = t0 + duration

        async def worker() -> None:
            nonlocal seq
            while time.monotonic() < end:
                i = seq
                seq += 1
                d = devices[i % len(devices)]
                kind = "subscribe" if i % 2 == 0 else "state"
                if kind == "subscribe":
                    body = {
                        "type": d["type"],
                        "token": d["pushToken"],
                        "deviceId": d["deviceId"],
                        "state": "background",
                    }
                else:
                    fg = (i // 2) % 2 == 0
                    body = {
                        "deviceId": d["deviceId"],
                        "state": "foreground" if fg else "background",
                        "ttl": 60,
                    }
                t = time.monotonic()
                try:
                    async with http.post(
                        f"{url}/me/{kind}", json=body, headers={"IM-Authorization": d["token"]}
                    ) as r:
                        await r.read()
                        status = str(r.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status = type(exc).__name__
                lat[kind].append((time.monotonic() - t) * 1000)
                statuses[f"{kind}:{status}"] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.monotonic() - t0
    total = sum(len(v) for v in lat.values())
    errors = sum(v for k, v in statuses.items() if not k.endswith(":200"))
    return {
        "seconds": round(wall, 2),
        "concurrency": concurrency,
        "per_second": round(total / wall, 1),
        "errors": errors,
        "statuses": dict(statuses),
        "calls": {
            kind: {"n": len(v), "per_second": round(len(v) / wall, 1), "latency_ms": summarize(v)}
            for kind, v in lat.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.api_load SPEC OUT``."""
    return child_main("python -m bench.api_load", api_load, argv)


if __name__ == "__main__":
    raise SystemExit(main())
