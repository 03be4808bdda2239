"""FCM provider: firebase-admin's ``send_each_async``, micro-batched, with the OAuth refresh off the loop.

firebase-admin is used for what it does well (message encoding, the v1 call, error parsing), and
its HTTP client on *our* named app is configured here, because out of the box it:

- refreshes the OAuth token synchronously inside the event loop (``before_request`` and on 401):
  we refresh with ``asyncio.to_thread`` before the token gets stale and send with an httpx auth
  that only applies the current token and never refreshes;
- retries 500/503 with sleeps of its own while ignoring 429 and ``Retry-After``, and fails a
  dropped HTTP/2 connection as ``UnknownError``: our client has no retries, and every temporary
  failure comes back as :class:`Retry` (with ``Retry-After`` as ``not_before``) so the dispatcher's
  one retry policy decides;
- knows only Google's URL and the system CAs: ``BRIDGE_FCM_URL`` and ``BRIDGE_FCM_CA_FILE`` set the
  messaging service's URL and our client's ``verify`` (never ``SSL_CERT_FILE``, which is global).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import ssl
import time
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

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

#: ``send_each_async`` takes at most this many messages per call.
MAX_BATCH = 500
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


class _BearerAuth(httpx.Auth):
    """Applies the current access token; refreshing is the provider's job, never this flow's."""

    def __init__(self, credential: Any) -> None:
        self._credential = credential

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._credential.token}"
        yield request


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


@dataclass(slots=True)
class _Pending:
    message: messaging.Message
    token: str
    future: asyncio.Future[SendResult]


class FcmProvider:
    """Sends through FCM HTTP v1; concurrent sends share ``send_each_async`` calls (≤ 500 each).

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
        batch_delay: float = 0.002,
        max_batch: int = MAX_BATCH,
        refresh_margin: float = REFRESH_MARGIN,
        config_log_interval: float = CONFIG_LOG_INTERVAL,
    ) -> None:
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be within 1..{MAX_BATCH}")
        cert = credentials.Certificate(str(credentials_file))
        self.project_id: str = cert.project_id
        self._timeout = timeout
        self._batch_delay = batch_delay
        self._max_batch = max_batch
        self._refresh_margin = max(refresh_margin, REFRESH_MARGIN)
        self._config_errors = ConfigErrors(logger, config_log_interval)
        self._credential = cert.get_credential()
        self._session = requests.Session()
        self._token_request = _TokenRequest(
            self._session, timeout, ca_file, fcm_url or "https://fcm.googleapis.com"
        )
        verify: ssl.SSLContext | bool = (
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
        if not isinstance(self._lib_http, httpx.AsyncClient) or not hasattr(
            self._service, "_fcm_url"
        ):
            raise RuntimeError(
                f"firebase_admin {firebase_admin.__version__}: unknown messaging internals, cannot "
                "configure its HTTP client"
            )
        self._http = httpx.AsyncClient(
            http2=True,
            verify=verify,
            timeout=timeout,
            auth=_BearerAuth(self._credential),
            headers={
                k: v for k, v in self._lib_http.headers.items() if k.lower().startswith("x-goog")
            },
        )
        # Our own app's service object: swap in a client with our CA, no retries, non-refreshing auth.
        lib_client._async_client = self._http  # type: ignore[union-attr]  # checked above
        if fcm_url:
            self._service._fcm_url = send_url(fcm_url, self.project_id)
        self._pending: list[_Pending] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresh_lock = asyncio.Lock()
        self._refresh_task: asyncio.Task[None] | None = None
        self._token_generation = 0
        self._stale = False
        self._closed = False
        #: ``send_each_async`` calls made, and OAuth token refreshes done (both for tests/bench).
        self.batches_sent = 0
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
        """Send one notification (joining the current micro-batch) and map FCM's answer."""
        if notification.fcm is None:
            return Failed("no FCM payload composed")
        if self._closed:
            return Retry("provider_closed")
        token = notification.token
        try:
            message = build_message(token, notification.fcm)
            # Validate now: an invalid message would fail the whole batch in send_each_async.
            self._service.encode_message(message)
        except (ValueError, TypeError) as exc:
            return Failed(_clean(f"invalid message: {exc}", token))
        loop = asyncio.get_running_loop()
        pending = _Pending(message, token, loop.create_future())
        self._pending.append(pending)
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = loop.call_later(self._batch_delay, self._flush)
        return await pending.future

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        while self._pending:
            batch = [p for p in self._pending[: self._max_batch] if not p.future.done()]
            del self._pending[: self._max_batch]
            if batch:
                task = asyncio.get_running_loop().create_task(self._send_batch(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _send_batch(self, batch: list[_Pending]) -> None:
        self.batches_sent += 1
        results: list[SendResult]
        try:
            # A token refresh and one request, each bounded by the timeout; this is a safety net.
            async with asyncio.timeout(2 * self._timeout + 1):
                await self._ensure_token()
                response = await messaging.send_each_async(
                    [p.message for p in batch], app=self._app
                )
            results = [
                Delivered(r.message_id) if r.success else self._result(r.exception, p.token)
                for r, p in zip(response.responses, batch, strict=True)
            ]
        except TimeoutError:
            results = [Retry("timeout")] * len(batch)
        except google.auth.exceptions.GoogleAuthError as exc:
            logger.warning("FCM OAuth token refresh failed: %s: %s", type(exc).__name__, exc)
            results = [Retry("oauth_refresh_failed")] * len(batch)
        except asyncio.CancelledError:
            self._settle(batch, [Retry("provider_closed")] * len(batch))
            raise
        except Exception as exc:  # noqa: BLE001 - send_each_async wraps transport trouble; map, never raise
            results = [self._result(exc, p.token) for p in batch]
        self._settle(batch, results)

    @staticmethod
    def _settle(batch: list[_Pending], results: list[SendResult]) -> None:
        for p, r in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(r)

    def _result(self, exc: BaseException | None, token: str) -> SendResult:
        if exc is None:
            return Failed("no result")
        if isinstance(exc, fb.UnauthenticatedError) and not isinstance(
            exc, messaging.ThirdPartyAuthError
        ):
            # FCM refused our access token: fetch a new one before the next batch.
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
        """Answer queued sends with Retry, stop in-flight batches, delete our firebase-admin app."""
        if self._closed:
            return
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._settle(self._pending, [Retry("provider_closed")] * len(self._pending))
        self._pending.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.aclose()
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
