"""A simulated IMKIT chat server: Socket.IO events, the REST calls the bridge makes, a control API.

It follows ``imkit-protocol.md``: ``conf`` switches a socket to base64 payloads, ``auth2`` checks an
HS256 JWT (and optionally the client key) and acks ``{RC, RM, result: {client}}``; events reach
every authenticated socket of the users concerned. The REST side answers in IMKIT's envelope.
Everything under ``/sim/`` lets another process (CLI demo, bench) drive the model over HTTP.

State lives in the instance (no module globals); users, rooms and messages survive ``stop()`` and
a later ``start()``, so a test can "restart IMKIT" and see the bridge reconnect.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import logging
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import jwt
import socketio
from aiohttp import web

from bridge.upstream.protocol import decode_payload, encode_payload

logger = logging.getLogger(__name__)

_OK = {"RC": 0, "RM": "OK"}
_UNAUTHORIZED = {
    "RC": 401,
    "RM": "Unauthorized",
    "error": {"code": "UNAUTHORIZED", "message": "invalid or expired token"},
}

_T = TypeVar("_T")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class _User:
    client_id: str
    nickname: str
    avatar_url: str = ""
    is_robot: bool = False
    mute: set[str] = field(default_factory=set)
    notification_enabled: bool = True


@dataclass
class _Room:
    room_id: str
    name: str
    members: list[str]
    created_ms: int
    #: message ids in the order they were sent
    messages: list[str] = field(default_factory=list)
    #: client id -> how many of ``messages`` that member has read
    read_upto: dict[str, int] = field(default_factory=dict)


@dataclass
class _Socket:
    sid: str
    request: Any  # the aiohttp request of the Engine.IO connection (to drop its TCP connection)
    base64: bool = False
    client_id: str | None = None


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@contextlib.contextmanager
def _short_key_ok() -> Iterator[None]:
    # The simulator's default secret is short on purpose (a well-known test value); PyJWT warns.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HMAC key.*")
        yield


def _encode_bare(text: str) -> str:
    """base64 of a bare string (``myPrefDelete``'s key), not of its JSON form."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


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
        self.app_id = app_id
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

        # model
        self._users: dict[str, _User] = {}
        self._rooms: dict[str, _Room] = {}
        self._messages: dict[str, dict[str, Any]] = {}
        self._invitations: dict[
            tuple[str, str], dict[str, Any]
        ] = {}  # (room, invitee) -> invitation
        self._last_ms = 0
        self._seq = 0

        # server
        self._socks: dict[str, _Socket] = {}
        self._by_client: dict[str, set[str]] = {}
        self._sio: Any = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve Socket.IO at ``/socket.io/`` and REST at the root; ``port=0`` picks a free port."""
        if self._runner is not None:
            raise RuntimeError("ImkitSim is already started")
        sio = socketio.AsyncServer(
            async_mode="aiohttp",
            cors_allowed_origins="*",
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_timeout,
            logger=False,
            engineio_logger=False,
        )
        sio.on("connect", self._on_connect)
        sio.on("disconnect", self._on_disconnect)
        sio.on("conf", self._on_conf)
        sio.on("auth2", self._on_auth2)
        self._sio = sio

        app = web.Application(middlewares=[self._rest_faults])
        sio.attach(app)
        self._add_routes(app)
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
        if hasattr(self._sio, "shutdown"):
            await self._sio.shutdown()
        await self._runner.cleanup()
        self._runner = None
        self._sio = None
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
        user = self._users.get(client_id)
        if user is None:
            self._users[client_id] = _User(client_id, nickname or client_id, avatar_url, is_robot)
            return
        if nickname is not None:
            user.nickname = nickname
        user.avatar_url = avatar_url or user.avatar_url
        user.is_robot = is_robot

    def delete_user(self, client_id: str) -> None:
        """Forget a user: its tokens stop working (auth and REST answer 401)."""
        self._users.pop(client_id, None)

    def issue_token(self, client_id: str, ttl: float | None = None) -> str:
        """An HS256 JWT ``{id, iat, exp}`` for ``client_id`` (a negative ``ttl`` gives an expired one)."""
        now = time.time()
        exp = now + (self.token_ttl if ttl is None else ttl)
        claims = {"id": client_id, "iat": int(now), "exp": int(exp)}
        with _short_key_ok():
            return jwt.encode(claims, self._jwt_secret, "HS256")

    def create_room(self, room_id: str, members: list[str], name: str | None = None) -> None:
        """Create a room (or replace its members/name); unknown members become users."""
        for m in members:
            if m not in self._users:
                self.create_user(m)
        room = self._rooms.get(room_id)
        if room is None:
            self._rooms[room_id] = _Room(room_id, name or room_id, list(members), self._now_ms())
        else:
            room.members = list(members)
            room.name = name or room.name

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
        room = self._room(room_id)
        if message_id is not None and message_id in self._messages:
            raise ValueError(f"message {message_id} already exists")
        if sender_id is not None and sender_id not in self._users:
            self.create_user(sender_id)
        ms = self._now_ms()
        mid = message_id or self._new_id()
        msg: dict[str, Any] = {
            "_id": mid,
            "id": mid,
            "room": room_id,
            "messageType": message_type,
            "message": message,
            "sender": self._client_obj(sender_id) if sender_id is not None else None,
            "appID": self.app_id,
            "messageTime": _iso(ms),
            "messageTimeMS": ms,
            "createdAtMS": ms,
            "updatedAtMS": ms,
            "mentions": [],
        }
        msg.update(fields)
        self._messages[mid] = msg
        room.messages.append(mid)
        await self._emit_to(room.members, "chat message", msg)
        return copy.deepcopy(msg)

    async def edit_message(self, message_id: str, message: object) -> dict[str, Any]:
        """Change a message's content: same ``_id``, new ``updatedAtMS``, ``editedAt`` set; re-emitted."""
        msg = self._message(message_id)
        ms = self._now_ms()
        msg["message"] = message
        msg["updatedAtMS"] = ms
        msg["editedAt"] = _iso(ms)
        await self._emit_to(self._room(msg["room"]).members, "chat message", msg)
        return copy.deepcopy(msg)

    async def recall_message(self, message_id: str) -> dict[str, Any]:
        """Recall a message: same ``_id``, ``messageType: recall``, new ``updatedAtMS``; re-emitted."""
        msg = self._message(message_id)
        msg["messageType"] = "recall"
        msg["updatedAtMS"] = self._now_ms()
        await self._emit_to(self._room(msg["room"]).members, "chat message", msg)
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
        members = self._room(room_id).members
        for chunk in chunks:
            await self._emit_to(members, "ai_streaming", {"room": room_id, "sender": sender_id, "text": chunk})
        msg = self._message(placeholder["_id"])
        msg["messageType"] = message_type
        msg["message"] = "".join(chunks)
        msg["updatedAtMS"] = self._now_ms()
        await self._emit_to(members, "chat message", msg)
        return copy.deepcopy(msg)

    async def resend_message(self, message_id: str) -> int:
        """Emit a stored message again unchanged (a duplicate delivery); returns sockets reached."""
        msg = self._message(message_id)
        return await self._emit_to(self._room(msg["room"]).members, "chat message", msg)

    def get_message(self, message_id: str) -> dict[str, Any]:
        """A copy of a stored message."""
        return copy.deepcopy(self._message(message_id))

    async def invite(self, room_id: str, inviter_id: str, invitee_id: str) -> dict[str, Any]:
        """Record a pending invitation and emit it as ``invitation`` to the invitee."""
        room = self._room(room_id)
        for cid in (inviter_id, invitee_id):
            if cid not in self._users:
                self.create_user(cid)
        ms = self._now_ms()
        inv: dict[str, Any] = {
            "room": self._room_public(room),
            "inviter": self._client_obj(inviter_id),
            "invitee": self._client_obj(invitee_id),
            "createdTimeMS": ms,
            "updatedTimeMS": ms,
        }
        self._invitations[(room_id, invitee_id)] = inv
        await self._emit_to([invitee_id], "invitation", inv)
        return copy.deepcopy(inv)

    async def cancel_invitation(self, room_id: str, invitee_id: str) -> None:
        """Withdraw an invitation and emit ``cancelInvitation {room}`` to the invitee."""
        self._invitations.pop((room_id, invitee_id), None)
        await self._emit_to([invitee_id], "cancelInvitation", {"room": room_id})

    async def mute(self, client_id: str, room_id: str, muted: bool = True) -> None:
        """Change the user's mute list (``GET /me`` ``mute``) and emit ``roomPref {room, muted}`` to them."""
        user = self._user(client_id)
        if muted:
            user.mute.add(room_id)
        else:
            user.mute.discard(room_id)
        await self._emit_to([client_id], "roomPref", {"room": room_id, "muted": muted})

    def set_notification_enabled(self, client_id: str, enabled: bool) -> None:
        """The user's global notification switch (``GET /me`` ``notificationEnabled``)."""
        self._user(client_id).notification_enabled = enabled

    async def read(self, client_id: str, room_id: str, message_id: str | None = None) -> None:
        """Mark the room read up to ``message_id`` (default: the last message); emit ``lastRead``."""
        room = self._room(room_id)
        if message_id is None:
            upto = len(room.messages)
            message_id = room.messages[-1] if room.messages else None
        else:
            try:
                upto = room.messages.index(message_id) + 1
            except ValueError:
                raise KeyError(f"message {message_id} is not in room {room_id}") from None
        room.read_upto[client_id] = max(upto, room.read_upto.get(client_id, 0))
        payload = {"roomID": room_id, "memberID": client_id, "messageID": message_id}
        await self._emit_to(room.members, "lastRead", payload)

    def unread(self, client_id: str, room_id: str) -> int:
        """Messages from others after the user's last read (recalled ones excluded)."""
        room = self._room(room_id)
        count = 0
        for mid in room.messages[room.read_upto.get(client_id, 0) :]:
            msg = self._messages[mid]
            sender = msg.get("sender")
            if isinstance(sender, dict) and sender.get("_id") == client_id:
                continue
            if msg.get("messageType") == "recall":
                continue
            count += 1
        return count

    def badge(self, client_id: str) -> int:
        """Total unread over the user's rooms (what ``GET /me/badge`` answers)."""
        return sum(
            self.unread(client_id, r.room_id)
            for r in self._rooms.values()
            if client_id in r.members
        )

    async def emit_raw(
        self, client_id: str, event: str, payload: object, *, encode: bool = True
    ) -> int:
        """Send ``payload`` as ``event`` to every live authenticated socket of ``client_id``.

        With ``encode`` each socket gets its own encoding (base64 after ``conf``; a string
        ``myPrefDelete`` payload is base64 of the bare text); without it the payload goes untouched.
        Returns the number of sockets reached.
        """
        return await self._emit_to([client_id], event, payload, encode=encode)

    async def drop_sockets(self, client_id: str | None = None, *, clean: bool = False) -> int:
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
                await self._sio.disconnect(sid)
            else:
                transport.abort()
        if sids:
            logger.info("simulated IMKIT dropped %d socket(s)", len(sids))
        return len(sids)

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
        if client_id is not None:
            return len(self._by_client.get(client_id, ()))
        return sum(len(s) for s in self._by_client.values())

    def connected_sockets(self) -> int:
        """Connected sockets, authenticated or not."""
        return len(self._socks)

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

    # ------------------------------------------------------------------ internals: model

    def _now_ms(self) -> int:
        # Strictly increasing, so edits always move updatedAtMS and orderings are total.
        ms = max(int(time.time() * 1000), self._last_ms + 1)
        self._last_ms = ms
        return ms

    def _new_id(self) -> str:
        self._seq += 1
        return f"{int(time.time()) & 0xFFFFFFFF:08x}{self._seq:016x}"

    def _user(self, client_id: str) -> _User:
        try:
            return self._users[client_id]
        except KeyError:
            raise KeyError(f"no user {client_id}") from None

    def _room(self, room_id: str) -> _Room:
        try:
            return self._rooms[room_id]
        except KeyError:
            raise KeyError(f"no room {room_id}") from None

    def _message(self, message_id: str) -> dict[str, Any]:
        try:
            return self._messages[message_id]
        except KeyError:
            raise KeyError(f"no message {message_id}") from None

    def _client_obj(self, client_id: str) -> dict[str, Any]:
        user = self._users.get(client_id)
        return {
            "_id": client_id,
            "id": client_id,
            "nickname": user.nickname if user else client_id,
            "avatarUrl": user.avatar_url if user else "",
            "isRobot": user.is_robot if user else False,
        }

    def _room_updated_ms(self, room: _Room) -> int:
        return max(
            [room.created_ms] + [int(self._messages[m]["updatedAtMS"]) for m in room.messages]
        )

    def _room_public(self, room: _Room) -> dict[str, Any]:
        return {
            "_id": room.room_id,
            "id": room.room_id,
            "name": room.name,
            "roomType": "group",
            "members": [self._client_obj(m) for m in room.members],
            "createdAtMS": room.created_ms,
            "updatedAtMS": self._room_updated_ms(room),
        }

    def _room_for(self, room: _Room, client_id: str) -> dict[str, Any]:
        out = self._room_public(room)
        user = self._users.get(client_id)
        out["muted"] = bool(user and room.room_id in user.mute)
        out["unread"] = self.unread(client_id, room.room_id)
        out["lastMessage"] = (
            copy.deepcopy(self._messages[room.messages[-1]]) if room.messages else None
        )
        return out

    def _verify_token(self, token: object) -> str | None:
        """The client id of a valid, unexpired token of an existing user; else None."""
        if not isinstance(token, str) or not token:
            return None
        try:
            with _short_key_ok():
                claims = jwt.decode(
                    token, self._jwt_secret, algorithms=["HS256"], options={"require": ["exp"]}
                )
        except jwt.PyJWTError:
            return None
        cid = claims.get("id")
        if not isinstance(cid, str) or cid not in self._users:
            return None
        return cid

    def _key_ok(self, key: object) -> bool:
        return not self.require_client_key or key == self._client_key

    # ------------------------------------------------------------------ internals: socket.io

    def _encode(self, sock: _Socket, event: str, payload: object) -> object:
        if not sock.base64:
            return payload
        if event == "myPrefDelete" and isinstance(payload, str):
            return _encode_bare(payload)
        return encode_payload(payload)

    async def _emit_to(
        self, client_ids: list[str], event: str, payload: object, *, encode: bool = True
    ) -> int:
        if self._sio is None:
            return 0
        sent = 0
        for cid in dict.fromkeys(client_ids):
            for sid in list(self._by_client.get(cid, ())):
                sock = self._socks.get(sid)
                if sock is None:
                    continue
                data = self._encode(sock, event, payload) if encode else payload
                await self._sio.emit(event, data, to=sid)
                sent += 1
        return sent

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
        now = time.monotonic()
        if now < self.refuse_until:
            self.refused_total += 1
            return False
        self.connections_total += 1
        self.connect_times.append(now)
        self._socks[sid] = _Socket(sid, environ.get("aiohttp.request"))
        return True

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        self._forget(sid)

    async def _on_conf(self, sid: str, *args: Any) -> object:
        self.confs_total += 1
        sock = self._socks.get(sid)
        if sock is None:
            return None
        try:
            conf = decode_payload(args[0]) if args else None
        except ValueError:
            conf = None
        sock.base64 = isinstance(conf, dict) and conf.get("encoding") == "base64"
        return self._encode(sock, "conf", dict(_OK))

    async def _on_auth2(self, sid: str, *args: Any) -> object:
        self.auths_total += 1
        sock = self._socks.get(sid)
        if sock is None:
            return self._sio.not_handled
        token = args[0] if args else None
        raw_headers = args[1] if len(args) > 1 else None
        headers: dict[str, Any] = raw_headers if isinstance(raw_headers, dict) else {}
        if not isinstance(token, str) or not token:
            token = headers.get("IM-Authorization") or headers.get("Authorization")
        key = headers.get("IM-CLIENT-KEY", headers.get("CLIENT_KEY"))
        cid = self._verify_token(token)
        if cid is not None:
            # Only headers of a verified token are kept (they hold that token, nothing new leaks).
            self.last_auth_headers[cid] = dict(headers)
        if not self.ack_auth:
            return self._sio.not_handled
        if self.disconnect_next_auths > 0:
            self.disconnect_next_auths -= 1
            self._forget(sid)
            await self._sio.disconnect(sid)
            return self._sio.not_handled
        if cid is None or not self._key_ok(key):
            self.auth_failures_total += 1
            self._unindex(sock)
            if self.disconnect_on_auth_failure:
                self._forget(sid)
                await self._sio.disconnect(sid)
                return self._sio.not_handled
            return self._encode(sock, "auth2", _UNAUTHORIZED)
        if sock.client_id != cid:
            self._unindex(sock)
            sock.client_id = cid
            self._by_client.setdefault(cid, set()).add(sid)
        return self._encode(sock, "auth2", {**_OK, "result": {"client": cid}})

    # ------------------------------------------------------------------ internals: HTTP

    def _add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/me", self._h_me)
        r.add_get("/me/badge", self._h_badge)
        r.add_get("/rooms", self._h_rooms)
        r.add_get("/rooms/invitations", self._h_invitations)
        r.add_get("/rooms/{room_id}/messages/v3", self._h_messages)
        r.add_post("/sim/users", self._c_users)
        r.add_post("/sim/tokens", self._c_tokens)
        r.add_post("/sim/rooms", self._c_rooms)
        r.add_post("/sim/messages", self._c_send)
        r.add_post("/sim/messages/{message_id}/edit", self._c_edit)
        r.add_post("/sim/messages/{message_id}/recall", self._c_recall)
        r.add_post("/sim/invitations", self._c_invite)
        r.add_post("/sim/invitations/cancel", self._c_cancel_invite)
        r.add_post("/sim/mute", self._c_mute)
        r.add_post("/sim/notification-enabled", self._c_notification_enabled)
        r.add_post("/sim/read", self._c_read)
        r.add_post("/sim/emit", self._c_emit)
        r.add_post("/sim/drop", self._c_drop)
        r.add_post("/sim/ack-auth", self._c_ack_auth)
        r.add_post("/sim/refuse", self._c_refuse)
        r.add_post("/sim/rest-fail", self._c_rest_fail)
        r.add_get("/sim/stats", self._c_stats)

    @web.middleware
    async def _rest_faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(("/sim/", "/socket.io")):
            return await handler(request)
        self.rest_requests_total += 1
        if self.rest_delay > 0:
            await asyncio.sleep(self.rest_delay)
        if self.rest_fail_status is not None:
            if self.rest_fail_body is not None:
                return web.Response(status=self.rest_fail_status, text=self.rest_fail_body)
            env = {"RC": self.rest_fail_status, "RM": "Simulated failure"}
            return web.json_response(env, status=self.rest_fail_status)
        path_status = self.rest_fail_paths.get(request.path)
        if path_status is not None:
            env = {"RC": path_status, "RM": "Simulated failure"}
            return web.json_response(env, status=path_status)
        try:
            return await handler(request)
        except (KeyError, ValueError) as exc:
            return _envelope_error(400, "Bad Request", str(exc))

    def _rest_client(self, request: web.Request) -> str | None:
        if not self._key_ok(request.headers.get("IM-CLIENT-KEY")):
            return None
        return self._verify_token(request.headers.get("IM-Authorization"))

    async def _h_me(self, request: web.Request) -> web.Response:
        cid = self._rest_client(request)
        if cid is None:
            return web.json_response(_UNAUTHORIZED, status=401)
        user = self._users[cid]
        me = self._client_obj(cid)
        me.update(
            {
                "appID": self.app_id,
                "mute": sorted(user.mute),
                "notificationEnabled": user.notification_enabled,
            }
        )
        return _ok(me)

    async def _h_badge(self, request: web.Request) -> web.Response:
        cid = self._rest_client(request)
        if cid is None:
            return web.json_response(_UNAUTHORIZED, status=401)
        return _ok({"badge": self.badge(cid)})

    async def _h_rooms(self, request: web.Request) -> web.Response:
        cid = self._rest_client(request)
        if cid is None:
            return web.json_response(_UNAUTHORIZED, status=401)
        q = request.query
        after = _int_param(q, "updatedAfter", 0)
        skip = _int_param(q, "skip", 0)
        limit = _int_param(q, "limit", 100)
        rooms = [
            (self._room_updated_ms(r), r)
            for r in self._rooms.values()
            if cid in r.members and self._room_updated_ms(r) > after
        ]
        rooms.sort(key=lambda x: (-x[0], x[1].room_id))  # most recent first, stable across pages
        page = [self._room_for(r, cid) for _, r in rooms[skip : skip + limit]]
        return _ok({"totalCount": len(rooms), "data": page})

    async def _h_messages(self, request: web.Request) -> web.Response:
        cid = self._rest_client(request)
        if cid is None:
            return web.json_response(_UNAUTHORIZED, status=401)
        room = self._rooms.get(request.match_info["room_id"])
        if room is None:
            return _envelope_error(404, "Not Found", "no such room")
        if cid not in room.members:
            return _envelope_error(403, "Forbidden", "not a member of this room")
        q = request.query
        limit = _int_param(q, "limit", 20)
        msgs = sorted(
            (self._messages[m] for m in room.messages), key=lambda m: int(m["updatedAtMS"])
        )
        anchor_id = q.get("afterMessage")
        if anchor_id:
            anchor = self._messages.get(anchor_id)
            if anchor is None or anchor["room"] != room.room_id:
                return _envelope_error(404, "Not Found", "no such message in this room")
            # IMKIT includes the anchor itself, first, then everything updated after it.
            since = int(anchor["updatedAtMS"])
            msgs = [anchor] + [m for m in msgs if m is not anchor and int(m["updatedAtMS"]) > since]
        elif q.get("sortOrder", "asc") == "desc":
            msgs.reverse()
        return _ok({"totalCount": len(msgs), "data": copy.deepcopy(msgs[:limit])})

    async def _h_invitations(self, request: web.Request) -> web.Response:
        cid = self._rest_client(request)
        if cid is None:
            return web.json_response(_UNAUTHORIZED, status=401)
        data = [
            copy.deepcopy(inv) for (_, invitee), inv in self._invitations.items() if invitee == cid
        ]
        return _ok({"totalCount": len(data), "data": data})

    # control API (/sim/): plain JSON in and out, no auth: a development tool on 127.0.0.1

    async def _c_users(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        cid = _req_str(body, "clientId")
        nickname = body.get("nickname")
        self.create_user(cid, nickname if isinstance(nickname, str) else None)
        return web.json_response({"clientId": cid, "token": self.issue_token(cid, _ttl(body))})

    async def _c_tokens(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        cid = _req_str(body, "clientId")
        return web.json_response({"clientId": cid, "token": self.issue_token(cid, _ttl(body))})

    async def _c_rooms(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        members = body.get("members")
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise _bad("members must be a list of client ids")
        room_id = _req_str(body, "roomId")
        self.create_room(room_id, members, body.get("name"))
        return web.json_response({"roomId": room_id})

    async def _c_send(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        room_id = _req_str(body, "roomId")
        sender = body.get("senderId")
        if sender is not None and not isinstance(sender, str):
            raise _bad("senderId must be a client id or null")
        known = {"roomId", "senderId", "message", "messageType", "messageId"}
        extra = {k: v for k, v in body.items() if k not in known}
        msg = await _control(
            self.send_message(
                room_id,
                sender,
                body.get("message", "hello"),
                str(body.get("messageType") or "text"),
                body.get("messageId"),
                **extra,
            )
        )
        return web.json_response(msg)

    async def _c_edit(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        msg = await _control(
            self.edit_message(request.match_info["message_id"], body.get("message"))
        )
        return web.json_response(msg)

    async def _c_recall(self, request: web.Request) -> web.Response:
        msg = await _control(self.recall_message(request.match_info["message_id"]))
        return web.json_response(msg)

    async def _c_invite(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        inv = await _control(
            self.invite(
                _req_str(body, "roomId"), _req_str(body, "inviterId"), _req_str(body, "inviteeId")
            )
        )
        return web.json_response(inv)

    async def _c_cancel_invite(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        await self.cancel_invitation(_req_str(body, "roomId"), _req_str(body, "inviteeId"))
        return web.json_response({"ok": True})

    async def _c_mute(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        muted = bool(body.get("muted", True))
        await _control(self.mute(_req_str(body, "clientId"), _req_str(body, "roomId"), muted))
        return web.json_response({"ok": True})

    async def _c_notification_enabled(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        try:
            self.set_notification_enabled(
                _req_str(body, "clientId"), bool(body.get("enabled", True))
            )
        except KeyError as exc:
            raise _not_found(exc.args[0]) from None
        return web.json_response({"ok": True})

    async def _c_read(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        cid = _req_str(body, "clientId")
        await _control(self.read(cid, _req_str(body, "roomId"), body.get("messageId")))
        return web.json_response({"ok": True})

    async def _c_emit(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        n = await self.emit_raw(
            _req_str(body, "clientId"),
            _req_str(body, "event"),
            body.get("payload"),
            encode=bool(body.get("encode", True)),
        )
        return web.json_response({"sockets": n})

    async def _c_drop(self, request: web.Request) -> web.Response:
        body = await _json_body(request, allow_empty=True)
        n = await self.drop_sockets(body.get("clientId"), clean=bool(body.get("clean", False)))
        return web.json_response({"dropped": n})

    async def _c_ack_auth(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        self.ack_auth = bool(body.get("enabled", True))
        return web.json_response({"ackAuth": self.ack_auth})

    async def _c_refuse(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        seconds = body.get("seconds")
        if not isinstance(seconds, int | float):
            raise _bad("seconds must be a number")
        self.refuse_connections(float(seconds))
        return web.json_response({"ok": True})

    async def _c_rest_fail(self, request: web.Request) -> web.Response:
        body = await _json_body(request, allow_empty=True)
        status = body.get("status")
        self.fail_rest(int(status) if status is not None else None, body.get("body"))
        self.rest_delay = float(body.get("delay", 0.0))
        return web.json_response({"ok": True})

    async def _c_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def _not_found(message: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=json.dumps({"error": message}), content_type="application/json")


def _ok(result: object) -> web.Response:
    return web.json_response({**_OK, "result": result})


def _envelope_error(status: int, rm: str, message: str) -> web.Response:
    return web.json_response({"RC": status, "RM": rm, "error": {"message": message}}, status=status)


def _int_param(q: Any, name: str, default: int) -> int:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return value


async def _json_body(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    if allow_empty and not await request.read():
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise _bad("body must be JSON") from None
    if not isinstance(body, dict):
        raise _bad("body must be a JSON object")
    return body


def _ttl(body: dict[str, Any]) -> float | None:
    ttl = body.get("ttl")
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise _bad("ttl must be a number of seconds")
    return float(ttl)


def _req_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise _bad(f"{name} is required")
    return value


async def _control(coro: Awaitable[_T]) -> _T:
    """Run a control action, mapping unknown users/rooms/messages to 404 and bad values to 400."""
    try:
        return await coro
    except KeyError as exc:
        raise _not_found(str(exc.args[0])) from None
    except ValueError as exc:
        raise _bad(str(exc)) from None


async def run(host: str, port: int, **opts: Any) -> None:
    """Serve a simulated IMKIT on ``host:port`` until cancelled (``opts`` go to :class:`ImkitSim`)."""
    sim = ImkitSim(**opts)
    await sim.start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
