"""The control API of the simulated IMKIT (``/sim/``): another process (the CLI's ``sim``, a test,
the bench) drives the model over HTTP. Plain JSON in and out, no auth: a development tool on
127.0.0.1. Unknown users, rooms and messages answer 404; bad values 400.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

if TYPE_CHECKING:
    from bridge.sim.imkit import ImkitSim

_T = TypeVar("_T")


class ControlApi:
    """The ``/sim/`` routes of one :class:`~bridge.sim.imkit.ImkitSim`."""

    def __init__(self, sim: ImkitSim) -> None:
        self._sim = sim

    def add_routes(self, app: web.Application) -> None:
        r = app.router
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

    async def _c_users(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        cid = _req_str(body, "clientId")
        nickname = body.get("nickname")
        self._sim.create_user(cid, nickname if isinstance(nickname, str) else None)
        return web.json_response({"clientId": cid, "token": self._sim.issue_token(cid, _ttl(body))})

    async def _c_tokens(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        cid = _req_str(body, "clientId")
        return web.json_response({"clientId": cid, "token": self._sim.issue_token(cid, _ttl(body))})

    async def _c_rooms(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        members = body.get("members")
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise _bad("members must be a list of client ids")
        room_id = _req_str(body, "roomId")
        self._sim.create_room(room_id, members, body.get("name"))
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
            self._sim.send_message(
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
            self._sim.edit_message(request.match_info["message_id"], body.get("message"))
        )
        return web.json_response(msg)

    async def _c_recall(self, request: web.Request) -> web.Response:
        msg = await _control(self._sim.recall_message(request.match_info["message_id"]))
        return web.json_response(msg)

    async def _c_invite(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        inv = await _control(
            self._sim.invite(
                _req_str(body, "roomId"), _req_str(body, "inviterId"), _req_str(body, "inviteeId")
            )
        )
        return web.json_response(inv)

    async def _c_cancel_invite(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        await self._sim.cancel_invitation(_req_str(body, "roomId"), _req_str(body, "inviteeId"))
        return web.json_response({"ok": True})

    async def _c_mute(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        muted = bool(body.get("muted", True))
        await _control(self._sim.mute(_req_str(body, "clientId"), _req_str(body, "roomId"), muted))
        return web.json_response({"ok": True})

    async def _c_notification_enabled(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        try:
            self._sim.set_notification_enabled(
                _req_str(body, "clientId"), bool(body.get("enabled", True))
            )
        except KeyError as exc:
            raise _not_found(exc.args[0]) from None
        return web.json_response({"ok": True})

    async def _c_read(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        cid = _req_str(body, "clientId")
        await _control(self._sim.read(cid, _req_str(body, "roomId"), body.get("messageId")))
        return web.json_response({"ok": True})

    async def _c_emit(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        n = await self._sim.emit_raw(
            _req_str(body, "clientId"),
            _req_str(body, "event"),
            body.get("payload"),
            encode=bool(body.get("encode", True)),
        )
        return web.json_response({"sockets": n})

    async def _c_drop(self, request: web.Request) -> web.Response:
        body = await _json_body(request, allow_empty=True)
        n = await self._sim.drop_sockets(body.get("clientId"), clean=bool(body.get("clean", False)))
        return web.json_response({"dropped": n})

    async def _c_ack_auth(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        self._sim.ack_auth = bool(body.get("enabled", True))
        return web.json_response({"ackAuth": self._sim.ack_auth})

    async def _c_refuse(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        seconds = body.get("seconds")
        if not isinstance(seconds, int | float):
            raise _bad("seconds must be a number")
        self._sim.refuse_connections(float(seconds))
        return web.json_response({"ok": True})

    async def _c_rest_fail(self, request: web.Request) -> web.Response:
        body = await _json_body(request, allow_empty=True)
        status = body.get("status")
        self._sim.fail_rest(int(status) if status is not None else None, body.get("body"))
        self._sim.rest_delay = float(body.get("delay", 0.0))
        return web.json_response({"ok": True})

    async def _c_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self._sim.stats())


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def _not_found(message: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=json.dumps({"error": message}), content_type="application/json")


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
