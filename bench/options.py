"""What ``push-bridge bench`` takes: the scenarios, their options and the defaults that differ by
scenario; and the shape of a result."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

SCENARIOS = ("sessions", "storm", "latency", "throughput", "api", "rooms", "steady")
#: The scenarios that run with ``--workers N`` (N ≥ 2): an api and N workers on Redis.
WORKERS_SCENARIOS = ("rooms",)
#: The scenarios that take ``--reconnects K`` (K ≥ 1): IMKIT drops every socket K times.
RECONNECTS_SCENARIOS = ("steady",)
#: The IMKIT user who sends every message of a run (a member of every room, never pushed to).
SENDER = "bench-sender"


#: Defaults that differ by scenario (an option the caller leaves at None takes these).
SCENARIO_DEFAULTS: dict[str, dict[str, Any]] = {
    "rooms": {"sessions": 2000, "rate": 20.0, "duration": 30.0, "ios_share": 1.0},
    "steady": {"sessions": ["2000", "10000"]},
}


#: ``steady --sessions max`` leaves this many descriptors of the open-files limit for the rest.
NOFILE_RESERVE = 1000


@dataclass
class Options:
    """What ``run_bench`` takes (the CLI's ``vars(args)``; unknown keys are ignored)."""

    sessions: int = 1000
    rate: float = 200.0
    duration: float = 10.0
    output: str | None = None
    plots: str | None = None
    profile: str | None = None
    connect_rate: float | None = None
    #: BRIDGE_MUTE_REFRESH_INTERVAL of the bridge (None: its default, 300 s).
    mute_refresh_interval: float | None = None
    concurrency: int = 32
    pushes: int = 20_000
    push_concurrency: int = 100
    ios_share: float = 0.5
    split_sims: bool = False
    keep: bool = False
    quiet: bool = False
    #: Processes holding sessions: 1 is ``python -m bridge serve`` (SQLite); N ≥ 2 (rooms only)
    #: an api and N workers on a private redis-server.
    workers: int = 1
    # rooms
    room_size: int = 50
    fcm_share: float | None = None
    find_max: bool = False
    step_rates: str = "250,500,750,1000,1250,1500"
    step_duration: float = 10.0
    max_growth_ms: float = 100.0
    floor: bool = True
    floor_gc: str = "frozen"
    # steady: idle session counts ("max": the open-files limit less NOFILE_RESERVE), growth phase
    session_counts: tuple[str, ...] = ()
    messages: int = 3000
    growth_devices: int = 20
    growth_state: str = "foreground"
    growth_rate: float | None = None
    #: After the idle figure at the largest count: this many rounds of IMKIT dropping every
    #: upstream socket, RSS once all are live again and settled (0: none).
    reconnects: int = 0

    @classmethod
    def from_dict(cls, opts: dict[str, Any], scenario: str | None = None) -> Options:
        """``opts`` over the scenario's defaults; ``sessions`` may be a list (the CLI's ``-n A B``)."""
        names = {f.name for f in fields(cls)}
        given = {k: v for k, v in opts.items() if k in names and v is not None}
        merged = {**SCENARIO_DEFAULTS.get(scenario or "", {}), **given}
        sessions = merged.get("sessions")
        if isinstance(sessions, list | tuple):
            counts = tuple(str(x) for x in sessions)
            if scenario != "steady" and (len(counts) != 1 or not counts[0].isdigit()):
                raise ValueError(f"{scenario} takes one number of sessions, not {' '.join(counts)}")
            merged["session_counts"] = counts
            merged["sessions"] = max((int(c) for c in counts if c.isdigit()), default=1000)
        if merged.get("fcm_share") is not None:
            merged["ios_share"] = 1.0 - float(merged["fcm_share"])
        workers = merged.get("workers", 1)
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"--workers takes a number of processes, 1 or more, not {workers!r}")
        if workers > 1 and scenario not in WORKERS_SCENARIOS:
            raise ValueError(
                f"--workers {workers} is for the {' and '.join(WORKERS_SCENARIOS)} scenario only: "
                f"{scenario} runs one python -m bridge serve"
            )
        reconnects = merged.get("reconnects", 0)
        if not isinstance(reconnects, int) or reconnects < 0:
            raise ValueError(
                f"--reconnects takes a number of rounds, 0 or more, not {reconnects!r}"
            )
        if reconnects > 0 and scenario not in RECONNECTS_SCENARIOS:
            raise ValueError(
                f"--reconnects {reconnects} is for the {' and '.join(RECONNECTS_SCENARIOS)} "
                f"scenario only"
            )
        return cls(**merged)


#: What a scenario returns: JSON-able, with its ``summary`` rows ``(figure, value, goal)``.
Result = dict[str, Any]
