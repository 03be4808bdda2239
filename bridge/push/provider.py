"""The provider interface, and the four kinds of result a send can have.

A platform is two things: its :class:`Layout`, which lays out the content :mod:`bridge.compose`
renders as the platform's request and says what fits in one (stateless, so a push is composed
and fitted before any provider is involved), and its :class:`Provider`, which sends such
requests. APNs: :mod:`bridge.push.apns_layout` and :mod:`bridge.push.apns`; FCM:
:mod:`bridge.push.fcm_layout` and :mod:`bridge.push.fcm`.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from typing import Protocol, TypeVar

from bridge.models import ApnsEnvironment, Notification
from bridge.push.content import Content, Target

R = TypeVar("R")


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
    """A result's ``outcome``: the label of ``bridge_pushes_total``, the word "why no push?" shows."""
    if isinstance(result, Delivered):
        return "delivered"
    if isinstance(result, Retry):
        return "retry"
    if isinstance(result, TokenInvalid):
        return "token_invalid"
    return "failed"


def not_before(retry_after: str | None, now: float) -> float | None:
    """A ``Retry-After`` header (seconds, or an HTTP date) as :attr:`Retry.not_before`."""
    if not retry_after:
        return None
    value = retry_after.strip()
    if value.isdigit():
        return now + int(value)
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


class Layout(Protocol[R]):
    """How one platform lays out a push as its request ``R``, and what fits in one."""

    def limit(self, target: Target) -> int:
        """The size limit in bytes (compose caps a text at as many characters up front)."""
        ...

    def request(self, content: Content, target: Target, now: float) -> R:
        """The request carrying ``content`` to ``target``; ``now`` (epoch seconds) dates it."""
        ...

    def badge(self, target: Target, badge: int, now: float) -> R:
        """A silent badge update: no alert, no sound."""
        ...

    def fits(self, request: R) -> bool:
        """Whether ``request`` is within the limit, counting the push id added after composing."""
        ...

    def with_badge(self, request: R, badge: int | None) -> R:
        """A copy showing ``badge`` where ``request`` shows one (None: no badge)."""
        ...

    def with_push_id(self, request: R, push_id: str) -> R:
        """A copy carrying ``push_id`` in its data block."""
        ...


class Provider(Protocol):
    """A push provider (APNs, FCM, log). ``send`` sends once: retries belong to the dispatcher.

    ``send`` never raises for provider answers or network trouble; it maps them to a result.
    """

    name: str

    async def send(self, notification: Notification) -> SendResult: ...

    async def close(self) -> None: ...
