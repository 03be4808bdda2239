"""Builds the device store that ``BRIDGE_STORE`` names."""

from __future__ import annotations

from bridge.config import Settings
from bridge.store.base import Store
from bridge.store.crypto import cipher_from_settings
from bridge.store.sqlite import SqliteStore


def make_store(settings: Settings) -> Store:
    """A not yet opened store for ``sqlite:///path`` or ``redis://...`` (``rediss://``).

    Resolves the token key first (:func:`~bridge.store.crypto.cipher_from_settings`, which may
    create the SQLite key file). Raises :class:`ValueError` for a bad URL or key. redis-py is
    imported only for a Redis store.
    """
    if settings.store_is_redis:
        from bridge.store.redis import RedisStore  # keeps redis out of SQLite-only processes

        return RedisStore(settings.store, cipher_from_settings(settings))
    if not settings.store.startswith("sqlite:///"):
        raise ValueError("BRIDGE_STORE must be sqlite:///path.db or redis://host:port/db")
    path = settings.sqlite_path
    if not path:
        raise ValueError("BRIDGE_STORE=sqlite:/// needs a file path, e.g. sqlite:///./bridge.db")
    return SqliteStore(path, cipher_from_settings(settings))
