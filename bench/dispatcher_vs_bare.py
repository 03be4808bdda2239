"""Pushes per second through the dispatcher and the real providers, against a bare library loop.

Issue 3: both in one run, against the same simulator, at the same concurrency. For each provider:

1. the dispatcher (``bridge.push.dispatcher.Dispatcher``, ``concurrency`` workers) with the real
   ``ApnsProvider`` / ``FcmProvider`` built from the same ``BRIDGE_*`` settings a bridge would use;
2. a bare loop: ``concurrency`` tasks calling aioapns' ``send_notification`` / firebase-admin's
   ``send_each_async`` directly (``bench.baselines.bare_apns_loop`` / ``bare_fcm_loop``).

Both send the payload the bridge composes for a text message, after a warm-up of 200 sends. The
rate is counted by the simulator (requests between the first and the last arrival); the sender's
own wall-clock rate is shown too. The simulated APNs and FCM run in a child process
(``python -m bench.sims --parts providers``); the senders run here, one after another.

    .venv/bin/python -m bench.dispatcher_vs_bare                       # 20000 pushes, concurrency 100
    .venv/bin/python -m bench.dispatcher_vs_bare --pushes 5000 --output result.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.baselines import bare_apns_loop, bare_fcm_loop, sample_requests
from bench.machine import raise_nofile
from bench.processes import Child, bench_env, wait_until
from bridge.config import Settings
from bridge.metrics import Metrics
from bridge.models import Notification
from bridge.push.dispatcher import Dispatcher
from bridge.push.provider import Provider, SendResult

WARMUP = 200


def sim_rate(stats: dict[str, Any]) -> float:
    n, first, last = stats["received"], stats["first"], stats["last"]
    return (n - 1) / (last - first) if n > 1 and last > first else 0.0


async def sim_stats(http: aiohttp.ClientSession, control: str, provider: str) -> dict[str, Any]:
    async with http.get(f"{control}/bench/stats") as r:
        stats: dict[str, Any] = (await r.json())[provider]
        return stats


async def reset(http: aiohttp.ClientSession, control: str) -> None:
    async with http.post(f"{control}/bench/reset") as r:
        r.raise_for_status()


def make_provider(provider: str, env: dict[str, str]) -> Provider:
    settings = Settings(
        apns_key_file=env["BRIDGE_APNS_KEY_FILE"],
        apns_key_id=env["BRIDGE_APNS_KEY_ID"],
        apns_team_id=env["BRIDGE_APNS_TEAM_ID"],
        apns_topic=env["BRIDGE_APNS_TOPIC"],
        apns_host=env["BRIDGE_APNS_HOST"],
        apns_port=int(env["BRIDGE_APNS_PORT"]),
        apns_ca_file=env["BRIDGE_APNS_CA_FILE"],
        fcm_credentials_file=env["BRIDGE_FCM_CREDENTIALS_FILE"],
        fcm_url=env["BRIDGE_FCM_URL"],
        fcm_ca_file=env["BRIDGE_FCM_CA_FILE"],
    )
    if provider == "apns":
        from bridge.push.apns import ApnsProvider

        return ApnsProvider.from_settings(settings)
    from bridge.push.fcm import FcmProvider

    return FcmProvider.from_settings(settings)


async def through_dispatcher(
    provider: str, env: dict[str, str], count: int, concurrency: int, start: int
) -> dict[str, Any]:
    """``count`` notifications submitted to a Dispatcher with the real provider; waits for all results."""
    apns_req, fcm_req = sample_requests()
    outcomes: dict[str, int] = {}
    done = asyncio.Event()
    finished = 0

    async def on_result(_n: Notification, result: SendResult) -> None:
        nonlocal finished
        key = type(result).__name__
        outcomes[key] = outcomes.get(key, 0) + 1
        finished += 1
        if finished >= count:
            done.set()

    real = make_provider(provider, env)
    dispatcher = Dispatcher(
        {provider: real},
        metrics=Metrics(),
        concurrency=concurrency,
        queue_size=10_000,
        on_result=on_result,
    )
    await dispatcher.start()
    t0 = time.monotonic()
    try:
        for i in range(start, start + count):
            ios = provider == "apns"
            await dispatcher.submit(
                Notification(
                    device_id=f"dev-{i:06d}",
                    push_type="ios" if ios else "fcm",
                    token=f"{i:064x}" if ios else f"fcm-token-{i:06d}",
                    push_id=f"bench-{provider}-{i}",
                    kind="message",
                    apns=apns_req if ios else None,
                    fcm=None if ios else fcm_req,
                )
            )
        await asyncio.wait_for(done.wait(), 120 + count / 100)
        seconds = time.monotonic() - t0
    finally:
        await dispatcher.close(timeout=10)
        await real.close()
    return {
        "sent": count,
        "seconds": round(seconds, 3),
        "per_second": round(count / seconds, 1),
        "outcomes": outcomes,
    }


async def compare(
    provider: str, env: dict[str, str], control: str, count: int, concurrency: int
) -> dict[str, Any]:
    bare = bare_apns_loop if provider == "apns" else bare_fcm_loop
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        for name in ("dispatcher", "bare"):
            if name == "dispatcher":
                await through_dispatcher(provider, env, WARMUP, concurrency, 0)
                await reset(http, control)
                client = await through_dispatcher(provider, env, count, concurrency, WARMUP)
            else:
                await bare(env, WARMUP, concurrency)
                await reset(http, control)
                client = await bare(env, count, concurrency)

            async def all_in() -> bool:
                return int((await sim_stats(http, control, provider))["received"]) >= count

            await wait_until(all_in, 30, f"{provider} arrivals")
            stats = await sim_stats(http, control, provider)
            out[name] = {
                "sim": stats,
                "sim_per_second": round(sim_rate(stats), 1),
                "client": client,
            }
            await reset(http, control)
    out["ratio"] = round(out["dispatcher"]["sim_per_second"] / out["bare"]["sim_per_second"], 3)
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="dispatcher-vs-bare-"))
    ready = tmp / "ready.json"
    argv = [
        sys.executable,
        "-m",
        "bench.sims",
        "--state-dir",
        str(tmp),
        "--ready-file",
        str(ready),
        "--parts",
        "providers",
    ]
    sims = Child("simulators", argv, bench_env(), tmp / "sims.log", tmp)
    try:

        async def up() -> bool:
            sims.check()
            return ready.exists()

        await wait_until(up, 60, "the simulators", interval=0.05)
        info = json.loads(ready.read_text())
        env: dict[str, str] = info["env"]
        # The bare firebase-admin client trusts the simulator's CA only through these variables.
        os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = env["BRIDGE_FCM_CA_FILE"]
        result: dict[str, Any] = {"pushes": args.pushes, "concurrency": args.concurrency}
        for provider in args.providers:
            print(
                f"{provider}: {args.pushes} pushes through the dispatcher, then from a bare loop ...",
                flush=True,
            )
            r = await compare(provider, env, info["control"], args.pushes, args.concurrency)
            result[provider] = r
            print(
                f"{provider}: dispatcher {r['dispatcher']['sim_per_second']:,.0f}/s "
                f"(client {r['dispatcher']['client']['per_second']:,.0f}/s, {r['dispatcher']['client']['outcomes']}), "
                f"bare {r['bare']['sim_per_second']:,.0f}/s "
                f"(client {r['bare']['client']['per_second']:,.0f}/s, {r['bare']['client']['outcomes']}); "
                f"ratio {r['ratio']:.2f} (goal >= 0.8)",
                flush=True,
            )
        return result
    finally:
        await sims.stop(10)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--pushes", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--providers", nargs="+", choices=["apns", "fcm"], default=["apns", "fcm"])
    p.add_argument("--output", default=None, help="write the JSON result here")
    args = p.parse_args()
    raise_nofile()
    result = asyncio.run(main_async(args))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
