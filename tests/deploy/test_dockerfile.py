"""The Dockerfile, checked without a Docker engine: parsed with ``dockerfile`` (BuildKit's parser),
its health check run against real HTTP servers, and its build context built into a wheel."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
FINAL_BASE = "python:3.11-slim"
COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|build-essential|make|cmake|python3?-dev|libc6?-dev)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    commands: list[dockerfile.Command] = field(default_factory=list)

    def all(self, cmd: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == cmd]

    def one(self, cmd: str) -> dockerfile.Command:
        found = self.all(cmd)
        assert len(found) == 1, f"expected one {cmd} in stage {self.name}, found {len(found)}"
        return found[0]


def _stages() -> list[Stage]:
    """Split the Dockerfile into stages, resolving ``${ARG}`` defaults in FROM lines."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for c in dockerfile.parse_file(str(DOCKERFILE)):
        if c.cmd == "ARG" and not stages:
            name, _, default = c.value[0].partition("=")
            args[name] = default
        elif c.cmd == "FROM":
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), c.value[0])
            name = c.value[2] if len(c.value) == 3 and c.value[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        else:
            assert stages, f"{c.cmd} before the first FROM"
            stages[-1].commands.append(c)
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return _stages()


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_multi_stage_on_official_slim_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert [s.base for s in stages] == [FINAL_BASE] * len(stages)
    builder = stages[0]
    assert builder.name == "builder"
    runs = " ".join(" ".join(c.value) for c in builder.all("RUN"))
    assert "python -m venv /opt/venv" in runs
    assert "pip wheel" in runs and "pip install /wheels/" in runs


def test_final_stage_has_no_compilers_and_copies_only_the_venv(final: Stage) -> None:
    for run in final.all("RUN"):
        text = " ".join(run.value)
        assert "apt-get install" not in text and "pip install" not in text, run.original
        assert not COMPILERS.search(text), run.original
    copies = final.all("COPY") + final.all("ADD")
    assert len(copies) == 1
    assert copies[0].cmd == "COPY"
    assert copies[0].flags == ("--from=builder",)
    assert copies[0].value == ("/opt/venv", "/opt/venv")


def test_runs_as_fixed_non_root_user_after_setup(final: Stage) -> None:
    user = final.one("USER")
    uid, _, gid = user.value[0].partition(":")
    assert uid == "10001" and gid in ("", "10001")
    position = final.commands.index(user)
    # Nothing after USER may need root.
    assert all(c.cmd not in ("RUN", "COPY", "ADD") for c in final.commands[position:])
    setup = " ".join(" ".join(c.value) for c in final.all("RUN"))
    assert "--uid 10001" in setup and "chown 10001:10001 /data" in setup


def test_entrypoint_cmd_ports_and_env(final: Stage) -> None:
    entrypoint, cmd = final.one("ENTRYPOINT"), final.one("CMD")
    assert entrypoint.json and entrypoint.value == ("push-bridge",)
    assert cmd.json and cmd.value == ("serve",)
    assert set(final.one("EXPOSE").value) == {"8080", "9108"}
    env = dict(zip(*(iter(final.one("ENV").value),) * 2, strict=True))
    assert env["BRIDGE_HOST"] == "0.0.0.0"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["BRIDGE_STORE"] == "sqlite:////data/bridge.db"


def _healthcheck_code(final: Stage) -> str:
    hc = final.one("HEALTHCHECK")
    assert hc.json, "exec form: no shell needed"
    assert hc.value[:3] == ("CMD", "python", "-c")
    assert not any(tool in hc.original for tool in ("curl", "wget"))
    assert "urllib" in hc.value[3]
    return str(hc.value[3])


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[http.server.HTTPServer, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_healthcheck(code: str, port: int, metrics_port: int) -> int:
    env = {**os.environ, "BRIDGE_PORT": str(port), "BRIDGE_METRICS_PORT": str(metrics_port)}
    return subprocess.run([sys.executable, "-c", code], env=env, timeout=30).returncode


def test_healthcheck_against_real_servers(final: Stage, http_server: tuple[http.server.HTTPServer, type[_Handler]]) -> None:
    code = _healthcheck_code(final)
    server, handler = http_server
    live, closed = int(server.server_address[1]), _closed_port()
    assert _run_healthcheck(code, live, closed) == 0  # serve / api on BRIDGE_PORT
    assert _run_healthcheck(code, closed, live) == 0  # worker: only BRIDGE_METRICS_PORT
    assert _run_healthcheck(code, closed, _closed_port()) == 1  # nothing listening
    handler.status = 503
    assert _run_healthcheck(code, live, closed) == 1  # answering, but not healthy


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"  # any number of directories, none included
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        patterns.append((negate, re.compile(regex)))
    return patterns


def _in_context(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent matches the path."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negate, regex in patterns:
        if any(regex.fullmatch(p) for p in prefixes):
            included = negate
    return included


def test_dockerignore_sends_only_what_the_builder_copies(stages: list[Stage]) -> None:
    patterns = _ignore_patterns()
    for copy in stages[0].all("COPY"):
        for source in copy.value[:-1]:
            assert _in_context(source.rstrip("/"), patterns), f"{source} is excluded by .dockerignore"
    assert _in_context("bridge/api/app.py", patterns)
    for excluded in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "bridge.db", ".env",
                     "helm/imkit-push-bridge/values.yaml", "bridge/__pycache__/cli.cpython-311.pyc", "bridge/api/__pycache__"):
        assert not _in_context(excluded, patterns), excluded


def test_build_context_builds_a_wheel(tmp_path: Path) -> None:
    """What the builder stage does (pip wheel, with build isolation as there), from exactly the
    files .dockerignore lets through."""
    patterns = _ignore_patterns()
    context = tmp_path / "context"
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT).as_posix()
        if path.is_file() and not rel.startswith((".git/", ".venv/")) and _in_context(rel, patterns):
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, context / rel)
    assert (context / "pyproject.toml").is_file() and (context / "bridge" / "cli.py").is_file()
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels), str(context)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = wheels.glob("imkit_push_bridge-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "bridge/cli.py" in names and "bridge/py.typed" in names
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "push-bridge = bridge.cli:main" in zf.read(entry_points).decode()
