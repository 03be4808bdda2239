"""ImkitRest against the simulated IMKIT over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from bridge.sim.imkit import ImkitSim
from bridge.upstream.rest import ImkitRest, InvalidToken, Me, RequestRejected, UpstreamUnavailable


@pytest.fixture
async def rest(imkit_sim: ImkitSim) -> AsyncIterator[ImkitRest]:
    client = ImkitRest(imkit_sim.url, client_key="sim-client-key", timeout=5.0)
    try:
        yield client
    finally:
        await client.aclose()


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_me(imkit_sim: ImkitSim, rest: ImkitRest) -> None:
    imkit_sim.create_user("alice", "Alice")
    imkit_sim.create_room("r1", ["alice"])
    imkit_sim.create_room("r2", ["alice"])
    token = imkit_sim.issue_token("alice")
    assert await rest.me(token) == Me("alice", "Alice", frozenset(), True)
    await imkit_sim.mute("alice", "r1")
    await imkit_sim.mute("alice", "r2")
    imkit_sim.set_notification_enabled("alice", False)
    me = await rest.me(token)
    assert me.mute == frozenset({"r1", "r2"}) and me.notification_enabled is False
    with pytest.raises(AttributeError):
        me.client_id = "bob"  # type: ignore[misc]  # frozen: checking it really is


async def test_badge(imkit_sim: ImkitSim, rest: ImkitRest) -> None:
    imkit_sim.create_room("r1", ["alice", "bob"])
    token = imkit_sim.issue_token("alice")
    assert await rest.badge(token) == 0
    await imkit_sim.send_message("r1", "bob", "1")
    await imkit_sim.send_message("r1", "bob", "2")
    await imkit_sim.send_message("r1", "alice", "own")
    assert await rest.badge(token) == 2
    await imkit_sim.read("alice", "r1")
    assert await rest.badge(token) == 0


async def test_rooms_updated_after_pages_through_everything(
    imkit_sim: ImkitSim, rest: ImkitRest
) -> None:
    for i in range(7):
        imkit_sim.create_room(f"r{i}", ["alice", "bob"])
    imkit_sim.create_room("not-mine", ["bob"])
    msgs = [await imkit_sim.send_message(f"r{i}", "bob", f"m{i}") for i in range(7)]
    await imkit_sim.send_message("not-mine", "bob", "x")
    token = imkit_sim.issue_token("alice")
    before = imkit_sim.rest_requests_total

    rooms = await rest.rooms_updated_after(token, 0, limit=3)
    assert sorted(r["_id"] for r in rooms) == [f"r{i}" for i in range(7)]
    assert imkit_sim.rest_requests_total - before == 3  # pages of 3, 3, 1

    recent = await rest.rooms_updated_after(token, msgs[4]["updatedAtMS"], limit=100)
    assert {r["_id"] for r in recent} == {"r5", "r6"}
    assert recent[0]["lastMessage"]["_id"] == msgs[6]["_id"]

    exact = await rest.rooms_updated_after(token, 0, limit=7)  # a full last page ends at totalCount
    assert len(exact) == 7
    assert await rest.rooms_updated_after(token, msgs[6]["updatedAtMS"]) == []
    with pytest.raises(ValueError):
        await rest.rooms_updated_after(token, 0, limit=0)


async def test_messages_after_drops_the_anchor(imkit_sim: ImkitSim, rest: ImkitRest) -> None:
    imkit_sim.create_room("r 1/x", ["alice", "bob"])  # an id that needs quoting in the path
    msgs = [await imkit_sim.send_message("r 1/x", "bob", f"m{i}") for i in range(5)]
    token = imkit_sim.issue_token("alice")
    got = await rest.messages_after(token, "r 1/x", msgs[1]["_id"])
    assert [m["_id"] for m in got] == [m["_id"] for m in msgs[2:]]
    got = await rest.messages_after(token, "r 1/x", msgs[1]["_id"], limit=2)
    assert [m["_id"] for m in got] == [msgs[2]["_id"], msgs[3]["_id"]]  # the anchor takes no slot
    assert await rest.messages_after(token, "r 1/x", msgs[4]["_id"]) == []
    with pytest.raises(RequestRejected) as info:
        await rest.messages_after(token, "r 1/x", "no-such-message")
    assert info.value.status == 404


async def test_invitations(imkit_sim: ImkitSim, rest: ImkitRest) -> None:
    imkit_sim.create_room("r1", ["bob"], name="Group")
    imkit_sim.create_user("alice")
    token = imkit_sim.issue_token("alice")
    assert await rest.invitations(token) == []
    await imkit_sim.invite("r1", "bob", "alice")
    invs = await rest.invitations(token)
    assert len(invs) == 1 and invs[0]["room"]["_id"] == "r1" and invs[0]["inviter"]["_id"] == "bob"


@pytest.mark.parametrize("kind", ["garbage", "expired", "unknown user"])
async def test_invalid_token_on_http_401(imkit_sim: ImkitSim, rest: ImkitRest, kind: str) -> None:
    imkit_sim.create_user("alice")
    token = {
        "garbage": "not-a-jwt",
        "expired": imkit_sim.issue_token("alice", ttl=-10),
        "unknown user": imkit_sim.issue_token("ghost"),
    }[kind]
    for call in (
        rest.me(token),
        rest.badge(token),
        rest.invitations(token),
        rest.rooms_updated_after(token, 0),
    ):
        with pytest.raises(InvalidToken):
            await call


async def test_invalid_token_on_rc_401_inside_http_200(
    imkit_sim: ImkitSim, rest: ImkitRest
) -> None:
    imkit_sim.fail_rest(200, '{"RC": 401, "RM": "Unauthorized"}')
    with pytest.raises(InvalidToken):
        await rest.me(imkit_sim.issue_token("alice"))


async def test_client_key_is_sent() -> None:
    sim = ImkitSim(client_key="k1", require_client_key=True)
    await sim.start()
    try:
        sim.create_user("alice")
        token = sim.issue_token("alice")
        for key, ok in (("k1", True), ("k2", False), (None, False)):
            rest = ImkitRest(sim.url, client_key=key)
            try:
                if ok:
                    assert (await rest.me(token)).client_id == "alice"
                else:
                    with pytest.raises(InvalidToken):
                        await rest.me(token)
            finally:
                await rest.aclose()
    finally:
        await sim.stop()


async def test_upstream_unavailable_on_a_closed_port() -> None:
    rest = ImkitRest(f"http://127.0.0.1:{closed_port()}", client_key=None, timeout=2.0)
    try:
        with pytest.raises(UpstreamUnavailable):
            await rest.me("some-token")
    finally:
        await rest.aclose()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, None),
        (503, "<html>Service Unavailable</html>"),
        (429, None),
        (200, "<html>not json</html>"),
        (200, '{"RC": 0, "RM": "OK"}'),  # no result
        (200, '{"RC": 500, "RM": "Internal"}'),
        (200, '["not", "an", "envelope"]'),
    ],
)
async def test_upstream_unavailable_on_server_trouble(
    imkit_sim: ImkitSim, rest: ImkitRest, status: int, body: str | None
) -> None:
    imkit_sim.create_user("alice")
    token = imkit_sim.issue_token("alice")
    imkit_sim.fail_rest(status, body)
    with pytest.raises(UpstreamUnavailable):
        await rest.me(token)
    imkit_sim.fail_rest(None)
    assert (await rest.me(token)).client_id == "alice"  # the same client recovers


async def test_upstream_unavailable_on_timeout(imkit_sim: ImkitSim) -> None:
    imkit_sim.create_user("alice")
    imkit_sim.rest_delay = 2.0
    rest = ImkitRest(imkit_sim.url, client_key=None, timeout=0.2)
    try:
        with pytest.raises(UpstreamUnavailable):
            await rest.badge(imkit_sim.issue_token("alice"))
    finally:
        await rest.aclose()


async def test_token_never_in_errors_or_logs(
    imkit_sim: ImkitSim, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    imkit_sim.create_user("alice")
    token = imkit_sim.issue_token("alice", ttl=-10)
    rest = ImkitRest(imkit_sim.url, client_key="secret-client-key")
    dead = ImkitRest(f"http://127.0.0.1:{closed_port()}", client_key="secret-client-key")
    errors: list[BaseException] = []
    try:
        for client in (rest, dead):
            with pytest.raises((InvalidToken, UpstreamUnavailable)) as info:
                await client.me(token)
            errors.append(info.value)
        imkit_sim.fail_rest(500)
        with pytest.raises(UpstreamUnavailable) as info:
            await rest.me(token)
        errors.append(info.value)
    finally:
        await rest.aclose()
        await dead.aclose()
    for secret in (token, "secret-client-key"):
        assert secret not in caplog.text
        assert secret not in repr(rest)
        for exc in errors:
            assert secret not in str(exc) and secret not in repr(exc)
            assert exc.__cause__ is None  # the client's exception (holding the request) is not chained


async def test_injected_client_is_used_and_left_open(imkit_sim: ImkitSim) -> None:
    imkit_sim.create_user("alice")
    async with aiohttp.ClientSession() as http:
        rest = ImkitRest(imkit_sim.url + "/", client_key=None, client=http)
        assert (await rest.me(imkit_sim.issue_token("alice"))).client_id == "alice"
        await rest.aclose()
        assert not http.closed


async def test_recent_messages_newest_kept_oldest_first(
    imkit_sim: ImkitSim, rest: ImkitRest
) -> None:
    imkit_sim.create_room("r 2/y", ["alice", "bob"])  # an id that needs quoting in the path
    msgs = [await imkit_sim.send_message("r 2/y", "bob", f"m{i}") for i in range(5)]
    token = imkit_sim.issue_token("alice")
    got = await rest.recent_messages(token, "r 2/y", limit=3)
    assert [m["_id"] for m in got] == [m["_id"] for m in msgs[2:]]
    got = await rest.recent_messages(token, "r 2/y")
    assert [m["_id"] for m in got] == [m["_id"] for m in msgs]
    await imkit_sim.edit_message(msgs[0]["_id"], "m0 edited")  # an edit makes it the newest
    got = await rest.recent_messages(token, "r 2/y", limit=2)
    assert [m["_id"] for m in got] == [msgs[4]["_id"], msgs[0]["_id"]]
    assert got[1]["message"] == "m0 edited"
    imkit_sim.create_room("empty", ["alice"])
    assert await rest.recent_messages(token, "empty") == []
    with pytest.raises(ValueError):
        await rest.recent_messages(token, "r 2/y", limit=0)
    with pytest.raises(RequestRejected) as info:
        await rest.recent_messages(token, "no-such-room")
    assert info.value.status == 404
    with pytest.raises(InvalidToken):
        await rest.recent_messages(imkit_sim.issue_token("alice", ttl=-10), "r 2/y")
    imkit_sim.fail_rest(503)
    with pytest.raises(UpstreamUnavailable):
        await rest.recent_messages(token, "r 2/y")


class _HoldingServer:
    """A real HTTP server answering ``/me/badge`` after ``hold`` seconds, or when released."""

    def __init__(self, hold: float | None) -> None:
        self.hold = hold
        self.in_flight = 0
        self.most_in_flight = 0
        self.answered = 0
        self.release = asyncio.Event()
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.changed.set()
        try:
            if self.hold is None:
                await self.release.wait()
            else:
                await asyncio.sleep(self.hold)
        finally:
            self.in_flight -= 1
        self.answered += 1
        return web.json_response({"RC": 0, "RM": "OK", "result": {"badge": 3}})

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_get("/me/badge", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


async def test_requests_in_flight_are_bounded() -> None:
    # A mass reconnect must queue in the client, not inside the HTTP client's pool.
    server = _HoldingServer(hold=None)
    # An injected client with aiohttp's default pool (100 connections): only our bound holds.
    async with server as url, aiohttp.ClientSession() as http:
        rest = ImkitRest(url, client_key=None, max_in_flight=3, client=http)
        try:
            calls = [asyncio.ensure_future(rest.badge("t")) for _ in range(10)]
            async with asyncio.timeout(5.0):
                while server.in_flight < 3:
                    server.changed.clear()
                    await server.changed.wait()
            # The other 7 are parked in the client: give them every chance to leak through.
            for _ in range(20):
                await asyncio.sleep(0)
            assert server.in_flight == 3
            server.release.set()
            assert await asyncio.gather(*calls) == [3] * 10
            assert server.most_in_flight == 3 and server.answered == 10
        finally:
            await rest.aclose()


async def test_waiting_for_a_slot_is_not_a_timeout() -> None:
    # 8 calls through one slot, each answered in 0.2 s: the last waits ~1.4 s for its turn, longer
    # than the 1 s request timeout, and must still succeed.
    server = _HoldingServer(hold=0.2)
    async with server as url:
        rest = ImkitRest(url, client_key=None, timeout=1.0, max_in_flight=1)
        try:
            assert await asyncio.gather(*(rest.badge("t") for _ in range(8))) == [3] * 8
            assert server.most_in_flight == 1
        finally:
            await rest.aclose()


def test_max_in_flight_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ImkitRest("http://127.0.0.1:1", client_key=None, max_in_flight=0)
