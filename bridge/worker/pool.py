"""The worker pool: one upstream session per device it owns, events → decisions → pushes.

It reads like a loop: ``start()`` loads the devices and opens their sessions, a task follows the
store's change feed (new device: session; new client token: leave ``auth_failed``; removed:
close), and a periodic tick reconciles with the store and refreshes each user's mute list.
Each device's last events, with the decision and the provider's answer, are kept for
``GET /me/devices/{id}`` ("why no push?").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bridge import compose
from bridge._backoff import Backoff
from bridge.config import Settings
from bridge.decide import DeviceView, Gap, UserView, apply_mute, decide, remember, route
from bridge.metrics import Metrics
from bridge.models import (
    ApnsRequest,
    AppState,
    Device,
    Notification,
    Reason,
    Registration,
    SessionState,
)
from bridge.push.dispatcher import Dispatcher
from bridge.push.provider import Retry, SendResult, TokenInvalid
from bridge.store.base import Store, StoreUnavailable
from bridge.upstream.protocol import (
    CancelInvitation,
    Invitation,
    LastRead,
    Message,
    RoomEvent,
    RoomPref,
)
from bridge.upstream.ratelimit import ConnectLimiter
from bridge.upstream.rest import ImkitRest, InvalidToken, RequestRejected, UpstreamUnavailable
from bridge.upstream.session import UpstreamSession
from bridge.upstream.transport import make_http_session
from bridge.worker.backfill import RoomSummary, fetch_missed, plan_backfill
from bridge.worker.dedupe import SeenMessages, message_time
from bridge.worker.history import History, ProviderResult

log = logging.getLogger(__name__)

#: A user's mute list and badge are refetched at (re)connect when older than this.
USER_REFRESH_MIN_AGE = 5.0
#: At a hand-over, how long the old owner waits for the answers to the pushes it sent before
#: writing the checkpoint the next owner backfills from (a push waiting for a retry holds no more).
HANDOVER_DRAIN = 2.0
#: Rooms whose last message id is kept per device, as anchors for the backfill.
MAX_ANCHORS = 64


@dataclass(slots=True)
class UserState:
    """Per-user facts shared by all of the user's devices in this worker."""

    client_id: str
    muted: frozenset[str] = frozenset()
    notifications_enabled: bool = True
    badge: int | None = None
    fetched_at: float = 0.0
    room_names: dict[str, str] = field(default_factory=dict)
    #: Messages already counted in ``badge`` (one unread per message, whichever device pushed it).
    counted: SeenMessages = field(default_factory=SeenMessages)

    def remember_room(self, room_id: str, name: str | None) -> None:
        if name:
            self.room_names[room_id] = name[:200]
            if len(self.room_names) > 2000:
                self.room_names.pop(next(iter(self.room_names)))


@dataclass(slots=True)
class DeviceRuntime:
    device: Device
    #: None while the device has no active registration: nothing could be pushed to it.
    session: UpstreamSession | None = None
    #: What the device decided on already (dedupe of edits, recalls, re-sends, invitations).
    seen: SeenMessages = field(default_factory=SeenMessages)
    #: The last events with their decisions and provider answers ("why no push?").
    history: History = field(default_factory=History)
    was_live: bool = False
    #: Newest chat message (version ms, id) this device has decided on, live or backfilled.
    high_water: tuple[int, str] | None = None
    #: Pushes handed to the dispatcher and not answered yet: push id -> message version ms.
    pending: dict[str, int] = field(default_factory=dict)
    #: The checkpoint last written to the store.
    saved_ms: int = 0
    #: Last message id seen per room, the :data:`MAX_ANCHORS` most recent rooms: exact anchors for
    #: the backfill after a reconnect (a room without one is read by time, still correct).
    anchors: OrderedDict[str, str] = field(default_factory=OrderedDict)
    backfilling: bool = False
    #: No backfill reaches back before this (epoch ms): set when the session starts again after
    #: the device had no active registration, as what came meanwhile had nowhere to go.
    floor_ms: int = 0
    #: Start (epoch ms) of a gap not backfilled yet (IMKIT failed, or the backfill still runs):
    #: the checkpoint stays at it, so a retry here or the device's next owner still covers it.
    gap_ms: int | None = None
    #: Counts the session's connects: a backfill retry of an older one gives way to a newer one.
    live_gen: int = 0
    #: Set when ``pending`` empties, while a hand-over waits for that (see :meth:`WorkerPool.drop`).
    drained: asyncio.Event | None = None

    def note_message(self, msg: Message) -> None:
        if self.high_water is None or msg.version_ms >= self.high_water[0]:
            self.high_water = (msg.version_ms, msg.id)
        self.anchors[msg.room] = msg.id
        self.anchors.move_to_end(msg.room)
        while len(self.anchors) > MAX_ANCHORS:
            self.anchors.popitem(last=False)

    def safe_checkpoint(self) -> tuple[int, str] | None:
        """Everything at or before this was handled: pushed to a provider, or not to be pushed."""
        if self.high_water is None:
            return None
        cp = self.high_water
        if self.pending:
            cp = (min(self.pending.values()) - 1, self.high_water[1])
        if self.gap_ms is not None and cp[0] > self.gap_ms:
            # Live events move past a gap whose messages are not pushed yet.
            cp = (self.gap_ms, cp[1])
        return cp


def result_dict(n: Notification, result: SendResult) -> dict[str, Any]:
    """A provider's answer as shown by the API (no token), without a latency."""
    return ProviderResult.of(n.push_type, n.provider, result, at=time.time(), latency=None).as_dict()


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
        self._dispatcher = dispatcher
        self._rest = rest
        self._metrics = metrics
        self.worker_id = worker_id
        #: Set by a shard coordinator: devices are then opened only through :meth:`adopt`.
        self.on_new_device: Callable[[str], Awaitable[None]] | None = None
        #: With several workers the API reads "why no push?" from the store, so the pool writes it.
        self._publish_status = claims_shared
        self._status_dirty: set[str] = set()
        self._http = http
        self._own_http = http is None
        self._limiter = ConnectLimiter(
            settings.connect_rate, settings.connect_burst, max_in_progress=settings.connect_concurrency
        )
        self._runtimes: dict[str, DeviceRuntime] = {}
        self._users: dict[str, UserState] = {}
        #: Devices of each user in this worker (to find a token for the user's REST calls).
        self._user_devices: dict[str, set[str]] = {}
        self._locks: dict[str, list[Any]] = {}  # device id -> [lock, users]
        self._state_counts: dict[SessionState, int] = dict.fromkeys(SessionState, 0)
        self._session_states: dict[UpstreamSession, SessionState] = {}
        self._platform_counts: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._refresh_sem = asyncio.Semaphore(20)
        self._backfill_sem = asyncio.Semaphore(8)
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        self._intake_stopped = False
        self._closed = False
        self.running = False

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open a session per owned device and follow the store's change feed."""
        if self._http is None:
            self._http = make_http_session()
        self._tasks.append(asyncio.create_task(self._follow_changes(), name="pool-changes"))
        await self.reconcile()
        self._tasks.append(asyncio.create_task(self._tick(), name="pool-tick"))
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="pool-checkpoints"))
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
        if rt is None:
            return None
        return {
            # Whose history this is: readers drop a status of a previous owner (issue 11).
            "clientId": rt.device.client_id,
            "session": (rt.session.state if rt.session else SessionState.CLOSED).value,
            "events": rt.history.as_dicts(),
            "lastProviderResult": rt.history.last_result,
        }

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
        cursor: str | None = None
        while True:
            try:
                page, cursor = await self._store.list_devices(limit=500, cursor=cursor)
            except StoreUnavailable as exc:
                log.warning("store unavailable while opening sessions: %s", exc)
                return
            for device in page:
                if device.device_id in device_ids and device.device_id not in self._runtimes:
                    self._open(device)
            if cursor is None:
                return

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
                stale = time.monotonic() - self._settings.mute_refresh_interval
                for user in list(self._users.values()):
                    if user.fetched_at < stale:
                        self._spawn(self._refresh_user(user.client_id))
            except Exception:
                log.exception("pool tick failed")

    async def apply_change(self, device_id: str) -> None:
        """Bring one device's session in line with the store now (idempotent)."""
        await self._apply_upsert(device_id)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.flush_checkpoints()
            except Exception:
                log.exception("checkpoint flush failed")

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
            await self._save_checkpoint(rt)
            await self._remove_locked(device_id)

    def owned(self) -> set[str]:
        """Ids of the devices with a session in this worker."""
        return set(self._runtimes)

    def _open(self, device: Device) -> None:
        """Take the device on; its session starts only once it has an active registration."""
        rt = DeviceRuntime(device=device)
        self._runtimes[device.device_id] = rt
        self._users.setdefault(device.client_id, UserState(device.client_id))
        self._user_devices.setdefault(device.client_id, set()).add(device.device_id)
        self._count_platforms(device, +1)
        self._metrics.worker_devices.labels(self.worker_id).set(len(self._runtimes))
        if device.active_registrations:
            self._start_session(rt)

    def _start_session(self, rt: DeviceRuntime) -> None:
        device = rt.device

        async def on_event(name: str, payload: Any) -> None:
            await self._on_event(rt, name, payload)

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
            token_refused=self._token_refused,
            client_key=s.imkit_client_key.get_secret_value() if s.imkit_client_key else None,
            encoding=s.imkit_encoding,
            auth_timeout=s.imkit_auth_timeout,
            connect_timeout=s.imkit_connect_timeout,
            backoff=Backoff(s.backoff_base, s.backoff_cap),
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

    async def _token_refused(self, token: str) -> bool:
        """Does IMKIT refuse this client token? Only a 401 from ``GET /me`` says so."""
        try:
            async with self._refresh_sem:
                await self._rest.me(token)
        except InvalidToken:
            return True
        except (UpstreamUnavailable, RequestRejected):
            return False
        return False

    async def _remove(self, device_id: str) -> None:
        async with self._device_lock(device_id):
            await self._remove_locked(device_id)

    async def _remove_locked(self, device_id: str) -> None:
        rt = self._runtimes.pop(device_id, None)
        if rt is None:
            return
        owned = self._user_devices.get(rt.device.client_id)
        if owned is not None:
            owned.discard(device_id)
            if not owned:
                del self._user_devices[rt.device.client_id]
                self._users.pop(rt.device.client_id, None)
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
        self._status_dirty.add(session.device_id)
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
            since, anchors = self._gap_start(rt)
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
            await self._refresh_user(rt.device.client_id, min_age=USER_REFRESH_MIN_AGE)
        except Exception:  # stale mutes are better than a gap never backfilled
            log.exception("user refresh failed", extra={"device_id": rt.device.device_id})
        backoff = Backoff(self._settings.backoff_base, self._settings.backoff_cap)
        attempt = 0
        while True:
            try:
                done = await self._backfill(rt, since, anchors, live_ms)
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

    def _gap_start(self, rt: DeviceRuntime) -> tuple[int, dict[str, str]]:
        """Where the gap before this connect began, taken before any new live event moves it."""
        if rt.was_live and rt.high_water is not None:
            # A reconnect: up to here we saw live.
            return max(rt.high_water[0], rt.floor_ms), dict(rt.anchors)
        saved = rt.device.checkpoint_ms
        # A new session (start-up, hand-over): from the stored checkpoint, no anchors.
        since = saved if saved is not None else int(rt.device.created_at * 1000)
        return max(since, rt.floor_ms), {}

    def _set_state_count(self, state: SessionState, delta: int) -> None:
        n = max(0, self._state_counts[state] + delta)
        self._state_counts[state] = n
        self._metrics.sessions.labels(state.value).set(n)

    def _on_malformed(self, event: str) -> None:
        self._metrics.upstream_malformed.labels(event).inc()

    async def _on_event(
        self, rt: DeviceRuntime, name: str, payload: Any, source: str = "live", gap: Gap | None = None
    ) -> None:
        """Decide one event for the device, record it, push it. ``gap``: a backfilled event's gap."""
        received_at = time.monotonic()
        if source == "live":
            self._metrics.upstream_events.labels(name).inc()
        device = rt.device
        user = self._users.setdefault(device.client_id, UserState(device.client_id))
        if isinstance(payload, RoomPref):
            # IMKIT documents roomPref's ``muted`` as not used yet (it sends false): applying it
            # would un-mute a muted room whenever a tag changes. The event still says the user
            # changed a room preference, so reread the mute list from GET /me, before the next event.
            await self._refresh_mutes(rt, user)
        elif isinstance(payload, RoomEvent):
            user.muted = apply_mute(user.muted, payload.room.id, payload.room.muted)
            user.remember_room(payload.room.id, payload.room.name)
        elif isinstance(payload, Invitation):
            user.remember_room(payload.room.id, payload.room.name)
        elif isinstance(payload, LastRead):
            if payload.memberID == device.client_id:
                self._spawn(self._read_elsewhere(rt))
        now = time.time()
        decision = decide(
            name,
            payload,
            user=UserView(device.client_id, user.muted, user.notifications_enabled),
            device=DeviceView(
                state=device.effective_state(now), has_active_token=bool(device.active_registrations)
            ),
            seen=rt.seen,
            system_messages=self._settings.system_messages,
            gap=gap,
        )
        if name in ("chat message", "invitation", "cancelInvitation", "lastRead", "roomPref", "room"):
            self._metrics.decisions.labels(decision.outcome, decision.reason.value).inc()
        remember(name, payload, rt.seen, gap)
        ticket = rt.history.add(
            now,
            name,
            payload.id if isinstance(payload, Message) else None,
            _room_of(payload),
            pushed=decision.push,
            reason=decision.reason.value,
            source=source,
        )
        if isinstance(payload, Message):
            rt.note_message(payload)
        self._status_dirty.add(device.device_id)
        if decision.push and isinstance(payload, Message | Invitation):
            await self._push(rt, user, payload, ticket, received_at, gap)

    async def _push(
        self,
        rt: DeviceRuntime,
        user: UserState,
        payload: Message | Invitation,
        ticket: int,
        received_at: float,
        gap: Gap | None = None,
    ) -> None:
        device = rt.device
        now = time.time()
        if isinstance(payload, Message) and user.badge is not None:
            # One unread per message for the user, however many of their devices push it.
            at_ms = message_time(payload)
            if not user.counted.seen(payload.room, payload.id, at_ms, gap=gap):
                user.counted.add(payload.room, payload.id, at_ms, gap=gap)
                user.badge += 1
        kind = "message" if isinstance(payload, Message) else "invitation"
        mtype = payload.messageType if isinstance(payload, Message) else None
        regs = {r.type: r for r in device.active_registrations}
        for push_type in route(kind, mtype, regs):
            reg = regs[push_type]
            target = compose.Target(
                push_type=reg.type,
                locale=device.locale,
                badge=user.badge,
                content=reg.content or self._settings.push_content,
                content_key=reg.content_key,
                hidden_room_name=self._settings.push_hidden_room_name,
            )
            try:
                if isinstance(payload, Message):
                    ident = payload.id
                    req = compose.compose_message(payload, target, now=now, room_name=user.room_names.get(payload.room))
                else:
                    ident = payload.room.id
                    req = compose.compose_invitation(payload, target, now=now)
            except compose.ComposeError as exc:
                log.warning("notification cannot be composed", extra={"device_id": device.device_id, "error": str(exc)})
                rt.history.add_result(ticket, ProviderResult.local(reg.type, "failed", "compose_error"))
                continue
            n = notification_for(device.device_id, reg, kind, ident, req, received_at)
            rt.history.add_push(ticket, n.push_id)
            if isinstance(payload, Message):
                rt.pending[n.push_id] = payload.version_ms
            if not await self._dispatcher.submit(n):
                rt.pending.pop(n.push_id, None)
                rt.history.add_result(ticket, ProviderResult.local(reg.type, "duplicate"))

    async def _backfill(
        self, rt: DeviceRuntime, since_ms: int, anchors: dict[str, str], live_ms: int | None = None
    ) -> bool:
        """Fetch what the device missed since ``since_ms`` and push it like live events.

        ``live_ms`` is when the session went live again (now if not given): messages from between
        are new unless the device's recent window holds them, however far live traffic moved on.

        False if it has to be tried again: IMKIT was unavailable, or another backfill of this
        device was running (it may have fetched before this gap began).
        """
        device = rt.device
        settings = self._settings
        now = time.time()
        if rt.backfilling:
            log.debug("backfill busy", extra={"device_id": device.device_id})
            return False
        if device.effective_state(now) is AppState.FOREGROUND or not device.active_registrations:
            log.debug("no backfill", extra={"device_id": device.device_id})
            return True
        now_ms = int(now * 1000)
        max_age_ms = int(settings.backfill_max_age * 1000)
        since_ms = max(since_ms, now_ms - max_age_ms)
        gap: Gap = (since_ms, now_ms if live_ms is None else live_ms)
        user = self._users.setdefault(device.client_id, UserState(device.client_id))
        rt.backfilling = True
        try:
            async with self._backfill_sem:
                missed = await fetch_missed(self._rest, device.client_token, since_ms=since_ms, anchors=anchors)
        except UpstreamUnavailable as exc:
            log.info("backfill failed; will retry", extra={"device_id": device.device_id, "error": _rest_error(exc)})
            rt.backfilling = False
            return False
        except (InvalidToken, RequestRejected) as exc:
            log.info("backfill skipped", extra={"device_id": device.device_id, "error": _rest_error(exc)})
            rt.backfilling = False
            return True
        try:
            if missed.malformed:
                self._metrics.upstream_malformed.labels("backfill").inc(missed.malformed)
            for rid, name in missed.room_names.items():
                user.remember_room(rid, name)
            view = UserView(device.client_id, user.muted, user.notifications_enabled)
            background = DeviceView(AppState.BACKGROUND, has_active_token=True)

            def pushable(m: Message) -> bool:
                return decide("chat message", m, user=view, device=background, seen=rt.seen, system_messages=settings.system_messages, gap=gap).push

            plan = plan_backfill(missed, now_ms=now_ms, max_age_ms=max_age_ms, room_cap=settings.backfill_room_cap, pushable=pushable, seen=rt.seen, gap=gap)
            log.debug(
                "backfill plan",
                extra={
                    "device_id": device.device_id,
                    "since_ms": since_ms,
                    "rooms": len(missed.rooms),
                    "fetched": sum(len(v) for v in missed.rooms.values()),
                    "messages": len(plan.messages),
                },
            )
            for msg in plan.messages:
                await self._on_event(rt, "chat message", msg, source="backfill", gap=gap)
            for inv in plan.invitations:
                await self._on_event(rt, "invitation", inv, source="backfill", gap=gap)
            for summary in plan.summaries:
                await self._push_summary(rt, user, summary)
            for msgs in missed.rooms.values():
                for m in msgs:
                    rt.note_message(m)
            if plan.messages or plan.summaries or plan.invitations:
                log.info(
                    "backfilled",
                    extra={"device_id": device.device_id, "messages": len(plan.messages), "summaries": len(plan.summaries), "invitations": len(plan.invitations), "too_old": plan.skipped_old},
                )
        finally:
            rt.backfilling = False
        return True

    async def _push_summary(self, rt: DeviceRuntime, user: UserState, summary: RoomSummary) -> None:
        device = rt.device
        now = time.time()
        ticket = rt.history.add(
            now, "summary", summary.newest.id, summary.room_id, pushed=True,
            reason=Reason.PUSHED.value, source="backfill",
        )
        newest = summary.newest
        rt.seen.add(newest.room, newest.id, message_time(newest))
        rt.note_message(summary.newest)
        regs = {r.type: r for r in device.active_registrations}
        for push_type in route("summary", None, regs):
            reg = regs[push_type]
            target = compose.Target(
                push_type=reg.type,
                locale=device.locale,
                badge=user.badge,
                content=reg.content or self._settings.push_content,
                content_key=reg.content_key,
                hidden_room_name=self._settings.push_hidden_room_name,
            )
            req = compose.compose_summary(summary.room_id, summary.count, target, now=now, room_name=summary.room_name or user.room_names.get(summary.room_id))
            ident = f"{summary.room_id}:{summary.newest.id}"
            n = notification_for(device.device_id, reg, "summary", ident, req, time.monotonic())
            rt.history.add_push(ticket, n.push_id)
            rt.pending[n.push_id] = summary.newest.version_ms
            if not await self._dispatcher.submit(n):
                rt.pending.pop(n.push_id, None)

    async def _read_elsewhere(self, rt: DeviceRuntime) -> None:
        """The user read a room on another device: refresh the badge and update it silently."""
        device = rt.device
        user = self._users.setdefault(device.client_id, UserState(device.client_id))
        try:
            badge = await self._rest.badge(device.client_token)
        except (InvalidToken, UpstreamUnavailable, RequestRejected) as exc:
            log.info("badge refresh failed", extra={"device_id": device.device_id, "error": type(exc).__name__})
            return
        user.badge = badge
        # Each device hears the lastRead itself; a foreground app sets its own badge.
        if device.effective_state(time.time()) is AppState.FOREGROUND:
            return
        now = time.time()
        regs = {r.type: r for r in device.active_registrations}
        for push_type in route("badge", None, regs):
            reg = regs[push_type]
            target = compose.Target(push_type=reg.type, locale=device.locale, badge=badge)
            req = compose.compose_badge(target, badge, now=now)
            n = notification_for(
                device.device_id, reg, "badge", f"{badge}:{now:.3f}", req, time.monotonic()
            )
            await self._dispatcher.submit(n)

    async def _refresh_user(self, client_id: str, min_age: float = 0.0) -> None:
        user = self._users.get(client_id)
        if user is None or time.monotonic() - user.fetched_at < min_age:
            return
        rt = next((self._runtimes[d] for d in self._user_devices.get(client_id, ()) if d in self._runtimes), None)
        if rt is None:
            return
        token = rt.device.client_token
        async with self._refresh_sem:
            try:
                me = await self._rest.me(token)
            except (InvalidToken, UpstreamUnavailable, RequestRejected) as exc:
                log.info("user refresh failed", extra={"client_id": client_id, "error": _rest_error(exc)})
                return
            user.muted = frozenset(me.mute)
            user.notifications_enabled = me.notification_enabled
            try:
                user.badge = await self._rest.badge(token)
            except (InvalidToken, UpstreamUnavailable, RequestRejected) as exc:
                # The mute list is fresh; pushes go on with the badge we had (or none).
                log.info("badge refresh failed", extra={"client_id": client_id, "error": _rest_error(exc)})
        user.fetched_at = time.monotonic()

    async def _refresh_mutes(self, rt: DeviceRuntime, user: UserState) -> None:
        """Reread the user's mute list and notification switch from ``GET /me`` now."""
        try:
            async with self._refresh_sem:
                me = await self._rest.me(rt.device.client_token)
        except (InvalidToken, UpstreamUnavailable, RequestRejected) as exc:
            log.info("mute refresh failed", extra={"device_id": rt.device.device_id, "error": _rest_error(exc)})
            return
        user.muted = frozenset(me.mute)
        user.notifications_enabled = me.notification_enabled

    # ---------------------------------------------------------------- dispatcher callbacks

    async def handle_result(self, n: Notification, result: SendResult) -> None:
        """Record a provider's final answer on the event that caused it; move the checkpoint."""
        latency = time.monotonic() - n.received_at
        rt = self._runtimes.get(n.device_id)
        if rt is None:
            return
        answer = ProviderResult.of(n.push_type, n.provider, result, at=time.time(), latency=latency)
        rt.history.record_result(n.push_id, answer)
        if not isinstance(result, Retry):
            rt.pending.pop(n.push_id, None)
            if not rt.pending and rt.drained is not None:
                rt.drained.set()  # a hand-over waits for this (drop)
        self._status_dirty.add(n.device_id)

    async def flush_checkpoints(self) -> None:
        """Persist each device's safe checkpoint when it moved (called every second and at close)."""
        for rt in list(self._runtimes.values()):
            if not await self._save_checkpoint(rt):
                return
        if self._publish_status and self._status_dirty:
            dirty, self._status_dirty = self._status_dirty, set()
            for device_id in dirty:
                status = self.device_status(device_id)
                if status is not None:
                    try:
                        await self._store.put_status(device_id, status)
                    except StoreUnavailable:
                        self._status_dirty.add(device_id)

    async def _save_checkpoint(self, rt: DeviceRuntime) -> bool:
        cp = rt.safe_checkpoint()
        if cp is None or cp[0] <= rt.saved_ms:
            return True
        try:
            await self._store.set_checkpoint(rt.device.device_id, cp[1], cp[0])
        except StoreUnavailable as exc:
            log.warning("checkpoints not saved: %s", exc)
            return False
        rt.saved_ms = cp[0]
        return True

    async def handle_token_invalid(self, n: Notification, result: TokenInvalid) -> None:
        """A provider said the token is dead: disable that registration, if it still holds it.

        The store compares the token (and APNs' "invalid since" time): an answer about an old
        token, arriving after the app registered a new one, changes nothing.
        """
        ctx = {"device_id": n.device_id, "push_type": n.push_type, "reason": result.reason}
        try:
            disabled = await self._store.disable_registration(
                n.device_id, n.push_type, n.token, result.reason, since=result.since
            )
        except StoreUnavailable as exc:
            log.warning("could not disable registration", extra={"device_id": n.device_id, "error": str(exc)})
            return
        if disabled:
            log.info("push token invalid; registration disabled", extra=ctx)
        else:
            log.info("push token invalid; registration unchanged (already disabled, or re-registered since)", extra=ctx)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _rest_error(exc: Exception) -> str:
    """A REST failure for the log: its class, and the HTTP status of a refusal (never a token)."""
    if isinstance(exc, RequestRejected):
        return f"RequestRejected({exc.status})"
    return type(exc).__name__


def _room_of(payload: Any) -> str | None:
    if isinstance(payload, Message):
        return payload.room
    if isinstance(payload, Invitation):
        return payload.room.id
    if isinstance(payload, LastRead):
        return payload.roomID
    if isinstance(payload, RoomPref | CancelInvitation):
        return payload.room
    if isinstance(payload, RoomEvent):
        return payload.room.id
    return None


def notification_for(
    device_id: str,
    reg: Registration,
    kind: str,
    ident: str,
    req: Any,
    received_at: float,
) -> Notification:
    """One push of a composed request to one registration; its id is stable per (device, type, kind, ident).

    The request gets the id as ``pushId`` (DESIGN §2), which the app sends back to acknowledge
    the push; compose keeps room for it within the size limits.
    """
    push_id = compose.push_id(f"{device_id}/{reg.type}", kind, ident)
    req = compose.with_push_id(req, push_id)
    return Notification(
        device_id=device_id,
        push_type=reg.type,
        token=reg.token,
        apns_environment=reg.apns_environment,
        push_id=push_id,
        kind=kind,
        apns=req if isinstance(req, ApnsRequest) else None,
        fcm=None if isinstance(req, ApnsRequest) else req,
        received_at=received_at,
    )


__all__ = ["WorkerPool", "Reason"]
