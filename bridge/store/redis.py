"""The device store on Redis, shared by several ``api`` and ``worker`` nodes.

Its keys are listed, with what each holds, in ``bridge/redis_keys.py``. Every write of a device
(its hash, the client's set, the id index, the push-token index entries) and the change it
publishes on the ``pb:changes`` stream go in one MULTI/EXEC, under WATCH of the device's hash.
The stream is trimmed to about ``stream_maxlen`` entries; positions are stream ids, so a reader
resumes from its last id, across reconnects and restarts, without missing an entry. A device's
published status and acks expire after a week, and go with the device when it is deleted or
changes owner.

Single Redis instance (or a primary with replicas); the multi-key transactions are not
Redis Cluster compatible.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridge.models import AppState, Device
from bridge.redis_keys import (
    ACKS_PREFIX,
    CHANGES_KEY,
    CLIENT_PREFIX,
    DEVICE_PREFIX,
    DEVICES_KEY,
    KEY_CHECK_KEY,
    PING_KEY,
    PUSH_TOKEN_INDEXED_KEY,
    PUSH_TOKEN_PREFIX,
    STATUS_PREFIX,
)
from bridge.store.base import MAX_ACKS, Change, StoreUnavailable
from bridge.store.codec import DeviceCodec
from bridge.store.crypto import TokenCipher, TokenCipherError
from bridge.store.paging import batches, check_limit, cut_page

#: How long a device's published status and acks live without a new write.
STATUS_TTL_S = 7 * 86400

log = logging.getLogger(__name__)

T = TypeVar("T")

_WATCH_RETRIES = 50

#: Advance the checkpoint only forward, atomically (KEYS[1] device hash; ARGV id, ms).
_SET_CHECKPOINT_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cur = redis.call('HGET', KEYS[1], 'cp_ms')
if cur and tonumber(cur) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'cp_id', ARGV[1], 'cp_ms', ARGV[2])
return 1
"""


@contextlib.contextmanager
def _unavailable(op: str) -> Iterator[None]:
    """Any Redis failure (down, timeout, read-only replica, out of memory) → StoreUnavailable."""
    try:
        yield
    except RedisError as exc:
        # redis-py messages name the host and port, never the URL's password.
        raise StoreUnavailable(f"redis {op} failed: {type(exc).__name__}: {exc}") from exc


