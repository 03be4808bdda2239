"""The Store contract, run against both the SQLite store (a real file) and a real redis-server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import redis.asyncio

from bridge.models import AppState, Device, Registration
from bridge.store.base import MAX_ACKS, Change, Store, StoreUnavailable
from bridge.store.crypto import TokenCipher, TokenCipherError
from bridge.store.redis import RedisStore
from bridge.store.sqlite import SqliteStore
from tests._redis import RedisServer, redis_server_factory  # noqa: F401  # fixture


@dataclass
class Backend:
    """How to build a store on the same data, and read every byte it keeps at rest."""

    name: str
    make: Callable[[TokenCipher], Store]
    raw: Callable[[], Awaitable[bytes]]


@pytest.fixture(params=["sqlite", "redis"])
def backend(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_server_factory: Callable[..., RedisServer],  # noqa: F811  # the imported fixture
) -> Backend:
    if request.param == "sqlite":
        db = tmp_path / "bridge.db"

        def read_files() -> bytes:
            return b"".join(p.read_bytes() for p in sorted(tmp_path.glob("bridge.db*")))

        async def sqlite_raw() -> bytes:
            return await asyncio.to_thread(read_files)

        return Backend("sqlite", lambda cipher: SqliteStore(str(db), cipher), sqlite_raw)

    server = redis_server_factory()
    return Backend("redis", lambda cipher: RedisStore(server.url, cipher), lambda: redis_dump(server.url))


async def redis_dump(url: str) -> bytes:
    """Every key and value in the Redis database, as bytes."""
    client = redis.asyncio.Redis.from_url(url)
    out: list[object] = []
    try:
        async for key in client.scan_iter():
            out.append(key)
            kind = await client.type(key)
            if kind == b"hash":
                for k, v in (await client.hgetall(key)).items():
                    out += [k, v]
            elif kind == b"set":
                out += list(await client.smembers(key))
            elif kind == b"zset":
                out += list(await client.zrange(key, 0, -1))
            elif kind == b"stream":
                for entry_id, fields in await client.xrange(key) or []:
                    out.append(entry_id)
                    for k, v in (fields or {}).items():
                        out += [k, v]
            elif kind == b"string":
                out.append(await client.get(key))
            else:
                raise AssertionError(f"unexpected key type {kind!r}")
    finally:
        await client.aclose()
    return b"\n".join(x if isinstance(x, bytes) else str(x).encode() for x in out)


@pytest.fixture
def cipher() -> TokenCipher:
    return TokenCipher.generate()


@pytest.fixture
async def store(backend: Backend, cipher: TokenCipher) -> AsyncIterator[Store]:
    s = backend.make(cipher)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def secret(kind: str) -> str:
    """A token that is easy to find in raw bytes if it ever leaks."""
    return f"SECRET-{kind}-{uuid.uuid4().hex}"


def make_device(device_id: str, client_id: str = "alice", **kw: object) -> Device:
    regs = {
        "ios": Registration("ios", secret("apns"), updated_at=1700000000.25),
        "ios-voip": Registration("ios-voip", secret("voip"), updated_at=1700000001.5),
        "fcm": Registration("fcm", secret("fcm"), disabled_reason="Unregistered", updated_at=1700000002.0),
    }
    device = Device(
        device_id=device_id,
        client_id=client_id,
        client_token=secret("client"),
        registrations=regs,
        locale="zh-TW",
        state=AppState.FOREGROUND,
        foreground_until=1700000100.125,
        created_at=1700000000.0,
        updated_at=1700000003.0,
        token_version=3,
        checkpoint_id="m-1",
        checkpoint_ms=1700000000123,
    )
    return replace(device, **kw)  # type: ignore[arg-type]  # test data overrides


@dataclass
class Reader:
    """Collects a change feed in a task; ``wait_count`` waits on arrivals, never on time."""

    it: AsyncIterator[Change]
    seen: list[Change] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False
    task: asyncio.Task[None] | None = None

    def start(self) -> Reader:
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        try:
            async for change in self.it:
                self.seen.append(change)
                self.arrived.set()
        finally:
            self.ended = True
            self.arrived.set()

    async def wait_count(self, n: int, timeout: float = 10.0) -> list[Change]:
        async with asyncio.timeout(timeout):
            while len(self.seen) < n:
                self.arrived.clear()
                if self.ended:
                    raise AssertionError(f"feed ended after {len(self.seen)} of {n} changes")
                await self.arrived.wait()
        return self.seen

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


async def live_readers(store: Store, count: int, timeout: float = 10.0) -> list[Reader]:
    """Readers proven to be following the feed: each has seen a probe write made after it started.

    (A Redis reader resolves "now" on its first read, so a write made right after
    ``changes()`` could land before it; the probe loop removes that doubt without sleeping.)
    """
    readers = [Reader(store.changes()).start() for _ in range(count)]
    probe = make_device("~probe")
    async with asyncio.timeout(timeout):
        while not all(any(c.device_id == "~probe" for c in r.seen) for r in readers):
            await store.put_device(probe)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    for r in readers:
                        await r.wait_count(1)
    return readers


def real(changes: list[Change]) -> list[tuple[str, str]]:
    return [(c.kind, c.device_id) for c in changes if c.device_id != "~probe"]


def position_key(backend: Backend, position: str) -> tuple[int, ...]:
    return tuple(int(p) for p in position.split("-")) if backend.name == "redis" else (int(position),)


# ---------------------------------------------------------------------------- devices


async def test_round_trip_with_several_registrations(store: Store) -> None:
    device = make_device("dev-1")
    await store.put_device(device)
    assert await store.get_device("dev-1") == device
    assert await store.get_device("nope") is None

    # A put replaces the whole record: a dropped registration is gone.
    changed = make_device("dev-1", client_token=secret("client2"), token_version=4, locale=None)
    del changed.registrations["ios-voip"]
    changed.registrations["web"] = Registration("web", secret("web"), updated_at=1.0)
    await store.put_device(changed)
    assert await store.get_device("dev-1") == changed


async def test_tokens_are_encrypted_at_rest(backend: Backend, store: Store) -> None:
    devices = [make_device(f"dev-{i}") for i in range(3)]
    for d in devices:
        await store.put_device(d)
    raw = await backend.raw()
    assert b"dev-1" in raw  # we are looking at the right data
    for d in devices:
        for token in [d.client_token, *(r.token for r in d.registrations.values())]:
            assert token.encode() not in raw
    # Still there after close (SQLite checkpoints its WAL into the main file on close).
    await store.close()
    raw = await backend.raw()
    for d in devices:
        assert d.client_token.encode() not in raw


async def test_wrong_key_is_refused_at_open(backend: Backend, store: Store) -> None:
    await store.put_device(make_device("dev-1"))
    other = backend.make(TokenCipher.generate())
    with pytest.raises(TokenCipherError, match="different") as info:
        await other.open()
    await other.close()
    assert "SECRET-" not in str(info.value)


async def test_reopen_reads_back_with_the_same_key(backend: Backend, store: Store, cipher: TokenCipher) -> None:
    device = make_device("dev-1")
    await store.put_device(device)
    await store.close()
    again = backend.make(cipher)
    await again.open()
    try:
        assert await again.get_device("dev-1") == device
    finally:
        await again.close()


async def test_delete(store: Store) -> None:
    await store.put_device(make_device("a"))
    await store.put_device(make_device("b"))
    assert await store.delete_device("a") is True
    assert await store.delete_device("a") is False
    assert await store.get_device("a") is None
    assert await store.all_device_ids() == ["b"]
    assert await store.count_client_devices("alice") == 1


async def test_count_client_devices_follows_a_change_of_owner(store: Store) -> None:
    for i in range(3):
        await store.put_device(make_device(f"a{i}", "alice"))
    await store.put_device(make_device("b0", "bob"))
    assert await store.count_client_devices("alice") == 3
    assert await store.count_client_devices("bob") == 1
    assert await store.count_client_devices("carol") == 0
    await store.put_device(make_device("a0", "bob"))  # the device changed hands
    assert await store.count_client_devices("alice") == 2
    assert await store.count_client_devices("bob") == 2
    page, _ = await store.list_devices(client_id="alice")
    assert [d.device_id for d in page] == ["a1", "a2"]


async def test_paging_with_cursors(store: Store) -> None:
    ids = [f"dev-{i:02d}" for i in range(23)]
    for n, device_id in enumerate(reversed(ids)):  # insertion order must not matter
        await store.put_device(make_device(device_id, "alice" if n % 2 else "bob"))
    assert await store.all_device_ids() == ids

    async def walk(limit: int, client_id: str | None = None) -> tuple[list[str], list[str | None]]:
        got: list[str] = []
        cursors: list[str | None] = []
        cursor: str | None = None
        while True:
            page, cursor = await store.list_devices(client_id=client_id, limit=limit, cursor=cursor)
            got += [d.device_id for d in page]
            cursors.append(cursor)
            if cursor is None:
                return got, cursors
            assert cursor == page[-1].device_id

    got, cursors = await walk(10)
    assert got == ids and cursors == ["dev-09", "dev-19", None]
    got, cursors = await walk(23)  # exactly one full page: no empty page after it
    assert got == ids and cursors == [None]
    alice = [d for n, d in enumerate(reversed(ids)) if n % 2]
    got, _ = await walk(4, client_id="alice")
    assert got == sorted(alice)
    page, cursor = await store.list_devices(cursor="dev-22")
    assert page == [] and cursor is None
    with pytest.raises(ValueError):
        await store.list_devices(limit=0)


async def test_set_app_state(store: Store) -> None:
    await store.put_device(make_device("dev-1", state=AppState.BACKGROUND, foreground_until=None))
    assert await store.set_app_state("dev-1", AppState.FOREGROUND, 1800000000.5) is True
    d = await store.get_device("dev-1")
    assert d is not None and d.state is AppState.FOREGROUND and d.foreground_until == 1800000000.5
    assert d.updated_at > 1700000003.0
    assert await store.set_app_state("dev-1", AppState.BACKGROUND, None) is True
    d = await store.get_device("dev-1")
    assert d is not None and d.state is AppState.BACKGROUND and d.foreground_until is None
    assert await store.set_app_state("missing", AppState.FOREGROUND, None) is False


async def test_disable_registration(store: Store) -> None:
    device = make_device("dev-1")
    token = device.registrations["ios"].token
    await store.put_device(device)
    assert await store.disable_registration("dev-1", "ios", token, "BadDeviceToken") is True
    d = await store.get_device("dev-1")
    assert d is not None
    assert d.registrations["ios"].disabled_reason == "BadDeviceToken"
    assert d.registrations["ios"].token == token
    assert d.registrations["ios-voip"].active
    assert [r.type for r in d.active_registrations] == ["ios-voip"]
    assert await store.disable_registration("dev-1", "ios", token, "again") is False  # already
    assert await store.disable_registration("dev-1", "web", token, "x") is False
    assert await store.disable_registration("missing", "ios", token, "x") is False


async def test_a_late_invalid_token_answer_spares_a_new_registration(store: Store) -> None:
    """A provider's late "dead token" about the old token must not disable the new one."""
    device = make_device("dev-1")
    old_token = device.registrations["ios"].token
    await store.put_device(device)
    # The app registers a fresh token; then the answer about a push to the old one arrives.
    new = Registration("ios", secret("apns-new"), updated_at=1700000050.0)
    await store.put_device(replace(device, registrations={**device.registrations, "ios": new}))
    assert await store.disable_registration("dev-1", "ios", old_token, "Unregistered") is False
    d = await store.get_device("dev-1")
    assert d is not None and d.registrations["ios"].active
    assert d.registrations["ios"].token == new.token
    # The same token registered again after the moment APNs says it became invalid: kept.
    assert (
        await store.disable_registration(
            "dev-1", "ios", new.token, "Unregistered", since=1700000049.0
        )
        is False
    )
    d = await store.get_device("dev-1")
    assert d is not None and d.registrations["ios"].active
    # Invalid since after the registration: disabled.
    assert (
        await store.disable_registration(
            "dev-1", "ios", new.token, "Unregistered", since=1700000051.0
        )
        is True
    )
    d = await store.get_device("dev-1")
    assert d is not None and d.registrations["ios"].disabled_reason == "Unregistered"


async def test_checkpoint_only_moves_forward(store: Store) -> None:
    await store.put_device(make_device("dev-1", checkpoint_id=None, checkpoint_ms=None))
    await store.set_checkpoint("dev-1", "m-5", 5000)
    await store.set_checkpoint("dev-1", "m-3", 3000)  # a late result for an older message
    d = await store.get_device("dev-1")
    assert d is not None and (d.checkpoint_id, d.checkpoint_ms) == ("m-5", 5000)
    # An API write of a device read before the checkpoint moved must not move it back.
    await store.put_device(make_device("dev-1", checkpoint_id=None, checkpoint_ms=None, locale="en"))
    d = await store.get_device("dev-1")
    assert d is not None and d.locale == "en" and (d.checkpoint_id, d.checkpoint_ms) == ("m-5", 5000)
    await store.set_checkpoint("dev-1", "m-9", 9000)
    d = await store.get_device("dev-1")
    assert d is not None and (d.checkpoint_id, d.checkpoint_ms) == ("m-9", 9000)
    await store.set_checkpoint("missing", "m-1", 1)  # no error, no device created
    assert await store.get_device("missing") is None


async def test_checkpoints_in_a_batch_each_move_only_forward(store: Store) -> None:
    for d in ("dev-1", "dev-2"):
        await store.put_device(make_device(d, checkpoint_id=None, checkpoint_ms=None))
    await store.set_checkpoint("dev-2", "m-7", 7000)
    await store.set_checkpoints(
        {"dev-1": ("m-5", 5000), "dev-2": ("m-3", 3000), "missing": ("m-1", 1)}
    )
    one, two = await store.get_device("dev-1"), await store.get_device("dev-2")
    assert one is not None and (one.checkpoint_id, one.checkpoint_ms) == ("m-5", 5000)
    assert two is not None and (two.checkpoint_id, two.checkpoint_ms) == ("m-7", 7000)
    assert await store.get_device("missing") is None
    await store.set_checkpoints({})  # nothing to write: no round trip, no error


