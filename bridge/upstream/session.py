"""One device's IMKIT Socket.IO session: connect, ``conf``, ``auth2``, events, and its own reconnects.

The session runs a supervisor task that loops: take a token from the process-wide
:class:`~bridge.upstream.ratelimit.ConnectLimiter`, open a websocket with a fresh
``socketio.AsyncClient`` (python-socketio's own reconnection is off), send ``conf`` and ``auth2``
from the connect handler, and wait for the connection to end. How it ended decides what follows:

- ``auth2`` answered ``RC: 401``: park in ``auth_failed`` until
  :meth:`UpstreamSession.update_token` brings a new token;
- the server disconnected while ``auth2`` was unanswered: IMKIT may do that after a failed auth,
  but a restart looks the same, so ask the owner's ``token_refused`` (``GET /me``): park only if
  IMKIT refuses the token there, otherwise back off and retry like any other disconnect;
- a new token while connecting or live: reconnect at once with it;
- anything else (connect error, no ack in time, dropped socket, ping timeout, server disconnect
  of a live socket): ``backoff`` with full jitter, then connect again.

Decoded events go to the owner's callback as the typed models of :mod:`bridge.upstream.protocol`,
one at a time and in arrival order; nothing an event or a callback does can end the session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import socketio

from bridge._backoff import Backoff
from bridge.models import SessionState
from bridge.upstream import decode_cache
from bridge.upstream.idle import IdleWatch
from bridge.upstream.protocol import EVENTS, DecodeError, decode_payload
from bridge.upstream.ratelimit import ConnectLimiter
from bridge.upstream.transport import SocketIOClient, release

log = logging.getLogger(__name__)

#: ``(event name, payload parsed by protocol.parse_event)``
EventHandler = Callable[[str, Any], Awaitable[None]]
#: ``(session, new state, short stable reason label)``
StateHandler = Callable[["UpstreamSession", SessionState, str], None]
#: ``(client token)`` -> True only when IMKIT positively refuses the token (e.g. ``GET /me`` 401).
TokenCheck = Callable[[str], Awaitable[bool]]

#: Reason labels passed to the state handler (the pool counts reconnects by them).
REASONS: tuple[str, ...] = (
    "start",
    "connected",
    "authenticated",
    "connect_error",
    "auth_timeout",
    "auth_error",
    "auth_failed",
    "dropped",
    "server_disconnect",
    "token_updated",
    "error",
    "closed",
)

#: Seconds a disconnect may take before the socket is simply abandoned.
_TEARDOWN_TIMEOUT = 5.0

#: Engine.IO's reason for a socket lost without a goodbye (dropped connection, ping timeout).
_TRANSPORT_ERROR: str = socketio.AsyncClient.reason.TRANSPORT_ERROR
#: The events a session hands on (a frozenset: looked up once per packet).
_EVENTS: frozenset[str] = frozenset(EVENTS)


class _LibraryLogger(logging.LoggerAdapter[logging.Logger]):
    """python-socketio/engineio log whole packets, the ``auth2`` token included, at INFO.

    Their loggers get this adapter, which passes errors only: their warnings repeat, once per
    socket, what the session reports itself.
    """

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.ERROR and self.logger.isEnabledFor(level)


_LIB_LOG = _LibraryLogger(logging.getLogger(__name__ + ".sio"), {})


@dataclass(frozen=True, slots=True)
class _End:
    """How one connection ended, and what the supervisor does next."""

    kind: Literal["retry", "auth_failed", "token", "check_token"]
    reason: str


class _Connection:
    """One attempt: its client, how it ended, and where the ``auth2`` handshake stands."""

    __slots__ = ("sio", "token", "done", "auth_task", "connected", "auth_sent", "live_at", "closing")

    def __init__(self, sio: socketio.AsyncClient, token: str) -> None:
        self.sio = sio
        #: The client token this attempt authenticates with.
        self.token = token
        self.done: asyncio.Future[_End] = asyncio.get_running_loop().create_future()
        self.auth_task: asyncio.Task[None] | None = None
        #: The namespace is connected (before that, a failure is connect()'s to report).
        self.connected = False
        self.auth_sent = False
        self.live_at: float | None = None
        #: Set once we tear it down ourselves: its disconnect is not news any more.
        self.closing = False

    def forget_auth(self, task: asyncio.Task[None]) -> None:
        if self.auth_task is task:
            self.auth_task = None

    def finish(self, end: _End) -> None:
        if not self.done.done():
            self.done.set_result(end)


def _ack_result(ack: Any) -> tuple[int | None, str | None]:
    """``(RC, result.client)`` of an ``auth2`` ack (plain or base64), ``(None, None)`` if unreadable."""
    try:
        obj = decode_payload(ack)
    except ValueError:  # DecodeError, or bytes that are not ASCII
        return None, None
    if not isinstance(obj, dict):
        return None, None
    rc_raw = obj.get("RC")
    rc: int | None
    if isinstance(rc_raw, int) and not isinstance(rc_raw, bool):
        rc = rc_raw
    elif isinstance(rc_raw, str) and rc_raw.strip().lstrip("-").isdigit():
        rc = int(rc_raw)
    else:
        rc = None
    result = obj.get("result")
    client = result.get("client") if isinstance(result, dict) else None
    if isinstance(client, dict):  # tolerate a whole Client object
        client = client.get("_id") or client.get("id")
    return rc, (str(client) if client not in (None, "") else None)


def _describe(exc: BaseException) -> str:
    # DecodeError messages are written to be safe to log; others may quote the payload.
    return str(exc) if isinstance(exc, DecodeError) else type(exc).__name__


class UpstreamSession:
    """One device's IMKIT socket, kept connected and authenticated by its own supervisor task.

    Arguments: ``device_id`` (sent as ``IM-Device-ID``/``deviceId``), ``client_token`` (the IMKIT
    client token, a secret: never logged or shown in ``repr``), ``url`` (chat server base URL),
    ``http`` (the process's shared session from :func:`bridge.upstream.transport.make_http_session`),
    ``limiter`` (the process-wide connect limiter), ``on_event`` (awaited with each decoded event),
    ``on_state`` (called on every state change with a reason label from :data:`REASONS`),
    ``on_malformed`` (called with the event name of a payload that could not be decoded),
    ``token_refused`` (asked after a server disconnect that left ``auth2`` unanswered; the session
    parks only when it answers True, and without it such a disconnect is retried),
    ``client_key`` (IMKIT client key, sent in the ``auth2`` headers), ``encoding`` (``base64``
    sends ``conf``), ``header_style`` (``new``: ``IM-CLIENT-KEY``/``IM-Authorization``; ``old``:
    ``CLIENT_KEY``/``Authorization``), ``auth_timeout`` (seconds to wait for the ``auth2`` ack),
    ``connect_timeout`` (seconds for the websocket and namespace handshake), ``backoff`` (retry
    delays), ``stable_after`` (seconds live after which the backoff starts over), ``idle_watch``
    (the process's :class:`bridge.upstream.idle.IdleWatch`, which ends a silent socket with one
    timer for all of them; without it, each read has a timeout of its own).
    """

    def __init__(
        self,
        *,
        device_id: str,
        client_token: str,
        url: str,
        http: aiohttp.ClientSession,
        limiter: ConnectLimiter,
        on_event: EventHandler,
        on_state: StateHandler | None = None,
        on_malformed: Callable[[str], None] | None = None,
        token_refused: TokenCheck | None = None,
        client_key: str | None = None,
        encoding: Literal["base64", "none"] = "base64",
        header_style: Literal["new", "old"] = "new",
        auth_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        backoff: Backoff | None = None,
        stable_after: float = 10.0,
        idle_watch: IdleWatch | None = None,
    ) -> None:
        if encoding not in ("base64", "none"):
            raise ValueError("encoding must be 'base64' or 'none'")
        if header_style not in ("new", "old"):
            raise ValueError("header_style must be 'new' or 'old'")
        self.device_id = device_id
        self._token = client_token
        self._url = url
        self._http = http
        self._limiter = limiter
        self._on_event = on_event
        self._on_state = on_state
        self._on_malformed = on_malformed
        self._token_refused = token_refused
        self._client_key = client_key
        self._encoding = encoding
        self._header_style = header_style
        self._auth_timeout = auth_timeout
        self._connect_timeout = connect_timeout
        self._backoff = backoff or Backoff()
        self._stable_after = stable_after
        self._idle_watch = idle_watch

        self.state = SessionState.CONNECTING
        #: The IMKIT client id from the last successful ``auth2`` ack.
        self.client_id: str | None = None
        #: ``time.monotonic()`` when the session last went live.
        self.live_since: float | None = None
        #: Connection attempts made (each went through the limiter).
        self.connects_total = 0
        #: Events skipped because their payload could not be decoded.
        self.malformed_total = 0

        self._task: asyncio.Task[None] | None = None
        self._conn: _Connection | None = None
        # Resolved by update_token() while _wait_for_token() waits; made only then (an
        # asyncio.Event would hold a deque, ~600 bytes, for every session all the time).
        self._wake: asyncio.Future[None] | None = None
        self._token_changed = False
        self._handshaking = False  # holds one of the limiter's handshake slots
        self._closed = False
        # One event at a time, in arrival order (Engine.IO hands each message to its own task).
        self._event_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"UpstreamSession(device_id={self.device_id!r}, state={self.state.value!r})"

    # ------------------------------------------------------------------ owner's API

    def start(self) -> None:
        """Spawn the supervisor task (idempotent; a closed session stays closed)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"upstream-session:{self.device_id}"
            )

    def update_token(self, token: str) -> None:
        """Use a new client token: leave ``auth_failed`` (or cut a backoff short) at once, or
        reconnect with it if a connection is open or opening."""
        self._token = token
        if self._closed:
            return
        conn = self._conn
        if conn is not None and not conn.done.done():
            conn.finish(_End("token", "token_updated"))
        else:
            self._token_changed = True
            if self._wake is not None and not self._wake.done():
                self._wake.set_result(None)

    async def close(self) -> None:
        """Disconnect and stop for good (idempotent); the state ends ``closed``, with no callbacks after."""
        self._closed = True
        conn = self._conn
        if conn is not None:
            # Ends the attempt even if the cancel below is lost: Python 3.11's wait_for (inside
            # socketio's connect) drops a cancellation that races the connect completing, and the
            # attempt would then wait on a live socket for ever (and so would this close).
            conn.finish(_End("retry", "closed"))
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
            # The finished task keeps its CancelledError, whose traceback holds our frames and so
            # this session: a cycle a frozen heap would keep for good (see transport.release).
            self._task = None
        self._set_state(SessionState.CLOSED, "closed")

    # ------------------------------------------------------------------ supervisor

    async def _run(self) -> None:
        attempt = 0
        reason = "start"
        while not self._closed:
            try:
                await self._limiter.begin()
                self._handshaking = True
                await self._limiter.acquire()
                self._set_state(SessionState.CONNECTING, reason)
                end, live_for = await self._attempt()
            except Exception:  # a bug must not end the session: log it and retry later
                log.exception("upstream session %s: unexpected error", self.device_id)
                end, live_for = _End("retry", "error"), None
            finally:
                self._end_handshake()
            if self._closed:
                return  # close() came meanwhile (its cancel may have been lost: see close)
            if end.kind == "check_token":
                end = await self._check_token(end)
            if live_for is not None and live_for >= self._stable_after:
                attempt = 0
            if end.kind == "token":
                attempt, reason = 0, end.reason
                continue
            if end.kind == "auth_failed":
                log.info("upstream session %s: auth2 rejected, waiting for a new token", self.device_id)
                self._set_state(SessionState.AUTH_FAILED, end.reason)
                await self._wait_for_token(None)
                attempt, reason = 0, "token_updated"
                continue
            delay = self._backoff.delay(attempt)
            attempt += 1
            log.debug(
                "upstream session %s: %s, retry %d in %.2fs", self.device_id, end.reason, attempt, delay
            )
            self._set_state(SessionState.BACKOFF, end.reason)
            if await self._wait_for_token(delay):
                attempt, reason = 0, "token_updated"
            else:
                reason = end.reason

    async def _check_token(self, end: _End) -> _End:
        """The server hung up on an unanswered ``auth2``: a failed auth, or only a restart?"""
        token = self._token
        if self._token_changed:  # a new token came meanwhile: it gets its own try
            return _End("retry", end.reason)
        refused = False
        if self._token_refused is not None:
            try:
                refused = await self._token_refused(token)
            except Exception:  # the check failing says nothing about the token
                log.exception("upstream session %s: token check failed", self.device_id)
        if refused and token == self._token:
            return _End("auth_failed", "auth_failed")
        return _End("retry", end.reason)

    async def _wait_for_token(self, delay: float | None) -> bool:
        """Wait for :meth:`update_token` up to ``delay`` seconds (None: forever); True if it came."""
        if not self._token_changed:
            self._wake = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(delay):
                    await self._wake
            except TimeoutError:
                return False
            finally:
                self._wake = None
        self._token_changed = False
        return True

    async def _attempt(self) -> tuple[_End, float | None]:
        """One connection, from connect to its end; returns how it ended and how long it was live."""
        self.connects_total += 1
        sio = SocketIOClient(
            reconnection=False,
            handle_sigint=False,
            http_session=self._http,
            logger=_LIB_LOG,
            engineio_logger=_LIB_LOG,
            idle_watch=self._idle_watch,
        )
        conn = _Connection(sio, self._token)
        self._wire(conn)
        self._conn = conn
        self._token_changed = False
        try:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await sio.connect(
                        self._url,
                        headers={},  # a fresh dict: engineio mutates it, the default is shared
                        transports=["websocket"],
                        wait_timeout=self._connect_timeout,
                    )
            except Exception as exc:  # socketio.ConnectionError, TimeoutError, OSError, ...
                log.debug("upstream session %s: connect failed: %s", self.device_id, type(exc).__name__)
                conn.finish(_End("retry", "connect_error"))
            if self._closed:  # close() came while connecting (see close)
                conn.finish(_End("retry", "closed"))
            end = await conn.done
            live_for = time.monotonic() - conn.live_at if conn.live_at is not None else None
            return end, live_for
        finally:
            self._conn = None
            await self._teardown(conn)

    def _wire(self, conn: _Connection) -> None:
        sio = conn.sio

        async def on_connect() -> None:
            conn.connected = True
            if not conn.closing and not conn.done.done():
                # connect() only returns after this handler: auth2 must not be awaited in here.
                task = asyncio.get_running_loop().create_task(self._authenticate(conn))
                conn.auth_task = task
                task.add_done_callback(conn.forget_auth)  # a finished task holds ~600 bytes

        async def on_disconnect(reason: str = _TRANSPORT_ERROR) -> None:
            self._disconnected(conn, reason)

        async def on_event(name: str, *args: Any) -> None:
            if name in _EVENTS and not conn.closing and not self._closed:
                await self._dispatch(name, args[0] if args else None)

        sio.on("connect", on_connect)
        sio.on("disconnect", on_disconnect)
        # One catch-all handler, not one closure per event name (~4 KiB per session); events we
        # do not know are dropped, as python-socketio drops events without a handler.
        sio.on("*", on_event)

        # python-socketio reports no disconnect at all for a socket that drops before connect()
        # has returned (it is not "connected" yet); Engine.IO's own event always fires.
        original = sio.eio.handlers.get("disconnect")

        async def on_eio_disconnect(reason: str = _TRANSPORT_ERROR) -> None:
            self._disconnected(conn, reason)
            if original is not None:
                await original(reason)

        sio.eio.on("disconnect", on_eio_disconnect)

    async def _authenticate(self, conn: _Connection) -> None:
        sio = conn.sio
        self._set_conn_state(conn, SessionState.AUTHENTICATING, "connected")
        token = conn.token
        try:
            if self._encoding == "base64":
                await sio.emit("conf", {"encoding": "base64"})  # its ack carries nothing we need
            conn.auth_sent = True
            ack = await sio.call("auth2", (token, self._auth_headers(token)), timeout=self._auth_timeout)
        except socketio.exceptions.TimeoutError:
            conn.finish(_End("retry", "auth_timeout"))
            return
        except socketio.exceptions.SocketIOError:  # the namespace went away under us
            conn.finish(_End("retry", "dropped"))
            return
        rc, client = _ack_result(ack)
        if rc == 0:
            if conn.closing or conn.done.done():
                return
            conn.live_at = time.monotonic()
            self.client_id = client
            self.live_since = conn.live_at
            self._set_conn_state(conn, SessionState.LIVE, "authenticated")
        elif rc == 401:
            conn.finish(_End("auth_failed", "auth_failed"))
        else:
            log.info("upstream session %s: auth2 answered RC %s", self.device_id, rc)
            conn.finish(_End("retry", "auth_error"))

    def _auth_headers(self, token: str) -> dict[str, str]:
        key_name, auth_name = (
            ("IM-CLIENT-KEY", "IM-Authorization") if self._header_style == "new" else ("CLIENT_KEY", "Authorization")
        )
        headers: dict[str, str] = {}
        if self._client_key is not None:
            headers[key_name] = self._client_key
        headers[auth_name] = token
        headers["IM-Device-ID"] = self.device_id
        headers["deviceId"] = self.device_id
        return headers

    def _disconnected(self, conn: _Connection, reason: str) -> None:
        if conn.closing or conn.done.done() or not conn.connected:
            return
        # Anything but a transport error is the server's doing ("client disconnect" here means
        # python-socketio closing Engine.IO after the server disconnected the namespace).
        if reason == _TRANSPORT_ERROR:
            conn.finish(_End("retry", "dropped"))
        elif conn.auth_sent and conn.live_at is None:
            conn.finish(_End("check_token", "server_disconnect"))
        else:
            conn.finish(_End("retry", "server_disconnect"))

    async def _teardown(self, conn: _Connection) -> None:
        conn.closing = True
        if conn.auth_task is not None and not conn.auth_task.done():
            conn.auth_task.cancel()
        try:
            # Shielded: a close() arriving mid-teardown must not leave a half-closed socket running.
            await asyncio.wait_for(asyncio.shield(conn.sio.disconnect()), _TEARDOWN_TIMEOUT)
        except Exception as exc:  # an already broken socket: nothing left to close cleanly
            log.debug("upstream session %s: disconnect: %s", self.device_id, type(exc).__name__)
        finally:
            release(conn.sio)  # no cycles left: freed at once, even if the heap was frozen with it

    # ------------------------------------------------------------------ events and states

    async def _dispatch(self, name: str, raw: Any) -> None:
        try:
            # Once per packet per process: a room's message reaches every member's session.
            payload = decode_cache.parse_event(name, raw)
        except Exception as exc:  # DecodeError/ValueError, or anything a hostile payload triggers
            self.malformed_total += 1
            log.warning(
                "upstream session %s: malformed %r event skipped: %s", self.device_id, name, _describe(exc)
            )
            if self._on_malformed is not None:
                try:
                    self._on_malformed(name)
                except Exception:
                    log.exception("upstream session %s: on_malformed failed", self.device_id)
            return
        async with self._event_lock:
            if self._closed:
                return
            try:
                await self._on_event(name, payload)
            except Exception:
                log.exception("upstream session %s: event handler failed for %r", self.device_id, name)

    def _set_conn_state(self, conn: _Connection, state: SessionState, reason: str) -> None:
        # Only the current, still open connection may move the session's state.
        if conn is self._conn and not conn.closing and not conn.done.done():
            self._set_state(state, reason)

    def _end_handshake(self) -> None:
        if self._handshaking:
            self._handshaking = False
            self._limiter.end()

    def _set_state(self, state: SessionState, reason: str) -> None:
        if state is SessionState.LIVE:
            self._end_handshake()
        if state is self.state:
            return
        if self._closed and state is not SessionState.CLOSED:
            return
        self.state = state
        log.debug("upstream session %s: %s (%s)", self.device_id, state.value, reason)
        if self._on_state is not None:
            try:
                self._on_state(self, state, reason)
            except Exception:
                log.exception("upstream session %s: on_state failed", self.device_id)
