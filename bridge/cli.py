"""``push-bridge``: the command line. The only module that prints or installs signal handlers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from pydantic import ValidationError

from bridge import __version__
from bridge.config import Settings
from bridge.logs import configure_logging

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (less memory per TLS socket, a faster loop)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        print("push-bridge: invalid configuration:", file=sys.stderr)
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            var = f"BRIDGE_{loc.upper()}" if loc else "settings"
            print(f"  {var}: {err['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def _require(settings: Settings, *, redis: bool | None = None) -> None:
    if not settings.imkit_url:
        print("push-bridge: BRIDGE_IMKIT_URL is required (the IMKIT chat server base URL)", file=sys.stderr)
        raise SystemExit(2)
    if redis and not settings.store_is_redis:
        print(
            "push-bridge: the api and worker roles share devices through Redis; set BRIDGE_STORE=redis://host:port/db "
            "(or run `push-bridge serve` for the embedded SQLite mode)",
            file=sys.stderr,
        )
        raise SystemExit(2)


# ---------------------------------------------------------------- serve / api


def cmd_serve(args: argparse.Namespace, role: str = "serve") -> int:
    import uvicorn

    from bridge.api.app import create_app

    settings = _settings(host=args.host, port=args.port)
    _require(settings, redis=(role == "api"))
    configure_logging(settings.log_level, settings.log_format)
    if role == "serve":
        from bridge import gc_tuning

        gc_tuning.configure(settings)  # this process holds the sessions: tune its collector
    try:
        app = create_app(settings, role="serve" if role == "serve" else "api")
    except ValueError as exc:
        print(f"push-bridge: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        # uvicorn would believe X-Forwarded-For from 127.0.0.1 by default; the caller's address
        # (limits on invalid tokens) comes from BRIDGE_TRUSTED_PROXY_HEADER only.
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.drain_timeout) + 5,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


def cmd_api(args: argparse.Namespace) -> int:
    return cmd_serve(args, role="api")


# ---------------------------------------------------------------- worker


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(metrics_port=args.metrics_port)
    _require(settings, redis=True)
    configure_logging(settings.log_level, settings.log_format)
    from bridge import gc_tuning

    gc_tuning.configure(settings)  # this process holds the sessions: tune its collector
    return _run(_run_worker(settings))


async def _run_worker(settings: Settings) -> int:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from bridge.service import Bridge

    bridge = Bridge(settings, role="worker")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(bridge.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"RC": 0, "RM": "OK", "result": {"status": "alive"}})

    async def readyz(_: web.Request) -> web.Response:
        reasons = await bridge.readiness()
        status = 503 if reasons else 200
        return web.json_response({"RC": 0 if not reasons else 503, "result": {"ready": not reasons, "reasons": reasons}}, status=status)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.metrics_port)
    await site.start()
    try:
        await bridge.start()
        await stop.wait()
    finally:
        await bridge.close()
        await runner.cleanup()
    return 0


# ---------------------------------------------------------------- sim


def cmd_sim(args: argparse.Namespace) -> int:
    configure_logging("INFO", "text")
    state_dir = Path(args.state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    return _run(_run_sims(args.which, args.host, args.port, state_dir, args.topic))


async def _run_sims(which: str, host: str, port: int, state_dir: Path, topic: str) -> int:
    from bridge.sim import apns as apns_sim
    from bridge.sim import fcm as fcm_sim
    from bridge.sim import imkit as imkit_sim

    tasks: list[asyncio.Task[None]] = []
    if which in ("imkit", "all"):
        tasks.append(asyncio.create_task(imkit_sim.run(host, port)))
        print(f"simulated IMKIT on http://{host}:{port}  (BRIDGE_IMKIT_URL=http://{host}:{port})")
    if which in ("apns", "all"):
        p = port + 1 if which == "all" else port
        tasks.append(asyncio.create_task(apns_sim.run(host, p, state_dir, topic)))
        print(f"simulated APNs on https://{host}:{p}  (files in {state_dir}, see apns-sim.json)")
    if which in ("fcm", "all"):
        p = port + 2 if which == "all" else port
        tasks.append(asyncio.create_task(fcm_sim.run(host, p, state_dir)))
        print(f"simulated FCM on http://{host}:{p}  (service account in {state_dir})")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for t in [waiter, *tasks]:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            exc = t.exception() if t.done() and not t.cancelled() else None
            if exc is not None:
                print(f"push-bridge sim: {exc}", file=sys.stderr)
                return 1
    return 0


# ---------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge.demo import run_demo

    configure_logging("WARNING", "text")
    return asyncio.run(run_demo(print_line=print, verbose=args.verbose))


# ---------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    from bridge.check import run_checks

    settings = _settings()
    failures = 0
    for status, what in run_checks(settings):
        print({"ok": "ok    ", "warn": "WARN  ", "fail": "FAIL  "}[status] + what)
        failures += status == "fail"
    print("configuration OK" if not failures else f"{failures} problem(s) found")
    return 0 if not failures else 1


# ---------------------------------------------------------------- bench


#: What ``push-bridge bench`` says when it cannot find the bench package.
BENCH_FROM_CHECKOUT = (
    "push-bridge bench runs from a source checkout of imkit-push-bridge: clone it, then "
    "pip install -e '.[bench]' there (the installed package carries no benchmark code)"
)


def _bench_module() -> ModuleType:
    """The bench's entry module (``bench.run``): importable as it is, or else from the source
    checkout this ``bridge`` package runs from (``pip install -e .``), whose root then joins the
    import path for this command only. Raises :class:`SystemExit` with what to install."""
    name = "bench.run"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench", name):
            raise SystemExit(_bench_extra_missing(exc)) from None
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / "bench" / "__init__.py").is_file():
        raise SystemExit(f"push-bridge bench: {BENCH_FROM_CHECKOUT}")
    sys.path.insert(0, str(checkout))
    sys.modules.pop("bench", None)  # an unrelated package of that name, if one was found first
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise SystemExit(_bench_extra_missing(exc)) from None


def _bench_extra_missing(exc: ModuleNotFoundError) -> str:
    return (
        f"push-bridge bench: it needs the bench extra ({(exc.name or '').partition('.')[0]} is missing): "
        "pip install -e '.[bench]' in the source checkout"
    )


def cmd_bench(args: argparse.Namespace) -> int:
    module = _bench_module()
    BenchError: type[Exception] = module.BenchError  # bench.processes.BenchError
    run_bench: Callable[[str, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]] = module.run_bench

    configure_logging("WARNING", "text")
    opts = {k: v for k, v in vars(args).items() if k not in ("func", "command", "scenario")}

    async def bench() -> dict[str, Any]:
        # SIGINT/SIGTERM cancel the run, so the bench stops the processes it started.
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await run_bench(args.scenario, opts)

    try:
        result = asyncio.run(bench())
    except BenchError as exc:
        print(f"push-bridge bench: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("push-bridge bench: interrupted; its processes were stopped", file=sys.stderr)
        return 130
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2, default=str))
        print(f"result written to {args.output}", file=sys.stderr)
    for plot in result.get("plots", []):
        print(f"plot written to {plot}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="push-bridge", description="IMKIT push bridge: APNs/FCM pushes for backgrounded chat apps")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    for name, fn, text in (
        ("serve", cmd_serve, "API and worker pool in one process (the embedded default, SQLite)"),
        ("api", cmd_api, "the HTTP API alone (several nodes, Redis store)"),
    ):
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("--host", default=None, help="listen address (BRIDGE_HOST, default 127.0.0.1)")
        sp.add_argument("--port", type=int, default=None, help="listen port (BRIDGE_PORT, default 8080)")
        sp.set_defaults(func=fn)

    sp = sub.add_parser("worker", help="the worker pool alone (several nodes, Redis store)")
    sp.add_argument("--metrics-port", type=int, default=None, help="port of /metrics and /healthz (BRIDGE_METRICS_PORT)")
    sp.set_defaults(func=cmd_worker)

    sp = sub.add_parser("sim", help="simulated IMKIT / APNs / FCM servers for local development")
    sp.add_argument("which", choices=["imkit", "apns", "fcm", "all"])
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=9000, help="port (with 'all': imkit, apns=port+1, fcm=port+2)")
    sp.add_argument("--state-dir", default="./sim-state", help="where certificates, keys and credentials are written")
    sp.add_argument("--topic", default="com.example.chat", help="APNs topic (bundle id) the simulated APNs accepts")
    sp.set_defaults(func=cmd_sim)

    sp = sub.add_parser("demo", help="the whole flow on one machine, narrated")
    sp.add_argument("-v", "--verbose", action="store_true", help="also print each delivered payload in full")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("check", help="validate configuration and credential files")
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser(
        "bench",
        help="load and latency benchmarks against the simulators",
        description="Benchmarks of a real bridge process (python -m bridge serve) against the simulators, "
        "which run in processes of their own; see docs/benchmarks.md.",
    )
    sp.add_argument("scenario", choices=["sessions", "storm", "latency", "throughput", "api", "rooms", "steady"])
    sp.add_argument(
        "-n", "--sessions", nargs="+", default=None, metavar="N",
        help="devices, each with a live session (default 1000; rooms 2000); steady: the idle counts "
        "(default 2000 10000; 'max': as many as the open-files limit allows)",
    )  # fmt: skip
    sp.add_argument("--rate", type=float, default=None, help="latency, rooms: chat messages per second (default 200; rooms 20)")
    sp.add_argument(
        "--duration", type=float, default=None,
        help="seconds of the measured phase: sessions idle window, latency/rooms emission, api load (default 10; rooms 30)",
    )  # fmt: skip
    sp.add_argument("--connect-rate", type=float, default=None, help="BRIDGE_CONNECT_RATE of the bridge (default 1000; storm 2000)")
    sp.add_argument("--mute-refresh-interval", type=float, default=None, metavar="S", help="BRIDGE_MUTE_REFRESH_INTERVAL of the bridge (default 300; steady 86400). Shorter than registration + settling, the refreshes keep IMKIT's REST counter moving and the settle wait times out")
    sp.add_argument("--concurrency", type=int, default=32, help="api: concurrent calls of the load process (default 32)")
    sp.add_argument("--pushes", type=int, default=20000, help="throughput: pushes per provider (default 20000)")
    sp.add_argument("--push-concurrency", type=int, default=100, help="BRIDGE_PUSH_CONCURRENCY, and the bare loop's (default 100)")
    sp.add_argument("--ios-share", type=float, default=None, help="share of devices on APNs, the rest on FCM (default 0.5; rooms 1)")
    sp.add_argument("--fcm-share", type=float, default=None, help="share of devices on FCM (sets --ios-share to 1 minus it)")
    sp.add_argument("--room-size", type=int, default=50, help="rooms: members per room, each message pushed to all (default 50)")
    sp.add_argument("--find-max", action="store_true", help="rooms: then step the rate up to the highest sustained pushes/s")
    sp.add_argument("--step-rates", default="250,500,750,1000,1250,1500", help="rooms --find-max: pushes/s of the steps")
    sp.add_argument("--step-duration", type=float, default=10.0, help="rooms --find-max: seconds per step (default 10)")
    sp.add_argument("--max-growth-ms", type=float, default=100.0, help="rooms --find-max: backlog growth (ms) a sustained step may show")
    sp.add_argument("--workers", type=int, default=None, metavar="N", help="rooms: an api and N worker processes on a private redis-server (on PATH) instead of one serve (default 1)")
    sp.add_argument("--no-floor", dest="floor", action="store_false", help="rooms: skip the bare-library floor")
    sp.add_argument("--floor-gc", choices=["frozen", "default"], default="frozen", help="rooms: the floor's heap (default frozen)")
    sp.add_argument("--messages", type=int, default=3000, help="steady: messages each device sees in the growth phase (default 3000; 0: skip)")
    sp.add_argument("--growth-devices", type=int, default=20, help="steady: devices of the growth phase, in one room (default 20)")
    sp.add_argument("--growth-state", choices=["foreground", "background"], default="foreground", help="steady: their app state")
    sp.add_argument("--growth-rate", type=float, default=None, help="steady: messages/s (default 100; background 400 pushes/s)")
    sp.add_argument(
        "--reconnects", type=int, default=None, metavar="K",
        help="steady: after the idle figure at the largest count, K rounds of IMKIT dropping every "
        "socket, RSS per live session once all are live again (default 0: none)",
    )  # fmt: skip
    sp.add_argument("--split-sims", action="store_true", help="run IMKIT and the two providers in separate processes")
    sp.add_argument("--output", default=None, help="write the JSON result here")
    sp.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots here (needs matplotlib)")
    sp.add_argument("--profile", default=None, metavar="DIR", help="py-spy the bridge (with --workers: the first worker) during the measured phase")
    sp.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, database)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars or table")
    sp.set_defaults(func=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``push-bridge`` console script."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc
