"""What ``pip install imkit-push-bridge`` gets: the bridge package alone, without the benchmarks or
their dependencies (rich, matplotlib, py-spy come with the ``bench`` extra, in a source checkout)."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH_ONLY = {"rich", "matplotlib", "py-spy"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s;<>=!~\[]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_wheel_holds_bridge_and_the_bench_extra_its_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["bridge*"]
    deps = project["project"]["dependencies"]
    extras = project["project"]["optional-dependencies"]
    assert not _names(deps) & BENCH_ONLY
    assert _names(extras["bench"]) == BENCH_ONLY
    assert "imkit-push-bridge[bench]" in extras["dev"]  # CI runs and type-checks the bench


def test_no_bridge_module_imports_the_bench_or_its_dependencies() -> None:
    found = []
    for path in sorted((ROOT / "bridge").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno} {m}"
                for m in modules
                if m.partition(".")[0] in {"rich", "matplotlib", "bench"}
            ]
    assert found == []
