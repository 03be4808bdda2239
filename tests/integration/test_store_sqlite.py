"""SQLite-only behaviour: migrations, WAL, failures that really make writes fail, and crashes.

Failure tests must be honest as root, who ignores file modes. Three real causes are used:
- read-only: a child process that has dropped its capabilities (CAP_DAC_OVERRIDE & co) opens a
  0444 database, so the kernel refuses it write access exactly as it would a normal user;
- disk full: a child process lowers its own RLIMIT_FSIZE to 0, so every write() that would
  extend a file fails with EFBIG like a full disk, then raises it again to prove recovery;
- locked too long: a second connection holds the write lock longer than the busy timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from bridge.models import AppState, Device, Registration
from bridge.store.base import StoreUnavailable
from bridge.store.crypto import TokenCipher
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite_schema import MIGRATIONS, split_script

KEY = Fernet.generate_key().decode()
TOKEN = "SECRET-client-token-sqlite"


def device(device_id: str, client_token: str = TOKEN) -> Device:
    return Device(
        device_id,
        "alice",
        client_token,
        registrations={"ios": Registration("ios", "SECRET-apns-" + device_id)},
    )


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "bridge.db")


@pytest.fixture
async def store(db: str) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(db, TokenCipher(KEY))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def run_child(script: str, db: str, timeout: float = 60) -> dict[str, Any]:
    env = {**os.environ, "STORE_KEY": KEY}
    out = subprocess.run(
        [sys.executable, "-c", script, db], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------- schema


def schema_version(db: str) -> list[tuple[int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT version FROM schema_version").fetchall()


async def test_migrations_are_idempotent(db: str) -> None:
    d1 = device("d1")
    first = SqliteStore(db, TokenCipher(KEY))
    await first.open()
    await first.put_device(d1)
    await first.close()
    assert schema_version(db) == [(len(MIGRATIONS),)]
    second = SqliteStore(db, TokenCipher(KEY))
    await second.open()  # nothing to migrate: no error, data kept
    try:
        assert await second.get_device("d1") == d1
        assert await second.all_device_ids() == ["d1"]
    finally:
        await second.close()
    assert schema_version(db) == [(len(MIGRATIONS),)]


async def test_two_stores_opening_a_new_file_at_once_migrate_once(tmp_path: Path) -> None:
    # Several fresh files: the race on switching a new file to WAL ("database is locked" without
    # the busy handler) showed on about one open in ten.
    for attempt in range(20):
        db = str(tmp_path / f"bridge-{attempt}.db")
        stores = [SqliteStore(db, TokenCipher(KEY)) for _ in range(4)]
        try:
            await asyncio.gather(*(s.open() for s in stores))
            assert schema_version(db) == [(len(MIGRATIONS),)]
            await stores[0].put_device(device("d1"))
            assert (await stores[3].get_device("d1")) is not None
        finally:
            for s in stores:
                await s.close()


async def test_a_newer_schema_is_refused(db: str, store: SqliteStore) -> None:
    await store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS) + 1,))
    newer = SqliteStore(db, TokenCipher(KEY))
    with pytest.raises(StoreUnavailable, match="newer than this bridge knows"):
        await newer.open()


def test_split_script_keeps_semicolons_inside_literals() -> None:
    script = "CREATE TABLE t (x TEXT DEFAULT ';');\n-- a comment; with a semicolon\nINSERT INTO t VALUES ('a;b');\n"
    assert split_script(script) == [
        "CREATE TABLE t (x TEXT DEFAULT ';');",
        "-- a comment; with a semicolon\nINSERT INTO t VALUES ('a;b');",
    ]
    with pytest.raises(ValueError):
        split_script("CREATE TABLE t (x TEXT DEFAULT ';")


async def test_wal_and_the_client_index(db: str, store: SqliteStore) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT device_id FROM devices WHERE client_id = 'alice' ORDER BY device_id"
        ).fetchall()
    assert "devices_by_client" in str(plan)


async def test_closed_or_unopened_store_is_unavailable(db: str) -> None:
    s = SqliteStore(db, TokenCipher(KEY))
    with pytest.raises(StoreUnavailable):
        await s.get_device("d1")
    await s.open()
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(StoreUnavailable):
        await s.put_device(device("d1"))
    with pytest.raises(StoreUnavailable):
        await s.ping()


# ---------------------------------------------------------------------------- failures


async def test_locked_too_long_is_unavailable_and_recovers(db: str) -> None:
    s = SqliteStore(db, TokenCipher(KEY), busy_timeout=0.2)
    await s.open()
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        with pytest.raises(StoreUnavailable, match="locked") as info:
            await s.put_device(device("d1"))
        text = f"{info.value!s} {info.value!r} {info.value.__cause__!r}"
        assert "SECRET" not in text
        with pytest.raises(StoreUnavailable):
            await s.ping()
        other.execute("ROLLBACK")
        await s.put_device(device("d1"))  # the failed transaction left nothing behind
        await s.ping()
        assert await s.all_device_ids() == ["d1"]
    finally:
        other.close()
        await s.close()


async def test_a_waiting_write_does_not_block_the_event_loop(db: str) -> None:
    s = SqliteStore(db, TokenCipher(KEY), busy_timeout=10.0)
    await s.open()
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        put = asyncio.create_task(s.put_device(device("d1")))
        ticked = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, ticked.set)
        # If the write ran on the loop thread, this timer could not fire while it waits.
        await asyncio.wait_for(ticked.wait(), 5)
        assert not put.done()
        other.execute("COMMIT")  # release the lock: the waiting write goes through
        await asyncio.wait_for(put, 10)
        assert (await s.get_device("d1")) is not None
    finally:
        other.close()
        await s.close()


READ_ONLY_CHILD = r"""
import asyncio, ctypes, json, os, sys
from bridge.models import Device
from bridge.store.base import StoreUnavailable
from bridge.store.crypto import TokenCipher
from bridge.store.sqlite import SqliteStore

