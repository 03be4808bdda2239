"""Figures from raw numbers: nearest-rank percentiles, and the samples of a Prometheus text page."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Count, mean and nearest-rank p50/p95/p99/max of ``values`` (empty: ``{"n": 0}``)."""
    if not values:
        return {"n": 0}
    s = sorted(values)
    n = len(s)

    def q(p: float) -> float:
        return s[min(n - 1, max(0, math.ceil(p * n) - 1))]

    return {
        "n": n,
        "mean": round(math.fsum(s) / n, 3),
        "p50": round(q(0.50), 3),
        "p95": round(q(0.95), 3),
        "p99": round(q(0.99), 3),
        "max": round(s[-1], 3),
    }


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format as ``{'name{labels}': value}`` (comments and junk skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out
