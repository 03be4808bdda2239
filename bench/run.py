"""``push-bridge bench SCENARIO``: load and latency benchmarks of a real bridge process.

Each party runs in a process of its own, so each is measured alone:

- the simulators: ``python -m bench.sims`` (IMKIT, APNs and FCM in one process, or with
  ``split_sims`` IMKIT in one and the two providers in another);
- the bridge: ``python -m bridge serve`` with an SQLite store in a temporary directory, its RSS and
  CPU read from ``/proc/<pid>``; with ``--workers N`` (``rooms``) a private ``redis-server``,
  ``python -m bridge api`` and N ``python -m bridge worker`` processes, their figures summed
  (:mod:`bench.bridge_procs`);
- the load: this process (users, registrations, control calls), a separate ``python -m
  bench.api_load`` process for ``api``, ``python -m bench.baselines`` for the bare-library
  baseline of ``throughput``, and ``python -m bench.floor`` for the floor of ``rooms`` (run after
  the bridge has stopped, never beside it).

The scenarios are in :mod:`bench.scenarios` (docs/benchmarks.md says what each one measures and
the goals). :func:`run_bench` returns a JSON-able dict; the CLI writes it to ``--output``.
Narration goes to a rich console (progress bars, a summary table); nothing here uses ``print``.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Awaitable, Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.console import Ui, render_summary
from bench.harness import Harness
from bench.machine import machine_info
from bench.options import SCENARIOS, Options, Result
from bench.plots import make_plots
from bench.processes import BenchError
from bench.scenarios.api import run_api
from bench.scenarios.latency import run_latency
from bench.scenarios.rooms import run_rooms
from bench.scenarios.sessions import run_sessions, run_storm
from bench.scenarios.steady import run_steady
from bench.scenarios.throughput import run_throughput


async def run_bench(scenario: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Run one scenario end to end; returns its result (also rendered as a table unless ``quiet``).

    ``opts`` are :class:`Options` fields (the CLI passes ``vars(args)``); a ``console`` key may
    hold the rich :class:`Console` to narrate on.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    try:
        o = Options.from_dict(opts, scenario)
    except (TypeError, ValueError) as exc:
        raise BenchError(str(exc)) from None
    if o.plots and importlib.util.find_spec("matplotlib") is None:
        raise BenchError("--plots needs matplotlib: pip install -e '.[bench]'")
    if scenario == "rooms":
        o.split_sims = True  # IMKIT's fan-out in a process of its own, never the providers'
    console = opts.get("console")
    ui = Ui(console if isinstance(console, Console) else None, quiet=o.quiet)
    machine = machine_info()
    runners: dict[str, Callable[[Harness, Options], Awaitable[Result]]] = {
        "sessions": run_sessions,
        "storm": run_storm,
        "latency": run_latency,
        "throughput": run_throughput,
        "api": run_api,
        "rooms": run_rooms,
        "steady": run_steady,
    }
    started = time.time()
    async with Harness(o, ui) as h:
        result = await runners[scenario](h, o)
        await h.prof.stop()
        if h.prof.results:
            result["profile"] = h.prof.results
    result = {
        "scenario": scenario,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "options": {f.name: getattr(o, f.name) for f in fields(Options)},
        "machine": machine,
        **result,
    }
    if o.plots:
        result["plots"] = make_plots(scenario, result, Path(o.plots))
    if not o.quiet:
        render_summary(scenario, result, ui.console)
    return result
