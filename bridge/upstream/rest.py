"""The bridge's IMKIT REST client: verify a token (``/me``), badge counts and backfill reads.

One instance per process, sharing one ``aiohttp.ClientSession`` (kept-alive connections; about a
tenth of httpx's CPU per call, see docs/benchmarks.md). Every call sends the client's token
as ``IM-Authorization`` (and ``IM-CLIENT-KEY`` when configured) and unwraps IMKIT's envelope
``{RC, RM, result}``. Failures come out as two exceptions the callers act on: :class:`InvalidToken`
(ask the app for a new token) and :class:`UpstreamUnavailable` (try again later). Tokens never
appear in log lines or exception messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

logger = logging.getLogger(__name__)

#: Requests in flight to IMKIT at once; the rest wait here, in a FIFO semaphore, so a mass
#: reconnect's thousands of refreshes never queue inside the HTTP client's pool (httpcore's, which
#: this client used before, rescanned its queue quadratically: 30 % of the process's CPU in the
#: 10,000-session benchmark, docs/benchmarks.md) and the wait for a slot is not timed.
MAX_IN_FLIGHT = 32


class ImkitError(Exception):
    """Base of the errors :class:`ImkitRest` raises."""


class InvalidToken(ImkitError):
    """IMKIT said 401 (HTTP 401 or an envelope with ``RC: 401``): the token is invalid or expired."""


class UpstreamUnavailable(ImkitError):
    """IMKIT could not answer usefully: connection error, timeout, 5xx, 429 or an unparseable body."""


class RequestRejected(ImkitError):
    """IMKIT refused the request for another reason (a 4xx other than 401/429, or an RC error).

    ``status`` is the HTTP status and ``rc`` the envelope's ``RC`` (when there was one).
    """

    def __init__(self, message: str, *, status: int, rc: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.rc = rc


@dataclass(frozen=True)
class Me:
    """What ``GET /me`` says about the token's user."""

    client_id: str
    nickname: str | None
    mute: frozenset[str]
    notification_enabled: bool


