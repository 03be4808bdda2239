"""FCM provider: firebase-admin for credentials, message encoding and error parsing; the v1
``messages:send`` requests go out on a pool of kept-alive aiohttp connections.

firebase-admin is used for what it does well (the service-account credential, ``encode_message``,
turning FCM's error answers into its error classes). Its send path is not used, because:

- ``send_each_async`` goes through httpx on HTTP/2 (httpcore, anyio's TLS in Python): about
  1.6 ms of CPU per push here, three times the ~0.5 ms of an aiohttp request on a kept-alive
  HTTP/1.1 connection (docs/benchmarks.md, "FCM requests on aiohttp"); with half the devices on
  FCM that was the difference between fitting in a core and not;
- it refreshes the OAuth token synchronously inside the event loop (``before_request`` and on a
  401): we refresh with ``asyncio.to_thread`` before the token gets stale;
- it retries 500/503 with sleeps of its own while ignoring 429 and ``Retry-After``: we make one
  request per push, and every temporary failure comes back as :class:`Retry` (with
  ``Retry-After`` as ``not_before``) so the dispatcher's one retry policy decides;
- it knows only Google's URL and the system CAs: ``BRIDGE_FCM_URL`` and ``BRIDGE_FCM_CA_FILE``
  set the messaging service's URL and the CA our connections trust (never ``SSL_CERT_FILE``).

As Sygnal's FCM pushkin does, requests use HTTP/1.1 with a bounded pool of connections
(:data:`MAX_CONNECTIONS`; a request waits for a free one within its timeout).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import ssl
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp
import firebase_admin
import google.auth.exceptions
import httpx
import requests
from firebase_admin import credentials, messaging
from firebase_admin import exceptions as fb
from google.auth.transport import requests as google_requests

from bridge.config import Settings
from bridge.models import FcmRequest, Notification
from bridge.push.config_errors import CONFIG_LOG_INTERVAL, ConfigErrors
from bridge.push.provider import Delivered, Failed, Retry, SendResult, TokenInvalid, not_before

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Connections kept to FCM at most; a request waits for a free one (within its timeout). Each
#: carries one request at a time: 100 hold ~2,000 pushes/s at 50 ms per request.
MAX_CONNECTIONS = 100
#: Refresh the access token when it has less than this left; google-auth itself would refresh
#: (synchronously, on the loop) under 3 min 45 s, so this must stay above that.
REFRESH_MARGIN = 300.0
#: Below this many seconds of validity a send waits for the refresh instead of racing it.
MIN_VALIDITY = 30.0

Kind = Literal["token_invalid", "retry", "failed"]

#: firebase-admin error class -> result kind and reason; looked up along the exception's MRO, so
#: ``UnregisteredError`` wins over its base ``NotFoundError``. ``InvalidArgumentError`` becomes
#: ``token_invalid`` when it is about the token (see :func:`result_for_error`).
ERROR_RESULTS: dict[type[Exception], tuple[Kind, str]] = {
    messaging.UnregisteredError: ("token_invalid", "unregistered"),
    # The service account is of another Firebase project than the app's tokens: a configuration
    # error that would otherwise disable every Android token, not a dead token.
    messaging.SenderIdMismatchError: ("failed", "sender_id_mismatch"),
    messaging.QuotaExceededError: ("retry", "quota_exceeded"),
    messaging.ThirdPartyAuthError: ("failed", "third_party_auth_error"),
    fb.InvalidArgumentError: ("failed", "invalid_argument"),
    fb.ResourceExhaustedError: ("retry", "resource_exhausted"),
    fb.UnavailableError: ("retry", "unavailable"),
    fb.InternalError: ("retry", "internal"),
    fb.UnknownError: ("retry", "unknown"),
    fb.DeadlineExceededError: ("retry", "timeout"),
    fb.AbortedError: ("retry", "aborted"),
    fb.UnauthenticatedError: ("retry", "unauthenticated"),
    fb.PermissionDeniedError: ("failed", "permission_denied"),
    fb.NotFoundError: ("failed", "not_found"),
}


#: Failures that mean our configuration is wrong (every push fails alike until it is fixed):
#: logged loudly (:class:`~bridge.push.config_errors.ConfigErrors`). Reason -> what to check.
CONFIG_ERRORS: dict[str, str] = {
    "sender_id_mismatch": "the tokens belong to another Firebase project than "
    "BRIDGE_FCM_CREDENTIALS_FILE's service account",
    "third_party_auth_error": "the APNs key or web push credentials in the Firebase project are "
    "missing or wrong",
    "permission_denied": "BRIDGE_FCM_CREDENTIALS_FILE's service account may not send messages "
    "for its project",
}


def _retry_after(response: Any, now: float) -> float | None:
    """Epoch time from the response's ``Retry-After`` header, or None."""
    headers = getattr(response, "headers", None)
    return not_before(headers.get("retry-after") if headers is not None else None, now)


