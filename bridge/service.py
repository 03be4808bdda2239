"""The service one process runs (the composition root): builds the store, providers, dispatcher
and worker pool from Settings, starts them and shuts them down in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any, Literal

from bridge import gc_tuning
from bridge._backoff import Backoff
from bridge.config import Settings
from bridge.metrics import Metrics
from bridge.models import ApnsEnvironment, Notification
from bridge.push.claims import Claims
from bridge.push.dispatcher import Dispatcher
from bridge.push.provider import Delivered, Provider, SendResult, TokenInvalid
from bridge.store.base import Store, StoreUnavailable
from bridge.store.factory import make_store
from bridge.upstream.rest import ImkitRest
from bridge.worker.history import with_acks
from bridge.worker.pool import WorkerPool

if TYPE_CHECKING:
    from bridge.worker.coordinator import ShardCoordinator

log = logging.getLogger(__name__)

Role = Literal["serve", "api", "worker"]


def make_providers(settings: Settings) -> tuple[dict[str, Provider], list[str]]:
    """One provider per kind from the credentials configured, or the log fallback.

    Also the kinds that cannot deliver (no credentials, no fallback): one missing kind is a
    warning (an iOS-only app needs no FCM); none at all makes the process not ready.
    """
    providers: dict[str, Provider] = {}
    problems: list[str] = []
    fallback = settings.push_provider_fallback == "log"
    for name, configured, missing in (
        ("apns", settings.apns_configured, "APNs has no credentials (BRIDGE_APNS_KEY_FILE or BRIDGE_APNS_CERT_FILE)"),
        ("fcm", settings.fcm_configured, "FCM has no credentials (BRIDGE_FCM_CREDENTIALS_FILE)"),
    ):
        if configured:
            providers[name] = _configured_provider(name, settings)
        elif fallback:
            from bridge.push.log import LogProvider

            providers[name] = LogProvider()
        else:
            problems.append(missing)
    return providers, problems


def _configured_provider(name: str, settings: Settings) -> Provider:
    # Imported only when configured: a bridge without APNs never loads aioapns (nor FCM's
    # firebase-admin), which keeps start-up and memory small.
    if name == "apns":
        from bridge.push.apns import ApnsProvider

        return ApnsProvider.from_settings(settings)
    from bridge.push.fcm import FcmProvider

    return FcmProvider.from_settings(settings)


class Bridge:
    """Everything one process runs, for its role: ``serve`` (API + workers), ``api`` or ``worker``."""

    def __init__(self, settings: Settings, *, role: Role = "serve", metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.role = role
        self.metrics = metrics or Metrics()
        self.store: Store = make_store(settings)
        if not settings.imkit_url:
            raise ValueError("BRIDGE_IMKIT_URL is required")
        key = settings.imkit_client_key.get_secret_value() if settings.imkit_client_key else None
        #: The workers' REST calls (refreshes, backfills) ...
        self.rest = ImkitRest(settings.imkit_url, client_key=key, timeout=settings.imkit_request_timeout)
        #: ... and the API's token checks, apart: an app's subscribe must not queue behind the
        #: refreshes of 10,000 sessions reconnecting at once (each client bounds its requests).
        self.api_rest = ImkitRest(settings.imkit_url, client_key=key, timeout=settings.imkit_request_timeout)
        self.providers, missing = make_providers(settings)
        self._watch_apns_certificate()
        for problem in missing:
            log.warning("%s: its registrations get no pushes", problem)
        #: Why no push can be delivered at all (reported by /readyz), or nothing.
        self.provider_problems: list[str] = []
        if not self.providers:
            self.provider_problems.append(
                "no push provider can deliver: no APNs or FCM credentials and BRIDGE_PUSH_PROVIDER_FALLBACK=none"
            )
        if settings.imkit_url_in_clear:
            log.warning(
                "BRIDGE_IMKIT_URL is plain http:// to a non-loopback host: client tokens travel unencrypted; use https://"
            )
        self.pool: WorkerPool | None = None
        self.worker_id = settings.worker_id or f"{socket.gethostname()}-{id(self) & 0xFFFF:04x}"
        self._redis: Any = None
        claims: Claims | None = None
        if settings.store_is_redis and role in ("serve", "worker"):
            import redis.asyncio as aioredis

            from bridge.push.redis_claims import RedisClaims
            from bridge.worker.shard import Membership

            # A blocking pool, as the store's: a burst of claims waits for a connection instead of
            # failing with "Too many connections" (a claim that fails is let through unchecked).
            pool = aioredis.BlockingConnectionPool.from_url(
                settings.store, max_connections=64, timeout=5, socket_timeout=5, socket_connect_timeout=5
            )
            self._redis = aioredis.Redis.from_pool(pool)
            self._membership = Membership(self._redis, self.worker_id, ttl=settings.lease_ttl)
            # Two workers may overlap during a hand-over: a key per (device, message) in Redis,
            # naming this process, so a dead one's unsent claims can be taken over.
            claims = RedisClaims(self._redis, self._membership)
        self.dispatcher = Dispatcher(
            self.providers,
            metrics=self.metrics,
            claims=claims,
            queue_size=settings.queue_size,
            concurrency=settings.push_concurrency,
            max_age=settings.push_max_age,
            backoff=Backoff(settings.backoff_base, settings.backoff_cap),
            # The providers time out themselves; this is the backstop for one that hangs anyway.
            send_timeout=settings.push_timeout + 5.0,
            on_result=self._on_result,
            on_token_invalid=self._on_token_invalid,
        )
        self.coordinator: ShardCoordinator | None = None
        if role in ("serve", "worker"):
            self.pool = WorkerPool(
                settings,
                store=self.store,
                dispatcher=self.dispatcher,
                rest=self.rest,
                metrics=self.metrics,
                worker_id=self.worker_id,
                claims_shared=settings.store_is_redis,
            )
            if settings.store_is_redis:
                self._shard(settings)
        self.started = False
        self._coordinator_task: asyncio.Task[None] | None = None
        self._gc_task: asyncio.Task[None] | None = None

    def _shard(self, settings: Settings) -> None:
        """Several workers share the devices: leases, heartbeats and at-most-once claims in Redis."""

        from bridge.worker.coordinator import ShardCoordinator
        from bridge.worker.shard import Leases

        assert self.pool is not None
        ttl = settings.lease_ttl
        self.coordinator = ShardCoordinator(
            self.pool,
            membership=self._membership,
            leases=Leases(self._redis, self.worker_id, ttl=ttl),
            device_ids=self.store.all_device_ids,
            tick=max(0.1, ttl / 5),
            metrics=self.metrics,
        )
        self.pool.on_new_device = self.coordinator.on_device_change

    def _watch_apns_certificate(self) -> None:
        """Certificate mode: export the expiry of the certificate the APNs provider has loaded."""
        if not self.settings.apns_cert_file:
            return
        from bridge.push.apns import ApnsProvider

        apns = self.providers.get("apns")
        if isinstance(apns, ApnsProvider) and apns.certificate_expiry is not None:
            self.metrics.apns_certificate_expiry.set_function(lambda: apns.certificate_expiry or 0.0)

    async def _on_result(self, n: Notification, result: SendResult) -> None:
        if isinstance(result, Delivered) and result.corrected_environment is not None:
            # Before the pool records the answer: once a push shows as delivered, the registration
            # (store and pool) already knows its environment, so the next push goes straight there.
            await self._apns_environment_corrected(n, result.corrected_environment)
        if self.pool is not None:
            await self.pool.handle_result(n, result)

    async def _apns_environment_corrected(self, n: Notification, environment: ApnsEnvironment) -> None:
        """Remember where the token was accepted, so the next push goes there first.

        The store changes it only while the registration still holds this token: a correction
        arriving after the app registered a new token changes nothing.
        """
        wrong = "sandbox" if environment == "production" else "production"
        self.metrics.apns_environment_corrections.labels(wrong, environment).inc()
        try:
            changed = await self.store.set_apns_environment(n.device_id, n.push_type, n.token, environment)
        except StoreUnavailable as exc:
            log.warning("APNs environment not recorded: %s", exc, extra={"device_id": n.device_id})
            return  # the next push is corrected again
        if changed:
            log.info(
                "APNs environment corrected to %s", environment, extra={"device_id": n.device_id, "push_type": n.push_type}
            )
            # Also published as a change; applying it now means the very next push goes right.
            await self.device_changed(n.device_id)

    async def _on_token_invalid(self, n: Notification, result: TokenInvalid) -> None:
        if self.pool is not None:
            await self.pool.handle_token_invalid(n, result)
        else:
            with contextlib.suppress(StoreUnavailable):
                await self.store.disable_registration(
                    n.device_id, n.push_type, n.token, result.reason, since=result.since
                )

    async def device_changed(self, device_id: str) -> None:
        """Called by the API after a write: a pool in this process applies it before the reply.

        The change feed would deliver it too, a moment later; applying it now means an app that
        said "foreground" is never pushed for a message that arrives right after the reply.
        """
        if self.pool is not None:
            await self.pool.apply_change(device_id)

    async def device_status(self, device_id: str, owner: str | None = None) -> dict[str, Any] | None:
        """Session state and recent decisions: from this process's pool, else as published.

        With ``owner``, a status recorded for another owner of the device (a worker that has
        not applied a change of owner yet) is not returned: history never crosses users.
        """
        status: dict[str, Any] | None = None
        if self.pool is not None:
            status = self.pool.device_status(device_id)
        if status is None and (self.pool is None or self.coordinator is not None):
            try:
                status = await self.store.get_status(device_id)
            except StoreUnavailable:
                status = None
        if status is not None and owner is not None and status.get("clientId", owner) != owner:
            return None
        if status and status.get("events"):
            # ``shown`` on each push the app acknowledged (kept in the store by the API).
            try:
                acks = await self.store.get_acks(device_id)
            except StoreUnavailable:
                acks = {}
            status = {**status, "events": with_acks(status["events"], acks)}
        return status

    async def start(self) -> None:
        """Open the store, start the dispatcher, then the pool (so pushes have somewhere to go)."""
        await self.store.open()
        await self.dispatcher.start()
        if self.pool is not None:
            await self.pool.start()
            freezer = gc_tuning.freezer()  # only when the CLI turned it on for this process
            if freezer is not None:
                pool = self.pool
                # The devices are opened: freeze them, and again as their sessions connect; collect
                # the young generations on a clock from now on (see bridge.gc_tuning).
                freezer.freeze(pool.device_count, "pool started", pool.went_live)

                def live() -> int:
                    return pool.device_count + pool.session_counts()["live"]

                def arrivals() -> int:
                    return pool.went_live

                self._gc_task = asyncio.create_task(
                    freezer.watch(live, arrivals=arrivals), name="gc-pacing"
                )
        if self.coordinator is not None:
            self._coordinator_task = asyncio.create_task(self.coordinator.run(), name="shard-coordinator")
        self.started = True

    async def close(self) -> None:
        """Shut down without losing a push or sending one twice.

        1. No more intake: the shard coordinator stops (nothing changes hands meanwhile), every
           upstream session closes and backfills stop; the pool keeps its devices' pending pushes.
        2. Drain the dispatcher: provider answers still reach the pool and move its checkpoints;
           what is left is dropped with its claims released (see :meth:`Dispatcher.close`).
        3. Close the pool: the checkpoints are saved, so a restart backfills exactly what was
           not answered, and nothing that was.
        4. Release the leases (sessions are closed already), then providers, Redis and store.
        """
        if self._gc_task is not None:
            self._gc_task.cancel()
        if self._coordinator_task is not None:
            self._coordinator_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._coordinator_task
        if self.pool is not None:
            await self.pool.stop_intake(timeout=5.0)
        drain = self.settings.drain_timeout
        if self.coordinator is not None:
            # Leases are no longer renewed: finish well before they lapse, or another worker
            # could take a device over and backfill while our claims still hide its pushes.
            drain = min(drain, 0.6 * self.settings.lease_ttl)
        await self.dispatcher.close(timeout=drain)
        if self.pool is not None:
            await self.pool.close(timeout=5.0)
        if self.coordinator is not None:
            await self.coordinator.close()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
        for provider in self.providers.values():
            with contextlib.suppress(Exception):
                await provider.close()
        await self.rest.aclose()
        await self.api_rest.aclose()
        with contextlib.suppress(Exception):
            await self.store.close()

    async def readiness(self) -> list[str]:
        """Why this process is not ready (empty when it is)."""
        reasons: list[str] = []
        try:
            await asyncio.wait_for(self.store.ping(), 2.0)
        except (TimeoutError, StoreUnavailable) as exc:
            # The probe's answer may be public: the details (hosts, paths) go to the log only.
            log.warning("readiness: store unreachable: %s", exc or "timeout")
            reasons.append("store unreachable")
        if self.pool is not None and not self.pool.running:
            reasons.append("worker loop not running")
        reasons.extend(self.provider_problems)
        return reasons
