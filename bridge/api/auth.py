"""Who is calling: an app with its IMKIT client token, or a platform backend with the admin key."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.security import APIKeyHeader, HTTPBearer

from bridge.api.errors import ApiError
from bridge.config import Settings
from bridge.upstream.rest import ImkitRest, InvalidToken, RequestRejected, UpstreamUnavailable

log = logging.getLogger(__name__)

#: The rate limit's sliding window, seconds.
WINDOW = 60.0

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


@dataclass(slots=True)
class Attempt:
    """One token check allowed by :meth:`FailureLimiter.attempt`; set ``failed`` if IMKIT refused it."""

    failed: bool = False


@dataclass(slots=True)
class _Gate:
    slots: asyncio.Semaphore
    users: int = 0


class FailureLimiter:
    """At most ``per_minute`` refused client tokens per caller address in any sliding minute.

    Checked *before* IMKIT is asked, so made-up tokens cannot make the bridge hammer IMKIT's
    ``GET /me``. At most ``concurrency`` checks per address run at once and the others wait
    (then look at the failures again), so a burst cannot slip past the limit: one address
    costs IMKIT at most ``per_minute + concurrency - 1`` refused checks a minute, while many
    valid users behind one address (NAT) only queue. IPv6 callers are counted per /64 (one host
    usually owns the whole prefix). Memory is bounded: ``max_addresses`` addresses (least
    recently failed dropped first), each with at most ``per_minute`` timestamps; a gate exists
    only while checks of its address run or wait.
    """

    def __init__(
        self,
        per_minute: int,
        *,
        concurrency: int = 32,
        max_addresses: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = per_minute
        self._concurrency = concurrency
        self._max = max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._gates: dict[str, _Gate] = {}

    @staticmethod
    def key(address: str) -> str:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address[:64]
        if ip.version == 6:
            mapped = ip.ipv4_mapped
            return str(mapped) if mapped is not None else str(ipaddress.IPv6Network((ip, 64), strict=False))
        return str(ip)

    @property
    def addresses(self) -> int:
        """How many addresses have failures remembered (bounded by ``max_addresses``)."""
        return len(self._failures)

    @contextlib.asynccontextmanager
    async def attempt(self, address: str) -> AsyncIterator[Attempt]:
        """Allow one check for ``address`` (maybe after waiting), or raise 429 ``RATE_LIMITED``."""
        key = self.key(address)
        self._check(key)
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate(asyncio.Semaphore(self._concurrency))
        gate.users += 1
        try:
            async with gate.slots:
                self._check(key)  # failures that came in while this one waited
                attempt = Attempt()
                try:
                    yield attempt
                finally:
                    if attempt.failed:
                        self._failed(key)
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[key]

    def _check(self, key: str) -> None:
        failures = self._failures.get(key)
        if not failures:
            return
        now = self._clock()
        while failures and failures[0] <= now - 60.0:
            failures.popleft()
        if len(failures) >= self._limit:
            retry = max(1, int(failures[0] + 60.0 - now) + 1)
            raise ApiError(
                429,
                "RATE_LIMITED",
                "too many invalid client tokens from this address, slow down",
                headers={"Retry-After": str(retry)},
            )

    def _failed(self, key: str) -> None:
        failures = self._failures.get(key)
        if failures is None:
            failures = self._failures[key] = deque(maxlen=self._limit)
        failures.append(self._clock())
        self._failures.move_to_end(key)
        while len(self._failures) > self._max:
            self._failures.popitem(last=False)


class TokenVerifier:
    """Verifies client tokens with IMKIT (``GET /me``), caching answers briefly.

    The caches are keyed by a hash of the token, so no token is kept in memory longer than needed
    for the caller and none appears in a key that could be logged. Tokens IMKIT refused (401) are
    remembered for ``negative_ttl`` seconds, and callers whose tokens IMKIT keeps refusing are
    stopped by ``failures`` before IMKIT is asked again. Both caches hold at most
    ``max_entries``.
    """

    def __init__(
        self,
        rest: ImkitRest,
        *,
        ttl: float = 60.0,
        negative_ttl: float = 30.0,
        failures: FailureLimiter | None = None,
        max_entries: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rest = rest
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._failures = failures
        self._max = max_entries
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._refused: OrderedDict[bytes, float] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[str]] = {}

    @property
    def refused_size(self) -> int:
        return len(self._refused)

    async def client_id(self, token: str, address: str | None = None) -> str:
        """The client id IMKIT says ``token`` belongs to; ``address`` (None: not limited) is the caller's."""
        key = hashlib.sha256(token.encode("utf-8")).digest()
        hit = self._cache.get(key)
        now = self._clock()
        if hit is not None and hit[1] > now:
            return hit[0]
        refused_until = self._refused.get(key)
        if refused_until is not None:
            if refused_until > now:
                raise ApiError(401, "INVALID_TOKEN", "IMKIT rejected the client token")
            del self._refused[key]
        # Concurrent calls with one token (an app registering several devices at once) share
        # one IMKIT call, and one slot of the caller's failure allowance.
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._verify(token, key, address))
            self._inflight[key] = pending
            pending.add_done_callback(lambda done: self._forget_inflight(key, done))
        # shield: one caller going away must not cancel the check the others wait for.
        return await asyncio.shield(pending)

    def _forget_inflight(self, key: bytes, done: asyncio.Future[str]) -> None:
        if self._inflight.get(key) is done:
            del self._inflight[key]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have gone

    async def _verify(self, token: str, key: bytes, address: str | None) -> str:
        if address is None or self._failures is None:
            return await self._ask(token, key, Attempt())
        async with self._failures.attempt(address) as attempt:
            return await self._ask(token, key, attempt)

    async def _ask(self, token: str, key: bytes, attempt: Attempt) -> str:
        """IMKIT's answer for ``token``, cached; marks ``attempt`` failed if IMKIT refused it."""
        try:
            me = await self._rest.me(token)
        except InvalidToken:
            attempt.failed = True
            now = self._clock()
            self._cache.pop(key, None)
            if self._negative_ttl > 0:
                self._refused[key] = now + self._negative_ttl
                self._refused.move_to_end(key)
                while len(self._refused) > self._max:
                    self._refused.popitem(last=False)
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
            # Another 4xx or an RC error: IMKIT does not vouch for this token. It counts against
            # the address but is not cached: unlike a 401 it may not be about the token itself.
            attempt.failed = True
            raise ApiError(401, "INVALID_TOKEN", "IMKIT refused the client token") from None
        self._cache[key] = (me.client_id, self._clock() + self._ttl)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return me.client_id


class RateLimiter:
    """At most ``per_minute`` calls per client id in any sliding 60-second window.

    Each caller's call times sit in a plain sorted list (a deque costs ~600 bytes even when it
    holds one time, and every registered user has called at least once); callers idle for a
    minute are forgotten by a sweep at most once a minute, so the table holds only the last
    minute's callers.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = per_minute
        self._clock = clock
        self._calls: dict[str, list[float]] = {}
        self._next_sweep = clock() + WINDOW

    def __len__(self) -> int:
        """Callers remembered now."""
        return len(self._calls)

    def check(self, client_id: str) -> None:
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        calls = self._calls.setdefault(client_id, [])
        expired = bisect.bisect_right(calls, now - WINDOW)
        if expired:
            del calls[:expired]
        if len(calls) >= self._limit:
            retry = max(1, int(calls[0] + WINDOW - now) + 1)
            raise ApiError(429, "RATE_LIMITED", "too many calls, slow down", headers={"Retry-After": str(retry)})
        calls.append(now)

    def _sweep(self, now: float) -> None:
        for key in [k for k, v in self._calls.items() if not v or v[-1] <= now - WINDOW]:
            del self._calls[key]
        self._next_sweep = now + WINDOW


class Authenticator:
    """Turns request headers into a :class:`Caller` (or an :class:`ApiError`)."""

    def __init__(self, settings: Settings, verifier: TokenVerifier, limiter: RateLimiter) -> None:
        self._client_key = settings.imkit_client_key.get_secret_value() if settings.imkit_client_key else None
        self._admin = settings.admin_token.get_secret_value() if settings.admin_token else None
        self._proxy_header = settings.trusted_proxy_header
        self._verifier = verifier
        self._limiter = limiter

    def address(self, request: Request) -> str:
        """The caller's address: the TCP peer, or the trusted proxy's header when configured.

        With ``X-Forwarded-For: client, proxy1, proxy2`` the *last* address is the one the
        trusted proxy saw; anything before it came from the caller and may be forged.
        """
        if self._proxy_header:
            values = request.headers.getlist(self._proxy_header)
            last = values[-1].rsplit(",", 1)[-1].strip() if values else ""
            if last:
                return last[:64]
        return request.client.host if request.client else "unknown"

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
        cid = await self._verifier.client_id(token, self.address(request))
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