def _about_token(exc: fb.FirebaseError) -> bool:
    """Whether an INVALID_ARGUMENT answer blames the registration token (not the payload)."""
    if "registration token" in str(exc).lower():
        return True
    try:
        body = exc.http_response.json() if exc.http_response is not None else {}
    except ValueError:
        return False
    details = body.get("error", {}).get("details", []) if isinstance(body, dict) else []
    return any(
        v.get("field") == "message.token"
        for d in details
        if isinstance(d, dict)
        for v in d.get("fieldViolations", [])
        if isinstance(v, dict)
    )


def _clean(text: str, token: str) -> str:
    """An error text fit for a result reason: the token cut out, at most 200 characters."""
    if token:
        text = text.replace(token, "<token>")
    return text[:200]


def result_for_error(exc: BaseException, token: str, now: float | None = None) -> SendResult:
    """Map one firebase-admin error for one message to a result kind."""
    if not isinstance(exc, fb.FirebaseError):
        return Failed(_clean(f"{type(exc).__name__}: {exc}", token))
    kind, reason = next(
        (ERROR_RESULTS[c] for c in type(exc).__mro__ if c in ERROR_RESULTS),
        ("failed", exc.code.lower()),
    )
    if isinstance(exc, fb.InvalidArgumentError) and _about_token(exc):
        return TokenInvalid("invalid_token")
    if kind == "token_invalid":
        return TokenInvalid(reason)
    if kind == "retry":
        return Retry(reason, _retry_after(exc.http_response, time.time() if now is None else now))
    return Failed(_clean(f"{reason}: {exc}", token))


# ---------------------------------------------------------------------- message building


def build_message(token: str, req: FcmRequest) -> messaging.Message:
    """The firebase-admin ``Message`` to ``token`` for a request :mod:`bridge.push.fcm_layout` laid
    out. Each of its blocks names its fields as the firebase-admin class of that block does
    (``Notification``, ``AndroidConfig`` with ``AndroidNotification``, ``WebpushConfig`` with
    ``WebpushNotification``), so each becomes one of them as it is; a field the class does not
    have raises TypeError."""
    android = webpush = None
    if req.android is not None:
        note = req.android.get("notification")
        android = messaging.AndroidConfig(
            **{**req.android, "notification": _part(messaging.AndroidNotification, note)}
        )
    if req.webpush is not None:
        note = req.webpush.get("notification")
        webpush = messaging.WebpushConfig(
            **{**req.webpush, "notification": _part(messaging.WebpushNotification, note)}
        )
    message = messaging.Message(
        data=req.data,
        notification=_part(messaging.Notification, req.notification),
        android=android,
        webpush=webpush,
    )
    # Apps hand us FCM registration tokens, not installation ids (``fid``); firebase-admin 7
    # warns on ``Message(token=...)`` at every construction, so set the attribute it encodes.
    message.token = token
    return message


def _part(cls: Callable[..., _T], fields: Mapping[str, Any] | None) -> _T | None:
    return None if fields is None else cls(**fields)


# ---------------------------------------------------------------------- HTTP plumbing


def _origin(url: str) -> tuple[str, str, int | None]:
    u = httpx.URL(url)
    return u.scheme, u.host, u.port


class _TokenRequest:
    """google-auth's requests transport with a timeout (its default is 120 s) and our CA.

    ``BRIDGE_FCM_CA_FILE`` is trusted for token requests only when the token endpoint is served
    from the FCM endpoint's origin (the simulator); Google's token endpoint keeps the default
    trust. The CA goes with each request because ``Session.verify`` loses to
    ``REQUESTS_CA_BUNDLE``.
    """

    def __init__(
        self, session: requests.Session, timeout: float, ca_file: str | None, ca_origin: str
    ) -> None:
        self._inner = google_requests.Request(session)
        self._timeout = timeout
        self._ca_file = ca_file
        self._ca_origin = _origin(ca_origin)

    def __call__(self, url: str, *args: Any, **kwargs: Any) -> Any:
        kwargs["timeout"] = kwargs.get("timeout") or self._timeout
        if self._ca_file and _origin(url) == self._ca_origin:
            kwargs["verify"] = self._ca_file
        return self._inner(url, *args, **kwargs)


