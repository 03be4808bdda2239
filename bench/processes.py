"""The child processes of a benchmark run, and waiting on them.

Each party (simulators, bridge, load, baselines) runs in a process of its own, so each is measured
alone; a child's output goes to a log file, quoted when it fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import IO, Any

from bench.machine import raise_nofile
from bridge._poll import wait_until as poll_until


class BenchError(RuntimeError):
    """A benchmark could not run to the end (a process died, a wait timed out)."""


#: The source checkout holding this package (the bench is not part of the installed wheel).
CHECKOUT = Path(__file__).resolve().parent.parent


def bench_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with :data:`CHECKOUT` first on PYTHONPATH:
    a child started as ``python -m bench.…`` in a temporary directory imports this package."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHECKOUT), env.get("PYTHONPATH", "")) if p)
    return env


def child_main(
    prog: str,
    run: Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]],
    argv: list[str] | None = None,
) -> int:
    """``python -m PROG SPEC OUT``: ``run`` the parameters in the JSON file SPEC, write the JSON
    result to OUT (a load or baseline child of :meth:`Harness.spawn <bench.harness.Harness.spawn>`)."""
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("spec", help="JSON file with the parameters")
    p.add_argument("out", help="JSON file for the result")
    args = p.parse_args(argv)
    raise_nofile()
    spec = json.loads(Path(args.spec).read_text())
    result = asyncio.run(run(spec))
    Path(args.out).write_text(json.dumps(result))
    return 0


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(
    cond: Callable[[], Awaitable[bool]],
    timeout: float,  # noqa: ASYNC109 - a deadline is the point of this helper
    what: str,
    interval: float = 0.25,
) -> float:
    """Poll ``cond`` until true; returns the seconds it took, raises :class:`BenchError` at ``timeout``."""
    return await poll_until(cond, timeout, what, interval=interval, error=BenchError)


class Child:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log: Path, cwd: Path
    ) -> None:
        self.name = name
        self.log = log
        self._log_file: IO[bytes] = log.open("ab")
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The last lines of its log (for an error message)."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def check(self) -> None:
        """Raise :class:`BenchError` with its last log lines if it has exited."""
        if not self.alive():
            raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    async def stop(self, timeout: float = 30.0) -> int | None:  # noqa: ASYNC109 - a shutdown deadline
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = await asyncio.to_thread(self.proc.wait)
        self._log_file.close()
        return code
