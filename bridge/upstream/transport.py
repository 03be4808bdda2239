"""The one aiohttp session shared by every upstream socket of a process.

Each setting avoids a pitfall measured with python-socketio 5.18 / python-engineio 4.15:

- ``TCPConnector(limit=0)``: the default limit of 100 connections silently stalls the 101st
  websocket (the sockets are long-lived, so the pool never frees a slot).
- ``DummyCookieJar``: a shared jar would replay one device's cookies (sticky-session cookies of a
  load balancer, for instance) on another device's connection.
- ``ClientTimeout(total=None, sock_read=None)``: a ``total`` timeout also applies to the websocket,
  so every socket would be killed after that many seconds; reads are bounded by Engine.IO's
  ping timeout instead. Only connecting is bounded here (``sock_connect``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import engineio
import engineio.base_client
import engineio.packet
import socketio
from multidict import CIMultiDict, CIMultiDictProxy

from bridge.upstream.idle import IdleWatch

#: ``EngineIOClient._idle_deadline`` once the idle watch ended the socket.
_EXPIRED = float("-inf")


def make_http_session(*, connect_timeout: float = 10.0) -> aiohttp.ClientSession:
    """A ClientSession for all upstream sockets: unlimited connector, no cookies, socket-level timeouts.

    Call it inside the running event loop; the owner closes it after the last session closed.
    """
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(
        total=None, connect=None, sock_connect=connect_timeout, sock_read=None
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=timeout,
    )


class SendQueue:
    """What Engine.IO's client uses of ``asyncio.Queue`` (``put``, ``get``, ``get_nowait``,
    ``task_done``), for one consumer: its write loop.

    An ``asyncio.Queue`` holds three deques (~2.3 KiB) for the life of every socket, to queue a
    ping answer every 25 s; this holds a list and, while the write loop waits, one future.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    async def get(self) -> Any:
        # An item put while the waiter is being cancelled stays in the list: nothing is lost.
        while not self._items:
            await self.waiter()
        return self._items.pop(0)

    def waiter(self) -> asyncio.Future[None]:
        """A future done once the queue has an item (at once if it has one).

        The write loop awaits it directly rather than ``get()``: no coroutine object per socket
        while it waits for the next packet to send (see :class:`EngineIOClient`).
        """
        fut = self._waiter
        if fut is None or fut.done():  # none yet, or woken (or cancelled) before
            fut = self._waiter = asyncio.get_running_loop().create_future()
        if self._items:
            fut.set_result(None)
        return fut

    def task_done(self) -> None:
        """Nothing joins this queue; kept for the library's calls."""


class SmallEvent:
    """``asyncio.Event``'s interface over a list: python-socketio keeps one per socket for its
    whole life (``_connect_event``), and an ``asyncio.Event`` holds a deque (~760 bytes)."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[bool]] = []

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if not self._value:
            self._value = True
            for fut in self._waiters:
                if not fut.done():
                    fut.set_result(True)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        finally:
            self._waiters.remove(fut)


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def forget_handshake(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Let go of what the websocket's HTTP upgrade left behind, kept for the socket's whole life.

    aiohttp keeps the connection's HTTP response parser (the websocket reader replaced it) and
    the ``101 Switching Protocols`` response with its headers, body stream and caches; nothing
    reads them after the handshake (closing the socket uses the response's connection only).
    Together ~3.3 KiB per socket, a sixth of a bare idle session (docs/benchmarks.md). These are
    private attributes of aiohttp 3.x, each dropped only where it exists as expected; on another
    version, less is dropped and nothing else changes.
    """
    proto = getattr(getattr(ws, "_reader", None), "_protocol", None)
    if (
        proto is not None
        and getattr(proto, "_payload_parser", None) is not None
        and hasattr(proto, "_parser")
    ):
        proto._parser = None  # its data goes to the websocket reader now (the payload parser)
    resp = getattr(ws, "_response", None)
    if resp is None:
        return
    empties: tuple[tuple[str, object], ...] = (
        ("_headers", _NO_HEADERS),
        ("_raw_headers", ()),
        ("_history", ()),
        ("_cache", {}),
        ("_content", None),  # the 101's (empty) body stream; close() checks it for None
    )
    for name, empty in empties:
        if hasattr(resp, name):
            setattr(resp, name, empty)