async def test_ping(store: Store) -> None:
    await store.ping()


# ---------------------------------------------------------------------------- change feed


async def test_change_feed_fans_out_in_order(backend: Backend, store: Store) -> None:
    readers = await live_readers(store, 2)
    try:
        for r in readers:
            r.seen.clear()
        await store.put_device(make_device("a"))
        b = make_device("b")
        await store.put_device(b)
        await store.set_checkpoint("a", "m", 1)  # publishes nothing
        await store.set_app_state("missing", AppState.FOREGROUND, None)  # nothing happened
        await store.set_app_state("a", AppState.BACKGROUND, None)
        await store.disable_registration("b", "ios", b.registrations["ios"].token, "Unregistered")
        await store.delete_device("a")
        await store.delete_device("a")  # already gone: nothing
        await store.put_device(make_device("c"))
        expected = [
            ("upsert", "a"),
            ("upsert", "b"),
            ("upsert", "a"),
            ("upsert", "b"),
            ("delete", "a"),
            ("upsert", "c"),
        ]
        for r in readers:
            async with asyncio.timeout(10):
                while len(real(r.seen)) < len(expected):
                    await r.wait_count(len(r.seen) + 1)
            assert real(r.seen) == expected
            keys = [position_key(backend, c.position) for c in r.seen]
            assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert [c.position for c in readers[0].seen] == [c.position for c in readers[1].seen]
    finally:
        for r in readers:
            await r.stop()


