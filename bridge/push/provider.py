"""The provider interface, and the four kinds of result a send can have."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bridge.models import ApnsEnvironment, Notification


@dataclass(frozen=True, slots=True)
class Delivered:
    """The provider accepted the notification.

    ``corrected_environment``: APNs only, set when the token was refused as a ``BadDeviceToken``
    where it was sent and this other environment accepted it: the owner records it on the
    registration, so later pushes go there first.
    """

    provider_id: str | None = None
    corrected_environment: ApnsEnvironment | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again later; ``not_before`` is an epoch time (from ``Retry-After``) or None."""

    reason: str
    not_before: float | None = None


@dataclass(frozen=True, slots=True)
class TokenInvalid:
    """The token is dead (unregistered, expired, malformed): disable the registration.

    ``since``: epoch seconds from which the provider knows the token was invalid (APNs' 410
    ``timestamp``), or None. A registration updated after it holds a newer token (or the same
    token registered again) and is left alone.
    """

    reason: str
    since: float | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """A permanent failure for this notification (or a configuration error); the token may be good."""

    reason: str


SendResult = Delivered | Retry | TokenInvalid | Failed


def outcome_of(result: SendResult) -> str:
    """The ``outcome`` label of ``bridge_pushes_total`` for a result."""
    if isinstance(result, Delivered):
        return "delivered"
    if isinstance(result, Retry):
        return "retry"
    if isinstance(result, TokenInvalid):
        return "token_invalid"
    return "failed"


class Provider(Protocol):
    """A push provider (APNs, FCM, log). ``send`` sends once: retries belong to the dispatcher.

    ``send`` never raises for provider answers or network trouble; it maps them to a result.
    """

    name: str

    async def send(self, notification: Notification) -> SendResult: ...

    async def close(self) -> None: ...
