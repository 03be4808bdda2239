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
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bridge import compose
from bridge._backoff import Backoff
from bridge.config import Settings
from bridge.decide import DeviceView, UserView, apply_mute, decide, dedupe_key, route
from bridge.metrics import Metrics
from bridge.models import ApnsRequest, AppState, Device, Notification, Reason, SessionState
from bridge.push.dispatcher import Dispatcher
from bridge.push.provider import Delivered, Failed, Retry, SendResult, TokenInvalid
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

log = logging.getLogger(__name__)

HISTORY_SIZE = 50
SEEN_SIZE = 2000
#: A user's mute list and badge are refetched at (re)connect when older than this.
USER_REFRESH_MIN_AGE = 5.0


class _LruSet:
    """A bounded set of recently seen event identities (dedupe of edits, recalls, re-sends)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def add(self, key: str) -> None:
        self._items[key] = None
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def discard(self, key: str) -> None:
        self._items.pop(key, None)


@dataclass(slots=True)
class EventRecord:
    """One upstream event as the device saw it, for "why no push?"."""

    at: float
    event: str
    id: str | None
    room: str | None
    decision: str
    reason: str
    source: str = "live"
    push_ids: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "event": self.event,
            "id": self.id,
            "room": self.room,
            "decision": self.decision,
            "reason": self.reason,
            "source": self.source,
            "results": list(self.results),
        }


@dataclass(slots=True)
class UserState:
    """Per-user facts shared by all of the user's devices in this worker."""

    client_id: str
    muted: frozenset[str] = frozenset()
    notifications_enabled: bool = True
    badge: int | None = None
    fetched_at: float = 0.0
    room_names: dict[str, str] = field(default_factory=dict)
    counted: _LruSet = field(default_factory=lambda: _LruSet(SEEN_SIZE))

    def remember_room(self, room_id: str, name: str | None) -> None:
        if name:
            self.room_names[room_id] = name[:200]
            if len(self.room_names) > 2000:
                self.room_names.pop(next(iter(self.room_names)))


@dataclass(slots=True)
class DeviceRuntime:
    device: Device
    session: UpstreamSession
    seen: _LruSet = field(default_factory=lambda: _LruSet(SEEN_SIZE))
    history: deque[EventRecord] = field(default_factory=lambda: deque(maxlen=HISTORY_SIZE))
    last_result: dict[str, Any] | None = None
    was_live: bool = False
    #: Newest chat message (version ms, id) this device has decided on, live or backfilled.
    high_water: tuple[int, str] | None = None
    #: Pushes handed to the dispatcher and not answered yet: push id -> message version ms.
    pending: dict[str, int] = field(default_factory=dict)
    #: The checkpoint last written to the store.
    saved_ms: int = 0
    #: Last message id seen per room: exact anchors for the backfill after a reconnect.
    anchors: OrderedDict[str, str] = field(default_factory=OrderedDict)
    backfilling: bool = False

    def note_message(self, msg: Message) -> None:
        if self.high_water is None or msg.version_ms >= self.high_water[0]:
            self.high_water = (msg.version_ms, msg.id)
        self.anchors[msg.room] = msg.id
        self.anchors.move_to_end(msg.room)
        while len(self.anchors) > 500:
            self.anchors.popitem(last=False)

    def safe_checkpoint(self) -> tuple[int, str] | None:
        """Everything at or before this was handled: pushed to a provider, or not to be pushed."""
        if self.high_water is None:
            return None
        if self.pending:
            return (min(self.pending.values()) - 1, self.high_water[1])
        return self.high_water


