"""make_store: BRIDGE_STORE picks the store; redis-py is imported only for Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from bridge.config import Settings
from bridge.models import Device
from bridge.store.factory import make_store
from bridge.store.redis import RedisStore
from bridge.store.sqlite import SqliteStore
from tests._redis import RedisServer, redis_server  # noqa: F401  # fixture


async def test_sqlite_url(tmp_path: Path) -> None:
    store = make_store(Settings(store=f"sqlite:///{tmp_path}/bridge.db", secret_key=None))
    assert isinstance(store, SqliteStore)
    await store.open()
    try:
        device = Device("d1", "alice", "SECRET-token")
        await store.put_device(device)
        assert (await store.get_device("d1")) == device
    finally:
        await store.close()
    assert (tmp_path / "bridge.db").exists() and (tmp_path / "bridge.db.key").exists()


async def test_redis_url(redis_server: RedisServer) -> None:  # noqa: F811  # the fixture
    key = SecretStr(Fernet.generate_key().decode())
    store = make_store(Settings(store=redis_server.url, secret_key=key))
    assert isinstance(store, RedisStore)
    await store.open()
    try:
        await store.ping()
    finally:
        await store.close()


def test_empty_sqlite_path_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a file path"):
        make_store(Settings(store="sqlite:///", secret_key=None))


def test_sqlite_process_does_not_import_redis(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from bridge.config import Settings\n"
        "from bridge.store.factory import make_store\n"
        f"make_store(Settings(store='sqlite:///{tmp_path}/b.db', secret_key=None))\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []
