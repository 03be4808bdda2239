"""The SQLite store's schema: its migrations, the column lists, and rows to device records.

The SQL lives here, apart from :mod:`bridge.store.sqlite` (the store's calls and its thread), so
the schema's history reads in one place. Append new versions to :data:`MIGRATIONS`; never edit a
released one.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from bridge.store.base import StoreUnavailable

log = logging.getLogger("bridge.store.sqlite")

#: The schema, one script per version; script ``i`` takes the database from version ``i`` to
#: ``i + 1`` inside one transaction. Append new versions; never edit a released one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE devices (
        device_id        TEXT PRIMARY KEY,
        client_id        TEXT NOT NULL,
        client_token_enc TEXT NOT NULL,
        locale           TEXT,
        state            TEXT NOT NULL,
        foreground_until REAL,
        created_at       REAL NOT NULL,
        updated_at       REAL NOT NULL,
        token_version    INTEGER NOT NULL,
        checkpoint_id    TEXT,
        checkpoint_ms    INTEGER
    );
    CREATE INDEX devices_by_client ON devices (client_id, device_id);
    CREATE TABLE registrations (
        device_id       TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
        type            TEXT NOT NULL,
        token_enc       TEXT NOT NULL,
        disabled_reason TEXT,
        updated_at      REAL NOT NULL,
        PRIMARY KEY (device_id, type)
    );
    """,
    # 2: a keyed hash of each push token (TokenCipher.lookup_hash), to find the devices holding
    # a token. Rows from before are hashed right after the migration (see _index_tokens_sync).
    """
    ALTER TABLE registrations ADD COLUMN token_hash TEXT;
    CREATE INDEX registrations_by_token ON registrations (token_hash);
    """,
    # 3: per registration, the APNs environment, the push content mode and the content key
    # (encrypted like the token); and the apps' delivery receipts (acks).
    """
    ALTER TABLE registrations ADD COLUMN apns_environment TEXT;
    ALTER TABLE registrations ADD COLUMN content TEXT;
    ALTER TABLE registrations ADD COLUMN content_key_enc TEXT;
    CREATE TABLE acks (
        device_id TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
        push_id   TEXT NOT NULL,
        at        REAL NOT NULL,
        PRIMARY KEY (device_id, push_id)
    );
    """,
)

DEVICE_COLUMNS = (
    "device_id, client_id, client_token_enc, locale, state, foreground_until, created_at, "
    "updated_at, token_version, checkpoint_id, checkpoint_ms"
)
#: The fields of the device record (bridge/store/codec.py) in the ``devices`` columns above;
#: the two checkpoint columns follow them.
DEVICE_FIELDS = (
    "device_id", "client_id", "client_token", "locale", "state", "foreground_until", "created_at",
    "updated_at", "token_version",
)
REGISTRATION_COLUMNS = (
    "type, token_enc, disabled_reason, updated_at, apns_environment, content, content_key_enc"
)
#: The fields of a registration record in the ``registrations`` columns above.
REGISTRATION_FIELDS = (
    "type", "token", "disabled_reason", "updated_at", "apns_environment", "content", "content_key",
)


def split_script(script: str) -> list[str]:
    """The statements of an SQL script (``executescript`` would commit our transaction)."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \t\r\n;"):
        raise ValueError("migration script ends with an incomplete statement")
    return statements


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the database to the newest schema version, each step in its own transaction."""
    # Only read while the schema is current, so a read-only file still opens (for reads).
    current = schema_version(conn)
    if current > len(MIGRATIONS):
        raise StoreUnavailable(
            f"sqlite store {path} has schema version {current}, newer than this "
            f"bridge knows ({len(MIGRATIONS)}); upgrade the bridge"
        )
    if current == len(MIGRATIONS):
        return
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    conn.execute(
        "INSERT INTO schema_version (version) "
        "SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM schema_version)"
    )
    conn.execute("COMMIT")
    for target, script in enumerate(MIGRATIONS, start=1):
        # Read the version inside the write lock: two processes opening at once apply each
        # migration exactly once.
        conn.execute("BEGIN IMMEDIATE")
        if schema_version(conn) >= target:
            conn.execute("ROLLBACK")
            continue
        for statement in split_script(script):
            conn.execute(statement)
        conn.execute("UPDATE schema_version SET version = ?", (target,))
        conn.execute("COMMIT")
        log.info("sqlite store %s migrated to schema version %d", path, target)


def record(row: tuple[Any, ...], regs: list[tuple[Any, ...]]) -> dict[str, Any]:
    """The device record of a ``devices`` row and its ``registrations`` rows (each led by the
    device id), for :meth:`DeviceCodec.decode`."""
    out = dict(zip(DEVICE_FIELDS, row[: len(DEVICE_FIELDS)], strict=True))
    out["registrations"] = {r[1]: dict(zip(REGISTRATION_FIELDS, r[1:], strict=True)) for r in regs}
    return out


def schema_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if exists is None:
        return 0
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row is not None else 0