async def test_change_feed_resumes_after_a_position(store: Store) -> None:
    (reader,) = await live_readers(store, 1)
    try:
        reader.seen.clear()
        for name in "abcde":
            await store.put_device(make_device(name))
        await reader.wait_count(5)
        real_seen = [c for c in reader.seen if c.device_id != "~probe"]
        position = real_seen[1].position  # consumed a and b, then "crashed"
    finally:
        await reader.stop()
    await store.put_device(make_device("f"))
    resumed = Reader(store.changes(since=position)).start()
    try:
        await resumed.wait_count(4)
        assert real(resumed.seen) == [("upsert", n) for n in "cdef"]
    finally:
        await resumed.stop()


async def test_close_ends_the_feed(store: Store) -> None:
    (reader,) = await live_readers(store, 1)
    await store.close()
    assert reader.task is not None
    await asyncio.wait_for(reader.task, 10)  # ends quietly: no error, no hang
    assert reader.ended
    with pytest.raises(StoreUnavailable):  # a closed store has no feed to follow
        await anext(store.changes())


# ---------------------------------------------------------------------------- issue 14 fields


async def test_registration_environment_content_and_key_round_trip(backend: Backend, store: Store) -> None:
    key = bytes(range(32))
    device = make_device("dev-1")
    device.registrations["ios"].apns_environment = "sandbox"
    device.registrations["ios"].content = "encrypted"
    device.registrations["ios"].content_key = key
    await store.put_device(device)
    got = await store.get_device("dev-1")
    assert got == device and got is not None
    assert got.registrations["ios"].content_key == key
    assert got.registrations["ios-voip"].apns_environment is None  # untouched: the default
    # The content key is a secret, stored encrypted like the tokens.
    await store.close()
    raw = await backend.raw()
    assert key not in raw and base64.b64encode(key) not in raw