class ImkitRest:
    """IMKIT REST calls with a client token. ``client`` is injected or created (and then owned)."""

    def __init__(
        self,
        base_url: str,
        *,
        client_key: str | None,
        timeout: float = 10.0,
        client: aiohttp.ClientSession | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._base_url = base_url.rstrip("/")
        self._client_key = client_key
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._owns_client = client is None
        self._client = client
        self._max_in_flight = max_in_flight
        self._slots = asyncio.Semaphore(max_in_flight)
        self._closed = False

    def __repr__(self) -> str:
        return f"ImkitRest({self._base_url!r})"

    async def aclose(self) -> None:
        """Close the HTTP client if this instance created it."""
        self._closed = True
        if self._owns_client and self._client is not None:
            await self._client.close()

    def _session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise UpstreamUnavailable("the IMKIT client is closed")
        if self._client is None:
            # Made on first use: an aiohttp session belongs to the running loop. Every request
            # slot gets a kept-alive connection: no connect per call under load.
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_in_flight)
            )
        return self._client

    async def me(self, token: str) -> Me:
        """The token's user (``GET /me``): verifies the token and learns the client id."""
        result = await self._get("/me", token)
        if not isinstance(result, dict):
            raise UpstreamUnavailable("GET /me: result is not an object")
        cid = result.get("_id") or result.get("id")
        if not isinstance(cid, str | int) or isinstance(cid, bool) or cid == "":
            raise UpstreamUnavailable("GET /me: result has no client id")
        nickname = result.get("nickname")
        mute = result.get("mute")
        enabled = result.get("notificationEnabled")
        return Me(
            client_id=str(cid),
            nickname=str(nickname) if nickname is not None else None,
            mute=frozenset(_room_ids(mute)),
            # IMKIT leaves the switch out for users who never touched it: on by default.
            notification_enabled=enabled if isinstance(enabled, bool) else True,
        )

    async def badge(self, token: str) -> int:
        """The user's total unread count (``GET /me/badge``)."""
        result = await self._get("/me/badge", token)
        badge = result.get("badge") if isinstance(result, dict) else result
        if isinstance(badge, bool) or not isinstance(badge, int | float | str):
            raise UpstreamUnavailable("GET /me/badge: no badge in result")
        try:
            return max(0, int(badge))
        except ValueError:
            raise UpstreamUnavailable("GET /me/badge: badge is not a number") from None

    async def rooms_updated_after(
        self, token: str, after_ms: int, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Every room of the user with activity after ``after_ms``, fetched ``limit`` per page."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        rooms: list[dict[str, Any]] = []
        seen: set[str] = set()
        skip = 0
        while True:
            params = {"updatedAfter": after_ms, "skip": skip, "limit": limit}
            total, page = _list_result(await self._get("/rooms", token, params), "GET /rooms")
            fresh = 0
            for room in page:
                rid = str(room.get("_id") or room.get("id") or "")
                if not rid or rid in seen:  # a room without an id cannot be backfilled
                    continue
                seen.add(rid)
                rooms.append(room)
                fresh += 1
            skip += len(page)
            # Stop on a short page, at totalCount, or when a page brings nothing new (a server
            # that ignores skip must not loop us forever).
            if len(page) < limit or fresh == 0 or (total is not None and skip >= total):
                return rooms

    async def messages_after(
        self, token: str, room_id: str, after_message: str, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` messages of a room after ``after_message``, oldest update first.

        IMKIT includes the anchor itself as the first item; it is dropped here (one extra item is
        asked for so the anchor does not eat into ``limit``).
        """
        path = f"/rooms/{quote(room_id, safe='')}/messages/v3"
        params = {"afterMessage": after_message, "sortOrder": "asc", "limit": limit + 1}
        _, data = _list_result(await self._get(path, token, params), "GET messages/v3")
        if data and str(data[0].get("_id") or data[0].get("id") or "") == after_message:
            data = data[1:]
        return data[:limit]

    async def recent_messages(
        self, token: str, room_id: str, limit: int = 50
    ) -> list[dict[str, Any]]:
        """The ``limit`` most recently updated messages of a room, returned oldest first.

        For rooms without a known anchor message: IMKIT is asked newest first (``sortOrder=desc``)
        so ``limit`` keeps the newest, and the page is turned around here.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        path = f"/rooms/{quote(room_id, safe='')}/messages/v3"
        params = {"sortOrder": "desc", "limit": limit}
        _, data = _list_result(await self._get(path, token, params), "GET messages/v3")
        # A server that ignores the limit must not hand us more than asked for.
        return list(reversed(data[:limit]))

    async def invitations(self, token: str) -> list[dict[str, Any]]:
        """The user's pending room invitations (``GET /rooms/invitations``)."""
        _, data = _list_result(
            await self._get("/rooms/invitations", token), "GET /rooms/invitations"
        )
        return data

    async def _get(self, path: str, token: str, params: dict[str, Any] | None = None) -> Any:
        """GET ``path`` and return the envelope's ``result``, or raise one of the errors above."""
        headers = {"IM-Authorization": token}
        if self._client_key:
            headers["IM-CLIENT-KEY"] = self._client_key
        what = f"GET {path}"
        try:
            # The timeout covers the request, not the wait for a slot: a long queue after a mass
            # reconnect is not IMKIT being down.
            async with (
                self._slots,
                self._session().get(
                    self._base_url + path, params=params, headers=headers, timeout=self._timeout
                ) as resp,
            ):
                status = resp.status
                content = await resp.read()
        except TimeoutError:
            logger.warning("IMKIT %s timed out", path)
            raise UpstreamUnavailable(f"{what}: timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            logger.warning("IMKIT %s failed: %s", path, type(exc).__name__)
            raise UpstreamUnavailable(f"{what}: {type(exc).__name__}") from None
        if status == 401:
            raise InvalidToken(f"{what}: 401")
        if status >= 500 or status == 429:
            logger.warning("IMKIT %s answered HTTP %d", path, status)
            raise UpstreamUnavailable(f"{what}: HTTP {status}")
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            if status >= 400:
                raise RequestRejected(f"{what}: HTTP {status}", status=status)
            logger.warning("IMKIT %s answered an unparseable body (HTTP %d)", path, status)
            raise UpstreamUnavailable(f"{what}: unparseable body")
        rc = _rc(body.get("RC"))
        if rc == 401:
            raise InvalidToken(f"{what}: RC 401")
        if status >= 400 or (rc is not None and rc != 0):
            if rc is not None and rc >= 500:
                raise UpstreamUnavailable(f"{what}: RC {rc}")
            raise RequestRejected(f"{what}: HTTP {status}, RC {rc}", status=status, rc=rc)
        if "result" not in body:
            raise UpstreamUnavailable(f"{what}: envelope without result")
        return body["result"]


def _rc(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _room_ids(value: Any) -> list[str]:
    # ``mute`` is a list of room ids; tolerate room objects too.
    if not isinstance(value, list):
        return []
    out: list[str] = []
    for item in value:
        rid = item.get("_id") or item.get("id") if isinstance(item, dict) else item
        if isinstance(rid, str | int) and not isinstance(rid, bool) and rid != "":
            out.append(str(rid))
    return out


def _list_result(result: Any, what: str) -> tuple[int | None, list[dict[str, Any]]]:
    """``(totalCount, data)`` of a list result; non-object items are skipped."""
    if isinstance(result, list):  # some IMKIT versions answer a bare list
        data: Any = result
        total: Any = None
    elif isinstance(result, dict):
        data = result.get("data")
        total = result.get("totalCount")
    else:
        raise UpstreamUnavailable(f"{what}: result is not a list")
    if not isinstance(data, list):
        raise UpstreamUnavailable(f"{what}: result has no data list")
    return _rc(total), [item for item in data if isinstance(item, dict)]
