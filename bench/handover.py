"""Hand-over benchmark for several workers on Redis: re-homing time after a SIGKILL, balance after a
worker joins, and duplicate/missing pushes for a steady message stream across both.

    .venv/bin/python -m bench.handover --devices 600 --workers 3 --lease-ttl 15

Runs `push-bridge api` + N `push-bridge worker` processes against a private redis-server and the
simulated IMKIT and APNs (in this process), and prints one JSON line of figures. Its cluster
(bench/cluster.py) is the one tests/e2e/test_multinode.py asserts the same properties with, on a
smaller scale.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import resource
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from cryptography.fernet import Fernet

from bench.cluster import Cluster, LocalRedis, Stream, one_session_each, pushes_by_message
from bench.processes import wait_until
from bridge.sim.stack import SimStack


async def until(
    cond: Callable[[], bool | Awaitable[bool]],
    timeout: float,  # noqa: ASYNC109 - a deadline is the point of this helper
    what: str,
    interval: float = 0.1,
) -> float:
    """Seconds until ``cond()`` (plain or awaitable) holds; raises at ``timeout``."""

    async def check() -> bool:
        result = cond()
        return await result if inspect.isawaitable(result) else result

    return await wait_until(check, timeout, what, interval)


async def main(args: argparse.Namespace) -> dict[str, object]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    tmp = Path(tempfile.mkdtemp(prefix="bench-handover-"))
    redis = LocalRedis(tmp / "redis")
    redis.start()
    sims = await SimStack.start(tmp, apns_keep=None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        sims.env(),
        BRIDGE_STORE=redis.url,
        BRIDGE_SECRET_KEY=Fernet.generate_key().decode(),
        BRIDGE_LEASE_TTL=str(args.lease_ttl),
        BRIDGE_BACKFILL_ROOM_CAP="100000",
        BRIDGE_RATE_LIMIT_PER_MINUTE="1000000",
        BRIDGE_LOG_LEVEL="WARNING",
        BRIDGE_CONNECT_RATE="500",
    )
    imkit, apns = sims.imkit, sims.apns
    cluster = Cluster(tmp, imkit, apns, redis, env)
    try:
        users = [f"u{i:05d}" for i in range(args.devices)]
        for u in users:
            imkit.create_user(u, u)
        imkit.create_user("bob", "Bob")
        streamers = users[: args.stream_members]
        imkit.create_room("stream", [*streamers, "bob"])
        push_token = {u: f"{i + 1:064x}" for i, u in enumerate(users)}
        for i in range(args.workers):
            cluster.add_worker(f"w{i + 1}")
        api = f"http://127.0.0.1:{cluster.api_port}"

        async def api_ready() -> bool:
            try:
                async with httpx.AsyncClient(timeout=2) as c:
                    return (await c.get(api + "/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await until(api_ready, 60, "api ready")
        sem = asyncio.Semaphore(32)

        async def register(u: str) -> None:
            async with sem, httpx.AsyncClient(base_url=api, timeout=30) as c:
                r = await c.post("/me/subscribe", json={"type": "ios", "token": push_token[u], "deviceId": f"dev-{u}"}, headers={"IM-Authorization": imkit.issue_token(u)})
                r.raise_for_status()

        t0 = time.monotonic()
        await asyncio.gather(*(register(u) for u in users))
        await until(lambda: one_session_each(imkit, users), 300, "all live")
        all_live = time.monotonic() - t0
        shards = await cluster.worker_devices()
        stream = Stream(imkit, interval=args.interval)
        stream.start()
        victim = max(shards, key=lambda w: shards[w])
        await asyncio.to_thread(cluster.workers[victim].kill)
        killed = time.monotonic()
        await until(lambda: imkit.live_sockets() <= args.devices - shards[victim], 30, "victim gone", 0.02)
        await until(lambda: one_session_each(imkit, users), args.lease_ttl + 60, "re-homed", 0.05)
        rehome = time.monotonic() - killed
        del cluster.metrics_ports[victim]
        cluster.add_worker("joiner")
        joined = time.monotonic()

        async def balanced() -> bool:
            s = await cluster.worker_devices()
            return len(s) == args.workers and sum(s.values()) == args.devices and min(s.values()) >= 0.8 * args.devices / args.workers and one_session_each(imkit, users)

        await until(balanced, args.lease_ttl * 4 + 60, "balanced", 0.5)
        balance_time = time.monotonic() - joined
        final_shards = await cluster.worker_devices()
        await stream.stop()
        last = stream.sent[-1]
        tokens = [push_token[u] for u in streamers]
        await until(lambda: all(pushes_by_message(apns)[(t, last)] >= 1 for t in tokens), 60, "last delivered")
        got = pushes_by_message(apns)
        missing = sum(1 for m in stream.sent for t in tokens if got[(t, m)] == 0)
        duplicates = sum(n - 1 for (t, m), n in got.items() if n > 1 and m in set(stream.sent))
        return {
            "devices": args.devices,
            "workers": args.workers,
            "lease_ttl_s": args.lease_ttl,
            "registration_to_all_live_s": round(all_live, 2),
            "shards_before": shards,
            "rehome_after_sigkill_s": round(rehome, 2),
            "balance_after_join_s": round(balance_time, 2),
            "shards_after_join": final_shards,
            "stream_messages": len(stream.sent),
            "stream_devices": len(tokens),
            "expected_pushes": len(stream.sent) * len(tokens),
            "missing": missing,
            "duplicates": duplicates,
        }
    finally:
        cluster.stop()
        await sims.stop()
        redis.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=600)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--lease-ttl", type=float, default=15.0)
    p.add_argument("--stream-members", type=int, default=30)
    p.add_argument("--interval", type=float, default=0.2, help="seconds between stream messages")
    result = asyncio.run(main(p.parse_args()))
    print(json.dumps(result))
