"""Sealing of ``encrypted`` push content with the device's key: AES-256-GCM. Pure, no I/O.

Format (docs/privacy.md has the test vector and decrypt snippets)::

    enc = base64( 0x01 || nonce (12 bytes) || ciphertext || tag (16 bytes) )

standard base64 alphabet with ``=`` padding; the key is the 32 bytes the app registered as
``contentKey``; the nonce is random per push; there is no associated data. ``nonce || ciphertext
|| tag`` is exactly CryptoKit's ``AES.GCM.SealedBox.combined``, and ``ciphertext || tag`` what
``javax.crypto.Cipher("AES/GCM/NoPadding")`` takes, so apps need no third-party library.
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 0x01
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
#: Bytes a sealed box adds to the plaintext before base64: version, nonce and tag.
OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE


class SealError(ValueError):
    """A sealed value that cannot be opened: malformed, unknown version, wrong key or tampered."""


class Sealer:
    """Seals with one key (the AES context is built once and reused for every attempt)."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"a content key is {KEY_SIZE} bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Sealer(<key>)"  # the key is a secret: never in a repr, hence never in a log

    def seal(self, plaintext: bytes, *, nonce: bytes | None = None) -> str:
        """``plaintext`` sealed as the base64 text above; ``nonce`` only for test vectors."""
        if nonce is None:
            nonce = os.urandom(NONCE_SIZE)
        elif len(nonce) != NONCE_SIZE:
            raise ValueError(f"a nonce is {NONCE_SIZE} bytes")
        box = bytes((VERSION,)) + nonce + self._aead.encrypt(nonce, plaintext, None)
        return base64.b64encode(box).decode("ascii")


def seal(key: bytes, plaintext: bytes, *, nonce: bytes | None = None) -> str:
    """``plaintext`` sealed with ``key`` (32 bytes); a random nonce unless one is given."""
    return Sealer(key).seal(plaintext, nonce=nonce)


def open_sealed(key: bytes, sealed: str) -> bytes:
    """The plaintext of a value made by :func:`seal` (what an app does; for tests and tools)."""
    try:
        box = base64.b64decode(sealed, validate=True)
    except ValueError as exc:
        raise SealError("not base64") from exc
    if len(box) < OVERHEAD or box[0] != VERSION:
        raise SealError("not a version 1 sealed box")
    nonce, body = box[1 : 1 + NONCE_SIZE], box[1 + NONCE_SIZE :]
    try:
        return AESGCM(key).decrypt(nonce, body, None)
    except Exception as exc:  # InvalidTag: wrong key or tampered
        raise SealError("cannot be opened with this key") from exc


def sealed_length(plaintext_len: int) -> int:
    """Length in characters of the sealed base64 text for a plaintext of that many bytes."""
    return 4 * ((plaintext_len + OVERHEAD + 2) // 3)
