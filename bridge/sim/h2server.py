"""The HTTP/2 server connection the simulated APNs and FCM share.

A request is handed over whole (headers and body) once its stream ends; an answer is written with
:meth:`H2ServerConnection.respond`, its body held back until the client's flow-control window has
room for it. A simulator subclasses :class:`H2ServerConnection`, implements
:meth:`~H2ServerConnection.request_received`, and answers at once or from a task it
:meth:`~H2ServerConnection.spawn`\\ s (a stalled or slow answer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class H2Request:
    """One request as it arrived: its headers (pseudo-headers such as ``:path`` included) and body."""

    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)


class H2ServerConnection(asyncio.Protocol):
    """One client connection of a simulated HTTP/2 server: h2's state machine, whole requests in,
    answers out under flow control. Subclasses implement :meth:`request_received`."""

    def __init__(self, max_concurrent_streams: int) -> None:
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.transport: asyncio.Transport | None = None
        self._max_concurrent_streams = max_concurrent_streams
        self._streams: dict[int, H2Request] = {}
        #: Answer bodies (what is left of them) waiting for flow-control window, by stream.
        self._pending: dict[int, bytes] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stream_tasks: dict[int, asyncio.Task[None]] = {}

    def request_received(self, stream_id: int, request: H2Request) -> None:
        """A whole request arrived on ``stream_id``: answer it (:meth:`respond`) now or later."""
        raise NotImplementedError

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's TLS transport (``push-bridge sim`` runs on uvloop)
        # has every method of asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.h2.initiate_connection()
        self.h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: self._max_concurrent_streams})
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for task in self._tasks:
            task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except H2Error:
            logger.warning("%s: HTTP/2 protocol error from a client; closing", type(self).__name__)
            self.flush()  # h2's GOAWAY, if it queued one
            self.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                headers = {str(k): str(v) for k, v in event.headers or ()}
                self._streams[event.stream_id] = H2Request(headers)
            elif isinstance(event, DataReceived):
                request = self._streams.get(event.stream_id)
                if request is not None and event.data:
                    request.body.extend(event.data)
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                ended = self._streams.pop(event.stream_id, None)
                if ended is not None:
                    self.request_received(event.stream_id, ended)
            elif isinstance(event, StreamReset):
                self._streams.pop(event.stream_id, None)
                self._pending.pop(event.stream_id, None)
                task = self._stream_tasks.pop(event.stream_id, None)
                if task is not None:
                    task.cancel()
            elif isinstance(event, WindowUpdated | RemoteSettingsChanged):
                self._send_pending()
            elif isinstance(event, ConnectionTerminated):
                self.close()
                return
        self.flush()

    # ------------------------------------------------------------------ for subclasses

    def respond(self, stream_id: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        """Answer ``stream_id``: one HEADERS frame (ending the stream when there is no body), then
        the body as the window allows. Written out by the next :meth:`flush`."""
        try:
            self.h2.send_headers(stream_id, headers, end_stream=not body)
        except H2Error:
            # The client reset the stream or the connection is going away: nothing to answer.
            logger.debug("%s: stream %d closed before its answer", type(self).__name__, stream_id)
            return
        if body:
            self._pending[stream_id] = body
            self._send_pending()

    def spawn(self, answer: Coroutine[Any, Any, None], stream_id: int | None = None) -> None:
        """Run ``answer`` (which :meth:`respond`\\ s later) as a task of this connection, flushed
        when it ends and cancelled when the connection is lost or, given ``stream_id``, that
        stream is reset."""

        async def run() -> None:
            try:
                await answer
            finally:
                self.flush()

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if stream_id is not None:
            self._stream_tasks[stream_id] = task
            task.add_done_callback(lambda _t: self._stream_tasks.pop(stream_id, None))

    def flush(self) -> None:
        """Write what h2 has queued."""
        if self.transport is not None and not self.transport.is_closing():
            data = self.h2.data_to_send()
            if data:
                self.transport.write(data)

    def close(self) -> None:
        """Close after writing what is buffered (a GOAWAY reaches the client)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once, as a dead server or a cut network would."""
        if self.transport is not None:
            self.transport.abort()

    def _send_pending(self) -> None:
        # HTTP/2 flow control: a body goes out as far as the client has handed back credit, in
        # frames of the largest size it accepts, each sent whole: a body that fits one frame is
        # never split (aioapns reads each DATA frame as a whole JSON body, as Apple sends them).
        for stream_id, body in list(self._pending.items()):
            try:
                while body:
                    size = min(self.h2.max_outbound_frame_size, len(body))
                    if self.h2.local_flow_control_window(stream_id) < size:
                        break
                    chunk, body = body[:size], body[size:]
                    self.h2.send_data(stream_id, chunk, end_stream=not body)
            except H2Error:
                body = b""  # the stream was reset or the connection is going away
            if body:
                self._pending[stream_id] = body
            else:
                del self._pending[stream_id]
