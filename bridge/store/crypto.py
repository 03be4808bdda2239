"""Encryption of stored tokens (Fernet), and where its key comes from.

Client tokens and push tokens are encrypted before they reach a store and decrypted on the way
out. The key is ``BRIDGE_SECRET_KEY``, or for SQLite a ``0600`` key file beside the database that
is generated on first start. No error message or ``repr`` here ever contains a key or a token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from bridge.config import Settings

#: How to make a key, quoted in error messages.
KEY_HINT = (
    "a Fernet key is 32 random bytes in URL-safe base64 (44 characters); make one with "
    "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)


class TokenCipherError(ValueError):
    """A stored token cannot be decrypted: the key is not the one the store was written with."""


class TokenCipher:
    """Encrypts and decrypts tokens with one Fernet key (AES-128-CBC + HMAC-SHA256).

    Fernet is not deterministic (a random IV per token), so a store cannot find a token by its
    ciphertext: :meth:`lookup_hash` gives a keyed hash to index push tokens by instead.
    """

    __slots__ = ("_fernet", "_index_key")

    def __init__(self, key: str | bytes) -> None:
        """Raise :class:`ValueError` (naming no key material) unless ``key`` is a Fernet key."""
        try:
            self._fernet = Fernet(key)
            raw = base64.urlsafe_b64decode(key)
        except (ValueError, TypeError):
            # ``from None``: the underlying base64 error must not travel with the key around it.
            raise ValueError(f"invalid secret key: {KEY_HINT}") from None
        # A key of its own for the index (derived, so there is still one secret to manage).
        self._index_key = hmac.new(raw, b"imkit-push-bridge push-token index v1", hashlib.sha256).digest()

    @classmethod
    def generate(cls) -> TokenCipher:
        """A cipher with a fresh random key (for throwaway stores such as ``:memory:``)."""
        return cls(Fernet.generate_key())

    def encrypt(self, plaintext: str) -> str:
        """The token encrypted and authenticated, as ASCII text."""
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        """The token back; :class:`TokenCipherError` if this key did not encrypt it."""
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError, ValueError, TypeError):
            raise TokenCipherError(
                "a stored token cannot be decrypted with the configured key "
                "(was BRIDGE_SECRET_KEY or the key file changed?)"
            ) from None

    def lookup_hash(self, token: str) -> str:
        """HMAC-SHA256 of ``token`` under a key derived from the store key (64 hex characters).

        The same token always gives the same hash (unlike :meth:`encrypt`); without the key the
        hash reveals nothing about the token and cannot be checked against a guess.
        """
        return hmac.new(self._index_key, token.encode("utf-8"), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "TokenCipher(key=<hidden>)"


def encrypt_key(cipher: TokenCipher, key: bytes | None) -> str | None:
    """A device's content key (raw bytes) encrypted at rest like a token; None stays None."""
    return None if key is None else cipher.encrypt(base64.b64encode(key).decode("ascii"))


def decrypt_key(cipher: TokenCipher, stored: str | None) -> bytes | None:
    """The inverse of :func:`encrypt_key`."""
    return None if stored is None else base64.b64decode(cipher.decrypt(stored))


def _read_key(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise ValueError(
                f"key file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
            )
        raw = os.read(fd, 4096)
    finally:
        os.close(fd)
    key = raw.strip().decode("ascii", errors="replace")
    try:
        TokenCipher(key)
    except ValueError:
        raise ValueError(f"key file {path} does not hold a valid key: {KEY_HINT}") from None
    return key


def load_or_create_key(path: Path) -> str:
    """The Fernet key in ``path``, generating it (mode 0600) on first use.

    Creation is atomic: the key is written to a private temporary file opened with
    ``O_CREAT|O_EXCL`` and mode 0600, then hard-linked into place, which never replaces an
    existing file; so a concurrent starter either wins or reads the winner's complete key.
    A key file readable by group or others is refused with a :class:`ValueError`.
    """
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ValueError(f"cannot create key file beside {path}: {exc.strerror}") from None
    try:
        try:
            os.write(fd, Fernet.generate_key() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
        except OSError as exc:
            raise ValueError(f"cannot create key file {path}: {exc.strerror}") from None
    finally:
        os.unlink(tmp)
    _fsync_dir(path.parent)
    return _read_key(path)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the key file itself is synced
    finally:
        os.close(fd)


def cipher_from_settings(settings: Settings) -> TokenCipher:
    """The token cipher for ``settings``.

    ``BRIDGE_SECRET_KEY`` when set; otherwise, for SQLite, the key file ``<db path>.key``
    (created on first use; an in-memory database gets a throwaway key). Redis needs
    ``BRIDGE_SECRET_KEY`` so that every node shares it. Raises :class:`ValueError`.
    """
    if settings.secret_key is not None:
        try:
            return TokenCipher(settings.secret_key.get_secret_value())
        except ValueError:
            raise ValueError(f"BRIDGE_SECRET_KEY is not a valid key: {KEY_HINT}") from None
    if settings.store_is_redis:
        raise ValueError(
            "BRIDGE_SECRET_KEY is required with a Redis store (every node must share the key "
            f"that encrypts stored tokens); {KEY_HINT}"
        )
    db_path = settings.sqlite_path
    if db_path in ("", ":memory:"):
        return TokenCipher.generate()
    return TokenCipher(load_or_create_key(Path(db_path + ".key")))
