"""Per-app objects reachable from a request (set on ``app.state`` by :func:`create_app`)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from bridge.api.auth import Authenticator
from bridge.service import Bridge


@dataclass(slots=True)
class ApiContext:
    bridge: Bridge
    auth: Authenticator


def context(request: Request) -> ApiContext:
    ctx = request.app.state.ctx
    assert isinstance(ctx, ApiContext)
    return ctx
