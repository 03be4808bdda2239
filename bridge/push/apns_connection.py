"""aioapns' HTTP/2 connection to APNs, with the fixes the bridge needs (its protocol subclass).

aioapns 4.0 behaves in ways a busy bridge cannot live with; every fix lives in the protocol
subclass made here per client (nothing in the library is changed globally):

- a hang when the server does not echo ``apns-id``: the end of the response stream now ends the
  request (the provider answers ``Retry("connection")``), its timeout being the backstop;
- per-stream entries kept until the connection closes: freed when the stream ends; a late answer
  to a timed-out send is dropped (aioapns would ``set_result`` on the cancelled future and lose
  the connection);
- HTTP/2 flow control: received data is never acknowledged (a connection stalls after ~64 KiB
  of error bodies), and a burst larger than the send window raises ``FlowControlError`` after
  the headers went out, leaking the stream; we acknowledge data as it arrives and hand out
  stream slots only while the send window has room;
- request headers encoded at a fraction of the cost (:func:`cheap_headers`);
- with token auth, a provider token signed per connection: every connection of the provider
  gets its one shared signer instead, so there is one provider token (refreshed every 30
  minutes) however many connections are open, as Apple asks.

Host and port are class attributes the pool reads (``protocol_class.APNS_SERVER``/``APNS_PORT``),
so each client gets its own subclass carrying them (:func:`protocol_class`), with its idle
timeout (aioapns closes idle connections after 10 s) and its map of ``retry-after`` answers.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, cast

from aioapns.connection import (
    APNsTLSClientProtocol,
    AuthorizationHeaderProvider,
    ChannelPool,
)
from aioapns.exceptions import ConnectionClosed
from h2.connection import H2Connection
from h2.exceptions import NoAvailableStreamIDError
from hpack import Encoder

#: Send window a request may need: h2's largest default DATA frame, well above Apple's 5 KiB.
_SEND_WINDOW = 16_384


class _Channels(ChannelPool):
    """aioapns' stream slots, handed out only while the connection's send window has room.

    aioapns sends the headers and then ``send_data`` raises ``FlowControlError`` on a burst,
    leaving the stream (and its slot) open for good; waiting here avoids that.
    """

    def __init__(self, conn: H2Connection, bound: int) -> None:
        super().__init__(bound)
        self._conn = conn
        self.window_opened = asyncio.Event()
        self.closed = False

    async def acquire(self) -> int:  # type: ignore[override]  # a stream id, as in aioapns
        while True:
            if self.closed:
                raise ConnectionClosed("connection closed")
            await asyncio.BoundedSemaphore.acquire(self)
            if self._conn.outbound_flow_control_window >= _SEND_WINDOW:
                break
            self.release()
            self.window_opened.clear()
            await self.window_opened.wait()
        # From here to aioapns' send_data nothing awaits, so the window is still there then.
        self._stream_id += 2
        if self._stream_id > H2Connection.HIGHEST_ALLOWED_STREAM_ID:
            raise NoAvailableStreamIDError()
        return self._stream_id


class _PlainEncoder(Encoder):
    """HPACK without Huffman coding: Huffman-coding every request's unique ``:path`` and
    ``apns-id`` was the largest single cost of a push (~9 % of the bridge's CPU at 1,000/s),
    to save ~50 bytes a request on a connection that carries ~4 KiB of payload a burst."""

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        return super().encode(headers, huffman=False)


def cheap_headers(conn: H2Connection) -> None:
    """Make ``conn`` encode request headers cheaply (bench/apns_headers.py: 260 -> 100 µs and
    306 -> 154 bytes a request).

    aioapns builds the same well-formed header list every time (tokens are checked at
    registration), so h2's per-request normalising and validating is pure cost. Normalising also
    forces ``authorization`` to "never indexed", which re-encodes the ~250-byte provider token on
    every request; indexing it is safe (HPACK matches whole fields only, and the token is random).
    """
    conn.config.normalize_outbound_headers = False
    conn.config.validate_outbound_headers = False
    conn.encoder = _PlainEncoder()


class _Protocol(APNsTLSClientProtocol):
    """aioapns' connection protocol with our endpoint and idle timeout, and the fixes above.

    Per-client subclasses (see :func:`protocol_class`) set the class attributes. Besides flow
    control: keep ``retry-after``; skip requests whose send our timeout cancelled (aioapns would
    call ``set_result`` on them and lose the connection); end a request whose stream ended
    without an answer it could match (no ``apns-id`` echoed), which also frees the per-stream
    entry aioapns otherwise keeps until the connection closes.
    """

    retry_after: ClassVar[dict[str, str]]
    #: The provider's one token signer (token auth), used instead of aioapns' per-connection one.
    shared_auth: ClassVar[AuthorizationHeaderProvider | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.shared_auth is not None:
            self.auth_provider = self.shared_auth
        self.free_channels: _Channels = _Channels(self.conn, 1000)
        cheap_headers(self.conn)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.outbound_flow_control_window >= _SEND_WINDOW:
            self.free_channels.window_opened.set()

    def _abandoned(self, notification_id: str) -> bool:
        """Forget a request nobody waits for any more (its send timed out)."""
        future = self.requests.get(notification_id)
        if future is None or not future.done():
            return False
        del self.requests[notification_id]
        self.request_statuses.pop(notification_id, None)
        self.retry_after.pop(notification_id, None)
        return True

    def on_response_received(self, headers: dict[bytes, bytes]) -> None:
        apns_id = headers.get(b"apns-id", b"").decode("utf8")
        if self._abandoned(apns_id):
            return
        value = headers.get(b"retry-after")
        if value is not None:
            self.retry_after[apns_id] = value.decode("latin-1")
        super().on_response_received(headers)

    def on_data_received(self, raw_data: bytes, stream_id: int) -> None:
        # aioapns never returns flow-control credit, so ~64 KiB of error bodies would stall the
        # connection; data_received flushes the WINDOW_UPDATE this queues.
        self.conn.acknowledge_received_data(len(raw_data), stream_id)
        notification_id = self.request_streams.get(stream_id)
        if notification_id is None or notification_id not in self.request_statuses:
            return  # unmatched (no apns-id echoed): on_stream_ended ends the request
        if self._abandoned(notification_id) or notification_id not in self.requests:
            del self.request_streams[stream_id]
            return
        super().on_data_received(raw_data, stream_id)

    def on_stream_ended(self, stream_id: int) -> None:
        notification_id = self.request_streams.pop(stream_id, None)
        future = self.requests.pop(notification_id, None) if notification_id else None
        if future is not None and not future.done():
            future.set_exception(ConnectionClosed("stream ended without a matching answer"))
        if notification_id:
            self.request_statuses.pop(notification_id, None)
        super().on_stream_ended(stream_id)

    def connection_lost(self, exc: Exception | None) -> None:
        self.requests = {k: f for k, f in self.requests.items() if not f.done()}
        self.free_channels.closed = True
        self.free_channels.window_opened.set()
        super().connection_lost(exc)


def protocol_class(
    host: str,
    port: int,
    idle_timeout: float,
    retry_after: dict[str, str],
    shared_auth: AuthorizationHeaderProvider | None,
) -> type[_Protocol]:
    """The protocol class for one aioapns client: its endpoint, idle timeout, the map the
    ``retry-after`` answers go to (by apns-id), and the provider's shared token signer."""
    attrs: dict[str, Any] = {
        "APNS_SERVER": host,
        "APNS_PORT": port,
        "INACTIVITY_TIME": idle_timeout,
        "retry_after": retry_after,
        "shared_auth": shared_auth,
    }
    return cast(type[_Protocol], type("ApnsBridgeProtocol", (_Protocol,), attrs))