async def test_set_apns_environment_only_for_the_token_it_was_about(store: Store) -> None:
    device = make_device("dev-1")
    token = device.registrations["ios"].token
    await store.put_device(device)
    assert await store.set_apns_environment("dev-1", "ios", "another-token", "sandbox") is False
    assert await store.set_apns_environment("dev-1", "ios", token, "sandbox") is True
    assert await store.set_apns_environment("dev-1", "ios", token, "sandbox") is False  # no change
    assert await store.set_apns_environment("nope", "ios", token, "sandbox") is False
    got = await store.get_device("dev-1")
    assert got is not None and got.registrations["ios"].apns_environment == "sandbox"


async def test_acks_are_kept_per_device_bounded_and_go_with_the_owner(store: Store) -> None:
    await store.put_device(make_device("dev-1", "alice"))
    assert await store.record_ack("dev-1", "p1", 10.0) is True
    assert await store.record_ack("dev-1", "p1", 11.0) is False  # the first ack counts
    assert await store.get_acks("dev-1") == {"p1": 10.0}
    for i in range(MAX_ACKS + 5):
        await store.record_ack("dev-1", f"q{i}", 100.0 + i)
    acks = await store.get_acks("dev-1")
    assert len(acks) == MAX_ACKS and "p1" not in acks and f"q{MAX_ACKS + 4}" in acks
    # Another owner starts without them; a deleted device takes them along.
    await store.put_device(make_device("dev-1", "bob"))
    assert await store.get_acks("dev-1") == {}
    await store.record_ack("dev-1", "p2", 20.0)
    await store.delete_device("dev-1")
    assert await store.get_acks("dev-1") == {}
