"""The FastAPI application factory: wires routers and one lifespan around a :class:`Bridge`."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridge import __version__
from bridge.api import admin, me, ops
from bridge.api.auth import Authenticator, FailureLimiter, RateLimiter, TokenVerifier
from bridge.api.deps import ApiContext
from bridge.api.errors import drop_validation_422, error_body, install_error_handlers
from bridge.config import Settings
from bridge.logs import request_id_var
from bridge.service import Bridge, Role

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024


class RequestContext:
    """Gives each request an id (``X-Request-ID``, echoed) and refuses oversized bodies with 413."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex[:16]
        token = request_id_var.set(rid)
        try:
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                await _send_json(send, 413, error_body(413, "INVALID_PARAMETER", f"request body over {self.max_body} bytes"))
                return
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        raise _BodyTooLarge()
                return message

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message.setdefault("headers", [])
                    message["headers"] = [*message["headers"], (b"x-request-id", rid.encode("latin-1"))]
                await send(message)

            try:
                await self.app(scope, limited_receive, send_with_id)
            except _BodyTooLarge:
                await _send_json(send, 413, error_body(413, "INVALID_PARAMETER", f"request body over {self.max_body} bytes"))
        finally:
            request_id_var.reset(token)


class _BodyTooLarge(Exception):
    pass


async def _send_json(send: Send, status: int, body: dict[str, object]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


def create_app(settings: Settings, *, role: Role = "serve", bridge: Bridge | None = None) -> FastAPI:
    """Build the API. The lifespan starts the bridge (store, dispatcher, pool) and closes it."""
    bridge = bridge or Bridge(settings, role=role)
    verifier = TokenVerifier(
        bridge.api_rest,
        negative_ttl=settings.auth_negative_ttl,
        failures=FailureLimiter(settings.auth_failures_per_minute),
    )
    auth = Authenticator(settings, verifier, RateLimiter(settings.rate_limit_per_minute))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await bridge.start()
        try:
            yield
        finally:
            await bridge.close()

    app = FastAPI(
        title="imkit-push-bridge",
        version=__version__,
        description="Registers IMKIT apps' push tokens and pushes chat events to APNs/FCM while they are in the background.",
        lifespan=lifespan,
    )
    app.state.ctx = ApiContext(bridge=bridge, auth=auth)
    install_error_handlers(app)
    app.include_router(me.router)
    app.include_router(admin.router)
    app.include_router(ops.router)
    app.add_middleware(RequestContext)

    def openapi() -> dict[str, Any]:
        return drop_validation_422(FastAPI.openapi(app))  # FastAPI caches the document; this is idempotent

    app.openapi = openapi  # type: ignore[method-assign]
    return app
