"""Prometheus metrics of DESIGN section 5, on a registry of their own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


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