def drop_capabilities():
    # capset(2) with empty sets: this uid-0 process now obeys file modes like any user.
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()) != 0:
        raise OSError(ctypes.get_errno(), "capset")

async def attempt(coro):
    try:
        await coro
        return "ok"
    except StoreUnavailable as exc:
        return "unavailable: " + str(exc)

async def main():
    if os.geteuid() == 0:
        drop_capabilities()
    status = open("/proc/self/status").read()
    store = SqliteStore(sys.argv[1], TokenCipher(os.environ["STORE_KEY"]))
    await store.open()
    result = {"cap_eff": status.split("CapEff:")[1].split()[0]}
    result["read"] = "ok" if await store.get_device("d1") is not None else "missing"
    result["put"] = await attempt(store.put_device(Device("d2", "alice", "SECRET-x")))
    result["ping"] = await attempt(store.ping())
    await store.close()
    print(json.dumps(result))

asyncio.run(main())
"""


async def test_read_only_file_is_unavailable_for_writes(db: str, tmp_path: Path) -> None:
    s = SqliteStore(db, TokenCipher(KEY))
    await s.open()
    await s.put_device(device("d1"))
    await s.close()
    os.chmod(db, 0o444)
    try:
        result = await asyncio.to_thread(run_child, READ_ONLY_CHILD, db)
    finally:
        os.chmod(db, 0o644)
    assert int(result["cap_eff"], 16) == 0 or os.geteuid() != 0
    assert result["read"] == "ok"  # a read-only store still serves reads
    assert result["put"].startswith("unavailable: ") and "readonly" in result["put"]
    assert result["ping"].startswith("unavailable: ") and "readonly" in result["ping"]


DISK_FULL_CHILD = r"""
import asyncio, json, os, resource, signal, sys
from bridge.models import Device
from bridge.store.base import StoreUnavailable
from bridge.store.crypto import TokenCipher
from bridge.store.sqlite import SqliteStore

async def attempt(coro):
    try:
        await coro
        return "ok"
    except StoreUnavailable as exc:
        return "unavailable: " + str(exc)

