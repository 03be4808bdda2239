"""The Prometheus metrics (docs/design.md, "Metrics"), on a registry of their own (process-wide: only the GC timer)."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
)

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Push → ack: under a second for a phone online, up to the push's TTL (hours) for one that was off.
ACK_LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0)


#: A collection at least this long is logged (an event loop stalled for every session at once).
LONG_GC_PAUSE = 0.02


class GcPauses:
    """The longest garbage-collection pause of this process, timed through ``gc.callbacks``.

    A full collection over many long-lived objects stops every session at once; operators and
    ``push-bridge bench steady`` read the worst one from ``bridge_gc_longest_pause_seconds``.
    Wall time (``perf_counter``, cheap): this runs twice per collection, hundreds of times a
    second in a busy worker, where a CPU-time clock (a system call here) cost ~3 µs a collection.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.longest = 0.0
        self._clock = clock
        self._started = 0.0
        self._counts: tuple[int, int, int] = (0, 0, 0)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            # The counts say what started it: the young count over its threshold (allocations),
            # or not (gc_tuning's clock, or an explicit gc.collect()).
            self._counts = gc.get_count()
            self._started = self._clock()
        elif self._started:
            pause = self._clock() - self._started
            if pause > self.longest:
                self.longest = pause
            if pause >= LONG_GC_PAUSE:
                # Nothing here may walk the heap: gc.get_freeze_count() counts the frozen objects
                # one by one (millions at 10,000 sessions), and took 15 % of a worker's CPU once
                # it ran after each long collection (gc_tuning does not call it either).
                # Which generation and how much it freed tell a full collection over live state
                # (tune the thresholds, freeze) from a young one over a burst's garbage.
                log.info(
                    "long gc pause",
                    extra={
                        "pause_ms": round(pause * 1000, 1),
                        "generation": info.get("generation"),
                        "collected": info.get("collected"),
                        "counts": list(self._counts),
                    },
                )


#: One per process, as ``gc.callbacks`` is: every :class:`Metrics` reads the same figure.
GC_PAUSES = GcPauses()


class Metrics:
    """Every ``bridge_*`` metric; one instance per process, passed to constructors."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.devices = Gauge("bridge_devices", "Registered push tokens by platform", ["platform"], registry=r)
        self.sessions = Gauge("bridge_sessions", "Upstream sessions by state", ["state"], registry=r)
        self.upstream_events = Counter(
            "bridge_upstream_events", "Events received from IMKIT", ["event"], registry=r
        )
        self.upstream_malformed = Counter(
            "bridge_upstream_malformed_events", "Upstream events that could not be decoded", ["event"], registry=r
        )
        self.decisions = Counter(
            "bridge_decisions", "Push decisions by outcome and reason", ["outcome", "reason"], registry=r
        )
        self.pushes = Counter("bridge_pushes", "Push attempts by provider and outcome", ["provider", "outcome"], registry=r)
        self.push_latency = Histogram(
            "bridge_push_latency_seconds",
            "Upstream event received to provider answered",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.push_queue_depth = Gauge("bridge_push_queue_depth", "Notifications waiting in the dispatcher", registry=r)
        self.upstream_reconnects = Counter(
            "bridge_upstream_reconnects", "Upstream reconnects by reason", ["reason"], registry=r
        )
        self.invalid_tokens = Counter(
            "bridge_invalid_tokens", "Push tokens reported invalid", ["provider", "reason"], registry=r
        )
        self.worker_devices = Gauge("bridge_worker_devices", "Devices owned by each worker", ["worker"], registry=r)
        self.pushes_dropped = Counter(
            "bridge_pushes_dropped", "Pushes given up (too old, retries exhausted)", ["provider", "reason"], registry=r
        )
        self.push_acks = Counter(
            "bridge_push_acks", "Pushes the app confirmed it received (POST /me/devices/{id}/ack)", ["provider"], registry=r
        )
        self.push_ack_latency = Histogram(
            "bridge_push_ack_latency_seconds",
            "Provider answered the push to the app acknowledged it",
            ["provider"],
            buckets=ACK_LATENCY_BUCKETS,
            registry=r,
        )
        # The standard process_* (RSS, CPU, open files) and python_gc_* (collections and objects
        # collected per generation) families: how often the collector runs is half of its cost.
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        if GC_PAUSES not in gc.callbacks:
            gc.callbacks.append(GC_PAUSES)
        self.gc_longest_pause = Gauge(
            "bridge_gc_longest_pause_seconds", "Longest garbage-collection pause since the process started", registry=r
        )
        self.gc_longest_pause.set_function(lambda: GC_PAUSES.longest)
        self.apns_environment_corrections = Counter(
            "bridge_apns_environment_corrections",
            "APNs pushes delivered in the other environment after BadDeviceToken (the registration moves there)",
            ["from", "to"],
            registry=r,
        )
        # 0 unless BRIDGE_APNS_CERT_FILE is used (token-auth keys do not expire).
        self.apns_certificate_expiry = Gauge(
            "bridge_apns_certificate_expiry_timestamp_seconds",
            "Expiry (notAfter) of the APNs certificate in use, epoch seconds; 0 without one",
            registry=r,
        )
