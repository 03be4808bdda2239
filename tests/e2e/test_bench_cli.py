"""``push-bridge bench`` finds the bench package, or says what to install; the other commands never
need the bench or its extra (rich, matplotlib, py-spy)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH_ONLY = ("rich", "matplotlib", "bench")


def cli(
    argv: list[str], *, cwd: Path, blocked: tuple[str, ...] = (), env: dict[str, str] | None = None, pythonpath: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``bridge.cli.main(argv)`` in a child process in which importing ``blocked`` modules fails, as
    it does where they are not installed."""
    code = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None\n"
        "from bridge.cli import main\n"
        f"raise SystemExit(main({argv!r}))\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_") and k != "PYTHONPATH"}
    if pythonpath is not None:
        base["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_other_commands_run_without_the_bench_extra(tmp_path: Path) -> None:
    settings = {"BRIDGE_IMKIT_URL": "http://127.0.0.1:1", "BRIDGE_STORE": f"sqlite:///{tmp_path}/b.db", "BRIDGE_PUSH_PROVIDER_FALLBACK": "log"}
    p = cli(["check"], blocked=BENCH_ONLY, cwd=tmp_path, env=settings)
    assert p.returncode == 0 and "configuration OK" in p.stdout, p.stdout + p.stderr[-2000:]
    for command in ("serve", "api", "worker", "sim", "demo", "check", "bench"):
        p = cli([command, "--help"], blocked=BENCH_ONLY, cwd=tmp_path)
        assert p.returncode == 0 and "usage: push-bridge" in p.stdout, (command, p.stderr[-2000:])


def test_bench_without_rich_says_to_install_the_bench_extra(tmp_path: Path) -> None:
    p = cli(["bench", "sessions", "-n", "1"], blocked=("rich",), cwd=tmp_path)
    assert p.returncode != 0
    assert "needs the bench extra (rich is missing)" in p.stderr
    assert "pip install -e '.[bench]'" in p.stderr
    assert "Traceback" not in p.stderr


def test_bench_outside_a_source_checkout_says_where_it_runs(tmp_path: Path) -> None:
    """The bridge package as a wheel installs it: no bench/ beside it, none importable."""
    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "bridge", site / "bridge", ignore=shutil.ignore_patterns("__pycache__"))
    p = cli(["bench", "sessions", "-n", "1"], cwd=tmp_path, pythonpath=site)
    assert p.returncode != 0
    assert "push-bridge bench runs from a source checkout" in p.stderr
    assert "pip install -e '.[bench]'" in p.stderr
    assert "Traceback" not in p.stderr
