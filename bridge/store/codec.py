"""A device as both stores keep it: tokens encrypted, plain values only, and the key check.

One codec for the SQLite and the Redis store, so what is encrypted, how the app state and the
content key are written, and how a record from before a field existed reads back are decided in
one place. The record :meth:`DeviceCodec.encode` makes is the JSON object the Redis store keeps
under ``data`` (its field names are stored data: never rename one); the SQLite store spreads the
same fields over its ``devices`` and ``registrations`` columns. The checkpoint is not in the
record: both stores keep it apart, so that a worker's frequent checkpoint writes never race an
API write of the rest of the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.models import AppState, Device, Registration
from bridge.store.crypto import TokenCipher, TokenCipherError, decrypt_key, encrypt_key

#: A known plaintext each store keeps encrypted from its first open: a later open with another
#: key fails at once and clearly, instead of on the first device read.
KEY_CHECK = "imkit-push-bridge key check"


class DeviceCodec:
    """Encodes devices for a store and decodes them back, with one :class:`TokenCipher`."""

    __slots__ = ("_cipher",)

    def __init__(self, cipher: TokenCipher) -> None:
        self._cipher = cipher

    def encode(self, device: Device) -> dict[str, Any]:
        """The device without its checkpoint; tokens and content keys encrypted, push tokens
        also as a keyed hash (``token_hash``) for the push-token index."""
        encrypt = self._cipher.encrypt
        return {
            "device_id": device.device_id,
            "client_id": device.client_id,
            "client_token": encrypt(device.client_token),
            "registrations": {
                push_type: {
                    "type": r.type,
                    "token": encrypt(r.token),
                    "token_hash": self._cipher.lookup_hash(r.token),
                    "disabled_reason": r.disabled_reason,
                    "updated_at": r.updated_at,
                    "apns_environment": r.apns_environment,
                    "content": r.content,
                    "content_key": encrypt_key(self._cipher, r.content_key),
                }
                for push_type, r in device.registrations.items()
            },
            "locale": device.locale,
            "state": device.state.value,
            "foreground_until": device.foreground_until,
            "created_at": device.created_at,
            "updated_at": device.updated_at,
            "token_version": device.token_version,
        }

    def decode(
        self, record: Mapping[str, Any], checkpoint_id: str | None, checkpoint_ms: int | None
    ) -> Device:
        """The device of a record, tokens decrypted. Raises :class:`TokenCipherError` for a
        record written with another key."""
        decrypt = self._cipher.decrypt
        return Device(
            device_id=record["device_id"],
            client_id=record["client_id"],
            client_token=decrypt(record["client_token"]),
            registrations={
                push_type: Registration(
                    type=r["type"],
                    token=decrypt(r["token"]),
                    disabled_reason=r["disabled_reason"],
                    updated_at=r["updated_at"],
                    # Absent in Redis records written before these fields existed.
                    apns_environment=r.get("apns_environment"),
                    content=r.get("content"),
                    content_key=decrypt_key(self._cipher, r.get("content_key")),
                )
                for push_type, r in record["registrations"].items()
            },
            locale=record["locale"],
            state=AppState(record["state"]),
            foreground_until=record["foreground_until"],
            created_at=record["created_at"],
            updated_at=record["updated_at"],
            token_version=record["token_version"],
            checkpoint_id=checkpoint_id,
            checkpoint_ms=checkpoint_ms,
        )

    def is_token(self, stored: str, token: str) -> bool:
        """Whether the stored (encrypted) token is ``token``: compared in the clear, as each
        token is encrypted with a random IV."""
        return self._cipher.decrypt(stored) == token

    def token_hash(self, registration: Mapping[str, Any]) -> str:
        """The push-token index hash of an encoded registration; records from before the index
        have no ``token_hash``, so it is computed from the decrypted token."""
        stored: str | None = registration.get("token_hash")
        return stored or self._cipher.lookup_hash(self._cipher.decrypt(registration["token"]))

    def key_check(self) -> str:
        """:data:`KEY_CHECK` encrypted, for a store to keep at its first open."""
        return self._cipher.encrypt(KEY_CHECK)

    def key_matches(self, stored: str | None) -> bool:
        """Whether the store's kept :meth:`key_check` opens with this codec's key."""
        if stored is None:
            return False
        try:
            return self._cipher.decrypt(stored) == KEY_CHECK
        except TokenCipherError:
            return False
