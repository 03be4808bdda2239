"""Token encryption and its key: BRIDGE_SECRET_KEY, or a 0600 key file beside the SQLite db."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from bridge.config import Settings
from bridge.store.crypto import (
    TokenCipher,
    TokenCipherError,
    cipher_from_settings,
    load_or_create_key,
)

TOKEN = "SECRET-client-token-0123456789"


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """A permissive umask, so a 0600 file proves the code asked for 0600 itself."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def settings(store: str, secret_key: str | None = None) -> Settings:
    # secret_key passed explicitly: a BRIDGE_SECRET_KEY in the environment must not leak in.
    return Settings(store=store, secret_key=SecretStr(secret_key) if secret_key else None)


def test_encrypt_round_trip_hides_the_token() -> None:
    cipher = TokenCipher.generate()
    a, b = cipher.encrypt(TOKEN), cipher.encrypt(TOKEN)
    assert TOKEN not in a and a != b  # random IV: equal tokens do not look equal at rest
    assert cipher.decrypt(a) == TOKEN and cipher.decrypt(b) == TOKEN
    assert cipher.decrypt(cipher.encrypt("ünïcødé")) == "ünïcødé"


def test_wrong_key_names_no_secret() -> None:
    key = Fernet.generate_key().decode()
    ciphertext = TokenCipher(key).encrypt(TOKEN)
    other_key = Fernet.generate_key().decode()
    with pytest.raises(TokenCipherError, match="cannot be decrypted") as info:
        TokenCipher(other_key).decrypt(ciphertext)
    text = str(info.value) + repr(info.value) + repr(info.value.__cause__)
    for secret in (TOKEN, key, other_key, ciphertext):
        assert secret not in text
    with pytest.raises(TokenCipherError):
        TokenCipher(key).decrypt("garbage")
    assert key not in repr(TokenCipher(key))


def test_invalid_key_is_a_clear_value_error() -> None:
    for bad in ("SECRET-not-a-fernet-key", "", "A" * 43, Fernet.generate_key().decode()[:-2]):
        with pytest.raises(ValueError, match="32 random bytes") as info:
            TokenCipher(bad)
        assert info.value.__cause__ is None and info.value.__suppress_context__
        if bad:
            assert bad not in str(info.value)


def test_key_file_created_0600_and_reused(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "bridge.db.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == key
    TokenCipher(key)  # a valid key
    assert load_or_create_key(path) == key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bridge.db.key"]  # no temp file left


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "bridge.db.key"
    key = load_or_create_key(path)
    path.chmod(mode)
    with pytest.raises(ValueError, match="chmod 600") as info:
        load_or_create_key(path)
    assert key not in str(info.value)
    assert path.read_text().strip() == key  # refused, not replaced


def test_key_file_with_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"SECRET-garbage\n")
    os.close(fd)
    with pytest.raises(ValueError, match="not hold a valid key") as info:
        load_or_create_key(path)
    assert "SECRET-garbage" not in str(info.value)


def test_key_file_in_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot create key file"):
        load_or_create_key(tmp_path / "nope" / "bridge.db.key")


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db.key"
    barrier = threading.Barrier(8)
    keys: list[str] = []

    def start() -> None:
        barrier.wait()
        keys.append(load_or_create_key(path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(keys) == 8 and len(set(keys)) == 1
    assert path.read_text().strip() == keys[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bridge.db.key"]


def test_cipher_from_settings_prefers_the_secret_key(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    cipher = cipher_from_settings(settings(f"sqlite:///{tmp_path}/b.db", key))
    assert TokenCipher(key).decrypt(cipher.encrypt(TOKEN)) == TOKEN
    assert not (tmp_path / "b.db.key").exists()
    redis_cipher = cipher_from_settings(settings("redis://127.0.0.1:6379/0", key))
    assert TokenCipher(key).decrypt(redis_cipher.encrypt(TOKEN)) == TOKEN


def test_invalid_secret_key_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="BRIDGE_SECRET_KEY is not a valid key") as info:
        cipher_from_settings(settings(f"sqlite:///{tmp_path}/b.db", "SECRET-hunter2"))
    assert "hunter2" not in str(info.value)


def test_redis_requires_the_secret_key() -> None:
    with pytest.raises(ValueError, match="BRIDGE_SECRET_KEY is required with a Redis store"):
        cipher_from_settings(settings("redis://127.0.0.1:6379/0"))


def test_sqlite_key_file_beside_the_db(tmp_path: Path, umask_zero: None) -> None:
    first = cipher_from_settings(settings(f"sqlite:///{tmp_path}/b.db"))
    key_file = tmp_path / "b.db.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = cipher_from_settings(settings(f"sqlite:///{tmp_path}/b.db"))
    assert second.decrypt(first.encrypt(TOKEN)) == TOKEN  # the same key, reused


def test_in_memory_sqlite_gets_a_throwaway_key(tmp_path: Path) -> None:
    cipher = cipher_from_settings(settings("sqlite:///:memory:"))
    assert cipher.decrypt(cipher.encrypt(TOKEN)) == TOKEN
