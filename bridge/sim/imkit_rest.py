"""The REST calls the bridge makes to the simulated IMKIT, answered in IMKIT's envelope
(``GET /me``, ``/me/badge``, ``/rooms``, ``/rooms/invitations``, ``/rooms/{id}/messages/v3``),
and the faults a test can put in front of them (a status for every call or for one path, a delay).

The fault switches (``rest_fail_status``, ``rest_fail_body``, ``rest_fail_paths``, ``rest_delay``)
and ``rest_requests_total`` are the :class:`~bridge.sim.imkit.ImkitSim`'s, where tests set and read
them.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bridge.sim.imkit_sockets import OK, UNAUTHORIZED

if TYPE_CHECKING:
    from bridge.sim.imkit import ImkitSim

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RestApi:
    """The REST routes of one :class:`~bridge.sim.imkit.ImkitSim` and their fault middleware."""

    def __init__(self, sim: ImkitSim) -> None:
        self._sim = sim

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/me", self._h_me)
        r.add_get("/me/badge", self._h_badge)
        r.add_get("/rooms", self._h_rooms)
        r.add_get("/rooms/invitations", self._h_invitations)
        r.add_get("/rooms/{room_id}/messages/v3", self._h_messages)

    @web.middleware
    async def faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Counts every REST call and applies the REST faults; ``/sim/`` and Socket.IO pass."""
        if request.path.startswith(("/sim/", "/socket.io")):
            return await handler(request)
        sim = self._sim
        sim.rest_requests_total += 1
        if sim.rest_delay > 0:
            await asyncio.sleep(sim.rest_delay)
        if sim.rest_fail_status is not None:
            if sim.rest_fail_body is not None:
                return web.Response(status=sim.rest_fail_status, text=sim.rest_fail_body)
            env = {"RC": sim.rest_fail_status, "RM": "Simulated failure"}
            return web.json_response(env, status=sim.rest_fail_status)
        path_status = sim.rest_fail_paths.get(request.path)
        if path_status is not None:
            env = {"RC": path_status, "RM": "Simulated failure"}
            return web.json_response(env, status=path_status)
        try:
            return await handler(request)
        except (KeyError, ValueError) as exc:
            return _envelope_error(400, "Bad Request", str(exc))

    def _client(self, request: web.Request) -> str | None:
        if not self._sim.key_ok(request.headers.get("IM-CLIENT-KEY")):
            return None
        return self._sim.verify_token(request.headers.get("IM-Authorization"))

    async def _h_me(self, request: web.Request) -> web.Response:
        cid = self._client(request)
        if cid is None:
            return web.json_response(UNAUTHORIZED, status=401)
        chat = self._sim.chat
        user = chat.users[cid]
        me = chat.client_obj(cid)
        me.update(
            {
                "appID": chat.app_id,
                "mute": sorted(user.mute),
                "notificationEnabled": user.notification_enabled,
            }
        )
        return _ok(me)

    async def _h_badge(self, request: web.Request) -> web.Response:
        cid = self._client(request)
        if cid is None:
            return web.json_response(UNAUTHORIZED, status=401)
        return _ok({"badge": self._sim.chat.badge(cid)})

    async def _h_rooms(self, request: web.Request) -> web.Response:
        cid = self._client(request)
        if cid is None:
            return web.json_response(UNAUTHORIZED, status=401)
        chat = self._sim.chat
        q = request.query
        after = _int_param(q, "updatedAfter", 0)
        skip = _int_param(q, "skip", 0)
        limit = _int_param(q, "limit", 100)
        rooms = [
            (chat.room_updated_ms(r), r)
            for r in chat.rooms.values()
            if cid in r.members and chat.room_updated_ms(r) > after
        ]
        rooms.sort(key=lambda x: (-x[0], x[1].room_id))  # most recent first, stable across pages
        page = [chat.room_for(r, cid) for _, r in rooms[skip : skip + limit]]
        return _ok({"totalCount": len(rooms), "data": page})

    async def _h_messages(self, request: web.Request) -> web.Response:
        cid = self._client(request)
        if cid is None:
            return web.json_response(UNAUTHORIZED, status=401)
        chat = self._sim.chat
        room = chat.rooms.get(request.match_info["room_id"])
        if room is None:
            return _envelope_error(404, "Not Found", "no such room")
        if cid not in room.members:
            return _envelope_error(403, "Forbidden", "not a member of this room")
        q = request.query
        limit = _int_param(q, "limit", 20)
        msgs = sorted(
            (chat.messages[m] for m in room.messages), key=lambda m: int(m["updatedAtMS"])
        )
        anchor_id = q.get("afterMessage")
        if anchor_id:
            anchor = chat.messages.get(anchor_id)
            if anchor is None or anchor["room"] != room.room_id:
                return _envelope_error(404, "Not Found", "no such message in this room")
            # IMKIT includes the anchor itself, first, then everything updated after it.
            since = int(anchor["updatedAtMS"])
            msgs = [anchor] + [m for m in msgs if m is not anchor and int(m["updatedAtMS"]) > since]
        elif q.get("sortOrder", "asc") == "desc":
            msgs.reverse()
        return _ok({"totalCount": len(msgs), "data": copy.deepcopy(msgs[:limit])})

    async def _h_invitations(self, request: web.Request) -> web.Response:
        cid = self._client(request)
        if cid is None:
            return web.json_response(UNAUTHORIZED, status=401)
        invitations = self._sim.chat.invitations
        data = [copy.deepcopy(inv) for (_, invitee), inv in invitations.items() if invitee == cid]
        return _ok({"totalCount": len(data), "data": data})


def _ok(result: object) -> web.Response:
    return web.json_response({**OK, "result": result})


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