def result_dict(n: Notification, result: SendResult) -> dict[str, Any]:
    """A provider's answer as shown by the API (no token)."""
    out: dict[str, Any] = {"type": n.push_type, "provider": n.provider, "at": time.time()}
    if isinstance(result, Delivered):
        out.update(outcome="delivered", id=result.provider_id)
    elif isinstance(result, Retry):
        out.update(outcome="retry", reason=result.reason)
    elif isinstance(result, TokenInvalid):
        out.update(outcome="token_invalid", reason=result.reason)
    elif isinstance(result, Failed):
        out.update(outcome="failed", reason=result.reason)
    return out


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

    async def close(self, timeout: float = 10.0) -> None:
        """Stop taking devices and close every session within ``timeout``. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self.running = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.flush_checkpoints()
        runtimes = list(self._runtimes.values())
        self._runtimes.clear()
        if runtimes:
            closing = asyncio.gather(*(rt.session.close() for rt in runtimes), return_exceptions=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(closing, timeout)
        for task in list(self._background):
            task.cancel()
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
        return rt.session.state if rt else None

    def user_state(self, client_id: str) -> UserState | None:
        """What this worker currently knows about a user (mute list, switch, badge)."""
        return self._users.get(client_id)

    def device_status(self, device_id: str) -> dict[str, Any] | None:
        """Session state, last events with their decisions, and the last provider answer."""
        rt = self._runtimes.get(device_id)
        if rt is None:
            return None
        return {
            "session": rt.session.state.value,
            "events": [r.as_dict() for r in reversed(rt.history)],
            "lastProviderResult": rt.last_result,
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
            await self._remove(device_id)

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
        """Close the device's session after saving its checkpoint (hand-over). Idempotent."""
        rt = self._runtimes.get(device_id)
        if rt is not None:
            await self._save_checkpoint(rt)
        await self._remove(device_id)

    def owned(self) -> set[str]:
        """Ids of the devices with a session in this worker."""
        return set(self._runtimes)

    def _open(self, device: Device) -> None:
        rt_box: list[DeviceRuntime] = []

        async def on_event(name: str, payload: Any) -> None:
            await self._on_event(rt_box[0], name, payload)

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
            client_key=s.imkit_client_key.get_secret_value() if s.imkit_client_key else None,
            encoding=s.imkit_encoding,
            auth_timeout=s.imkit_auth_timeout,
            connect_timeout=s.imkit_connect_timeout,
            backoff=Backoff(s.backoff_base, s.backoff_cap),
        )
        rt = DeviceRuntime(device=device, session=session)
        rt_box.append(rt)
        self._runtimes[device.device_id] = rt
        self._users.setdefault(device.client_id, UserState(device.client_id))
        self._user_devices.setdefault(device.client_id, set()).add(device.device_id)
        self._session_states[session] = session.state
        self._set_state_count(session.state, +1)
        self._count_platforms(device, +1)
        self._metrics.worker_devices.labels(self.worker_id).set(len(self._runtimes))
        session.start()

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
        await rt.session.close()
        prev = self._session_states.pop(rt.session, None)
        if prev is not None:
            self._set_state_count(prev, -1)

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
            rt.was_live = True
            self._spawn(self._after_live(rt, since, anchors))

    async def _after_live(self, rt: DeviceRuntime, since: int, anchors: dict[str, str]) -> None:
        """On every (re)connect: refresh the user's mute list and badge, then catch up on the gap."""
        await self._refresh_user(rt.device.client_id, min_age=USER_REFRESH_MIN_AGE)
        await self._backfill(rt, since, anchors)

    def _gap_start(self, rt: DeviceRuntime) -> tuple[int, dict[str, str]]:
        """Where the gap before this connect began, taken before any new live event moves it."""
        if rt.was_live and rt.high_water is not None:
            return rt.high_water[0], dict(rt.anchors)  # a reconnect: up to here we saw live
        saved = rt.device.checkpoint_ms
        # A new session (start-up, hand-over): from the stored checkpoint, no anchors.
        return (saved if saved is not None else int(rt.device.created_at * 1000)), {}

    def _set_state_count(self, state: SessionState, delta: int) -> None:
        n = max(0, self._state_counts[state] + delta)
        self._state_counts[state] = n
        self._metrics.sessions.labels(state.value).set(n)

    def _on_malformed(self, event: str) -> None:
        self._metrics.upstream_malformed.labels(event).inc()

    async def _on_event(self, rt: DeviceRuntime, name: str, payload: Any, source: str = "live") -> None:
        received_at = time.monotonic()
        if source == "live":
            self._metrics.upstream_events.labels(name).inc()
        device = rt.device
        user = self._users.setdefault(device.client_id, UserState(device.client_id))
        if isinstance(payload, RoomPref):
            user.muted = apply_mute(user.muted, payload.room, payload.muted)
        elif isinstance(payload, RoomEvent):
            user.muted = apply_mute(user.muted, payload.room.id, payload.room.muted)
            user.remember_room(payload.room.id, payload.room.name)
        elif isinstance(payload, Invitation):
            user.remember_room(payload.room.id, payload.room.name)
        elif isinstance(payload, CancelInvitation):
            rt.seen.discard(f"i:{payload.room}")
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
        )
        if name in ("chat message", "invitation", "cancelInvitation", "lastRead", "roomPref", "room"):
            self._metrics.decisions.labels(decision.outcome, decision.reason.value).inc()
        key = dedupe_key(name, payload)
        if key is not None:
            rt.seen.add(key)
        record = EventRecord(
            at=now,
            event=name,
            id=payload.id if isinstance(payload, Message) else None,
            room=_room_of(payload),
            decision="pushed" if decision.push else "suppressed",
            reason=decision.reason.value,
        )
        record.source = source
        if isinstance(payload, Message):
            rt.note_message(payload)
        rt.history.append(record)
        self._status_dirty.add(device.device_id)
        if decision.push and isinstance(payload, Message | Invitation):
            await self._push(rt, user, payload, record, received_at)

    async def _push(
        self,
        rt: DeviceRuntime,
        user: UserState,
        payload: Message | Invitation,
        record: EventRecord,
        received_at: float,
    ) -> None:
        device = rt.device
        now = time.time()
        if isinstance(payload, Message) and user.badge is not None and payload.id not in user.counted:
            # One unread per message for the user, however many of their devices push it.
            user.counted.add(payload.id)
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
                content=self._settings.push_content,
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
                record.results.append({"type": reg.type, "outcome": "failed", "reason": "compose_error"})
                continue
            n = notification_for(device.device_id, reg.type, reg.token, kind, ident, req, received_at)
            record.push_ids.append(n.push_id)
            if isinstance(payload, Message):
                rt.pending[n.push_id] = payload.version_ms
            if not await self._dispatcher.submit(n):
                rt.pending.pop(n.push_id, None)
                record.results.append({"type": reg.type, "outcome": "duplicate"})

    async def _backfill(self, rt: DeviceRuntime, since_ms: int, anchors: dict[str, str]) -> None:
        """Fetch what the device missed since ``since_ms`` and push it like live events."""
        device = rt.device
        settings = self._settings
        now = time.time()
        if rt.backfilling or device.effective_state(now) is AppState.FOREGROUND or not device.active_registrations:
            log.debug("no backfill", extra={"device_id": device.device_id, "busy": rt.backfilling})
            return
        now_ms = int(now * 1000)
        max_age_ms = int(settings.backfill_max_age * 1000)
        since_ms = max(since_ms, now_ms - max_age_ms)
        user = self._users.setdefault(device.client_id, UserState(device.client_id))
        rt.backfilling = True
        try:
            async with self._backfill_sem:
                missed = await fetch_missed(self._rest, device.client_token, since_ms=since_ms, anchors=anchors)
        except (InvalidToken, UpstreamUnavailable, RequestRejected) as exc:
            log.info("backfill skipped", extra={"device_id": device.device_id, "error": type(exc).__name__})
            rt.backfilling = False
            return
        try:
            if missed.malformed:
                self._metrics.upstream_malformed.labels("backfill").inc(missed.malformed)
            for rid, name in missed.room_names.items():
                user.remember_room(rid, name)
            view = UserView(device.client_id, user.muted, user.notifications_enabled)
            background = DeviceView(AppState.BACKGROUND, has_active_token=True)

            def pushable(m: Message) -> bool:
                return decide("chat message", m, user=view, device=background, seen=rt.seen, system_messages=settings.system_messages).push

            plan = plan_backfill(missed, now_ms=now_ms, max_age_ms=max_age_ms, room_cap=settings.backfill_room_cap, pushable=pushable, seen=rt.seen)
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
                await self._on_event(rt, "chat message", msg, source="backfill")
            for inv in plan.invitations:
                await self._on_event(rt, "invitation", inv, source="backfill")
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

    async def _push_summary(self, rt: DeviceRuntime, user: UserState, summary: RoomSummary) -> None:
        device = rt.device
        now = time.time()
        record = EventRecord(
            at=now, event="summary", id=summary.newest.id, room=summary.room_id, decision="pushed",
            reason=Reason.PUSHED.value, source="backfill",
        )
        rt.history.append(record)
        rt.seen.add(f"m:{summary.newest.id}")
        rt.note_message(summary.newest)
        regs = {r.type: r for r in device.active_registrations}
        for push_type in route("summary", None, regs):
            reg = regs[push_type]
            target = compose.Target(push_type=reg.type, locale=device.locale, badge=user.badge, content=self._settings.push_content)
            req = compose.compose_summary(summary.room_id, summary.count, target, now=now, room_name=summary.room_name or user.room_names.get(summary.room_id))
            ident = f"{summary.room_id}:{summary.newest.id}"
            n = notification_for(device.device_id, reg.type, reg.token, "summary", ident, req, time.monotonic())
            record.push_ids.append(n.push_id)
            rt.pending[n.push_id] = summary.newest.version_ms
            if not await self._dispatcher.submit(n):
                rt.pending.pop(n.push_id, None)

    async def _read_elsewhere(self, rt: DeviceRuntime) -> None:
        """The user read a room on another device: refresh the badge and update it silently."""
        device = rt.device
        user = self._users.setdefault(device.client_id, UserState(device.client_id))
        try:
            badge = await self._rest.badge(device.client_token)
        except (InvalidToken, UpstreamUnavailable) as exc:
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
                device.device_id, reg.type, reg.token, "badge", f"{badge}:{now:.3f}", req, time.monotonic()
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
                badge = await self._rest.badge(token)
            except (InvalidToken, UpstreamUnavailable) as exc:
                log.info("user refresh failed", extra={"client_id": client_id, "error": type(exc).__name__})
                return
        user.muted = frozenset(me.mute)
        user.notifications_enabled = me.notification_enabled
        user.badge = badge
        user.fetched_at = time.monotonic()

    # ---------------------------------------------------------------- dispatcher callbacks

    async def handle_result(self, n: Notification, result: SendResult) -> None:
        """Record a provider's final answer on the event that caused it; move the checkpoint."""
        latency = time.monotonic() - n.received_at
        rt = self._runtimes.get(n.device_id)
        if rt is None:
            return
        info = result_dict(n, result)
        info["latency"] = round(latency, 4)
        rt.last_result = info
        if not isinstance(result, Retry):
            rt.pending.pop(n.push_id, None)
        self._status_dirty.add(n.device_id)
        for record in reversed(rt.history):
            if n.push_id in record.push_ids:
                record.results.append(info)
                break

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

    async def handle_token_invalid(self, n: Notification, reason: str) -> None:
        """A provider said the token is dead: disable that registration in the store."""
        log.info(
            "push token invalid; registration disabled",
            extra={"device_id": n.device_id, "push_type": n.push_type, "reason": reason},
        )
        try:
            await self._store.disable_registration(n.device_id, n.push_type, reason)
        except StoreUnavailable as exc:
            log.warning("could not disable registration", extra={"device_id": n.device_id, "error": str(exc)})

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


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
    push_type: str,
    token: str,
    kind: str,
    ident: str,
    req: Any,
    received_at: float,
) -> Notification:
    """One push of a composed request to one token; its id is stable per (device, type, kind, ident)."""
    return Notification(
        device_id=device_id,
        push_type=push_type,
        token=token,
        push_id=compose.push_id(f"{device_id}/{push_type}", kind, ident),
        kind=kind,
        apns=req if isinstance(req, ApnsRequest) else None,
        fcm=None if isinstance(req, ApnsRequest) else req,
        received_at=received_at,
    )


__all__ = ["WorkerPool", "EventRecord", "Reason"]