async def main():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of dying
    store = SqliteStore(sys.argv[1], TokenCipher(os.environ["STORE_KEY"]))
    await store.open()
    await store.put_device(Device("d1", "alice", "SECRET-1"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
    result = {}
    result["put"] = await attempt(store.put_device(Device("d2", "alice", "SECRET-2")))
    result["ping"] = await attempt(store.ping())
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    result["put_after"] = await attempt(store.put_device(Device("d3", "alice", "SECRET-3")))
    result["ping_after"] = await attempt(store.ping())
    result["ids"] = await store.all_device_ids()
    await store.close()
    print(json.dumps(result))

asyncio.run(main())
"""


async def test_disk_full_is_unavailable_and_recovers(db: str) -> None:
    result = await asyncio.to_thread(run_child, DISK_FULL_CHILD, db)
    assert result["put"].startswith("unavailable: "), result
    assert result["ping"].startswith("unavailable: "), result
    assert result["put_after"] == "ok" and result["ping_after"] == "ok"
    assert result["ids"] == ["d1", "d3"]  # the failed write left nothing behind
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


CRASH_CHILD = r"""
import asyncio, os, sys
from bridge.models import AppState, Device, Registration
from bridge.store.crypto import TokenCipher
from bridge.store.sqlite import SqliteStore

async def main():
    store = SqliteStore(sys.argv[1], TokenCipher(os.environ["STORE_KEY"]))
    await store.open()
    i = 0
    while True:
        regs = {t: Registration(t, f"push-{t}-{i}") for t in ("ios", "ios-voip", "fcm")}
        await store.put_device(Device(f"dev-{i:06d}", f"user-{i % 7}", f"client-{i}", registrations=regs))
        if i % 5 == 4:
            await store.set_app_state(f"dev-{i - 1:06d}", AppState.FOREGROUND, 1.0)
        print(i, flush=True)  # only after the commit returned
        i += 1

asyncio.run(main())
"""


def crash_child(db: str, writes: int) -> list[int]:
    """Run the writer until it reported ``writes`` commits, SIGKILL it, return what it reported."""
    env = {**os.environ, "STORE_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, db], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    committed: list[int] = []
    deadline = time.monotonic() + 60
    try:
        while len(committed) < writes:
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise AssertionError(f"writer stopped early: {err}")
            committed.append(int(line))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        committed += [int(line) for line in proc.stdout.read().split()]  # reported before the kill
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return committed


async def test_sigkill_loses_no_committed_write(db: str) -> None:
    committed = await asyncio.to_thread(crash_child, db, 300)
    with sqlite3.connect(db) as conn:  # before anyone reopens and checkpoints the WAL
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    s = SqliteStore(db, TokenCipher(KEY))
    await s.open()
    try:
        ids = set(await s.all_device_ids())
        assert {f"dev-{i:06d}" for i in committed} <= ids
        for i in committed[:: max(1, len(committed) // 50)] + committed[-3:]:
            d = await s.get_device(f"dev-{i:06d}")
            assert d is not None and d.client_token == f"client-{i}"
            assert d.registrations["fcm"].token == f"push-fcm-{i}"
    finally:
        await s.close()


# ---------------------------------------------------------------------------- change feed


async def test_a_reader_that_falls_behind_is_told_to_resync(db: str) -> None:
    s = SqliteStore(db, TokenCipher(KEY), subscriber_queue=3)
    await s.open()
    try:
        feed = s.changes()
        for i in range(5):
            await s.put_device(device(f"d{i}"))
        got = [await anext(feed) for _ in range(3)]
        assert [c.device_id for c in got] == ["d0", "d1", "d2"]
        with pytest.raises(StoreUnavailable, match="resync"):
            await anext(feed)
    finally:
        await s.close()


async def test_resuming_from_a_position_no_longer_buffered_says_resync(db: str) -> None:
    s = SqliteStore(db, TokenCipher(KEY), feed_buffer=3)
    await s.open()
    try:
        first = s.changes()
        await s.put_device(device("d0"))
        position = (await anext(first)).position
        for i in range(1, 6):
            await s.put_device(device(f"d{i}"))
        with pytest.raises(StoreUnavailable, match="resync"):
            await anext(s.changes(since=position))
        recent = s.changes(since=str(int(position) + 2))  # still in the buffer: d3..d5
        assert [(await anext(recent)).device_id for _ in range(3)] == ["d3", "d4", "d5"]
    finally:
        await s.close()


async def test_state_change_round_trip_and_feed_position_is_a_counter(store: SqliteStore) -> None:
    feed = store.changes()
    await store.put_device(device("d1"))
    await store.set_app_state("d1", AppState.FOREGROUND, 5.0)
    positions = [int((await anext(feed)).position) for _ in range(2)]
    assert positions[1] == positions[0] + 1
