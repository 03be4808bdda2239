"""The Socket.IO side of the simulated IMKIT: connections, ``conf`` and ``auth2``, events to every
authenticated socket of a user, sockets dropped on purpose.

``conf`` switches a socket to base64 payloads; ``auth2`` checks the client token (and, when
required, the client key) and acks ``{RC, RM, result: {client}}``. The switches that bend this
(refused connections, unanswered or dropped ``auth2``) and the counters are the
:class:`~bridge.sim.imkit.ImkitSim`'s, where tests set and read them.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import socketio
from aiohttp import web

from bridge.upstream.protocol import decode_payload, encode_payload

if TYPE_CHECKING:
    from bridge.sim.imkit import ImkitSim

logger = logging.getLogger(__name__)

OK = {"RC": 0, "RM": "OK"}
UNAUTHORIZED = {
    "RC": 401,
    "RM": "Unauthorized",
    "error": {"code": "UNAUTHORIZED", "message": "invalid or expired token"},
}


@dataclass
class _Socket:
    sid: str
    request: Any  # the aiohttp request of the Engine.IO connection (to drop its TCP connection)
    base64: bool = False
    client_id: str | None = None


def _encode_bare(text: str) -> str:
    """base64 of a bare string (``myPrefDelete``'s key), not of its JSON form."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


class SocketServer:
    """The Socket.IO server of one :class:`~bridge.sim.imkit.ImkitSim` and its sockets, by user."""

    def __init__(self, sim: ImkitSim) -> None:
        self._sim = sim
        self.sio: Any = None
        self._socks: dict[str, _Socket] = {}
        self._by_client: dict[str, set[str]] = {}

    def attach(self, app: web.Application, *, ping_interval: float, ping_timeout: float) -> None:
        """Serve Socket.IO at ``/socket.io/`` of ``app``."""
        sio = socketio.AsyncServer(
            async_mode="aiohttp",
            cors_allowed_origins="*",
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            logger=False,
            engineio_logger=False,
        )
        sio.on("connect", self._on_connect)
        sio.on("disconnect", self._on_disconnect)
        sio.on("conf", self._on_conf)
        sio.on("auth2", self._on_auth2)
        sio.attach(app)
        self.sio = sio

    async def shutdown(self) -> None:
        if hasattr(self.sio, "shutdown"):
            await self.sio.shutdown()

    # ------------------------------------------------------------------ out

    async def emit_to(
        self, client_ids: list[str], event: str, payload: object, *, encode: bool = True
    ) -> int:
        """Send ``event`` to every live authenticated socket of ``client_ids``, each in its own
        encoding (or ``payload`` untouched without ``encode``); returns the sockets reached."""
        if self.sio is None:
            return 0
        sent = 0
        for cid in dict.fromkeys(client_ids):
            for sid in list(self._by_client.get(cid, ())):
                sock = self._socks.get(sid)
                if sock is None:
                    continue
                data = self._encode(sock, event, payload) if encode else payload
                await self.sio.emit(event, data, to=sid)
                sent += 1
        return sent

    async def drop(self, client_id: str | None = None, *, clean: bool = False) -> int:
        """Drop the sockets of one user (authenticated ones) or, with None, every socket.

        By default the TCP connection is cut as a network failure would (clients reconnect);
        ``clean`` sends a Socket.IO disconnect instead (a server-initiated disconnect).
        """
        if client_id is None:
            sids = list(self._socks)
        else:
            sids = list(self._by_client.get(client_id, ()))
        for sid in sids:
            sock = self._forget(sid)
            transport = getattr(sock.request, "transport", None) if sock else None
            if clean or transport is None:
                await self.sio.disconnect(sid)
            else:
                transport.abort()
        if sids:
            logger.info("simulated IMKIT dropped %d socket(s)", len(sids))
        return len(sids)

    def live(self, client_id: str | None = None) -> int:
        """Authenticated live sockets, of one user or of everyone."""
        if client_id is not None:
            return len(self._by_client.get(client_id, ()))
        return sum(len(s) for s in self._by_client.values())

    def connected(self) -> int:
        """Connected sockets, authenticated or not."""
        return len(self._socks)

    # ------------------------------------------------------------------ internals

    def _encode(self, sock: _Socket, event: str, payload: object) -> object:
        if not sock.base64:
            return payload
        if event == "myPrefDelete" and isinstance(payload, str):
            return _encode_bare(payload)
        return encode_payload(payload)

    def _forget(self, sid: str) -> _Socket | None:
        sock = self._socks.pop(sid, None)
        if sock is not None and sock.client_id is not None:
            self._unindex(sock)
        return sock

    def _unindex(self, sock: _Socket) -> None:
        if sock.client_id is None:
            return
        sids = self._by_client.get(sock.client_id)
        if sids is not None:
            sids.discard(sock.sid)
            if not sids:
                del self._by_client[sock.client_id]
        sock.client_id = None

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        sim = self._sim
        now = time.monotonic()
        if now < sim.refuse_until:
            sim.refused_total += 1
            return False
        sim.connections_total += 1
        sim.connect_times.append(now)
        self._socks[sid] = _Socket(sid, environ.get("aiohttp.request"))
        return True

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        self._forget(sid)

    async def _on_conf(self, sid: str, *args: Any) -> object:
        self._sim.confs_total += 1
        sock = self._socks.get(sid)
        if sock is None:
            return None
        try:
            conf = decode_payload(args[0]) if args else None
        except ValueError:
            conf = None
        sock.base64 = isinstance(conf, dict) and conf.get("encoding") == "base64"
        return self._encode(sock, "conf", dict(OK))

    async def _on_auth2(self, sid: str, *args: Any) -> object:
        sim = self._sim
        sim.auths_total += 1
        sock = self._socks.get(sid)
        if sock is None:
            return self.sio.not_handled
        token = args[0] if args else None
        raw_headers = args[1] if len(args) > 1 else None
        headers: dict[str, Any] = raw_headers if isinstance(raw_headers, dict) else {}
        if not isinstance(token, str) or not token:
            token = headers.get("IM-Authorization") or headers.get("Authorization")
        key = headers.get("IM-CLIENT-KEY", headers.get("CLIENT_KEY"))
        cid = sim.verify_token(token)
        if cid is not None:
            # Only headers of a verified token are kept (they hold that token, nothing new leaks).
            sim.last_auth_headers[cid] = dict(headers)
        if not sim.ack_auth:
            return self.sio.not_handled
        if sim.disconnect_next_auths > 0:
            sim.disconnect_next_auths -= 1
            self._forget(sid)
            await self.sio.disconnect(sid)
            return self.sio.not_handled
        if cid is None or not sim.key_ok(key):
            sim.auth_failures_total += 1
            self._unindex(sock)
            if sim.disconnect_on_auth_failure:
                self._forget(sid)
                await self.sio.disconnect(sid)
                return self.sio.not_handled
            return self._encode(sock, "auth2", UNAUTHORIZED)
        if sock.client_id != cid:
            self._unindex(sock)
            sock.client_id = cid
            self._by_client.setdefault(cid, set()).add(sid)
        return self._encode(sock, "auth2", {**OK, "result": {"client": cid}})