class RedisStore:
    """The :class:`~bridge.store.base.Store` on Redis.

    ``stream_maxlen`` caps the change stream (approximately); ``feed_block_ms`` is how long one
    XREAD blocks; a ``changes()`` reader that loses Redis retries with backoff from
    ``retry_base`` up to ``retry_cap`` seconds and resumes from its last id. At most
    ``max_connections`` commands run at once (each following ``changes()`` reader holds one);
    more wait up to ``socket_timeout`` for a free connection.
    """

    def __init__(
        self,
        url: str,
        cipher: TokenCipher,
        *,
        stream_maxlen: int = 100_000,
        feed_block_ms: int = 2000,
        retry_base: float = 0.1,
        retry_cap: float = 5.0,
        socket_timeout: float = 10.0,
        max_connections: int = 64,
    ) -> None:
        self._url = url  # may carry a password: never logged, never in repr
        self._cipher = cipher
        self._codec = DeviceCodec(cipher)
        self._stream_maxlen = stream_maxlen
        self._feed_block_ms = feed_block_ms
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._socket_timeout = socket_timeout
        self._max_connections = max_connections
        self._redis: Redis | None = None
        self._closing: asyncio.Event | None = None

    def __repr__(self) -> str:
        return "RedisStore(url=<hidden>)"

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect and check that the configured key matches the stored tokens."""
        if self._redis is not None:
            return
        self._closing = asyncio.Event()
        # A blocking pool: a burst of concurrent calls waits for a connection instead of
        # failing with "Too many connections".
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=self._max_connections,
            timeout=self._socket_timeout,
            decode_responses=True,
            socket_connect_timeout=self._socket_timeout,
            # Longer than one blocking XREAD, so a quiet feed is not taken for a dead socket.
            socket_timeout=max(self._socket_timeout, self._feed_block_ms / 1000 + 5),
            # A few quick retries only: callers decide what to do with StoreUnavailable.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            health_check_interval=30,
        )
        self._redis = Redis.from_pool(pool)
        try:
            await self._check_key()
            await self._index_push_tokens()
        except BaseException:
            await self.close()
            raise

    async def _check_key(self) -> None:
        r = self._client()
        with _unavailable("open"):
            await r.set(KEY_CHECK_KEY, self._codec.key_check(), nx=True)
            stored = await r.get(KEY_CHECK_KEY)
        if not self._codec.key_matches(None if stored is None else _text(stored)):
            raise TokenCipherError(
                "the Redis store was written with a different BRIDGE_SECRET_KEY than the "
                "configured one"
            )

    async def _index_push_tokens(self) -> None:
        """Index the push tokens of devices written before the index existed (once per store).

        Several nodes may run this at once, and writes may go on meanwhile: an entry it adds
        for a registration changed in between is stale, and :meth:`find_push_token` checks
        every entry against the device (dropping stale ones).
        """
        r = self._client()
        with _unavailable("open"):
            if await r.get(PUSH_TOKEN_INDEXED_KEY) is not None:
                return
            ids = _texts(await r.zrange(DEVICES_KEY, 0, -1))
            for chunk in batches(ids, 500):
                async with r.pipeline(transaction=False) as pipe:
                    for device_id in chunk:
                        pipe.hget(DEVICE_PREFIX + device_id, "data")
                    rows = await pipe.execute()
                async with r.pipeline(transaction=False) as pipe:
                    for device_id, raw in zip(chunk, rows, strict=True):
                        if raw is not None:
                            for h, push_type in self._token_entries(json.loads(raw)):
                                pipe.sadd(PUSH_TOKEN_PREFIX + h, _member(device_id, push_type))
                    await pipe.execute()
            await r.set(PUSH_TOKEN_INDEXED_KEY, "1")
        if ids:
            log.info("redis store: indexed the push tokens of %d devices", len(ids))

    async def close(self) -> None:
        """Disconnect; every ``changes()`` iterator ends. Idempotent."""
        if self._closing is not None:
            self._closing.set()
        r, self._redis = self._redis, None
        if r is not None:
            with contextlib.suppress(RedisError, OSError):
                # Also disconnects connections blocked in XREAD, so readers notice at once.
                await r.aclose()

    async def ping(self) -> None:
        """A real write (a short-lived key): fails on a read-only replica or out of memory."""
        with _unavailable("ping"):
            await self._client().set(PING_KEY, "1", px=60_000)

    # ------------------------------------------------------------------ reads

    async def get_device(self, device_id: str) -> Device | None:
        """The device, tokens decrypted, or None."""
        with _unavailable("get_device"):
            fields = _fields(await self._client().hgetall(DEVICE_PREFIX + device_id))
        return self._decode(fields) if fields else None

    async def count_client_devices(self, client_id: str) -> int:
        """How many devices ``client_id`` has registered."""
        with _unavailable("count_client_devices"):
            return int(await self._client().scard(CLIENT_PREFIX + client_id))

    async def list_devices(
        self,
        *,
        client_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[Device], str | None]:
        """A page ordered by device id; the cursor is the page's last id (None at the end)."""
        check_limit(limit)
        r = self._client()
        with _unavailable("list_devices"):
            if client_id is None:
                low = "-" if cursor is None else "(" + cursor
                ids = _texts(await r.zrangebylex(DEVICES_KEY, low, "+", start=0, num=limit + 1))
            else:
                # A client has a handful of devices (BRIDGE_MAX_DEVICES_PER_USER): sort here.
                members = sorted(_texts(await r.smembers(CLIENT_PREFIX + client_id)))
                ids = [i for i in members if cursor is None or i > cursor][: limit + 1]
            ids, next_cursor = cut_page(ids, limit, str)
            async with r.pipeline(transaction=False) as pipe:
                for device_id in ids:
                    pipe.hgetall(DEVICE_PREFIX + device_id)
                rows = [_fields(raw) for raw in await pipe.execute()]
        # A device deleted between the two reads is skipped; the cursor still moves past it.
        devices = [self._decode(fields) for fields in rows if fields]
        return devices, next_cursor

    async def all_device_ids(self) -> list[str]:
        """Every device id, in order."""
        with _unavailable("all_device_ids"):
            return _texts(await self._client().zrange(DEVICES_KEY, 0, -1))

    # ------------------------------------------------------------------ writes

    async def put_device(self, device: Device) -> None:
        """Insert or replace the whole device; the checkpoint never moves backwards.

        A new owner replaces the checkpoint and loses the previous owner's published status.
        """
        key = DEVICE_PREFIX + device.device_id
        encoded = self._codec.encode(device)
        data = json.dumps(encoded, separators=(",", ":"))
        new_entries = set(self._token_entries(encoded))

        async def write(pipe: Pipeline) -> None:
            old_data, cp_ms = await pipe.hmget(key, ["data", "cp_ms"])
            old = json.loads(old_data) if old_data else None
            old_client: str | None = old["client_id"] if old else None
            old_entries = set(self._token_entries(old)) if old else set()
            changed_owner = old_client is not None and old_client != device.client_id
            _multi(pipe)
            pipe.hset(key, "data", data)
            if old_client is not None and changed_owner:
                pipe.hdel(key, "cp_id", "cp_ms")
                pipe.delete(STATUS_PREFIX + device.device_id, ACKS_PREFIX + device.device_id)
                pipe.srem(CLIENT_PREFIX + old_client, device.device_id)
            if device.checkpoint_ms is not None and (
                changed_owner or cp_ms is None or device.checkpoint_ms >= int(cp_ms)
            ):
                pipe.hset(key, mapping={"cp_id": device.checkpoint_id or "", "cp_ms": device.checkpoint_ms})
            for h, push_type in old_entries - new_entries:
                pipe.srem(PUSH_TOKEN_PREFIX + h, _member(device.device_id, push_type))
            for h, push_type in new_entries - old_entries:
                pipe.sadd(PUSH_TOKEN_PREFIX + h, _member(device.device_id, push_type))
            pipe.sadd(CLIENT_PREFIX + device.client_id, device.device_id)
            pipe.zadd(DEVICES_KEY, {device.device_id: 0})
            self._queue_change(pipe, "upsert", device.device_id)

        await self._transaction("put_device", key, write)

    async def delete_device(self, device_id: str) -> bool:
        """Remove the device from every key; True if it existed."""
        key = DEVICE_PREFIX + device_id

        async def write(pipe: Pipeline) -> bool:
            old_data = await pipe.hget(key, "data")
            if old_data is None:
                return False
            old = json.loads(old_data)
            _multi(pipe)
            pipe.delete(key)
            pipe.delete(STATUS_PREFIX + device_id, ACKS_PREFIX + device_id)
            pipe.srem(CLIENT_PREFIX + old["client_id"], device_id)
            for h, push_type in self._token_entries(old):
                pipe.srem(PUSH_TOKEN_PREFIX + h, _member(device_id, push_type))
            pipe.zrem(DEVICES_KEY, device_id)
            self._queue_change(pipe, "delete", device_id)
            return True

        return await self._transaction("delete_device", key, write)

    async def find_push_token(self, token: str) -> list[tuple[str, str]]:
        """``(device_id, push_type)`` of the registrations holding ``token``.

        Each index entry is checked against the device; a stale one (left by the one-time
        indexing of older devices racing a write) is removed, under WATCH of the device.
        """
        h = self._cipher.lookup_hash(token)
        index = PUSH_TOKEN_PREFIX + h
        r = self._client()
        with _unavailable("find_push_token"):
            members = sorted(_texts(await r.smembers(index)))
        found: list[tuple[str, str]] = []
        for member in members:
            device_id, _, push_type = member.partition(" ")

            async def check(pipe: Pipeline, device_id: str = device_id, member: str = member) -> bool:
                raw = await pipe.hget(DEVICE_PREFIX + device_id, "data")
                if raw is not None and (h, member.partition(" ")[2]) in self._token_entries(json.loads(raw)):
                    return True
                _multi(pipe)
                pipe.srem(index, member)
                return False

            if await self._transaction("find_push_token", DEVICE_PREFIX + device_id, check):
                found.append((device_id, push_type))
        return found

    async def set_app_state(
        self, device_id: str, state: AppState, foreground_until: float | None
    ) -> bool:
        """Record foreground/background; True if the device exists."""

        def change(data: dict[str, Any], now: float) -> bool:
            data["state"] = state.value
            data["foreground_until"] = foreground_until
            return True

        return await self._update("set_app_state", device_id, change)

    async def disable_registration(
        self,
        device_id: str,
        push_type: str,
        token: str,
        reason: str,
        *,
        since: float | None = None,
    ) -> bool:
        """Disable the registration if it still holds ``token`` and was not updated after ``since``."""

        def change(data: dict[str, Any], now: float) -> bool:
            reg = data["registrations"].get(push_type)
            if (
                reg is None
                or reg["disabled_reason"] is not None
                or not self._codec.is_token(reg["token"], token)
                or (since is not None and reg["updated_at"] > since)
            ):
                return False
            reg["disabled_reason"] = reason
            reg["updated_at"] = now
            return True

        return await self._update("disable_registration", device_id, change)

    async def put_status(self, device_id: str, status: dict[str, Any]) -> None:
        """Publish a worker's view of the device for the API processes (expires after a week)."""
        with _unavailable("put_status"):
            await self._client().set(STATUS_PREFIX + device_id, json.dumps(status, default=str), ex=STATUS_TTL_S)

    async def get_status(self, device_id: str) -> dict[str, Any] | None:
        """The status a worker last published, if any."""
        with _unavailable("get_status"):
            raw = await self._client().get(STATUS_PREFIX + device_id)
        if raw is None:
            return None
        data = json.loads(raw)
        return data if isinstance(data, dict) else None

    async def set_apns_environment(
        self, device_id: str, push_type: str, token: str, environment: str
    ) -> bool:
        """Record the environment that accepted ``token``, while the registration still holds it."""

        def change(data: dict[str, Any], now: float) -> bool:
            reg = data["registrations"].get(push_type)
            if (
                reg is None
                or reg.get("apns_environment") == environment
                or not self._codec.is_token(reg["token"], token)
            ):
                return False
            reg["apns_environment"] = environment
            return True

        return await self._update("set_apns_environment", device_id, change)

    async def record_ack(self, device_id: str, push_id: str, at: float) -> bool:
        """Remember an ack (the last :data:`MAX_ACKS` per device, for a week); False if known."""
        key = ACKS_PREFIX + device_id
        with _unavailable("record_ack"):
            async with self._client().pipeline(transaction=True) as pipe:
                pipe.zadd(key, {push_id: at}, nx=True)
                pipe.zremrangebyrank(key, 0, -MAX_ACKS - 1)
                pipe.expire(key, STATUS_TTL_S)
                replies = await pipe.execute()
        return bool(replies[0])

    async def get_acks(self, device_id: str) -> dict[str, float]:
        """The device's recorded acks: push id → epoch seconds."""
        with _unavailable("get_acks"):
            pairs = await self._client().zrange(ACKS_PREFIX + device_id, 0, -1, withscores=True)
        # (member, score) pairs in RESP2 and RESP3 alike, however redis-py types the reply.
        return {_text(pair[0]): float(pair[1]) for pair in pairs}

    async def set_checkpoints(self, checkpoints: Mapping[str, tuple[str, int]]) -> None:
        """Advance many checkpoints in one pipelined round trip; each only forward."""
        if not checkpoints:
            return
        r = self._client()
        with _unavailable("set_checkpoints"):
            async with r.pipeline(transaction=False) as pipe:
                for device_id, (message_id, version_ms) in checkpoints.items():
                    pipe.eval(_SET_CHECKPOINT_LUA, 1, DEVICE_PREFIX + device_id, message_id, str(version_ms))
                await pipe.execute()

    async def set_checkpoint(self, device_id: str, message_id: str, version_ms: int) -> None:
        """Remember the last message handed to a provider, unless a later one is stored."""
        r = self._client()
        with _unavailable("set_checkpoint"):
            await r.eval(_SET_CHECKPOINT_LUA, 1, DEVICE_PREFIX + device_id, message_id, str(version_ms))

    async def _update(
        self, op: str, device_id: str, change: Callable[[dict[str, Any], float], bool]
    ) -> bool:
        """Read-modify-write of a device's JSON under WATCH; publishes an upsert if changed."""
        key = DEVICE_PREFIX + device_id

        async def write(pipe: Pipeline) -> bool:
            raw = await pipe.hget(key, "data")
            if raw is None:
                return False
            data = json.loads(raw)
            now = time.time()
            if not change(data, now):
                return False
            data["updated_at"] = now
            _multi(pipe)
            pipe.hset(key, "data", json.dumps(data, separators=(",", ":")))
            self._queue_change(pipe, "upsert", device_id)
            return True

        return await self._transaction(op, key, write)

    async def _transaction(
        self, op: str, key: str, body: Callable[[Pipeline], Awaitable[T]]
    ) -> T:
        """Run ``body`` under WATCH ``key``, retrying when another writer got there first."""
        r = self._client()
        with _unavailable(op):
            for _ in range(_WATCH_RETRIES):
                async with r.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(key)
                        result = await body(pipe)
                        if pipe.explicit_transaction:
                            await pipe.execute()
                        return result
                    except WatchError:
                        continue
        raise StoreUnavailable(f"redis {op} failed: too much contention on one device")

    def _queue_change(self, pipe: Pipeline, kind: Literal["upsert", "delete"], device_id: str) -> None:
        pipe.xadd(
            CHANGES_KEY,
            {"kind": kind, "device_id": device_id},
            maxlen=self._stream_maxlen,
            approximate=True,
        )

    # ------------------------------------------------------------------ change feed

    def changes(self, since: str | None = None) -> AsyncIterator[Change]:
        """Changes after stream id ``since`` (None or ``$``: from the first read on).

        Survives Redis restarts and network errors: it retries with backoff and resumes from
        the last id it yielded, so nothing still in the stream is skipped. It ends when the
        store closes; on a store that is not open it raises :class:`StoreUnavailable`.
        """
        return self._follow(None if since in (None, "$") else since)

    async def _follow(self, last: str | None) -> AsyncIterator[Change]:
        delay = self._retry_base
        failing = False
        closing = self._closing
        if self._redis is None or closing is None or closing.is_set():
            raise StoreUnavailable("redis store is not open: no change feed")
        closed = asyncio.ensure_future(closing.wait())
        try:
            while not closing.is_set():
                try:
                    if last is None:
                        # Resolve "now" to a concrete id once: re-reading from "$" after a
                        # quiet XREAD would skip entries added in between.
                        newest = await self._interruptible(
                            closed, lambda r: r.xrevrange(CHANGES_KEY, "+", "-", count=1)
                        )
                        if newest is None:
                            return
                        last = _text(newest[0][0]) if newest else "0-0"
                    reply = await self._interruptible(closed, self._read_after(last))
                except (RedisConnectionError, RedisTimeoutError, OSError, StoreUnavailable) as exc:
                    if closing.is_set():
                        return
                    if not failing:
                        log.warning("change feed lost redis (%s); retrying from %s", exc, last)
                    failing = True
                    await asyncio.wait({closed}, timeout=delay)
                    delay = min(delay * 2, self._retry_cap)
                    continue
                if failing:
                    log.info("change feed reconnected to redis; resuming after %s", last)
                    failing = False
                delay = self._retry_base
                for entry_id, fields in _stream_entries(reply):
                    last = entry_id
                    kind = fields.get("kind")
                    device_id = fields.get("device_id")
                    if kind not in ("upsert", "delete") or not device_id:
                        log.warning("skipping malformed change feed entry %s", entry_id)
                        continue
                    yield Change("upsert" if kind == "upsert" else "delete", device_id, entry_id)
        finally:
            closed.cancel()

    def _read_after(self, last: str) -> Callable[[Redis], Awaitable[Any]]:
        block = self._feed_block_ms
        return lambda r: r.xread({CHANGES_KEY: last}, count=500, block=block)

    async def _interruptible(
        self, closed: asyncio.Future[Any], command: Callable[[Redis], Awaitable[T]]
    ) -> T | None:
        """Run one Redis command as its own task; None if the store closed first.

        A blocking XREAD must end at once when the store closes or the reader is cancelled,
        and redis-py does not reliably let a cancellation through a blocked read: waiting with
        ``asyncio.wait`` keeps our cancellation ours, and the abandoned read is cancelled.
        """
        task = asyncio.ensure_future(command(self._client()))
        task.add_done_callback(_retrieve)
        try:
            await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
        if not task.done():
            return None
        return task.result()

    # ------------------------------------------------------------------ encoding

    def _client(self) -> Redis:
        if self._redis is None:
            raise StoreUnavailable("redis store is not open")
        return self._redis

    def _token_entries(self, data: dict[str, Any]) -> list[tuple[str, str]]:
        """``(lookup hash, push type)`` of each registration of an encoded device."""
        return [(self._codec.token_hash(reg), push_type) for push_type, reg in data["registrations"].items()]

    def _decode(self, fields: dict[str, str]) -> Device:
        cp_ms = fields.get("cp_ms")
        return self._codec.decode(
            json.loads(fields["data"]), fields.get("cp_id") or None, int(cp_ms) if cp_ms is not None else None
        )


# --- redis-py types replies as ``bytes | str`` even with decode_responses: narrow them here.


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    raise TypeError(f"unexpected redis reply type {type(value).__name__}")


def _texts(values: Iterable[object]) -> list[str]:
    return [_text(v) for v in values]


def _fields(raw: object) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise TypeError(f"unexpected redis reply type {type(raw).__name__}")
    return {_text(k): _text(v) for k, v in raw.items()}


def _member(device_id: str, push_type: str) -> str:
    """A ``pb:ptok:`` set member (device ids and push types have no spaces)."""
    return f"{device_id} {push_type}"



def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark an abandoned task's outcome as seen (no "exception was never retrieved")."""
    if not task.cancelled():
        task.exception()


def _multi(pipe: Pipeline) -> None:
    pipe.multi()  # type: ignore[no-untyped-call]  # untyped in redis-py


def _stream_entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """The entries of an XREAD reply, in RESP2 (list) or RESP3 (dict) shape."""
    if not reply:
        return []
    streams = reply.items() if isinstance(reply, dict) else reply
    return [(_text(entry[0]), _fields(entry[1])) for _name, entries in streams for entry in entries]
