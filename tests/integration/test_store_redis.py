"""Redis-only behaviour against a real redis-server: restarts, outages, key layout, trimming."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
import redis.asyncio
from cryptography.fernet import Fernet

from bridge.models import AppState, Device, Registration
from bridge.store.base import Change, StoreUnavailable
from bridge.store.crypto import TokenCipher
from bridge.store.redis import RedisStore
from tests._redis import RedisServer, free_port, redis_server, redis_server_factory  # noqa: F401  # fixtures

KEY = Fernet.generate_key().decode()


def device(device_id: str, client_id: str = "alice") -> Device:
    return Device(
        device_id,
        client_id,
        "SECRET-client-" + device_id,
        registrations={"fcm": Registration("fcm", "SECRET-fcm-" + device_id)},
    )


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:  # noqa: F811  # fixture
    s = RedisStore(redis_server.url, TokenCipher(KEY), retry_base=0.05, retry_cap=0.5)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def collect(feed: AsyncIterator[Change], n: int, timeout: float = 15.0) -> list[Change]:
    out: list[Change] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            out.append(await anext(feed))
    return out


def ids(changes: list[Change]) -> list[str]:
    return [c.device_id for c in changes]


async def test_key_layout(redis_server: RedisServer, store: RedisStore) -> None:  # noqa: F811
    await store.put_device(device("d1", "alice"))
    await store.put_device(device("d2", "bob"))
    await store.delete_device("d2")
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        keys = sorted([k async for k in client.scan_iter()])
        h = TokenCipher(KEY).lookup_hash("SECRET-fcm-d1")
        assert keys == ["pb:changes", "pb:client:alice", "pb:dev:d1", "pb:devices", "pb:meta:keycheck", "pb:meta:ptok", f"pb:ptok:{h}"]
        assert await client.smembers("pb:client:alice") == {"d1"}
        assert await client.smembers(f"pb:ptok:{h}") == {"d1 fcm"}  # d2's entry left with d2
        assert await client.zrange("pb:devices", 0, -1, withscores=True) == [("d1", 0.0)]
        entries = await client.xrange("pb:changes") or []
        assert [fields for _, fields in entries] == [
            {"kind": "upsert", "device_id": "d1"},
            {"kind": "upsert", "device_id": "d2"},
            {"kind": "delete", "device_id": "d2"},
        ]
    finally:
        await client.aclose()


class Follower:
    """Follows a feed in a task; waits on arrivals (an event), never on the clock."""

    def __init__(self, feed: AsyncIterator[Change]) -> None:
        self.seen: list[Change] = []
        self.arrived = asyncio.Event()
        self.task = asyncio.ensure_future(self._run(feed))

    async def _run(self, feed: AsyncIterator[Change]) -> None:
        async for change in feed:
            self.seen.append(change)
            self.arrived.set()

    async def wait_count(self, n: int, timeout: float = 15.0) -> list[Change]:
        async with asyncio.timeout(timeout):
            while len(self.seen) < n:
                self.arrived.clear()
                if self.task.done():
                    self.task.result()
                    raise AssertionError(f"feed ended after {len(self.seen)} changes")
                await self.arrived.wait()
        return self.seen

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_resume_from_an_id_after_a_restart_misses_nothing(
    redis_server_factory: Callable[..., RedisServer],  # noqa: F811  # fixture
) -> None:
    server = redis_server_factory(appendonly=True)
    store = RedisStore(server.url, TokenCipher(KEY), retry_base=0.05, retry_cap=0.5)
    await store.open()
    live = Follower(store.changes(since="0-0"))  # blocked in XREAD while Redis restarts
    try:
        for i in range(5):
            await store.put_device(device(f"d{i:02d}"))
        first = await collect(store.changes(since="0-0"), 5)
        position = first[1].position  # a worker consumed d00, d01 and then went away

        for i in range(5, 10):
            await store.put_device(device(f"d{i:02d}"))
        await live.wait_count(10)  # now blocked in XREAD, waiting for more
        await asyncio.to_thread(server.restart)  # append-only file: the stream survives
        for i in range(10, 13):
            await store.put_device(device(f"d{i:02d}"))  # the store reconnects by itself
        await live.wait_count(13)

        resumed = await collect(store.changes(since=position), 11)
        assert ids(resumed) == [f"d{i:02d}" for i in range(2, 13)]
        # The live reader: no crash, no gap, no duplicate.
        assert ids(live.seen) == [f"d{i:02d}" for i in range(13)]
        keys = [tuple(map(int, c.position.split("-"))) for c in live.seen]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert (await store.get_device("d07")) is not None
    finally:
        await live.stop()
        await store.close()


async def test_reader_waits_out_an_outage(redis_server: RedisServer, store: RedisStore) -> None:  # noqa: F811
    feed = store.changes()
    first = asyncio.ensure_future(anext(feed))
    try:
        # Make sure the reader is following before the outage (its first read resolves "now").
        async with asyncio.timeout(10):
            while not first.done():
                await store.put_device(device("probe"))
                await asyncio.wait({first}, timeout=0.1)
        assert first.result().device_id == "probe"

        await asyncio.to_thread(redis_server.stop)
        pending = asyncio.ensure_future(collect(feed, 1, timeout=30))
        with pytest.raises(StoreUnavailable):
            await store.put_device(device("x"))
        await asyncio.to_thread(redis_server.start)  # no persistence: an empty server
        # A position from before the restart is still a valid place to read from.
        async with asyncio.timeout(15):
            while not pending.done():
                await store.put_device(device("after"))
                await asyncio.wait({pending}, timeout=0.1)
        assert ids(pending.result()) == ["after"]
    finally:
        await feed.aclose()  # type: ignore[attr-defined]  # an async generator


async def test_outage_is_unavailable_and_recovers(redis_server: RedisServer, store: RedisStore) -> None:  # noqa: F811
    await store.ping()
    await asyncio.to_thread(redis_server.stop)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for op in (store.ping(), store.get_device("d1"), store.put_device(device("d1")),
               store.list_devices(), store.count_client_devices("alice")):
        with pytest.raises(StoreUnavailable, match="redis"):
            await op
    assert loop.time() - started < 10  # quick answers, not hangs
    await asyncio.to_thread(redis_server.start)
    await store.ping()
    await store.put_device(device("d1"))
    assert (await store.get_device("d1")) is not None


async def test_ping_fails_on_a_read_only_replica(redis_server: RedisServer, store: RedisStore) -> None:  # noqa: F811
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        # Replicate from a port where nothing listens: the server turns read-only.
        await client.replicaof("127.0.0.1", free_port())
        with pytest.raises(StoreUnavailable, match="READONLY|read only"):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.put_device(device("d1"))
        await client.replicaof("NO", "ONE")
        await store.ping()
    finally:
        await client.aclose()


async def test_stream_is_trimmed(redis_server: RedisServer) -> None:  # noqa: F811
    store = RedisStore(redis_server.url, TokenCipher(KEY), stream_maxlen=10)
    await store.open()
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        for i in range(400):
            await store.put_device(device(f"d{i:03d}"))
        # Approximate trimming works in whole radix-tree nodes (100 entries by default).
        assert await client.xlen("pb:changes") <= 200
    finally:
        await client.aclose()
        await store.close()


async def test_url_password_never_shows() -> None:
    store = RedisStore(f"redis://:hunter2@127.0.0.1:{free_port()}/0", TokenCipher(KEY), socket_timeout=1)
    assert "hunter2" not in repr(store)
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    assert "hunter2" not in f"{info.value!s} {info.value!r} {info.value.__cause__!r}"


async def test_wrong_key_against_existing_data(redis_server: RedisServer, store: RedisStore) -> None:  # noqa: F811
    await store.put_device(device("d1"))
    # Even with the key check gone, a device written with another key is a clear error.
    other = RedisStore(redis_server.url, TokenCipher(Fernet.generate_key()))
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        await client.delete("pb:meta:keycheck")
        await other.open()
        with pytest.raises(ValueError, match="cannot be decrypted"):
            await other.get_device("d1")
    finally:
        await client.aclose()
        await other.close()


async def test_concurrent_updates_of_one_device_are_not_lost(store: RedisStore) -> None:
    types = ("ios", "ios-voip", "fcm", "android", "web")
    base = replace(device("d1"), registrations={t: Registration(t, "SECRET-" + t) for t in types})
    await store.put_device(base)
    # Concurrent read-modify-writes of the same JSON: without WATCH, all but one would be lost.
    results = await asyncio.gather(
        store.set_app_state("d1", AppState.FOREGROUND, 123.0),
        *(store.disable_registration("d1", t, "SECRET-" + t, "Unregistered-" + t) for t in types),
        store.set_checkpoint("d1", "m-1", 1000),
    )
    assert results[:-1] == [True] * (1 + len(types))
    d = await store.get_device("d1")
    assert d is not None
    assert d.state is AppState.FOREGROUND and d.foreground_until == 123.0
    assert {t: r.disabled_reason for t, r in d.registrations.items()} == {
        t: "Unregistered-" + t for t in types
    }
    assert (d.checkpoint_id, d.checkpoint_ms) == ("m-1", 1000)


async def test_a_burst_waits_for_connections_instead_of_failing(redis_server: RedisServer) -> None:  # noqa: F811
    store = RedisStore(redis_server.url, TokenCipher(KEY), max_connections=4)
    await store.open()
    try:
        await asyncio.gather(*(store.put_device(device(f"d{i:03d}")) for i in range(300)))
        assert len(await store.all_device_ids()) == 300
    finally:
        await store.close()


async def test_worker_status_round_trip(redis_server: RedisServer, store: RedisStore) -> None:  # noqa: F811
    assert await store.get_status("d1") is None
    await store.put_status("d1", {"session": "live", "events": [{"reason": "foreground"}]})
    assert await store.get_status("d1") == {"session": "live", "events": [{"reason": "foreground"}]}
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        assert 0 < await client.ttl("pb:status:d1") <= 7 * 86400  # expires: no unbounded growth
    finally:
        await client.aclose()
