"""The embedded device store: one SQLite file (WAL), for a single ``push-bridge serve`` process.

Every sqlite call runs on one dedicated thread that owns the connection, so the event loop never
blocks on disk and calls are serialised without a lock. The change feed is in-process: each
``changes()`` iterator has its own bounded queue, and positions count up from 1 for each time
the store is opened (another process writing the same file is not seen on this feed).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from bridge.models import AppState, Device
from bridge.store.base import MAX_ACKS, Change, StoreUnavailable
from bridge.store.codec import DeviceCodec
from bridge.store.crypto import TokenCipher, TokenCipherError
from bridge.store.paging import batches, check_limit, cut_page
from bridge.store.sqlite_schema import (
    DEVICE_COLUMNS,
    DEVICE_FIELDS,
    REGISTRATION_COLUMNS,
    migrate,
    record,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

@dataclass(eq=False)
class _Subscriber:
    queue: asyncio.Queue[Change | None]
    overflowed: bool = False
    closed: bool = False
    backlog: list[Change] = field(default_factory=list)


class SqliteStore:
    """The :class:`~bridge.store.base.Store` on an SQLite file.

    ``busy_timeout`` bounds how long a write waits for another connection's lock before it fails
    with :class:`StoreUnavailable`; ``feed_buffer`` is how many recent changes ``changes(since)``
    can replay; ``subscriber_queue`` is how far one ``changes()`` reader may fall behind before
    its iterator raises :class:`StoreUnavailable` (the reader then resyncs from the store).
    """

    def __init__(
        self,
        path: str,
        cipher: TokenCipher,
        *,
        busy_timeout: float = 5.0,
        feed_buffer: int = 1000,
        subscriber_queue: int = 10_000,
    ) -> None:
        self._path = path
        self._cipher = cipher
        self._codec = DeviceCodec(cipher)
        self._busy_timeout = busy_timeout
        self._subscriber_queue = subscriber_queue
        self._recent: deque[Change] = deque(maxlen=feed_buffer)
        self._subscribers: set[_Subscriber] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Owned by the executor thread once open.
        self._conn: sqlite3.Connection | None = None
        self._seq = 0
        # Owned by the event loop: the last position handed to subscribers.
        self._published = 0

    def __repr__(self) -> str:
        return f"SqliteStore(path={self._path!r})"

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Open the file, set WAL mode, apply pending migrations, check the key."""
        if self._executor is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            await self._run("open", self._open_sync)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection and end every ``changes()`` iterator. Idempotent."""
        executor, self._executor = self._executor, None
        if executor is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(executor, self._close_sync)
            executor.shutdown(wait=False)
        for sub in self._subscribers:
            sub.closed = True
            if sub.queue.empty():
                sub.queue.put_nowait(None)
        self._subscribers.clear()

    async def ping(self) -> None:
        """Commit a tiny write: proves the file is reachable, writable and not locked for long."""
        await self._run("ping", self._ping_sync)

    # ------------------------------------------------------------------ reads

    async def get_device(self, device_id: str) -> Device | None:
        """The device, tokens decrypted, or None."""
        devices = await self._run("get_device", self._select_sync, "device_id = ?", (device_id,), 1)
        return devices[0] if devices else None

    async def count_client_devices(self, client_id: str) -> int:
        """How many devices ``client_id`` has registered."""
        return await self._run("count_client_devices", self._count_sync, client_id)

    async def put_status(self, device_id: str, status: dict[str, Any]) -> None:
        """Nothing to do: with SQLite the API and the workers share one process."""

    async def get_status(self, device_id: str) -> dict[str, Any] | None:
        """Always None: the embedded API reads the worker pool directly."""
        return None

    async def list_devices(
        self,
        *,
        client_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[Device], str | None]:
        """A page ordered by device id; the cursor is the page's last id (None at the end)."""
        check_limit(limit)
        where, params = ["1"], []
        if client_id is not None:
            where.append("client_id = ?")
            params.append(client_id)
        if cursor is not None:
            where.append("device_id > ?")
            params.append(cursor)
        devices = await self._run(
            "list_devices", self._select_sync, " AND ".join(where), tuple(params), limit + 1
        )
        return cut_page(devices, limit, lambda d: d.device_id)

    async def all_device_ids(self) -> list[str]:
        """Every device id, in order."""
        return await self._run("all_device_ids", self._ids_sync)

    # ------------------------------------------------------------------ writes

    async def put_device(self, device: Device) -> None:
        """Insert or replace the whole device; the checkpoint never moves backwards."""
        await self._run("put_device", self._put_sync, device)

    async def delete_device(self, device_id: str) -> bool:
        """Remove the device and its registrations; True if it existed."""
        return await self._run("delete_device", self._delete_sync, device_id)

    async def find_push_token(self, token: str) -> list[tuple[str, str]]:
        """``(device_id, push_type)`` of the registrations holding ``token``."""
        return await self._run("find_push_token", self._find_token_sync, self._cipher.lookup_hash(token))

    async def set_app_state(
        self, device_id: str, state: AppState, foreground_until: float | None
    ) -> bool:
        """Record foreground/background; True if the device exists."""
        return await self._run(
            "set_app_state", self._set_state_sync, device_id, state, foreground_until
        )

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
        return await self._run(
            "disable_registration", self._disable_sync, device_id, push_type, token, reason, since
        )

    async def set_checkpoints(self, checkpoints: Mapping[str, tuple[str, int]]) -> None:
        """Advance many checkpoints in one transaction; each only forward."""
        if checkpoints:
            await self._run("set_checkpoints", self._checkpoints_sync, dict(checkpoints))

    async def set_checkpoint(self, device_id: str, message_id: str, version_ms: int) -> None:
        """Remember the last message handed to a provider, unless a later one is stored."""
        await self._run("set_checkpoint", self._checkpoints_sync, {device_id: (message_id, version_ms)})

    async def set_apns_environment(
        self, device_id: str, push_type: str, token: str, environment: str
    ) -> bool:
        """Record the environment that accepted ``token``, while the registration still holds it."""
        return await self._run(
            "set_apns_environment", self._environment_sync, device_id, push_type, token, environment
        )

    async def record_ack(self, device_id: str, push_id: str, at: float) -> bool:
        """Remember an ack (the last :data:`MAX_ACKS` per device); False if already recorded."""
        return await self._run("record_ack", self._ack_sync, device_id, push_id, at)

    async def get_acks(self, device_id: str) -> dict[str, float]:
        """The device's recorded acks: push id → epoch seconds."""
        return await self._run("get_acks", self._acks_sync, device_id)

    # ------------------------------------------------------------------ change feed

    def changes(self, since: str | None = None) -> AsyncIterator[Change]:
        """Changes after position ``since`` (None: from this call on), until the store closes.

        The subscription starts when this is called, not on the first ``anext``; on a store that
        is not open the iterator raises :class:`StoreUnavailable`. A ``since``
        older than the replay buffer, or a reader that falls ``subscriber_queue`` changes behind,
        gets :class:`StoreUnavailable` from the iterator: it must resync from the store.
        """
        sub = _Subscriber(asyncio.Queue(self._subscriber_queue))
        # A position beyond the last one published (e.g. from before a restart) means "now".
        if since is not None and _position(since) < self._published:
            after = _position(since)
            if not self._recent or _position(self._recent[0].position) > after + 1:
                sub.overflowed = True  # the changes right after ``since`` are gone
            else:
                sub.backlog = [c for c in self._recent if _position(c.position) > after]
        if self._executor is None:
            return _not_open()
        if not sub.overflowed:
            self._subscribers.add(sub)
        return self._follow(sub)

    async def _follow(self, sub: _Subscriber) -> AsyncIterator[Change]:
        try:
            for replayed in sub.backlog:
                yield replayed
            sub.backlog = []
            while True:
                if sub.queue.empty():
                    if sub.overflowed:
                        raise StoreUnavailable("change feed reader fell behind; resync from the store")
                    if sub.closed:
                        return
                change = await sub.queue.get()
                if change is None:
                    return
                yield change
        finally:
            self._subscribers.discard(sub)

    def _publish(self, change: Change) -> None:
        # Runs on the event loop, scheduled by the store thread in commit order.
        self._published = _position(change.position)
        self._recent.append(change)
        for sub in list(self._subscribers):
            try:
                sub.queue.put_nowait(change)
            except asyncio.QueueFull:
                sub.overflowed = True
                self._subscribers.discard(sub)
                log.warning("change feed reader fell %d changes behind; dropping it", sub.queue.qsize())

    # ------------------------------------------------------------------ plumbing

    async def _run(self, op: str, fn: Callable[..., T], *args: Any) -> T:
        executor = self._executor
        if executor is None:
            raise StoreUnavailable(f"sqlite store is not open ({op})")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, self._guard, op, fn, *args)
        except RuntimeError as exc:  # the executor was shut down under us
            if self._executor is None:
                raise StoreUnavailable(f"sqlite store is closed ({op})") from exc
            raise

    def _guard(self, op: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the store thread; any sqlite error becomes :class:`StoreUnavailable`."""
        try:
            return fn(*args)
        except BaseException as exc:
            conn = self._conn
            if conn is not None and conn.in_transaction:
                try:
                    conn.rollback()
                except sqlite3.Error:
                    pass  # the original error is the one to report
            if isinstance(exc, sqlite3.Error):
                # sqlite messages name tables and columns, never bound values: no token leaks.
                raise StoreUnavailable(f"sqlite {op} failed: {exc}") from exc
            raise

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("sqlite store is not open")
        return self._conn

    def _commit_change(self, kind: Literal["upsert", "delete"], device_id: str) -> None:
        """COMMIT, then announce the change (same thread, so feed order is commit order)."""
        self._db().execute("COMMIT")
        self._seq += 1
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._publish, Change(kind, device_id, str(self._seq)))

    # ------------------------------------------------------------------ on the store thread

    def _open_sync(self) -> None:
        conn = sqlite3.connect(
            self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=True
        )
        self._conn = conn
        mode = self._set_wal_sync(conn)
        if mode != "wal" and self._path != ":memory:":
            log.warning("sqlite store %s runs in journal mode %s, not WAL", self._path, mode)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys=ON")
        migrate(conn, self._path)
        self._check_key_sync(conn)
        self._index_tokens_sync(conn)

    def _set_wal_sync(self, conn: sqlite3.Connection) -> str:
        """Switch to WAL; the journal mode the file is in afterwards."""
        # Switching a new file to WAL needs an exclusive lock, and SQLite reports a conflict with
        # another connection doing the same at once as "locked" without calling the busy
        # handler; so wait here, up to the busy timeout, as any other write would.
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.01)

    def _check_key_sync(self, conn: sqlite3.Connection) -> None:
        query = "SELECT value FROM meta WHERE key = 'key_check'"
        row = conn.execute(query).fetchone()
        if row is None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('key_check', ?)",
                (self._codec.key_check(),),
            )
            row = conn.execute(query).fetchone()
            conn.execute("COMMIT")
        if not self._codec.key_matches(row[0]):
            raise TokenCipherError(
                f"sqlite store {self._path} was written with a different key than the configured "
                "one (BRIDGE_SECRET_KEY or the key file beside the database)"
            )

    def _index_tokens_sync(self, conn: sqlite3.Connection) -> None:
        """Hash the push tokens of rows written before schema version 2 (needs the key)."""
        if conn.execute("SELECT 1 FROM registrations WHERE token_hash IS NULL LIMIT 1").fetchone() is None:
            return
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute(
            "SELECT device_id, type, token_enc FROM registrations WHERE token_hash IS NULL"
        ).fetchall()
        conn.executemany(
            "UPDATE registrations SET token_hash = ? WHERE device_id = ? AND type = ?",
            [(self._codec.token_hash({"token": enc}), d, t) for d, t, enc in rows],
        )
        conn.execute("COMMIT")
        log.info("sqlite store %s: indexed %d push tokens", self._path, len(rows))

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                log.warning("closing sqlite store %s: %s", self._path, exc)

    def _ping_sync(self) -> None:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('ping', ?)", (repr(time.time()),)
        )
        conn.execute("COMMIT")

    def _select_sync(self, where: str, params: tuple[Any, ...], limit: int) -> list[Device]:
        conn = self._db()
        conn.execute("BEGIN")  # one snapshot for devices and their registrations
        rows = conn.execute(
            f"SELECT {DEVICE_COLUMNS} FROM devices WHERE {where} ORDER BY device_id LIMIT ?",
            (*params, limit),
        ).fetchall()
        regs: dict[str, list[tuple[Any, ...]]] = {}
        for chunk in batches([r[0] for r in rows], 500):
            marks = ",".join("?" * len(chunk))
            for reg in conn.execute(
                f"SELECT device_id, {REGISTRATION_COLUMNS} "
                f"FROM registrations WHERE device_id IN ({marks}) ORDER BY device_id, type",
                chunk,
            ):
                regs.setdefault(reg[0], []).append(reg)
        conn.execute("COMMIT")
        return [self._codec.decode(record(row, regs.get(row[0], [])), row[9], row[10]) for row in rows]

    def _count_sync(self, client_id: str) -> int:
        row = self._db().execute(
            "SELECT COUNT(*) FROM devices WHERE client_id = ?", (client_id,)
        ).fetchone()
        return int(row[0])

    def _find_token_sync(self, token_hash: str) -> list[tuple[str, str]]:
        rows = self._db().execute(
            "SELECT device_id, type FROM registrations WHERE token_hash = ? ORDER BY device_id, type",
            (token_hash,),
        )
        return [(r[0], r[1]) for r in rows]

    def _ids_sync(self) -> list[str]:
        return [r[0] for r in self._db().execute("SELECT device_id FROM devices ORDER BY device_id")]

    def _put_sync(self, device: Device) -> None:
        record = self._codec.encode(device)
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        # A new owner does not see the previous owner's receipts.
        conn.execute(
            "DELETE FROM acks WHERE device_id = ? AND device_id IN "
            "(SELECT device_id FROM devices WHERE device_id = ? AND client_id != ?)",
            (device.device_id, device.device_id, device.client_id),
        )
        conn.execute(
            f"INSERT INTO devices ({DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (device_id) DO UPDATE SET "
            "client_id = excluded.client_id, client_token_enc = excluded.client_token_enc, "
            "locale = excluded.locale, state = excluded.state, "
            "foreground_until = excluded.foreground_until, created_at = excluded.created_at, "
            "updated_at = excluded.updated_at, token_version = excluded.token_version, "
            # A worker may have advanced the checkpoint since the caller read this device; but
            # a new owner starts from its own (none): the old owner's gap is not theirs.
            # (SET expressions all read the row as it was, so client_id here is the old owner.)
            "checkpoint_id = CASE WHEN excluded.client_id != client_id "
            "  OR excluded.checkpoint_ms >= coalesce(checkpoint_ms, -1) "
            "  THEN excluded.checkpoint_id ELSE checkpoint_id END, "
            "checkpoint_ms = CASE WHEN excluded.client_id != client_id "
            "  OR excluded.checkpoint_ms >= coalesce(checkpoint_ms, -1) "
            "  THEN excluded.checkpoint_ms ELSE checkpoint_ms END",
            (
                *(record[field] for field in DEVICE_FIELDS),
                device.checkpoint_id,
                device.checkpoint_ms,
            ),
        )
        conn.execute("DELETE FROM registrations WHERE device_id = ?", (device.device_id,))
        conn.executemany(
            "INSERT INTO registrations "
            "(device_id, type, token_enc, disabled_reason, updated_at, token_hash, "
            "apns_environment, content, content_key_enc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    device.device_id,
                    push_type,
                    r["token"],
                    r["disabled_reason"],
                    r["updated_at"],
                    r["token_hash"],
                    r["apns_environment"],
                    r["content"],
                    r["content_key"],
                )
                for push_type, r in record["registrations"].items()
            ],
        )
        self._commit_change("upsert", device.device_id)

    def _delete_sync(self, device_id: str) -> bool:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM registrations WHERE device_id = ?", (device_id,))
        if conn.execute("DELETE FROM devices WHERE device_id = ?", (device_id,)).rowcount == 0:
            conn.execute("ROLLBACK")
            return False
        self._commit_change("delete", device_id)
        return True

    def _set_state_sync(
        self, device_id: str, state: AppState, foreground_until: float | None
    ) -> bool:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        cur = conn.execute(
            "UPDATE devices SET state = ?, foreground_until = ?, updated_at = ? WHERE device_id = ?",
            (state.value, foreground_until, time.time(), device_id),
        )
        if cur.rowcount == 0:
            conn.execute("ROLLBACK")
            return False
        self._commit_change("upsert", device_id)
        return True

    def _disable_sync(
        self, device_id: str, push_type: str, token: str, reason: str, since: float | None
    ) -> bool:
        conn = self._db()
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(
            "SELECT token_enc, disabled_reason, updated_at FROM registrations "
            "WHERE device_id = ? AND type = ?",
            (device_id, push_type),
        ).fetchone()
        if (
            row is None
            or row[1] is not None
            or not self._codec.is_token(row[0], token)
            or (since is not None and row[2] > since)
        ):
            conn.execute("ROLLBACK")
            return False
        conn.execute(
            "UPDATE registrations SET disabled_reason = ?, updated_at = ? "
            "WHERE device_id = ? AND type = ?",
            (reason, now, device_id, push_type),
        )
        conn.execute("UPDATE devices SET updated_at = ? WHERE device_id = ?", (now, device_id))
        self._commit_change("upsert", device_id)
        return True

    def _environment_sync(self, device_id: str, push_type: str, token: str, environment: str) -> bool:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(
            "SELECT token_enc, apns_environment FROM registrations WHERE device_id = ? AND type = ?",
            (device_id, push_type),
        ).fetchone()
        if row is None or row[1] == environment or not self._codec.is_token(row[0], token):
            conn.execute("ROLLBACK")
            return False
        conn.execute(
            "UPDATE registrations SET apns_environment = ? WHERE device_id = ? AND type = ?",
            (environment, device_id, push_type),
        )
        self._commit_change("upsert", device_id)
        return True

    def _ack_sync(self, device_id: str, push_id: str, at: float) -> bool:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        cur = conn.execute(
            "INSERT OR IGNORE INTO acks (device_id, push_id, at) "
            "SELECT device_id, ?, ? FROM devices WHERE device_id = ?",
            (push_id, at, device_id),
        )
        if cur.rowcount:
            conn.execute(
                "DELETE FROM acks WHERE device_id = ? AND push_id NOT IN "
                "(SELECT push_id FROM acks WHERE device_id = ? ORDER BY at DESC LIMIT ?)",
                (device_id, device_id, MAX_ACKS),
            )
        conn.execute("COMMIT")
        return bool(cur.rowcount)

    def _acks_sync(self, device_id: str) -> dict[str, float]:
        rows = self._db().execute("SELECT push_id, at FROM acks WHERE device_id = ?", (device_id,))
        return {r[0]: r[1] for r in rows}

    def _checkpoints_sync(self, checkpoints: dict[str, tuple[str, int]]) -> None:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")  # one transaction: one WAL commit for the whole batch
        conn.executemany(
            "UPDATE devices SET checkpoint_id = ?, checkpoint_ms = ? "
            "WHERE device_id = ? AND coalesce(checkpoint_ms, -1) <= ?",
            [(mid, ms, device_id, ms) for device_id, (mid, ms) in checkpoints.items()],
        )
        conn.execute("COMMIT")



async def _not_open() -> AsyncIterator[Change]:
    raise StoreUnavailable("sqlite store is not open: no change feed")
    yield  # unreachable: makes this an async generator


def _position(position: str) -> int:
    try:
        return int(position)
    except ValueError:
        raise ValueError(f"not a position of this change feed: {position!r}") from None

