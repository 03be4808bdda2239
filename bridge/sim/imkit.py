"""A simulated IMKIT chat server: Socket.IO events, the REST calls the bridge makes, a control API.

It follows ``imkit-protocol.md``: ``conf`` switches a socket to base64 payloads, ``auth2`` checks an
HS256 JWT (and optionally the client key) and acks ``{RC, RM, result: {client}}``; events reach
every authenticated socket of the users concerned. The REST side answers in IMKIT's envelope.
Everything under ``/sim/`` lets another process (CLI demo, bench) drive the model over HTTP.

:class:`ImkitSim` holds the switches and counters and drives the parts, a module each: the chat
model (:mod:`bridge.sim.imkit_chat`), client tokens (:mod:`bridge.sim.imkit_tokens`), Socket.IO
(:mod:`bridge.sim.imkit_sockets`), REST and its faults (:mod:`bridge.sim.imkit_rest`) and the
control API (:mod:`bridge.sim.imkit_control`).

State lives in the instance (no module globals); users, rooms and messages survive ``stop()`` and
a later ``start()``, so a test can "restart IMKIT" and see the bridge reconnect.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from typing import Any

from aiohttp import web

from bridge.sim.imkit_chat import ChatModel
from bridge.sim.imkit_control import ControlApi
from bridge.sim.imkit_rest import RestApi
from bridge.sim.imkit_sockets import SocketServer
from bridge.sim.imkit_tokens import issue_token, token_client

logger = logging.getLogger(__name__)


class ImkitSim:
    """The simulated IMKIT server. Build, ``await start()``, drive through methods, ``await stop()``.

    Arguments: ``jwt_secret`` signs and checks client tokens (HS256); ``client_key`` is the key
    clients must send when ``require_client_key`` is set (socket ``auth2`` headers and REST
    ``IM-CLIENT-KEY``); ``disconnect_on_auth_failure`` drops the socket instead of acking RC 401;
    ``token_ttl`` is the default lifetime of issued tokens in seconds; ``app_id`` goes into messages;
    ``ping_interval``/``ping_timeout`` are Engine.IO's heartbeat settings.
    """

    def __init__(
        self,
        *,
        jwt_secret: str = "imkit-sim-secret",
        client_key: str = "sim-client-key",
        require_client_key: bool = False,
        disconnect_on_auth_failure: bool = False,
        token_ttl: float = 7 * 86400,
        app_id: str = "SimApp",
        ping_interval: float = 25.0,
        ping_timeout: float = 20.0,
    ) -> None:
        self._jwt_secret = jwt_secret
        self._client_key = client_key
        self.require_client_key = require_client_key
        self.disconnect_on_auth_failure = disconnect_on_auth_failure
        self.token_ttl = token_ttl
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout

        # switches
        self.ack_auth = True
        #: the next N ``auth2`` calls, valid or not, get a server disconnect instead of an ack
        #: (IMKIT restarting mid-handshake)
        self.disconnect_next_auths = 0
        self.refuse_until = 0.0
        #: when set, every REST call (not /sim/) answers this HTTP status (``rest_fail_body`` or an envelope)
        self.rest_fail_status: int | None = None
        self.rest_fail_body: str | None = None
        #: REST path (e.g. ``/me/badge``) -> HTTP status answered, in IMKIT's envelope, for that path only
        self.rest_fail_paths: dict[str, int] = {}
        #: seconds every REST call (not /sim/) waits before answering
        self.rest_delay = 0.0

        # counters
        self.connections_total = 0
        self.refused_total = 0
        self.auths_total = 0  # every auth2 received
        self.auth_failures_total = 0
        self.confs_total = 0
        self.rest_requests_total = 0
        self.connect_times: list[float] = []
        self.last_auth_headers: dict[str, dict[str, Any]] = {}

        self.chat = ChatModel(app_id)
        self._sockets = SocketServer(self)
        self._rest = RestApi(self)
        self._control = ControlApi(self)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.url = ""

    @property
    def app_id(self) -> str:
        return self.chat.app_id

    @app_id.setter
    def app_id(self, value: str) -> None:
        self.chat.app_id = value

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve Socket.IO at ``/socket.io/`` and REST at the root; ``port=0`` picks a free port."""
        if self._runner is not None:
            raise RuntimeError("ImkitSim is already started")
        app = web.Application(middlewares=[self._rest.faults])
        self._sockets.attach(
            app, ping_interval=self._ping_interval, ping_timeout=self._ping_timeout
        )
        self._rest.add_routes(app)
        self._control.add_routes(app)
        runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self.url = f"http://{host}:{self.port}"
        logger.info("simulated IMKIT listening on %s", self.url)

    async def stop(self) -> None:
        """Drop every socket (as a crash would, so clients try to reconnect) and stop serving."""
        if self._runner is None:
            return
        await self.drop_all_sockets()
        await self._sockets.shutdown()
        await self._runner.cleanup()
        self._runner = None
        self._sockets.sio = None
        logger.info("simulated IMKIT stopped")

    # ------------------------------------------------------------------ model

    def create_user(
        self,
        client_id: str,
        nickname: str | None = None,
        *,
        avatar_url: str = "",
        is_robot: bool = False,
    ) -> None:
        """Create a user, or update the nickname/avatar of an existing one (its state is kept)."""
        self.chat.create_user(client_id, nickname, avatar_url=avatar_url, is_robot=is_robot)

    def delete_user(self, client_id: str) -> None:
        """Forget a user: its tokens stop working (auth and REST answer 401)."""
        self.chat.users.pop(client_id, None)

    def issue_token(self, client_id: str, ttl: float | None = None) -> str:
        """An HS256 JWT ``{id, iat, exp}`` for ``client_id`` (a negative ``ttl`` gives an expired one)."""
        return issue_token(self._jwt_secret, client_id, self.token_ttl if ttl is None else ttl)

    def create_room(self, room_id: str, members: list[str], name: str | None = None) -> None:
        """Create a room (or replace its members/name); unknown members become users."""
        self.chat.create_room(room_id, members, name)

    async def send_message(
        self,
        room_id: str,
        sender_id: str | None,
        message: object = "hello",
        message_type: str = "text",
        message_id: str | None = None,
        **fields: object,
    ) -> dict[str, Any]:
        """Store a message, emit it as ``chat message`` to the room's members, return it.

        ``sender_id`` None makes a platform message (``sender: null``); an unknown sender becomes a
        user. ``fields`` (``mentions``, ``extra``, ``reply``, ...) are copied into the message last,
        so they may also override generated fields (e.g. a bare-string ``sender``).
        """
        msg = self.chat.add_message(room_id, sender_id, message, message_type, message_id, fields)
        await self._sockets.emit_to(self.chat.room(room_id).members, "chat message", msg)
        return copy.deepcopy(msg)

    async def edit_message(self, message_id: str, message: object) -> dict[str, Any]:
        """Change a message's content: same ``_id``, new ``updatedAtMS``, ``editedAt`` set; re-emitted."""
        msg = self.chat.edit_message(message_id, message)
        await self._sockets.emit_to(self.chat.room(msg["room"]).members, "chat message", msg)
        return copy.deepcopy(msg)

    async def recall_message(self, message_id: str) -> dict[str, Any]:
        """Recall a message: same ``_id``, ``messageType: recall``, new ``updatedAtMS``; re-emitted."""
        msg = self.chat.recall_message(message_id)
        await self._sockets.emit_to(self.chat.room(msg["room"]).members, "chat message", msg)
        return copy.deepcopy(msg)

    async def stream_message(
        self,
        room_id: str,
        sender_id: str,
        chunks: list[str],
        message_type: str = "text",
        message_id: str | None = None,
    ) -> dict[str, Any]:
        """An AI reply streamed as IMKIT does: a ``chat message`` placeholder of type ``ai_streaming``,
        one ``ai_streaming {room, sender, text}`` event per chunk, then the finished ``chat message``
        (same ``_id``, ``message_type``, the whole text, a new ``updatedAtMS``). Returns the final one.
        """
        placeholder = await self.send_message(room_id, sender_id, "", "ai_streaming", message_id)
        members = self.chat.room(room_id).members
        for chunk in chunks:
            await self._sockets.emit_to(
                members, "ai_streaming", {"room": room_id, "sender": sender_id, "text": chunk}
            )
        msg = self.chat.finish_stream(placeholder["_id"], message_type, "".join(chunks))
        await self._sockets.emit_to(members, "chat message", msg)
        return copy.deepcopy(msg)

    async def resend_message(self, message_id: str) -> int:
        """Emit a stored message again unchanged (a duplicate delivery); returns sockets reached."""
        msg = self.chat.message(message_id)
        return await self._sockets.emit_to(self.chat.room(msg["room"]).members, "chat message", msg)

    def get_message(self, message_id: str) -> dict[str, Any]:
        """A copy of a stored message."""
        return copy.deepcopy(self.chat.message(message_id))

    async def invite(self, room_id: str, inviter_id: str, invitee_id: str) -> dict[str, Any]:
        """Record a pending invitation and emit it as ``invitation`` to the invitee."""
        inv = self.chat.add_invitation(room_id, inviter_id, invitee_id)
        await self._sockets.emit_to([invitee_id], "invitation", inv)
        return copy.deepcopy(inv)

    async def cancel_invitation(self, room_id: str, invitee_id: str) -> None:
        """Withdraw an invitation and emit ``cancelInvitation {room}`` to the invitee."""
        self.chat.invitations.pop((room_id, invitee_id), None)
        await self._sockets.emit_to([invitee_id], "cancelInvitation", {"room": room_id})

    async def mute(self, client_id: str, room_id: str, muted: bool = True) -> None:
        """Change the user's mute list (``GET /me`` ``mute``) and emit ``roomPref {room, muted}`` to them."""
        self.chat.set_mute(client_id, room_id, muted)
        await self._sockets.emit_to([client_id], "roomPref", {"room": room_id, "muted": muted})

    def set_notification_enabled(self, client_id: str, enabled: bool) -> None:
        """The user's global notification switch (``GET /me`` ``notificationEnabled``)."""
        self.chat.user(client_id).notification_enabled = enabled

    async def read(self, client_id: str, room_id: str, message_id: str | None = None) -> None:
        """Mark the room read up to ``message_id`` (default: the last message); emit ``lastRead``."""
        payload = self.chat.mark_read(client_id, room_id, message_id)
        await self._sockets.emit_to(self.chat.room(room_id).members, "lastRead", payload)

    def unread(self, client_id: str, room_id: str) -> int:
        """Messages from others after the user's last read (recalled ones excluded)."""
        return self.chat.unread(client_id, room_id)

    def badge(self, client_id: str) -> int:
        """Total unread over the user's rooms (what ``GET /me/badge`` answers)."""
        return self.chat.badge(client_id)

    # ------------------------------------------------------------------ sockets and faults

    async def emit_raw(
        self, client_id: str, event: str, payload: object, *, encode: bool = True
    ) -> int:
        """Send ``payload`` as ``event`` to every live authenticated socket of ``client_id``.

        With ``encode`` each socket gets its own encoding (base64 after ``conf``; a string
        ``myPrefDelete`` payload is base64 of the bare text); without it the payload goes untouched.
        Returns the number of sockets reached.
        """
        return await self._sockets.emit_to([client_id], event, payload, encode=encode)

    async def drop_sockets(self, client_id: str | None = None, *, clean: bool = False) -> int:
        """Drop the sockets of one user (authenticated ones) or, with None, every socket.

        By default the TCP connection is cut as a network failure would (clients reconnect);
        ``clean`` sends a Socket.IO disconnect instead (a server-initiated disconnect).
        """
        return await self._sockets.drop(client_id, clean=clean)

    async def drop_all_sockets(self) -> int:
        """Cut every socket's connection (clients see a transport error); returns how many."""
        return await self.drop_sockets(None)

    def refuse_connections(self, seconds: float) -> None:
        """Refuse new socket connections for ``seconds`` from now."""
        self.refuse_until = time.monotonic() + seconds

    def fail_rest(self, status: int | None, body: str | None = None) -> None:
        """Make every REST call answer ``status`` (with ``body`` verbatim if given); None heals."""
        self.rest_fail_status = status
        self.rest_fail_body = body

    # ------------------------------------------------------------------ observation

    def live_sockets(self, client_id: str | None = None) -> int:
        """Authenticated live sockets, of one user or of everyone."""
        return self._sockets.live(client_id)

    def connected_sockets(self) -> int:
        """Connected sockets, authenticated or not."""
        return self._sockets.connected()

    def peak_connect_rate(self, window: float = 1.0) -> int:
        """The most accepted connections within any ``window`` seconds."""
        times = sorted(self.connect_times)
        best = 0
        lo = 0
        for hi, t in enumerate(times):
            while t - times[lo] >= window:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def stats(self) -> dict[str, int]:
        """The counters, as ``GET /sim/stats`` answers them."""
        return {
            "connections_total": self.connections_total,
            "refused_total": self.refused_total,
            "auths_total": self.auths_total,
            "auth_failures_total": self.auth_failures_total,
            "confs_total": self.confs_total,
            "rest_requests_total": self.rest_requests_total,
            "live_sockets": self.live_sockets(),
            "connected_sockets": self.connected_sockets(),
            "peak_connect_rate": self.peak_connect_rate(),
        }

    # ------------------------------------------------------------------ auth, for the sockets and REST

    def verify_token(self, token: object) -> str | None:
        """The client id of a valid, unexpired token of an existing user; else None."""
        cid = token_client(self._jwt_secret, token)
        return cid if cid is not None and cid in self.chat.users else None

    def key_ok(self, key: object) -> bool:
        """Whether ``key`` passes as the client key (any does unless ``require_client_key``)."""
        return not self.require_client_key or key == self._client_key


async def run(host: str, port: int, **opts: Any) -> None:
    """Serve a simulated IMKIT on ``host:port`` until cancelled (``opts`` go to :class:`ImkitSim`)."""
    sim = ImkitSim(**opts)
    await sim.start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
