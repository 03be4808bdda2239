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

import aiohttp
import engineio
import engineio.base_client
import engineio.packet
import socketio


def make_http_session(*, connect_timeout: float = 10.0) -> aiohttp.ClientSession:
    """A ClientSession for all upstream sockets: unlimited connector, no cookies, socket-level timeouts.

    Call it inside the running event loop; the owner closes it after the last session closed.
    """
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=connect_timeout, sock_read=None)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=timeout,
    )


class EngineIOClient(engineio.AsyncClient):  # type: ignore[misc]  # the library is untyped
    """python-engineio's client with a read loop that makes no task per packet.

    Its ``_read_loop_websocket`` wraps every ``ws.receive()`` in ``asyncio.wait_for``: a task, a
    future, a timer and a context per packet and socket, alive until the next packet arrives, so
    thousands of them sit in the young GC generations of a busy worker (the largest share of its
    collections' work, measured in docs/benchmarks.md). aiohttp's own ``receive(timeout=...)``
    bounds the read the same way with a timer only. Everything else is the loop of 4.15.
    """

    async def _read_loop_websocket(self) -> None:
        while self.state == "connected" and self.write_loop_task:
            try:
                msg = await self.ws.receive(timeout=self.ping_interval + self.ping_timeout)
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


class SocketIOClient(socketio.AsyncClient):  # type: ignore[misc]  # the library is untyped
    """python-socketio's client on :class:`EngineIOClient`."""

    def _engineio_client_class(self) -> type[EngineIOClient]:
        return EngineIOClient
