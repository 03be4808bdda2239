"""The APNs provider: sends one composed notification with aioapns and maps Apple's answer.

Around aioapns 4.0 (its connection's fixes are in :mod:`bridge.push.apns_connection`): every
send runs under an ``asyncio.timeout`` scope (aioapns has no per-request timeout; not
``wait_for``, which costs a task per push); one connection attempt per send and a silent
``err_func`` instead of aioapns' own reconnect loop and error log line (retrying is the
dispatcher's job); and each client is recycled every ``recycle_sends`` sends or
``recycle_after`` seconds, after its in-flight sends finish, as a backstop against what aioapns
keeps per connection. One aioapns client serves one host, so each APNs environment
(production, sandbox) has its own client and HTTP/2 connections.

What a request holds is :mod:`bridge.push.apns_layout`'s; the provider adds the ``apns-id``
(from the push id, so a retry reuses it) and the topic (its own, ``.voip`` for PushKit).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aioapns import APNs, NotificationRequest, PushType
from aioapns.common import NotificationResult
from aioapns.connection import AuthorizationHeaderProvider, JWTAuthorizationHeaderProvider
from aioapns.exceptions import ConnectionClosed, MaxAttemptsExceeded
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from h2.exceptions import H2Error

from bridge.config import Settings
from bridge.models import ApnsEnvironment, Notification
from bridge.push import apns_layout
from bridge.push.apns_connection import cheap_headers as cheap_headers  # bench/apns_headers.py
from bridge.push.apns_connection import protocol_class
from bridge.push.config_errors import CONFIG_LOG_INTERVAL, ConfigErrors
from bridge.push.provider import Delivered, Failed, Retry, SendResult, TokenInvalid, not_before

logger = logging.getLogger(__name__)

_TOKEN_INVALID, _RETRY, _FAILED = "token_invalid", "retry", "failed"

#: Apple's answers by (status, reason); (status, None) matches any reason of that status.
#: Anything else: 5xx is retried, other statuses fail. Only answers about the token itself
#: disable a registration: 410 (the token is no longer active for the topic) and
#: ``BadDeviceToken`` (not a token of this environment).
RESULT_TABLE: dict[tuple[int, str | None], str] = {
    (410, "Unregistered"): _TOKEN_INVALID,
    (410, "ExpiredToken"): _TOKEN_INVALID,
    (400, "BadDeviceToken"): _TOKEN_INVALID,
    (429, None): _RETRY,
}

#: Answers that mean *our* configuration is wrong, not the device's token: every push fails the
#: same way until it is fixed, so they fail the push and never disable a registration (a wrong
#: topic would otherwise disable every iOS token). Reason -> what to check, for the log line.
CONFIG_ERRORS: dict[str, str] = {
    "DeviceTokenNotForTopic": "the device tokens belong to another app: BRIDGE_APNS_TOPIC must be "
    "the app's bundle id",
    "TopicDisallowed": "the key or certificate may not push to BRIDGE_APNS_TOPIC",
    "BadTopic": "BRIDGE_APNS_TOPIC is not a valid topic",
    "MissingTopic": "set BRIDGE_APNS_TOPIC (the app's bundle id)",
    "InvalidProviderToken": "BRIDGE_APNS_KEY_FILE, BRIDGE_APNS_KEY_ID and BRIDGE_APNS_TEAM_ID do "
    "not match a key of that team",
    "MissingProviderToken": "set BRIDGE_APNS_KEY_FILE (token auth) or BRIDGE_APNS_CERT_FILE",
    "ExpiredProviderToken": "the provider token is older than an hour: is this machine's clock right?",
    "UnrelatedKeyIdInToken": "BRIDGE_APNS_KEY_ID is not a key of BRIDGE_APNS_TEAM_ID",
    "BadEnvironmentKeyIdInToken": "the key is not valid for this environment (a key restricted "
    "to production or sandbox; see BRIDGE_APNS_SANDBOX and the registrations' apnsEnvironment)",
    "BadCertificate": "BRIDGE_APNS_CERT_FILE is not accepted by Apple",
    "BadCertificateEnvironment": "BRIDGE_APNS_CERT_FILE is for the other environment "
    "(see BRIDGE_APNS_SANDBOX and the registrations' apnsEnvironment)",
    "Forbidden": "the key or certificate may not push to BRIDGE_APNS_TOPIC",
}
#: Apple's endpoints per environment (port 443; 2197 works too).
APPLE_HOSTS: dict[ApnsEnvironment, str] = {
    "production": "api.push.apple.com",
    "sandbox": "api.sandbox.push.apple.com",
}
APPLE_PORT = 443
#: ``push-bridge check`` warns, and the alert fires, this long before the certificate expires.
CERTIFICATE_WARNING_DAYS = 14


def other_environment(environment: ApnsEnvironment) -> ApnsEnvironment:
    return "sandbox" if environment == "production" else "production"


def endpoints(
    *,
    host: str | None = None,
    port: int | None = None,
    sandbox_host: str | None = None,
    sandbox_port: int | None = None,
) -> dict[ApnsEnvironment, tuple[str, int]]:
    """(host, port) per environment from the overrides.

    Without a sandbox override, a production override (a proxy, the simulator) serves both
    environments: a setup with one endpoint keeps sending everything there.
    """
    production = (host or APPLE_HOSTS["production"], port or APPLE_PORT)
    if sandbox_host:
        sandbox = (sandbox_host, sandbox_port or APPLE_PORT)
    elif host:
        sandbox = (host, sandbox_port or port or APPLE_PORT)
    else:
        sandbox = (APPLE_HOSTS["sandbox"], sandbox_port or APPLE_PORT)
    return {"production": production, "sandbox": sandbox}


def certificate_not_after(pem: bytes) -> float:
    """The expiry (``notAfter``, epoch seconds) of the first certificate in a PEM.

    Raises ``ValueError`` when the PEM holds no certificate.
    """
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


def _format_epoch(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


#: Exceptions that mean "the network or the connection", not "this notification": retry.
_CONNECTION_ERRORS = (
    ApnsConnectionError,
    ConnectionClosed,
    MaxAttemptsExceeded,
    OSError,
    H2Error,
)


def map_response(
    status: int,
    reason: str | None,
    retry_after: str | None = None,
    timestamp: int | float | None = None,
) -> SendResult:
    """Map one APNs answer (HTTP status, ``reason``, ``retry-after`` header, the 410 body's
    ``timestamp`` in epoch milliseconds) to a result kind."""
    if status == 200:
        return Delivered()
    reason = reason or f"http_{status}"
    kind = RESULT_TABLE.get((status, reason)) or RESULT_TABLE.get((status, None))
    if kind is None:
        kind = _RETRY if status >= 500 or reason == "Shutdown" else _FAILED
    if kind == _TOKEN_INVALID:
        since: float | None = None
        if isinstance(timestamp, int | float) and not isinstance(timestamp, bool) and timestamp > 0:
            since = timestamp / 1000
        return TokenInvalid(reason, since)
    if kind == _RETRY:
        return Retry(reason, not_before(retry_after, time.time()))
    return Failed(reason)


def _time_to_live(expiration: int | None) -> int | None:
    """aioapns takes a TTL, Apple an epoch: 0 ("now or never") becomes an expiration of now."""
    return None if expiration is None else max(0, expiration - int(time.time()))


def _context(n: Notification) -> dict[str, Any]:
    return {"device_id": n.device_id, "push_id": n.push_id, "provider": "apns"}


def _check_credentials(key: str | None, cert_file: str | None) -> None:
    """Fail at start-up, not on every send, when the key or certificate cannot be used."""
    if key is not None:
        try:
            loaded = serialization.load_pem_private_key(key.encode(), password=None)
        except (ValueError, TypeError):
            raise ValueError("the APNs key is not an unencrypted PEM (.p8) private key") from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.curve.name != "secp256r1":
            raise ValueError("the APNs key must be a P-256 (ES256) key")
    if cert_file is not None:
        try:
            ssl.create_default_context().load_cert_chain(cert_file)
        except (OSError, ValueError):
            raise ValueError(
                "the APNs certificate file must be a PEM with certificate and key"
            ) from None


@dataclass(eq=False)
class _Generation:
    """One aioapns client (one environment's connections) and its bookkeeping until recycled."""

    client: APNs
    retry_after: dict[str, str]
    environment: ApnsEnvironment
    started: float = field(default_factory=time.monotonic)
    sends: int = 0
    inflight: int = 0
    retired: bool = False


class ApnsProvider:
    """Sends to APNs with token auth (``.p8`` key) or certificate auth. See :meth:`from_settings`.

    ``key`` is the PEM text of the signing key; ``cert_file`` a PEM with certificate and key.
    A notification goes to its ``apns_environment``, or to the default (``sandbox``: the sandbox,
    else production). ``host``/``port`` override Apple's production endpoint and
    ``sandbox_host``/``sandbox_port`` the sandbox one (see :func:`endpoints`); ``ca_file`` adds
    a CA to trust.

    A ``BadDeviceToken`` answer is tried once in the other environment, when it has an endpoint
    of its own: debug builds get sandbox tokens, store builds production ones, and apps do not
    always say which. If that one accepts it, the result is ``Delivered`` with
    ``corrected_environment`` set, for the owner to record on the registration.
    """

    name = "apns"

    def __init__(
        self,
        *,
        topic: str,
        key: str | None = None,
        key_id: str | None = None,
        team_id: str | None = None,
        cert_file: str | None = None,
        sandbox: bool = False,
        host: str | None = None,
        port: int | None = None,
        sandbox_host: str | None = None,
        sandbox_port: int | None = None,
        ca_file: str | None = None,
        timeout: float = 10.0,
        idle_timeout: float = 600.0,
        recycle_sends: int = 100_000,
        recycle_after: float = 1800.0,
        max_connections: int = 10,
        config_log_interval: float = CONFIG_LOG_INTERVAL,
    ) -> None:
        if (key is None) == (cert_file is None) or (key is not None and not (key_id and team_id)):
            raise ValueError("APNs needs either key, key_id and team_id, or cert_file")
        _check_credentials(key, cert_file)
        self.topic = topic
        self.default_environment: ApnsEnvironment = "sandbox" if sandbox else "production"
        self._key = key
        self._key_id = key_id
        self._team_id = team_id
        self._cert_file = cert_file
        #: One provider token for every connection of both environments (token auth only).
        self._auth: AuthorizationHeaderProvider | None = (
            JWTAuthorizationHeaderProvider(key, key_id, team_id) if key is not None else None
        )
        self._endpoints = endpoints(
            host=host, port=port, sandbox_host=sandbox_host, sandbox_port=sandbox_port
        )
        self._ca_file = ca_file
        self._timeout = timeout
        self._idle_timeout = idle_timeout
        self._recycle_sends = recycle_sends
        self._recycle_after = recycle_after
        self._max_connections = max_connections
        self._config_errors = ConfigErrors(logger, config_log_interval)
        self._current: dict[ApnsEnvironment, _Generation] = {}
        self._retired: set[_Generation] = set()
        self._closed = False
        #: Certificate mode: the loaded certificate's expiry (epoch seconds), re-read whenever a
        #: client is recycled (which reloads the file); None with token auth.
        self.certificate_expiry: float | None = None
        if cert_file is not None:
            self._read_certificate_expiry(cert_file)

    def __repr__(self) -> str:
        (ph, pp), (sh, sp) = self._endpoints["production"], self._endpoints["sandbox"]
        return (
            f"ApnsProvider(topic={self.topic!r}, default={self.default_environment!r}, "
            f"production={ph}:{pp}, sandbox={sh}:{sp})"
        )

    @property
    def endpoints(self) -> dict[ApnsEnvironment, tuple[str, int]]:
        """(host, port) per environment."""
        return dict(self._endpoints)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApnsProvider:
        """Build from ``BRIDGE_APNS_*``; raises ``ValueError`` when APNs is not configured."""
        if not settings.apns_topic or not settings.apns_configured:
            raise ValueError(
                "APNs is not configured (BRIDGE_APNS_KEY_FILE or BRIDGE_APNS_CERT_FILE)"
            )
        key = None
        if settings.apns_key_file and not settings.apns_cert_file:
            key = Path(settings.apns_key_file).read_text(encoding="utf-8")
        return cls(
            topic=settings.apns_topic,
            key=key,
            key_id=settings.apns_key_id,
            team_id=settings.apns_team_id,
            cert_file=None if key is not None else settings.apns_cert_file,
            sandbox=settings.apns_sandbox,
            host=settings.apns_host,
            port=settings.apns_port,
            sandbox_host=settings.apns_sandbox_host,
            sandbox_port=settings.apns_sandbox_port,
            ca_file=settings.apns_ca_file,
            timeout=settings.push_timeout,
        )

    @property
    def connections(self) -> int:
        """Open connections across the current and retiring clients of both environments."""
        gens = [*self._retired, *self._current.values()]
        return sum(len(g.client.pool.connections) for g in gens)

    async def send(self, notification: Notification) -> SendResult:
        """Send once under the timeout and map the answer; never raises for APNs or the network.

        A ``BadDeviceToken`` is tried once in the other environment, within the same timeout.
        """
        req = notification.apns
        if req is None:
            return Failed("no_apns_request")
        if self._closed:
            return Retry("provider_closed")
        # A topic the request names is used as is.
        topic = req.topic or apns_layout.topic(req.push_type, self.topic)
        request = NotificationRequest(
            device_token=notification.token,
            # The same apns-id on every attempt: a retry after a timeout is the same notification.
            notification_id=apns_layout.apns_id(notification.push_id),
            message=req.payload,
            time_to_live=_time_to_live(req.expiration),
            priority=req.priority,
            collapse_key=req.collapse_id,
            push_type=PushType(req.push_type),
            apns_topic=topic,
        )
        deadline = time.monotonic() + self._timeout
        environment = notification.apns_environment or self.default_environment
        result = await self._send_to(environment, request, notification, topic, deadline)
        other = other_environment(environment)
        if not (
            isinstance(result, TokenInvalid)
            and result.reason == "BadDeviceToken"
            # One endpoint for both (a proxy, a simulator): asking it again changes nothing.
            and self._endpoints[other] != self._endpoints[environment]
        ):
            return result
        # Not a token of this environment: maybe one of the other (a debug build's sandbox token
        # registered without apnsEnvironment). Whatever the other says stands: two
        # BadDeviceTokens make a dead token, as before.
        second = await self._send_to(other, request, notification, topic, deadline)
        if isinstance(second, Delivered):
            logger.info(
                "APNs token accepted by %s after BadDeviceToken from %s",
                other,
                environment,
                extra=_context(notification),
            )
            return Delivered(second.provider_id, corrected_environment=other)
        return second

    async def _send_to(
        self,
        environment: ApnsEnvironment,
        request: NotificationRequest,
        notification: Notification,
        topic: str,
        deadline: float,
    ) -> SendResult:
        """One request to one environment's endpoint, mapped."""
        gen = self._generation(environment)
        gen.sends += 1
        gen.inflight += 1
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                response: NotificationResult = await gen.client.send_notification(request)
        except TimeoutError:
            return Retry("timeout")
        except _CONNECTION_ERRORS as exc:
            logger.debug(
                "APNs connection trouble: %s", type(exc).__name__, extra=_context(notification)
            )
            return Retry("connection")
        except Exception as exc:  # a bug or a broken credential: never let it reach the dispatcher
            logger.error("APNs send failed: %s", type(exc).__name__, extra=_context(notification))
            return Failed("internal_error")
        finally:
            gen.inflight -= 1
            if gen.retired and gen.inflight == 0:
                self._close_generation(gen)
        result = map_response(
            int(response.status or 0),
            response.description,
            gen.retry_after.pop(request.notification_id, None),
            response.timestamp,
        )
        if isinstance(result, Failed) and result.reason in CONFIG_ERRORS:
            self._config_errors.report(
                result.reason,
                "APNs refuses pushes with %s: %s (topic %r, %s host %s).",
                result.reason,
                CONFIG_ERRORS[result.reason],
                topic,
                environment,
                self._endpoints[environment][0],
            )
        return Delivered(request.notification_id) if isinstance(result, Delivered) else result

    async def close(self) -> None:
        """Close every connection; later sends answer ``Retry("provider_closed")``."""
        self._closed = True
        for gen in [*self._retired, *self._current.values()]:
            self._close_generation(gen)
        self._current.clear()

    def _generation(self, environment: ApnsEnvironment) -> _Generation:
        gen = self._current.get(environment)
        if gen is not None and (
            gen.sends >= self._recycle_sends
            or time.monotonic() - gen.started >= self._recycle_after
        ):
            logger.info("Recycling the APNs %s client after %d sends", environment, gen.sends)
            gen.retired = True
            if gen.inflight:
                self._retired.add(gen)
            else:
                self._close_generation(gen)
            gen = None
        if gen is None:
            gen = self._current[environment] = self._new_generation(environment)
        return gen

    def _new_generation(self, environment: ApnsEnvironment) -> _Generation:
        ctx = ssl.create_default_context()
        if self._ca_file:
            ctx.load_verify_locations(self._ca_file)
        ctx.set_alpn_protocols(["h2"])

        async def quiet(_request: NotificationRequest, _result: NotificationResult) -> None:
            """Replaces aioapns' error log line per failed send: results are ours to report."""

        client = APNs(
            client_cert=self._cert_file,
            key=self._key,
            key_id=self._key_id,
            team_id=self._team_id,
            topic=self.topic,
            max_connections=self._max_connections,
            max_connection_attempts=1,
            ssl_context=ctx,
            err_func=quiet,
        )
        if self._cert_file is not None:
            # aioapns loaded the file again: a renewed certificate counts from now on.
            self._read_certificate_expiry(self._cert_file)
        retry_after: dict[str, str] = {}
        host, port = self._endpoints[environment]
        client.pool.protocol_class = protocol_class(
            host, port, self._idle_timeout, retry_after, self._auth
        )
        return _Generation(client, retry_after, environment)

    def _read_certificate_expiry(self, cert_file: str) -> None:
        try:
            expiry = certificate_not_after(Path(cert_file).read_bytes())
        except (OSError, ValueError):
            return  # _check_credentials or aioapns report an unusable file
        if expiry != self.certificate_expiry:
            left = expiry - time.time()
            if left < CERTIFICATE_WARNING_DAYS * 86400:
                logger.warning(
                    "The APNs certificate (BRIDGE_APNS_CERT_FILE) %s %s: renew it",
                    "expired on" if left <= 0 else "expires on",
                    _format_epoch(expiry),
                )
        self.certificate_expiry = expiry

    def _close_generation(self, gen: _Generation) -> None:
        self._retired.discard(gen)
        gen.client.pool.close()
