"""``--plots``: PNG plots of a result (matplotlib, the ``bench`` extra, imported only here).

``python -m bench.plots OUT.png RESULT.json...`` plots memory against sessions held over several
``sessions`` results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.goals import GOALS
from bench.options import Result


def make_plots(scenario: str, result: Result, out_dir: Path) -> list[str]:
    """PNG plots of a result (matplotlib, imported only here); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[str] = []

    def save(fig: Any, name: str) -> None:
        path = out_dir / f"{scenario}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(str(path))

    if scenario == "sessions" and result.get("registration_curve"):
        curve = result["registration_curve"]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(
            [c["live"] for c in curve],
            [c["kib_per_session"] for c in curve],
            label="(RSS − empty RSS) / live",
        )
        ax.axhline(GOALS["kib_per_session"], color="red", linestyle="--", label="goal 40 KiB")
        ax.set_xlabel("live sessions held (while devices register)")
        ax.set_ylabel("KiB per session")
        ax.set_ylim(bottom=0)
        ax2 = ax.twinx()
        ax2.plot(
            [c["live"] for c in curve],
            [c["rss_kib"] / 1024 for c in curve],
            color="gray",
            alpha=0.6,
            label="RSS",
        )
        ax2.set_ylabel("bridge RSS (MiB, gray)")
        ax2.set_ylim(bottom=0)
        ax.set_title(f"Memory per session up to {result['sessions']:,} live (API caches included)")
        ax.legend(loc="lower right")
        save(fig, "memory")
    if scenario == "latency" and result.get("latencies_ms"):
        fig, (ax, cdf) = plt.subplots(1, 2, figsize=(10, 4))
        for provider, values in result["latencies_ms"].items():
            if values:
                ax.hist(values, bins=80, alpha=0.6, label=provider)
                s = sorted(values)
                cdf.plot(s, [i / len(s) for i in range(1, len(s) + 1)], label=provider)
        ax.set_xlabel("emit → provider (ms)")
        ax.set_ylabel("pushes")
        ax.set_yscale("log")
        ax.legend()
        cdf.axvline(GOALS["latency_p99_ms"], color="red", linestyle="--", label="goal p99 25 ms")
        cdf.axhline(0.99, color="gray", linestyle=":")
        cdf.set_xscale("log")
        cdf.set_xlabel("emit → provider (ms)")
        cdf.set_ylabel("fraction")
        cdf.legend()
        fig.suptitle(f"{result['rate']:g} events/s over {result['sessions']:,} sessions")
        save(fig, "distribution")
    if scenario == "storm":
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in ("drop", "cold"):
            curve = result.get(name, {}).get("curve", [])
            ax.plot([c["t"] for c in curve], [c["live"] for c in curve], label=name)
        ax.set_xlabel("seconds")
        ax.set_ylabel("live sessions")
        ax.set_title(
            f"{result['sessions']:,} sessions, connect rate limit {result['connect_rate_limit']:g}/s"
        )
        ax.legend()
        save(fig, "live")
    if scenario == "throughput":
        providers = [p for p in ("apns", "fcm") if p in result]
        if providers:
            fig, ax = plt.subplots(figsize=(6, 4))
            xs = range(len(providers))
            ax.bar(
                [x - 0.2 for x in xs],
                [result[p]["bridge"]["per_second"] for p in providers],
                0.4,
                label="whole bridge",
            )
            ax.bar(
                [x + 0.2 for x in xs],
                [result[p]["bare"]["per_second"] for p in providers],
                0.4,
                label="bare library loop",
            )
            ax.set_xticks(list(xs), providers)
            ax.set_ylabel("pushes per second")
            ax.legend()
            save(fig, "rates")
    return files


def plot_sessions_scaling(results: list[Result], path: Path) -> None:
    """RSS and RSS per session against sessions held, one point per ``sessions`` result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted(
        (r["sessions"], r["rss_live_kib"] / 1024, r["kib_per_session"], r["rss_empty_kib"] / 1024)
        for r in results
    )
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([p[0] for p in pts], [p[2] for p in pts], "o-", label="KiB per session")
    ax.axhline(GOALS["kib_per_session"], color="red", linestyle="--", label="goal 40 KiB")
    ax.set_xlabel("live sessions held (fresh process, all live, settled)")
    ax.set_ylabel("KiB per session")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot([p[0] for p in pts], [p[1] for p in pts], "s--", color="gray", label="RSS")
    ax2.plot([p[0] for p in pts], [p[3] for p in pts], ":", color="gray", label="RSS, no devices")
    ax2.set_ylabel("bridge RSS (MiB, gray)")
    ax2.set_ylim(bottom=0)
    ax.legend(loc="lower right")
    ax.set_title("Bridge memory against sessions held")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.plots OUT.png RESULT.json...``."""
    p = argparse.ArgumentParser(prog="python -m bench.plots", description=__doc__.split("\n")[0])
    p.add_argument("png", help="the PNG to write")
    p.add_argument("results", nargs="+", help="JSON results of push-bridge bench sessions")
    args = p.parse_args(argv)
    plot_sessions_scaling([json.loads(Path(f).read_text()) for f in args.results], Path(args.png))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
