"""Who is calling: an app with its IMKIT client token, or a platform backend with the admin key."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.security import APIKeyHeader, HTTPBearer

from bridge.api.errors import ApiError
from bridge.config import Settings
from bridge.upstream.rest import ImkitRest, InvalidToken, RequestRejected, UpstreamUnavailable

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 8192

# OpenAPI security schemes, for the document only: auto_error=False means they never reject a
# request; :class:`Authenticator` reads and checks the headers itself.
CLIENT_TOKEN = APIKeyHeader(
    name="IM-Authorization",
    scheme_name="ClientToken",
    description="The user's IMKIT client token, verified with IMKIT",
    auto_error=False,
)
PLATFORM_KEY = APIKeyHeader(
    name="IM-API-KEY",
    scheme_name="PlatformKey",
    description="BRIDGE_ADMIN_TOKEN, for platform backends; the call then names the user with clientId",
    auto_error=False,
)
ADMIN_BEARER = HTTPBearer(
    scheme_name="AdminToken", description="Authorization: Bearer <BRIDGE_ADMIN_TOKEN>", auto_error=False
)


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller. ``token`` is the verified client token (None for admin calls)."""

    client_id: str
    token: str | None
    admin: bool = False


class TokenVerifier:
    """Verifies client tokens with IMKIT (``GET /me``), caching answers briefly.

    The cache is keyed by a hash of the token, so no token is kept in memory longer than needed
    for the caller and none appears in a key that could be logged.
    """

    def __init__(
        self,
        rest: ImkitRest,
        *,
        ttl: float = 60.0,
        max_entries: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rest = rest
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def client_id(self, token: str) -> str:
        key = hashlib.sha256(token.encode("utf-8")).hexdigest()
        hit = self._cache.get(key)
        now = self._clock()
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            me = await self._rest.me(token)
        except InvalidToken:
            self._cache.pop(key, None)
            raise ApiError(401, "INVALID_TOKEN", "IMKIT rejected the client token") from None
        except UpstreamUnavailable:
            raise ApiError(
                503, "UPSTREAM_UNAVAILABLE", "IMKIT cannot be reached to verify the token", headers={"Retry-After": "5"}
            ) from None
        except RequestRejected as exc:
            if exc.status == 404:
                # No GET /me at the configured URL: the bridge's problem, not the caller's token.
                log.warning("IMKIT answered GET /me with HTTP 404: check BRIDGE_IMKIT_URL")
                raise ApiError(
                    503, "UPSTREAM_UNAVAILABLE", "IMKIT cannot verify the token", headers={"Retry-After": "5"}
                ) from None
            # Another 4xx or an RC error: IMKIT does not vouch for this token.
            raise ApiError(401, "INVALID_TOKEN", "IMKIT refused the client token") from None
        self._cache[key] = (me.client_id, now + self._ttl)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return me.client_id


class RateLimiter:
    """At most ``per_minute`` calls per client id in any sliding 60-second window."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = per_minute
        self._clock = clock
        self._calls: dict[str, deque[float]] = {}

    def check(self, client_id: str) -> None:
        now = self._clock()
        calls = self._calls.setdefault(client_id, deque())
        while calls and calls[0] <= now - 60.0:
            calls.popleft()
        if len(calls) >= self._limit:
            retry = max(1, int(calls[0] + 60.0 - now) + 1)
            raise ApiError(429, "RATE_LIMITED", "too many calls, slow down", headers={"Retry-After": str(retry)})
        calls.append(now)
        if len(self._calls) > 100_000:
            # Forget idle callers so the table cannot grow without bound.
            for key in [k for k, v in self._calls.items() if not v or v[-1] <= now - 60.0]:
                del self._calls[key]


class Authenticator:
    """Turns request headers into a :class:`Caller` (or an :class:`ApiError`)."""

    def __init__(self, settings: Settings, verifier: TokenVerifier, limiter: RateLimiter) -> None:
        self._client_key = settings.imkit_client_key.get_secret_value() if settings.imkit_client_key else None
        self._admin = settings.admin_token.get_secret_value() if settings.admin_token else None
        self._verifier = verifier
        self._limiter = limiter

    def is_admin_key(self, value: str | None) -> bool:
        return bool(self._admin and value and hmac.compare_digest(value.encode(), self._admin.encode()))

    def client_token(self, request: Request) -> str | None:
        token = request.headers.get("IM-Authorization") or request.headers.get("Authorization")
        if token and token.lower().startswith("bearer "):
            token = token[7:]
        token = (token or "").strip()
        if len(token) > MAX_TOKEN_LENGTH:
            raise ApiError(401, "INVALID_TOKEN", "client token too long")
        if not (token.isascii() and token.isprintable()):
            # No IMKIT token has these, and they cannot go into the header that verifies it.
            raise ApiError(401, "INVALID_TOKEN", "client token has characters outside printable ASCII")
        return token or None

    async def caller(self, request: Request, client_id: str | None = None) -> Caller:
        """Authenticate an app call (client token) or a backend call (``IM-API-KEY`` + clientId)."""
        api_key = request.headers.get("IM-API-KEY")
        if api_key is not None:
            if not self.is_admin_key(api_key):
                raise ApiError(401, "INVALID_TOKEN", "IM-API-KEY is not valid")
            if not client_id:
                raise ApiError(400, "MISSING_PARAMETER", "clientId is required with IM-API-KEY")
            token = self.client_token(request)
            if token is not None and await self._verifier.client_id(token) != client_id:
                raise ApiError(403, "FORBIDDEN", "the client token belongs to another client")
            self._limiter.check(client_id)
            return Caller(client_id=client_id, token=token, admin=True)
        if self._client_key is not None:
            key = request.headers.get("IM-CLIENT-KEY")
            if key is not None and not hmac.compare_digest(key.encode(), self._client_key.encode()):
                raise ApiError(401, "INVALID_TOKEN", "IM-CLIENT-KEY does not match this bridge")
        token = self.client_token(request)
        if token is None:
            raise ApiError(401, "INVALID_TOKEN", "IM-Authorization header with the client token is required")
        cid = await self._verifier.client_id(token)
        self._limiter.check(cid)
        return Caller(client_id=cid, token=token)

    def require_admin_bearer(self, request: Request) -> None:
        """``Authorization: Bearer <BRIDGE_ADMIN_TOKEN>`` for ``/admin/*``."""
        if self._admin is None:
            raise ApiError(404, "NOT_FOUND", "the admin API is off (BRIDGE_ADMIN_TOKEN is not set)")
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not token or not self.is_admin_key(token):
            raise ApiError(401, "INVALID_TOKEN", "admin bearer token required", headers={"WWW-Authenticate": "Bearer"})
