"""Data at the boundaries: devices, states, decisions and composed notifications."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, Literal

#: Registration ``type`` values accepted by ``POST /me/subscribe``.
PUSH_TYPES: tuple[str, ...] = ("ios", "ios-voip", "fcm", "android", "web")
APNS_TYPES: frozenset[str] = frozenset({"ios", "ios-voip"})
FCM_TYPES: frozenset[str] = frozenset({"fcm", "android", "web"})

ProviderName = Literal["apns", "fcm"]
#: Where an APNs token was issued: debug builds get sandbox tokens, TestFlight/App Store ones production.
ApnsEnvironment = Literal["production", "sandbox"]
APNS_ENVIRONMENTS: tuple[str, ...] = ("production", "sandbox")
#: What a push may carry: the text (``full``), ids only (``hidden``), or the text sealed with the
#: device's key (``encrypted``).
PushContent = Literal["full", "hidden", "encrypted"]
PUSH_CONTENTS: tuple[str, ...] = ("full", "hidden", "encrypted")


def provider_for(push_type: str) -> ProviderName:
    """Which provider serves a registration type: ``ios``/``ios-voip`` go to APNs, the rest to FCM."""
    return "apns" if push_type in APNS_TYPES else "fcm"


class AppState(enum.StrEnum):
    """What the app last told us about itself."""

    FOREGROUND = "foreground"
    BACKGROUND = "background"


class SessionState(enum.StrEnum):
    """Lifecycle of one device's upstream Socket.IO session."""

    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    LIVE = "live"
    BACKOFF = "backoff"
    AUTH_FAILED = "auth_failed"
    CLOSED = "closed"


class Reason(enum.StrEnum):
    """Why an event was (or was not) pushed."""

    PUSHED = "pushed"
    FOREGROUND = "foreground"
    OWN_MESSAGE = "own_message"
    MUTED = "muted"
    NOTIFICATIONS_DISABLED = "notifications_disabled"
    DUPLICATE = "duplicate"
    EVENT_NOT_PUSHED = "event_not_pushed"
    MESSAGE_TYPE_OFF = "message_type_off"
    TOKEN_INVALID = "token_invalid"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of :func:`bridge.decide.decide`: push, or suppress with a reason."""

    push: bool
    reason: Reason

    @property
    def outcome(self) -> str:
        """The ``outcome`` label of ``bridge_decisions_total``: ``push`` or ``suppress``.

        The API's ``decision`` field says ``pushed`` or ``suppressed`` for the same thing
        (worker/history.py). Both are published (dashboards and apps read them), so the two
        spellings stay as they are.
        """
        return "push" if self.push else "suppress"


@dataclass(slots=True)
class Registration:
    """One push token of a device (a device may hold e.g. both ``ios`` and ``ios-voip``)."""

    type: str
    token: str
    #: Set when a provider reported the token invalid; a disabled registration gets no pushes.
    disabled_reason: str | None = None
    updated_at: float = field(default_factory=time.time)
    #: APNs only: the environment the token belongs to (None: the configured default).
    apns_environment: ApnsEnvironment | None = None
    #: What its pushes carry (None: ``BRIDGE_PUSH_CONTENT``).
    content: PushContent | None = None
    #: The app's 32-byte key for ``encrypted`` content: a secret, encrypted at rest like the token.
    content_key: bytes | None = None

    def __repr__(self) -> str:
        return (
            f"Registration(type={self.type!r}, disabled_reason={self.disabled_reason!r}, "
            f"apns_environment={self.apns_environment!r}, content={self.content!r})"
        )

    @property
    def provider(self) -> ProviderName:
        return provider_for(self.type)

    @property
    def active(self) -> bool:
        return self.disabled_reason is None


@dataclass(slots=True)
class Device:
    """A registered device: who it belongs to, how to reach it, and what the app said last.

    ``client_token`` and the registrations' ``token`` are secrets: they are encrypted at rest by
    the store and must never be logged (``__repr__`` hides them).
    """

    device_id: str
    client_id: str
    client_token: str
    registrations: dict[str, Registration] = field(default_factory=dict)
    locale: str | None = None
    state: AppState = AppState.BACKGROUND
    #: Epoch seconds after which a foreground state counts as background again.
    foreground_until: float | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    #: Bumped on every change of the client token, so workers can tell a new token arrived.
    token_version: int = 1
    #: Last message handed to a provider (for backfill after a gap).
    checkpoint_id: str | None = None
    checkpoint_ms: int | None = None

    def __repr__(self) -> str:
        return (
            f"Device(device_id={self.device_id!r}, client_id={self.client_id!r}, "
            f"types={sorted(self.registrations)!r}, state={self.state.value!r})"
        )

    def effective_state(self, now: float) -> AppState:
        """Foreground only while its TTL has not run out: a crashed app never silences its user."""
        return AppState.FOREGROUND if self.in_foreground(now) else AppState.BACKGROUND

    def in_foreground(self, now: float) -> bool:
        """Whether the app is in the foreground at ``now`` (see :meth:`effective_state`)."""
        return self.state is AppState.FOREGROUND and (
            self.foreground_until is None or now < self.foreground_until
        )

    @property
    def active_registrations(self) -> list[Registration]:
        return [r for r in self.registrations.values() if r.active]


@dataclass(frozen=True, slots=True)
class ApnsRequest:
    """A composed APNs request (everything but the auth, which the provider adds): its payload
    and headers as :mod:`bridge.push.apns_layout` lays them out."""

    payload: dict[str, Any]
    push_type: Literal["alert", "background", "voip"] = "alert"
    priority: int = 10
    #: None (as composed): the provider's topic, ``.voip`` for a voip push (``apns_layout.topic``).
    topic: str | None = None
    collapse_id: str | None = None
    #: Epoch seconds; 0 means "deliver once or drop".
    expiration: int | None = None
    thread_id: str | None = None


@dataclass(frozen=True, slots=True)
class FcmRequest:
    """A composed FCM v1 message (minus the token, carried by :class:`Notification`): its blocks
    as :mod:`bridge.push.fcm_layout` lays them out."""

    data: dict[str, str]
    android: dict[str, Any] | None = None
    notification: dict[str, str] | None = None
    webpush: dict[str, Any] | None = None


@dataclass(slots=True)
class Notification:
    """One push to one token, as queued to the dispatcher."""

    device_id: str
    push_type: str
    token: str
    #: Stable per (device, message): the dispatcher sends each push_id at most once.
    push_id: str
    kind: str
    apns: ApnsRequest | None = None
    fcm: FcmRequest | None = None
    #: APNs only: the environment to send to (None: the provider's configured default).
    apns_environment: ApnsEnvironment | None = None
    #: When the upstream event arrived (monotonic clock), for the push latency metric.
    received_at: float = field(default_factory=time.monotonic)
    #: Wall-clock creation time, for the maximum push age.
    created_at: float = field(default_factory=time.time)
    attempt: int = 0

    @property
    def provider(self) -> ProviderName:
        return provider_for(self.push_type)

    def __repr__(self) -> str:
        return (
            f"Notification(device_id={self.device_id!r}, push_type={self.push_type!r}, "
            f"push_id={self.push_id!r}, kind={self.kind!r}, attempt={self.attempt})"
        )