def _status_error(url: str, status: int, headers: Any, content: bytes) -> httpx.HTTPStatusError:
    """FCM's error answer in the shape firebase-admin parses (only on the error path)."""
    request = httpx.Request("POST", url)
    response = httpx.Response(
        status, headers=list(headers.items()), content=content, request=request
    )
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=response)


class FcmProvider:
    """Sends through FCM HTTP v1: one ``messages:send`` request per push, on kept-alive
    connections (at most ``max_connections``).

    Each instance registers its own firebase-admin app (a unique name in the library's global
    registry) and deletes it in :meth:`close`.
    """

    name = "fcm"

    def __init__(
        self,
        credentials_file: str | Path,
        *,
        fcm_url: str | None = None,
        ca_file: str | None = None,
        timeout: float = 10.0,
        max_connections: int = MAX_CONNECTIONS,
        refresh_margin: float = REFRESH_MARGIN,
        config_log_interval: float = CONFIG_LOG_INTERVAL,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        cert = credentials.Certificate(str(credentials_file))
        self.project_id: str = cert.project_id
        self._timeout = timeout
        self._max_connections = max_connections
        self._refresh_margin = max(refresh_margin, REFRESH_MARGIN)
        self._config_errors = ConfigErrors(logger, config_log_interval)
        self._credential = cert.get_credential()
        self._session = requests.Session()
        self._token_request = _TokenRequest(
            self._session, timeout, ca_file, fcm_url or "https://fcm.googleapis.com"
        )
        self._ssl: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )
        self._app = firebase_admin.initialize_app(
            cert,
            {"httpTimeout": timeout, "projectId": self.project_id},
            name=f"push-bridge-fcm-{uuid.uuid4().hex[:12]}",
        )
        self._service = messaging._get_messaging_service(self._app)
        lib_client = getattr(self._service, "_async_client", None)
        self._lib_http = getattr(lib_client, "_async_client", None)
        lib_headers = getattr(self._service, "_fcm_headers", None)
        if (
            not isinstance(self._lib_http, httpx.AsyncClient)
            or not isinstance(lib_headers, dict)
            or not hasattr(self._service, "_handle_fcm_httpx_error")
        ):
            raise RuntimeError(
                f"firebase_admin {firebase_admin.__version__}: unknown messaging internals, cannot "
                "send through it"
            )
        self._url = send_url(fcm_url or "https://fcm.googleapis.com", self.project_id)
        #: The library's own headers (API format version, client name), ours, and the bearer
        #: token: rebuilt only when the token changes.
        self._base_headers = {
            **lib_headers,
            "Content-Type": "application/json; charset=UTF-8",
        }
        self._headers: dict[str, str] = {}
        self._headers_token: str | None = None
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresh_lock = asyncio.Lock()
        self._refresh_task: asyncio.Task[None] | None = None
        self._token_generation = 0
        self._stale = False
        self._closed = False
        #: Requests made, and OAuth token refreshes done (both for tests/bench).
        self.requests_sent = 0
        self.token_refreshes = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> FcmProvider:
        """Build from ``BRIDGE_FCM_CREDENTIALS_FILE``, ``BRIDGE_FCM_URL``, ``BRIDGE_FCM_CA_FILE``."""
        if not settings.fcm_credentials_file:
            raise ValueError("BRIDGE_FCM_CREDENTIALS_FILE is not set")
        return cls(
            settings.fcm_credentials_file,
            fcm_url=settings.fcm_url,
            ca_file=settings.fcm_ca_file,
            timeout=settings.push_timeout,
        )

    @property
    def app_name(self) -> str:
        """Name of this provider's firebase-admin app (unique per instance)."""
        return str(self._app.name)

    # ------------------------------------------------------------------ sending

    async def send(self, notification: Notification) -> SendResult:
        """Send one notification and map FCM's answer."""
        if notification.fcm is None:
            return Failed("no FCM payload composed")
        if self._closed:
            return Retry("provider_closed")
        token = notification.token
        try:
            message = {
                "message": self._service.encode_message(build_message(token, notification.fcm))
            }
            body = json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (ValueError, TypeError) as exc:
            return Failed(_clean(f"invalid message: {exc}", token))
        try:
            # A token refresh and one request, each bounded by the timeout; this is a safety net.
            async with asyncio.timeout(2 * self._timeout + 1):
                await self._ensure_token()
                return await self._post(body.encode(), token)
        except TimeoutError:
            return Retry("provider_closed" if self._closed else "timeout")
        except google.auth.exceptions.GoogleAuthError as exc:
            logger.warning("FCM OAuth token refresh failed: %s: %s", type(exc).__name__, exc)
            return Retry("oauth_refresh_failed")
        except aiohttp.ClientConnectorError:
            return Retry("provider_closed" if self._closed else "unavailable")
        except (aiohttp.ClientError, OSError):
            # A dropped connection (before or after the request went out) or a closed pool.
            return Retry("provider_closed" if self._closed else "unknown")

    async def _post(self, body: bytes, token: str) -> SendResult:
        http = self._http
        if http is None:
            # Made on first use: an aiohttp session belongs to the running loop.
            http = self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ssl=self._ssl),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        self.requests_sent += 1
        async with http.post(self._url, data=body, headers=self._auth_headers()) as response:
            content = await response.read()
            if response.status == 200:
                try:
                    name = json.loads(content).get("name")
                except (ValueError, AttributeError):
                    name = None
                if isinstance(name, str):
                    return Delivered(name)
                return Failed("FCM answered 200 without a message name")
            error = _status_error(self._url, response.status, response.headers, content)
        return self._result(self._service._handle_fcm_httpx_error(error), token)

    def _auth_headers(self) -> dict[str, str]:
        token = self._credential.token
        if token != self._headers_token:
            self._headers = {**self._base_headers, "Authorization": f"Bearer {token}"}
            self._headers_token = token
        return self._headers

    def _result(self, exc: BaseException | None, token: str) -> SendResult:
        if exc is None:
            return Failed("no result")
        if isinstance(exc, fb.UnauthenticatedError) and not isinstance(
            exc, messaging.ThirdPartyAuthError
        ):
            # FCM refused our access token: fetch a new one before the next request.
            self._stale = True
        result = result_for_error(exc, token)
        reason = result.reason.split(":")[0] if isinstance(result, Failed) else ""
        if reason in CONFIG_ERRORS:
            self._config_errors.report(
                reason,
                "FCM refuses pushes with %s: %s (project %s).",
                reason,
                CONFIG_ERRORS[reason],
                self.project_id,
            )
        return result

    # ------------------------------------------------------------------ OAuth token

    def _seconds_left(self) -> float:
        cred = self._credential
        if not cred.token or cred.expiry is None:
            return -math.inf
        # google-auth keeps ``expiry`` as a naive UTC datetime.
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        return float((cred.expiry - now).total_seconds())

    async def _ensure_token(self) -> None:
        left = self._seconds_left()
        if self._stale or left <= MIN_VALIDITY:
            await self._refresh()
        elif left <= self._refresh_margin and (
            self._refresh_task is None or self._refresh_task.done()
        ):
            # Still good for a while: refresh in the background and send with the current one.
            self._refresh_task = asyncio.get_running_loop().create_task(self._refresh_quietly())
            self._tasks.add(self._refresh_task)
            self._refresh_task.add_done_callback(self._tasks.discard)

    async def _refresh(self) -> None:
        generation = self._token_generation
        async with self._refresh_lock:
            if generation != self._token_generation:
                return  # refreshed while we waited for the lock
            # google-auth's refresh is blocking HTTP: keep it off the event loop.
            await asyncio.to_thread(self._credential.refresh, self._token_request)
            self._token_generation += 1
            self._stale = False
            self.token_refreshes += 1
            logger.debug("FCM access token refreshed (%.0f s left)", self._seconds_left())

    async def _refresh_quietly(self) -> None:
        try:
            await self._refresh()
        except google.auth.exceptions.GoogleAuthError as exc:
            logger.warning("FCM OAuth token refresh failed: %s: %s", type(exc).__name__, exc)

    # ------------------------------------------------------------------ shutdown

    async def close(self) -> None:
        """Close the connections (sends in flight answer ``Retry("provider_closed")``), stop a
        background token refresh, delete our firebase-admin app."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        assert self._lib_http is not None
        await self._lib_http.aclose()
        # delete_app closes the service with asyncio.run(): it needs a thread without a loop.
        await asyncio.to_thread(firebase_admin.delete_app, self._app)
        self._session.close()


def send_url(fcm_url: str, project_id: str) -> str:
    """The ``messages:send`` URL for ``BRIDGE_FCM_URL``: a base URL, or the whole send URL."""
    url = fcm_url.rstrip("/")
    if url.endswith("messages:send"):
        return url.replace("{project}", project_id).replace("{project_id}", project_id)
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return f"{url}/v1/projects/{project_id}/messages:send"
