"""The device store interface, shared by the SQLite (embedded) and Redis (several nodes) stores."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from bridge.models import AppState, Device


class StoreUnavailable(Exception):
    """The store cannot be read or written right now (disk full, read-only, Redis down)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change feed: a device was created/updated, or removed."""

    kind: Literal["upsert", "delete"]
    device_id: str
    #: Opaque feed position (a Redis stream id, or a counter for SQLite).
    position: str = ""


#: Acks kept per device (enough for the pushes "why no push?" shows).
MAX_ACKS = 100


class Store(Protocol):
    """Devices by id, with an index by client id and a change feed.

    Tokens (``Device.client_token`` and each ``Registration.token``) are encrypted at rest by
    the implementation and returned decrypted. Every write publishes a :class:`Change`.
    """

    async def open(self) -> None:
        """Connect, migrate the schema; raises :class:`StoreUnavailable`."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store is reachable and writable."""

    async def get_device(self, device_id: str) -> Device | None: ...

    async def put_device(self, device: Device) -> None:
        """Insert or replace a device (whole record) and publish an ``upsert``.

        When ``device.client_id`` differs from the stored owner, nothing of the previous owner
        survives: the checkpoint becomes ``device``'s and the published status is removed.
        """

    async def delete_device(self, device_id: str) -> bool:
        """Remove a device and its published status; True if it existed. Publishes a ``delete``."""

    async def find_push_token(self, token: str) -> list[tuple[str, str]]:
        """``(device_id, push_type)`` of every registration holding ``token`` now, by device id.

        Served by an index of keyed hashes of the push tokens (tokens themselves are stored
        encrypted with a random IV, so they cannot be looked up).
        """

    async def set_app_state(
        self, device_id: str, state: AppState, foreground_until: float | None
    ) -> bool:
        """Record foreground/background; True if the device exists. Publishes an ``upsert``."""

    async def disable_registration(
        self,
        device_id: str,
        push_type: str,
        token: str,
        reason: str,
        *,
        since: float | None = None,
    ) -> bool:
        """Mark the registration invalid if it still holds ``token`` (a provider said it is dead).

        Nothing changes when the registration now holds another token, or (with ``since``, the
        epoch time from which the provider knew the token was invalid) was updated after
        ``since``: a late answer about an old token must not disable a fresh registration.
        True when it was disabled by this call (then an ``upsert`` is published).
        """

    async def set_checkpoint(self, device_id: str, message_id: str, version_ms: int) -> None:
        """Remember the last message handed to a provider. Publishes nothing."""

    async def set_checkpoints(self, checkpoints: Mapping[str, tuple[str, int]]) -> None:
        """:meth:`set_checkpoint` for many devices (device id → message id, version ms) in one
        round trip: the worker moves hundreds of checkpoints a second under load."""

    async def set_apns_environment(
        self, device_id: str, push_type: str, token: str, environment: str
    ) -> bool:
        """Record the APNs environment that accepted ``token`` (a correction after BadDeviceToken).

        Only while the registration still holds ``token``: a late answer about an old token
        changes nothing. True when it changed (then an ``upsert`` is published).
        """

    async def record_ack(self, device_id: str, push_id: str, at: float) -> bool:
        """Remember that the app confirmed ``push_id`` at ``at``; False if already recorded.

        The last :data:`MAX_ACKS` per device are kept; they go with the device and with a change
        of owner.
        """

    async def get_acks(self, device_id: str) -> dict[str, float]:
        """The device's recorded acks: push id → epoch seconds."""

    async def count_client_devices(self, client_id: str) -> int: ...

    async def put_status(self, device_id: str, status: dict[str, Any]) -> None:
        """Publish what a worker knows of a device (session state, recent decisions) for the API.

        Only stores shared by several processes keep it; the embedded store may ignore it.
        """

    async def get_status(self, device_id: str) -> dict[str, Any] | None:
        """The last status a worker published for the device, if any."""

    async def list_devices(
        self,
        *,
        client_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[Device], str | None]:
        """A page of devices ordered by id, and the cursor of the next page (None at the end)."""

    async def all_device_ids(self) -> list[str]: ...

    def changes(self, since: str | None = None) -> AsyncIterator[Change]:
        """Follow the change feed from ``since`` (None: from now) until the store closes."""
        ...