class EngineIOClient(engineio.AsyncClient):  # type: ignore[misc]  # the library is untyped
    """python-engineio's client with loops that make no task per packet, and a small send queue.

    Its ``_read_loop_websocket`` wraps every ``ws.receive()`` in ``asyncio.wait_for``: a task, a
    future, a timer and a context per packet and socket, alive until the next packet arrives, so
    thousands of them sit in the young GC generations of a busy worker (the largest share of its
    collections' work, measured in docs/benchmarks.md). aiohttp's own ``receive(timeout=...)``
    bounds the read the same way with a timer only. Its ``_write_loop`` does the same around
    ``queue.get()``; here the read loop's timeout is the only one (see :meth:`_write_loop`).
    Everything else is the loops of 4.15 (websocket transport only: the bridge never polls).

    With an ``idle_watch`` (:class:`bridge.upstream.idle.IdleWatch`, one per process), reads have
    no timeout at all: the socket stamps a deadline when it starts waiting for a packet and the
    watch's one sweep ends it once the deadline passed, as the timeout would have.

    What a socket holds while it waits is made again by every packet, and a wave of packets
    across thousands of sockets (pings) leaves all of it for one young collection to walk: the
    longest GC pauses at 10,000 sessions (docs/benchmarks.md). So the loops keep it small: no
    helper coroutine around the read, none around the send queue's wait, and nothing of the
    last packet kept through the wait. 16 tracked objects per socket after a ping, now 10.
    """

    def __init__(self, *args: Any, idle_watch: IdleWatch | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle_watch = idle_watch
        #: Loop time after which the pending read counts as silence; None while not reading.
        self._idle_deadline: float | None = None

    def idle_deadline(self) -> float | None:
        """See :class:`bridge.upstream.idle.Watched`."""
        return self._idle_deadline

    def expire(self) -> None:
        """Stop the pending read as its timeout would (called by the idle watch)."""
        task = self.read_loop_task
        if self._idle_deadline is None or task is None:
            return  # not waiting for a packet: the watch saw a stale deadline
        self._idle_deadline = _EXPIRED
        task.cancel()

    def forget_socket(self) -> None:
        """Drop the errors the closed websocket keeps (see :func:`release`)."""
        ws = self.ws
        if ws is None:
            return
        # Each is an exception whose traceback's frames hold the websocket (or its reader): a
        # reference cycle that would keep the whole connection alive until a full collection.
        for holder in (ws, getattr(ws, "_reader", None)):
            if holder is not None and getattr(holder, "_exception", None) is not None:
                holder._exception = None

    def create_queue(self, *args: Any, **kwargs: Any) -> SendQueue:
        return SendQueue()

    def create_event(self) -> SmallEvent:
        return SmallEvent()

    async def _write_loop(self) -> None:
        if self.current_transport != "websocket":
            await super()._write_loop()
            return
        while self.state == "connected":
            # No timeout around the wait (4.15 has one of ping interval + timeout + 5 s, a timer
            # per socket re-armed by every packet): a silent server is caught by the read loop's
            # own timeout (ping interval + timeout), and the read loop ends this one with None.
            try:
                while self.queue.empty():
                    await self.queue.waiter()
            except asyncio.CancelledError:
                break
            first = self.queue.get_nowait()
            # None is the library's "stop": first in the queue, it ends the loop; after other
            # packets, those are still sent (as 4.15 does).
            packets = [] if first is None else [first]
            while packets:
                try:
                    pkt = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if pkt is None:
                    break
                packets.append(pkt)
            if not packets:
                break
            try:
                for pkt in packets:
                    if pkt.binary:
                        await self.ws.send_bytes(pkt.encode())
                    else:
                        await self.ws.send_str(pkt.encode())
            except (aiohttp.client_exceptions.ServerDisconnectedError, BrokenPipeError, OSError):
                self.logger.info("Write loop: WebSocket connection was closed, aborting")
                break
            # Sent: not kept through the wait for the next one (see _read_websocket).
            del first, packets, pkt
        self.logger.info("Exiting write loop task")
        self.write_loop_task = None

    async def _read_loop_websocket(self) -> None:
        if self.ws is not None:
            forget_handshake(self.ws)
        if self._idle_watch is not None:
            self._idle_watch.watch(self)
        try:
            await self._read_websocket()
        finally:
            if self._idle_watch is not None:
                self._idle_watch.forget(self)

    async def _read_websocket(self) -> None:
        watch = self._idle_watch
        while self.state == "connected" and self.write_loop_task:
            limit = self.ping_interval + self.ping_timeout
            try:
                # The wait for the next packet is written out here, not in a helper coroutine:
                # that would be one more object per waiting socket (see the class docstring).
                if watch is None:
                    msg = await self.ws.receive(timeout=limit)
                else:
                    self._idle_deadline = asyncio.get_running_loop().time() + limit
                    try:
                        msg = await self.ws.receive()
                    except asyncio.CancelledError:
                        if self._idle_deadline != _EXPIRED:
                            raise  # cancelled from outside: not ours to swallow
                        current = asyncio.current_task()
                        if current is not None:
                            current.uncancel()
                        raise TimeoutError from None  # the server was silent too long
                    finally:
                        self._idle_deadline = None
                if not isinstance(msg.data, str | bytes):
                    self.logger.warning("Server sent %s packet, aborting", msg.type)
                    await self.queue.put(None)
                    break  # the connection is broken
                raw = msg.data
            except TimeoutError:
                self.logger.warning("Server has stopped communicating, aborting")
                await self.queue.put(None)
                break
            except aiohttp.client_exceptions.ServerDisconnectedError:
                self.logger.info("Read loop: WebSocket connection was closed, aborting")
                await self.queue.put(None)
                break
            except Exception as exc:
                self.logger.info('Unexpected error receiving packet: "%s", aborting', str(exc))
                await self.queue.put(None)
                break
            try:
                pkt = engineio.packet.Packet(encoded_packet=raw)
            except Exception as exc:
                self.logger.info('Unexpected error decoding packet: "%s", aborting', str(exc))
                await self.queue.put(None)
                break
            await self._receive_packet(pkt)
            # Not kept through the wait for the next packet (25 s for a ping): a wave of packets
            # across thousands of sockets leaves every object each socket holds while waiting
            # for the next young collection to walk (docs/benchmarks.md).
            del msg, raw, pkt

        if self.write_loop_task:
            self.logger.info("Waiting for write loop task to end")
            await self.write_loop_task
        if self.state == "connected":
            await self._trigger_event("disconnect", self.reason.TRANSPORT_ERROR, run_async=False)
            try:
                engineio.base_client.connected_clients.remove(self)
            except ValueError:
                pass
            await self._reset()
        self.logger.info("Exiting read loop task")


def release(sio: SocketIOClient) -> None:
    """Break the reference cycles a finished connection leaves, so reference counting frees it.

    A connection's objects are in cycles: the Socket.IO client and its handlers (closures over
    the session's connection), the Engine.IO client's ``connect`` handler (a method of the
    Socket.IO client), and the errors a closed websocket keeps, whose tracebacks hold it. In the
    process's young generations the collector frees them anyway; but a worker freezes its heap
    (:mod:`bridge.gc_tuning`), and a connection that was alive at a freeze and ended later
    would stay in the frozen heap for good: ~80 objects and ~8 KiB per reconnect of each
    session (docs/benchmarks.md). Call it once the connection is torn down; errors the read loop
    still records are dropped when that loop ends.
    """
    eio = sio.eio
    sio.handlers.clear()
    sio.namespace_handlers.clear()
    sio.callbacks.clear()
    eio.handlers.clear()
    task = eio.read_loop_task
    if task is not None and not task.done():
        task.add_done_callback(lambda _task: eio.forget_socket())
    else:
        eio.forget_socket()


class SocketIOClient(socketio.AsyncClient):  # type: ignore[misc]  # the library is untyped
    """python-socketio's client on :class:`EngineIOClient`."""

    def _engineio_client_class(self) -> type[EngineIOClient]:
        return EngineIOClient
