"""The worker pool: one upstream session per device it owns, events → decisions → pushes.

It reads like a loop: ``start()`` loads the devices and opens their sessions, a task follows the
store's change feed (new device: session; new client token: leave ``auth_failed``; removed:
close), a periodic tick reconciles with the store, and a refresher rereads each user's mute list
and badge once per ``BRIDGE_MUTE_REFRESH_INTERVAL``, spread over it.

The pool keeps the sessions and who owns which device; the rest is done by parts it builds and
hands what each needs: :class:`~bridge.worker.users.UserFacts` (mute lists and badges from
IMKIT), :class:`~bridge.worker.fanout.Fanout` (the hot path: event → decision → pushes),
:class:`~bridge.worker.catchup.CatchUp` (backfill after a gap),
:class:`~bridge.worker.results.ResultSink` (the providers' answers) and
:class:`~bridge.worker.checkpoints.Checkpoints` (checkpoints and statuses to the store). Each
device's last events, with the decision and the provider's answer, are kept for
``GET /me/devices/{id}`` ("why no push?").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import aiohttp

from bridge._backoff import Backoff
from bridge.config import Settings
from bridge.metrics import Metrics
from bridge.models import Device, Notification, SessionState
from bridge.push.dispatcher import Dispatcher
from bridge.push.provider import SendResult, TokenInvalid
from bridge.store.base import Store, StoreUnavailable
from bridge.store.paging import walk_devices
from bridge.upstream.idle import IdleWatch
from bridge.upstream.ratelimit import ConnectLimiter
from bridge.upstream.rest import ImkitRest
from bridge.upstream.session import UpstreamSession
from bridge.upstream.transport import make_http_session
from bridge.worker.catchup import CatchUp
from bridge.worker.checkpoints import Checkpoints
from bridge.worker.fanout import Fanout
from bridge.worker.results import ResultSink
from bridge.worker.state import DeviceRuntime, UserState
from bridge.worker.users import USER_REFRESH_MIN_AGE, UserFacts

log = logging.getLogger(__name__)

#: At a hand-over, how long the old owner waits for the answers to the pushes it sent before
#: writing the checkpoint the next owner backfills from (a push waiting for a retry holds no more).
HANDOVER_DRAIN = 2.0


class WorkerPool:
    """Owns the upstream sessions of the devices it is given and turns their events into pushes."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        dispatcher: Dispatcher,
        rest: ImkitRest,
        metrics: Metrics,
        worker_id: str = "local",
        claims_shared: bool = False,
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        if not settings.imkit_url:
            raise ValueError("BRIDGE_IMKIT_URL is required to run workers")
        self._settings = settings
        self._url = settings.imkit_url
        self._store = store
        self._metrics = metrics
        self.worker_id = worker_id
        #: Set by a shard coordinator: devices are then opened only through :meth:`adopt`.
        self.on_new_device: Callable[[str], Awaitable[None]] | None = None
        self._http = http
        self._own_http = http is None
        #: One timer for all sessions' silent-server check (instead of one per read).
        self._idle_watch = IdleWatch()
        self._limiter = ConnectLimiter(
            settings.connect_rate, settings.connect_burst, max_in_progress=settings.connect_concurrency
        )
        self._runtimes: dict[str, DeviceRuntime] = {}
        self._locks: dict[str, list[Any]] = {}  # device id -> [lock, users]
        self._state_counts: dict[SessionState, int] = dict.fromkeys(SessionState, 0)
        #: Sessions that went live since start, reconnects included (for the heap freezer).
        self.went_live = 0
        self._session_states: dict[UpstreamSession, SessionState] = {}
        self._platform_counts: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        self._intake_stopped = False
        self._closed = False
        self.running = False
        # The parts, each given what it needs; they share the devices (and the users) with the pool.
        self._users = UserFacts(rest, runtimes=self._runtimes)
        #: With several workers the API reads "why no push?" from the store, so the pool writes it.
        self._checkpoints = Checkpoints(store, runtimes=self._runtimes, publish_status=claims_shared)
        self._results = ResultSink(
            store, runtimes=self._runtimes, status_changed=self._checkpoints.status_changed
        )
        self._fanout = Fanout(
            settings,
            dispatcher=dispatcher,
            metrics=metrics,
            users=self._users,
            status_changed=self._checkpoints.status_changed,
            spawn=self._spawn,
        )
        self._catchup = CatchUp(
            settings, rest=rest, metrics=metrics, users=self._users, fanout=self._fanout, dispatcher=dispatcher
        )

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open a session per owned device and follow the store's change feed."""
        if self._http is None:
            self._http = make_http_session()
        self._tasks.append(asyncio.create_task(self._follow_changes(), name="pool-changes"))
        await self.reconcile()
        self._tasks.append(asyncio.create_task(self._tick(), name="pool-tick"))
        refresher = self._users.keep_fresh(self._settings.mute_refresh_interval, self._spawn)
        self._tasks.append(asyncio.create_task(refresher, name="pool-user-refresh"))
        self._tasks.append(asyncio.create_task(self._checkpoints.run(), name="pool-checkpoints"))
        self.running = True
        log.info("worker pool started", extra={"worker": self.worker_id, "devices": len(self._runtimes)})

    async def stop_intake(self, timeout: float = 10.0) -> None:
        """First step of a shutdown: read no more upstream events, start no more pushes.

        Cancels the change feed and the ticks, closes every session (within ``timeout``), lets
        background work already running (a backfill of a reconnect's gap, a badge refresh) finish
        within ``timeout`` and cancels what is left, but keeps each device's runtime: the answers
        to pushes still in the dispatcher then land in :meth:`handle_result` and move the
        checkpoints that :meth:`close` saves. Idempotent.

        A backfill cut short holds its device's checkpoint at the gap's start, so the next start
        backfills the gap again and re-pushes what this one already pushed live: finishing the
        short ones here avoids those duplicates on an ordinary restart.
        """
        if self._intake_stopped:
            return
        self._intake_stopped = True
        self._closing = True
        self.running = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        deadline = asyncio.get_running_loop().time() + timeout
        sessions = [rt.session for rt in self._runtimes.values() if rt.session]
        if sessions:
            closing = asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(closing, timeout)
        background = list(self._background)
        if background:
            left = max(0.0, deadline - asyncio.get_running_loop().time())
            _, pending = await asyncio.wait(background, timeout=left)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def close(self, timeout: float = 10.0) -> None:
        """Stop (see :meth:`stop_intake`), save every checkpoint and forget the devices. Idempotent.

        Call it after the dispatcher has drained, so the checkpoints include the last answers.
        """
        if self._closed:
            return
        self._closed = True
        await self.stop_intake(timeout)
        with contextlib.suppress(Exception):
            await self.flush_checkpoints()
        self._runtimes.clear()
        await self._idle_watch.close()
        if self._own_http and self._http is not None:
            await self._http.close()
        log.info("worker pool closed", extra={"worker": self.worker_id})

    # ---------------------------------------------------------------- observation

    @property
    def device_count(self) -> int:
        return len(self._runtimes)

    def session_counts(self) -> dict[str, int]:
        return {state.value: n for state, n in self._state_counts.items()}

    def session_state(self, device_id: str) -> SessionState | None:
        rt = self._runtimes.get(device_id)
        if rt is None:
            return None
        return rt.session.state if rt.session else SessionState.CLOSED

    def user_state(self, client_id: str) -> UserState | None:
        """What this worker currently knows about a user (mute list, switch, badge)."""
        return self._users.get(client_id)

    def device_status(self, device_id: str) -> dict[str, Any] | None:
        """Session state, last events with their decisions, and the last provider answer."""
        rt = self._runtimes.get(device_id)
        return None if rt is None else rt.status()

    # ---------------------------------------------------------------- store sync

    async def reconcile(self) -> None:
        """Make the sessions match the store: open missing ones, close removed ones.

        Under a shard coordinator the coordinator decides which devices this worker serves.
        """
        if self.on_new_device is not None:
            return
        try:
            ids = await self._store.all_device_ids()
        except StoreUnavailable as exc:
            log.warning("store unavailable during reconcile: %s", exc)
            return
        wanted = set(ids)
        missing = wanted - self._runtimes.keys()
        if len(missing) > 100:
            await self._open_in_bulk(missing)
        for device_id in missing - self._runtimes.keys():
            await self._apply_upsert(device_id)
        for device_id in set(self._runtimes) - wanted:
            # Re-read under the device's lock: a device registered since the id list was read is
            # not in it, yet must keep its session. _load removes only what the store has not.
            await self._load(device_id)

    async def _open_in_bulk(self, device_ids: set[str]) -> None:
        """Open many sessions from pages of the store, not one read per device (start-up)."""
        try:
            async for page in walk_devices(self._store):
                for device in page:
                    if device.device_id in device_ids and device.device_id not in self._runtimes:
                        self._open(device)
        except StoreUnavailable as exc:
            log.warning("store unavailable while opening sessions: %s", exc)

    async def _follow_changes(self) -> None:
        while True:
            try:
                async for change in self._store.changes():
                    if change.kind == "delete":
                        await self._remove(change.device_id)
                    else:
                        await self._apply_upsert(change.device_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("change feed failed; resubscribing")
                await asyncio.sleep(1.0)

    async def _tick(self) -> None:
        interval = min(30.0, self._settings.mute_refresh_interval)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile()
            except Exception:
                log.exception("pool tick failed")

    async def apply_change(self, device_id: str) -> None:
        """Bring one device's session in line with the store now (idempotent)."""
        await self._apply_upsert(device_id)

    async def _apply_upsert(self, device_id: str) -> None:
        if self._closing:
            return
        if device_id not in self._runtimes and self.on_new_device is not None:
            await self.on_new_device(device_id)
            return
        await self._load(device_id)

    @contextlib.asynccontextmanager
    async def _device_lock(self, device_id: str) -> AsyncIterator[None]:
        """One change at a time per device: opening and closing a session both await."""
        entry = self._locks.get(device_id)
        if entry is None:
            entry = self._locks[device_id] = [asyncio.Lock(), 0]
        entry[1] += 1  # users of this lock, waiting or holding: it is dropped when none are left
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[device_id]

    async def _load(self, device_id: str) -> None:
        async with self._device_lock(device_id):
            await self._load_locked(device_id)

    async def _load_locked(self, device_id: str) -> None:
        try:
            device = await self._store.get_device(device_id)
        except StoreUnavailable as exc:
            log.warning("store unavailable; keeping cached device", extra={"device_id": device_id, "error": str(exc)})
            return
        if device is None:
            await self._remove_locked(device_id)
            return
        rt = self._runtimes.get(device_id)
        if rt is None:
            self._open(device)
            return
        old = rt.device
        if device.client_id != old.client_id:
            # The device changed hands: a fresh session under the new user.
            await self._remove_locked(device_id)
            self._open(device)
            return
        self._count_platforms(old, -1)
        rt.device = device
        self._count_platforms(device, +1)
        if not device.active_registrations:
            # Every push token is dead or gone: following IMKIT would push nowhere.
            await self._stop_session(rt)
            return
        if rt.session is None:
            # A working token again: follow IMKIT from now on.
            rt.floor_ms = int(time.time() * 1000)
            rt.anchors.clear()
            self._start_session(rt)
            return
        if (
            device.token_version != old.token_version
            or device.client_token != old.client_token
            # The API verified this token with IMKIT before writing: a parked session may retry.
            or rt.session.state is SessionState.AUTH_FAILED
        ):
            rt.session.update_token(device.client_token)

    async def adopt(self, device_id: str) -> None:
        """Open the device's session (the shard coordinator won its lease). Idempotent."""
        if not self._closing:
            await self._load(device_id)

    async def drop(self, device_id: str) -> None:
        """Hand the device over: close its session, let the pushes sent for it be answered (up to
        :data:`HANDOVER_DRAIN` seconds), save the checkpoint, forget the device. Idempotent.

        Waiting for the answers makes the checkpoint exact: the next owner's backfill starts after
        the last push sent here instead of sending it again, which only the Redis claims would
        stop, and they are out of reach during a Redis outage.
        """
        async with self._device_lock(device_id):
            rt = self._runtimes.get(device_id)
            if rt is None:
                return
            await self._stop_session(rt)  # no new event, so no new push, from here on
            if rt.pending:
                rt.drained = asyncio.Event()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(rt.drained.wait(), HANDOVER_DRAIN)
            await self._checkpoints.save(rt)
            await self._remove_locked(device_id)

    def owned(self) -> set[str]:
        """Ids of the devices with a session in this worker."""
        return set(self._runtimes)

    def _open(self, device: Device) -> None:
        """Take the device on; its session starts only once it has an active registration."""
        rt = DeviceRuntime(device=device)
        self._runtimes[device.device_id] = rt
        self._users.join(device)
        self._count_platforms(device, +1)
        self._metrics.worker_devices.labels(self.worker_id).set(len(self._runtimes))
        if device.active_registrations:
            self._start_session(rt)

    def _start_session(self, rt: DeviceRuntime) -> None:
        device = rt.device

        async def on_event(name: str, payload: Any) -> None:
            await self._fanout.on_event(rt, name, payload)

        s = self._settings
        session = UpstreamSession(
            device_id=device.device_id,
            client_token=device.client_token,
            url=self._url,
            http=self._require_http(),
            limiter=self._limiter,
            on_event=on_event,
            on_state=self._on_state,
            on_malformed=self._on_malformed,
            token_refused=self._users.token_refused,
            client_key=s.imkit_client_key.get_secret_value() if s.imkit_client_key else None,
            encoding=s.imkit_encoding,
            auth_timeout=s.imkit_auth_timeout,
            connect_timeout=s.imkit_connect_timeout,
            backoff=Backoff(s.backoff_base, s.backoff_cap),
            idle_watch=self._idle_watch,
        )
        rt.session = session
        self._session_states[session] = session.state
        self._set_state_count(session.state, +1)
        session.start()

    async def _stop_session(self, rt: DeviceRuntime) -> None:
        session, rt.session = rt.session, None
        if session is None:
            return
        await session.close()
        prev = self._session_states.pop(session, None)
        if prev is not None:
            self._set_state_count(prev, -1)

    async def _remove(self, device_id: str) -> None:
        async with self._device_lock(device_id):
            await self._remove_locked(device_id)

    async def _remove_locked(self, device_id: str) -> None:
        rt = self._runtimes.pop(device_id, None)
        if rt is None:
            return
        self._users.leave(rt.device)
        self._count_platforms(rt.device, -1)
        self._metrics.worker_devices.labels(self.worker_id).set(len(self._runtimes))
        await self._stop_session(rt)

    def _count_platforms(self, device: Device, sign: int) -> None:
        for reg in device.active_registrations:
            n = self._platform_counts.get(reg.type, 0) + sign
            self._platform_counts[reg.type] = n
            self._metrics.devices.labels(reg.type).set(n)

    def _require_http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("pool not started")
        return self._http

    # ---------------------------------------------------------------- session callbacks

    def _on_state(self, session: UpstreamSession, state: SessionState, reason: str) -> None:
        self._checkpoints.status_changed(session.device_id)
        prev = self._session_states.pop(session, None)
        if prev is not None:
            self._set_state_count(prev, -1)
        if state is not SessionState.CLOSED:
            # Closed sessions are gone from the pool: they count under no state.
            self._session_states[session] = state
            self._set_state_count(state, +1)
        if state in (SessionState.BACKOFF, SessionState.CONNECTING) and prev in (
            SessionState.LIVE,
            SessionState.AUTHENTICATING,
            SessionState.AUTH_FAILED,
        ):
            self._metrics.upstream_reconnects.labels(reason).inc()
        rt = self._runtimes.get(session.device_id)
        if state is SessionState.LIVE and rt is not None and rt.session is session:
            since, anchors = rt.gap_start()
            if rt.gap_ms is not None and rt.gap_ms < since:
                # An earlier gap is not backfilled yet: reach back to it (by time: the anchors
                # are past it).
                since, anchors = rt.gap_ms, {}
            rt.gap_ms = since
            rt.live_gen += 1
            rt.was_live = True
            live_ms = int(time.time() * 1000)
            self._spawn(self._after_live(rt, since, anchors, rt.live_gen, live_ms))

    async def _after_live(
        self, rt: DeviceRuntime, since: int, anchors: dict[str, str], gen: int, live_ms: int | None = None
    ) -> None:
        """On every (re)connect: refresh the user's mute list and badge, then catch up on the gap.

        A backfill IMKIT could not serve is tried again with backoff (the checkpoint waits at the
        gap meanwhile) until it succeeds, a newer connect takes over, or the device leaves.
        """
        try:
            await self._users.refresh(rt.device.client_id, min_age=USER_REFRESH_MIN_AGE)
        except Exception:  # stale mutes are better than a gap never backfilled
            log.exception("user refresh failed", extra={"device_id": rt.device.device_id})
        backoff = Backoff(self._settings.backoff_base, self._settings.backoff_cap)
        attempt = 0
        while True:
            try:
                done = await self._catchup.backfill(rt, since, anchors, live_ms)
            except Exception:  # a bug: retrying would fail the same way
                log.exception("backfill failed", extra={"device_id": rt.device.device_id})
                done = True
            if rt.live_gen != gen or self._runtimes.get(rt.device.device_id) is not rt:
                return  # a newer connect (with this gap in it) or the next owner carries on
            if done:
                rt.gap_ms = None
                return
            if self._intake_stopped:
                return  # shutting down: the held checkpoint hands the gap to the next start
            await asyncio.sleep(backoff.delay(attempt))
            attempt += 1

    def _set_state_count(self, state: SessionState, delta: int) -> None:
        if state is SessionState.LIVE and delta > 0:
            self.went_live += 1
        n = max(0, self._state_counts[state] + delta)
        self._state_counts[state] = n
        self._metrics.sessions.labels(state.value).set(n)

    def _on_malformed(self, event: str) -> None:
        self._metrics.upstream_malformed.labels(event).inc()

    # ---------------------------------------------------------------- dispatcher callbacks

    async def handle_result(self, n: Notification, result: SendResult) -> None:
        """A provider's final answer (see :meth:`ResultSink.handle_result`)."""
        await self._results.handle_result(n, result)

    async def handle_token_invalid(self, n: Notification, result: TokenInvalid) -> None:
        """A provider said the token is dead (see :meth:`ResultSink.handle_token_invalid`)."""
        await self._results.handle_token_invalid(n, result)

    async def flush_checkpoints(self) -> None:
        """Persist the checkpoints that moved, and the statuses to publish, now."""
        await self._checkpoints.flush()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


__all__ = ["WorkerPool"]
