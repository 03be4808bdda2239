"""Issue 11, in the stores: the push-token index, and nothing of a device's previous owner survives.

Both stores run for real (an SQLite file, a redis-server). The index is a keyed hash of each push
token (tokens are encrypted with a random IV, so they cannot be looked up themselves); stores
written before the index existed are indexed when they are opened.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio
from cryptography.fernet import Fernet

from bridge.models import AppState, Device, Registration
from bridge.store.base import Store
from bridge.store.crypto import TokenCipher
from bridge.store.redis import RedisStore
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite_schema import MIGRATIONS, split_script
from tests._redis import RedisServer, redis_server_factory  # noqa: F401  # fixture

KEY = Fernet.generate_key().decode()


def device(device_id: str, client_id: str, **tokens: str) -> Device:
    """A device with one registration per ``type=token`` (``ios_voip`` spells ``ios-voip``)."""
    regs = {t.replace("_", "-"): Registration(t.replace("_", "-"), tok) for t, tok in tokens.items()}
    return Device(device_id, client_id, "client-token-" + client_id, registrations=regs)


@pytest.fixture(params=["sqlite", "redis"])
async def store(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_server_factory: Callable[..., RedisServer],  # noqa: F811  # the imported fixture
) -> AsyncIterator[Store]:
    s: Store
    if request.param == "sqlite":
        s = SqliteStore(str(tmp_path / "bridge.db"), TokenCipher(KEY))
    else:
        s = RedisStore(redis_server_factory().url, TokenCipher(KEY))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_push_tokens_are_found_by_value(store: Store) -> None:
    await store.put_device(device("d1", "alice", ios="T-ios", fcm="T-shared"))
    await store.put_device(device("d2", "bob", fcm="T-shared"))
    assert await store.find_push_token("T-shared") == [("d1", "fcm"), ("d2", "fcm")]
    assert await store.find_push_token("T-ios") == [("d1", "ios")]
    assert await store.find_push_token("T-unknown") == []

    # A replaced registration leaves the index; the new token enters it.
    await store.put_device(device("d1", "alice", ios="T-ios-2"))
    assert await store.find_push_token("T-ios") == []
    assert await store.find_push_token("T-shared") == [("d2", "fcm")]
    assert await store.find_push_token("T-ios-2") == [("d1", "ios")]

    # A partial update (Redis rewrites the record's JSON) keeps the entry.
    await store.set_app_state("d1", AppState.FOREGROUND, None)
    assert await store.find_push_token("T-ios-2") == [("d1", "ios")]

    assert await store.delete_device("d2")
    assert await store.find_push_token("T-shared") == []


async def test_a_new_owner_starts_without_the_old_checkpoint(store: Store) -> None:
    await store.put_device(device("d1", "alice", ios="T1"))
    await store.set_checkpoint("d1", "m5", 5000)
    # The same owner rewriting the device (e.g. a subscribe) keeps the worker's checkpoint.
    await store.put_device(device("d1", "alice", ios="T1"))
    same = await store.get_device("d1")
    assert same is not None and (same.checkpoint_id, same.checkpoint_ms) == ("m5", 5000)
    # Another owner: the old owner's backfill position is not theirs.
    await store.put_device(device("d1", "bob", ios="T1"))
    moved = await store.get_device("d1")
    assert moved is not None and moved.client_id == "bob"
    assert (moved.checkpoint_id, moved.checkpoint_ms) == (None, None)
    assert await store.count_client_devices("alice") == 0 and await store.count_client_devices("bob") == 1


async def test_redis_status_never_outlives_its_owner(redis_server_factory: Callable[..., RedisServer]) -> None:  # noqa: F811
    s = RedisStore(redis_server_factory().url, TokenCipher(KEY))
    await s.open()
    try:
        await s.put_device(device("d1", "alice", ios="T1"))
        await s.put_status("d1", {"clientId": "alice", "events": [{"id": "alice-secret"}]})
        await s.put_device(device("d1", "alice", ios="T2"))
        assert await s.get_status("d1") is not None  # same owner: kept
        await s.put_device(device("d1", "bob", ios="T2"))
        assert await s.get_status("d1") is None  # change of owner: gone
        await s.put_status("d1", {"clientId": "bob", "events": []})
        assert await s.delete_device("d1")
        assert await s.get_status("d1") is None  # delete: gone
    finally:
        await s.close()


async def test_sqlite_file_from_before_the_index_is_indexed_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    cipher = TokenCipher(KEY)
    # A schema version 1 database, as the previous release wrote it.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for statement in split_script(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    conn.execute("INSERT INTO meta (key, value) VALUES ('key_check', ?)", (cipher.encrypt("imkit-push-bridge key check"),))
    conn.execute(
        "INSERT INTO devices (device_id, client_id, client_token_enc, state, created_at, updated_at, token_version) "
        "VALUES ('d1', 'alice', ?, 'background', 0, 0, 0)",
        (cipher.encrypt("client-token"),),
    )
    for push_type, token in (("ios", "T-old-ios"), ("fcm", "T-old-fcm")):
        conn.execute(
            "INSERT INTO registrations (device_id, type, token_enc, updated_at) VALUES ('d1', ?, ?, 0)",
            (push_type, cipher.encrypt(token)),
        )
    conn.execute("COMMIT")
    conn.close()

    store = SqliteStore(str(path), cipher)
    await store.open()
    try:
        assert await store.find_push_token("T-old-ios") == [("d1", "ios")]
        assert await store.find_push_token("T-old-fcm") == [("d1", "fcm")]
        old = await store.get_device("d1")
        assert old is not None and old.registrations["ios"].token == "T-old-ios"
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (len(MIGRATIONS),)
        assert conn.execute("SELECT COUNT(*) FROM registrations WHERE token_hash IS NULL").fetchone() == (0,)
    finally:
        conn.close()


async def test_redis_devices_from_before_the_index_are_indexed_on_open(
    redis_server_factory: Callable[..., RedisServer],  # noqa: F811
) -> None:
    server = redis_server_factory()
    s = RedisStore(server.url, TokenCipher(KEY))
    await s.open()
    await s.put_device(device("d1", "alice", ios="T-old-ios"))
    await s.put_device(device("d2", "bob", fcm="T-old-fcm"))
    await s.close()
    # Turn the data into what the previous release wrote: no token_hash, no index, no flag.
    raw = redis.asyncio.Redis.from_url(server.url, decode_responses=True)
    try:
        for device_id in ("d1", "d2"):
            data = json.loads(await raw.hget(f"pb:dev:{device_id}", "data"))
            for reg in data["registrations"].values():
                del reg["token_hash"]
            await raw.hset(f"pb:dev:{device_id}", "data", json.dumps(data))
        await raw.delete("pb:meta:ptok", *[k async for k in raw.scan_iter("pb:ptok:*")])

        s = RedisStore(server.url, TokenCipher(KEY))
        await s.open()
        try:
            assert await s.find_push_token("T-old-ios") == [("d1", "ios")]
            assert await s.find_push_token("T-old-fcm") == [("d2", "fcm")]
            # A device rewritten without token_hash in its old record still leaves the index.
            await s.put_device(device("d2", "bob", fcm="T-new-fcm"))
            assert await s.find_push_token("T-old-fcm") == []
            # An index entry that no longer matches its device (indexing raced a write) is
            # not reported, and is removed.
            stale = "pb:ptok:" + TokenCipher(KEY).lookup_hash("T-gone")
            await raw.sadd(stale, "d1 ios")
            assert await s.find_push_token("T-gone") == []
            assert await raw.exists(stale) == 0
        finally:
            await s.close()
    finally:
        await raw.aclose()
