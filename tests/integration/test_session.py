"""The upstream session over real sockets on 127.0.0.1, against the simulated IMKIT.

Covers both encodings and both header styles, every way auth2 can fail, reconnects (dropped
sockets, server disconnects, ping timeouts, an IMKIT restart), backoff bounds, the connect
limiter, and 1,000 sessions in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import resource
import socket
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp import web

from bridge._backoff import Backoff
from bridge.models import SessionState
from bridge.sim.imkit import ImkitSim
from bridge.upstream.idle import IdleWatch
from bridge.upstream.protocol import (
    CancelInvitation,
    Invitation,
    LastRead,
    Message,
    RoomPref,
    encode_payload,
)
from bridge.upstream.ratelimit import ConnectLimiter
from bridge.upstream.rest import ImkitRest, InvalidToken
from bridge.upstream.session import TokenCheck, UpstreamSession
from bridge.upstream.transport import make_http_session
from tests._poll import wait_for

CLIENT_KEY = "sim-client-key"

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


class Probe:
    """Everything a session reported to its owner."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.states: list[tuple[SessionState, str]] = []
        self.stamps: list[float] = []  # time.monotonic() of each state change
        self.malformed: list[str] = []
        self.fail_next_event = False
        self.slow_first_event = 0.0

    async def on_event(self, name: str, payload: Any) -> None:
        if self.slow_first_event:
            delay, self.slow_first_event = self.slow_first_event, 0.0
            await asyncio.sleep(delay)  # a slow owner (a REST call, say): later events must wait
        self.events.append((name, payload))
        if self.fail_next_event:
            self.fail_next_event = False
            raise RuntimeError("owner bug")

    def on_state(self, session: UpstreamSession, state: SessionState, reason: str) -> None:
        self.states.append((state, reason))
        self.stamps.append(time.monotonic())

    def on_malformed(self, name: str) -> None:
        self.malformed.append(name)

    def named(self, name: str) -> list[Any]:
        return [p for n, p in self.events if n == name]

    def count(self, state: SessionState, reason: str | None = None) -> int:
        return sum(1 for s, r in self.states if s is state and (reason is None or r == reason))


OpenSession = Callable[..., tuple[UpstreamSession, Probe]]


class MaxRandom(random.Random):
    """Always draws the top of the range, so backoff delays equal their ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


class FreezableProxy:
    """A TCP proxy on 127.0.0.1; ``freeze()`` silently stops forwarding on the open connections
    (the network goes quiet without closing anything), new connections pass normally."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._frozen: list[asyncio.Event] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        for ev in self._frozen:
            ev.set()
        self._frozen = []

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._stopped.set()
        for w in self._writers:
            w.close()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 5.0)
        self._frozen = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.append(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        frozen = asyncio.Event()
        self._frozen.append(frozen)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    if frozen.is_set():
                        await self._stopped.wait()  # hold the bytes, keep the socket open
                        return
                    dst.write(data)
                    await dst.drain()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
async def sims() -> AsyncIterator[Callable[..., Awaitable[ImkitSim]]]:
    """A factory of started simulators (keyword options go to ImkitSim), all stopped afterwards."""
    started: list[ImkitSim] = []

    async def make(**opts: Any) -> ImkitSim:
        sim = ImkitSim(**opts)
        await sim.start("127.0.0.1", 0)
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    session = make_http_session(connect_timeout=5.0)
    yield session
    await session.close()


@pytest.fixture
async def open_session(http: aiohttp.ClientSession) -> AsyncIterator[OpenSession]:
    """Start sessions with fast test defaults; every one is closed after the test."""
    opened: list[UpstreamSession] = []
    shared_limiter = ConnectLimiter(1000, 1000)
    # As in a worker: one watch for every socket's silence (pass idle_watch=None for per-read timeouts).
    watch = IdleWatch(interval=0.05)

    def open_(url: str, token: str, device_id: str = "dev-1", **kw: Any) -> tuple[UpstreamSession, Probe]:
        probe = Probe()
        kw.setdefault("limiter", shared_limiter)
        kw.setdefault("backoff", Backoff(0.02, 0.1))
        kw.setdefault("auth_timeout", 2.0)
        kw.setdefault("connect_timeout", 5.0)
        kw.setdefault("idle_watch", watch)
        session = UpstreamSession(
            device_id=device_id,
            client_token=token,
            url=url,
            http=http,
            on_event=probe.on_event,
            on_state=probe.on_state,
            on_malformed=probe.on_malformed,
            **kw,
        )
        session.start()
        opened.append(session)
        return session, probe

    yield open_
    await asyncio.gather(*(s.close() for s in opened))
    assert len(watch) == 0, "a closed session's socket is still watched"
    await watch.close()


async def live(session: UpstreamSession, timeout: float = 5.0) -> None:
    await wait_for(lambda: session.state is SessionState.LIVE, timeout, message=f"{session!r} live")


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A URL on 127.0.0.1 whose port refuses every connection (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def a_retrying_session_reconnected(open_session: OpenSession, url: str, times: int = 8) -> None:
    """Wait until a witness session with a 10-20 ms backoff (each wait at its ceiling) has tried to
    connect ``times`` times to ``url``, which refuses. A session under test that was not really
    parked, with the same or a shorter backoff, had as many chances to reconnect meanwhile: this
    replaces a fixed sleep with a condition that holds however slow the machine is."""
    witness, _ = open_session(url, "token", device_id="witness", backoff=Backoff(0.01, 0.02, rng=MaxRandom()))
    await wait_for(lambda: witness.connects_total >= times, 10.0, message=f"{times} witness attempts")
    await witness.close()


@pytest.fixture
async def me_check(http: aiohttp.ClientSession) -> AsyncIterator[Callable[[ImkitSim], TokenCheck]]:
    """``token_refused`` as the worker pool builds it: True only when ``GET /me`` answers 401."""
    clients: list[ImkitRest] = []

    def make(sim: ImkitSim) -> TokenCheck:
        rest = ImkitRest(sim.url, client_key=CLIENT_KEY, timeout=5.0)
        clients.append(rest)

        async def refused(token: str) -> bool:
            try:
                await rest.me(token)
            except InvalidToken:
                return True
            except Exception:
                return False
            return False

        return refused

    yield make
    for rest in clients:
        await rest.aclose()


# ---------------------------------------------------------------------------- connect and auth


@pytest.mark.parametrize("encoding", ["base64", "none"])
@pytest.mark.parametrize("header_style", ["new", "old"])
async def test_goes_live_and_receives_events(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession, encoding: str, header_style: str
) -> None:
    sim = await sims(require_client_key=True)
    sim.create_room("r1", ["alice", "bob"], name="Room 1")
    token = sim.issue_token("alice")
    session, probe = open_session(
        sim.url, token, client_key=CLIENT_KEY, encoding=encoding, header_style=header_style
    )
    await live(session)

    assert session.client_id == "alice"
    assert session.live_since is not None and session.live_since <= time.monotonic()
    assert probe.states == [
        (SessionState.AUTHENTICATING, "connected"),
        (SessionState.LIVE, "authenticated"),
    ]
    assert sim.confs_total == (1 if encoding == "base64" else 0)
    assert sim.auths_total == 1
    headers = sim.last_auth_headers["alice"]
    expected = (
        {"IM-CLIENT-KEY": CLIENT_KEY, "IM-Authorization": token}
        if header_style == "new"
        else {"CLIENT_KEY": CLIENT_KEY, "Authorization": token}
    )
    assert headers == {**expected, "IM-Device-ID": "dev-1", "deviceId": "dev-1"}

    sent = await sim.send_message("r1", "bob", "hello alice")
    await wait_for(lambda: bool(probe.named("chat message")), message="chat message")
    msg = probe.named("chat message")[0]
    assert isinstance(msg, Message)
    assert (msg.id, msg.room, msg.text, msg.sender_id) == (sent["_id"], "r1", "hello alice", "bob")
    assert probe.malformed == []


@pytest.mark.parametrize("encoding", ["base64", "none"])
async def test_events_are_typed_and_tolerant(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession, encoding: str
) -> None:
    sim = await sims()
    sim.create_room("r1", ["alice", "bob"])
    session, probe = open_session(sim.url, sim.issue_token("alice"), encoding=encoding)
    await live(session)

    await sim.send_message("r1", None, {"title": "card", "items": [1, 2]}, "brandNewType", extra='{"k": 1}')
    await sim.send_message("r1", "bob", ["a", "list"], "template", extra={"x": True})
    await sim.invite("r1", "bob", "alice")
    await sim.cancel_invitation("r1", "alice")
    await sim.mute("alice", "r1", True)
    await sim.read("bob", "r1")
    await sim.emit_raw("alice", "typing", {"room": "r1"})
    await sim.emit_raw("alice", "myPrefDelete", "someKey")
    await wait_for(lambda: len(probe.events) == 8, message="8 events")

    platform, listy = probe.named("chat message")
    assert platform.sender is None and platform.messageType == "brandNewType"
    assert platform.text == "card" and platform.extra == {"k": 1}
    assert listy.message == ["a", "list"] and listy.text == "" and listy.extra == {"x": True}
    (inv,) = probe.named("invitation")
    assert isinstance(inv, Invitation) and inv.room.id == "r1" and inv.inviter is not None
    assert probe.named("cancelInvitation") == [CancelInvitation(room="r1")]
    (pref,) = probe.named("roomPref")
    assert isinstance(pref, RoomPref) and (pref.room, pref.muted) == ("r1", True)
    (read,) = probe.named("lastRead")
    assert isinstance(read, LastRead) and (read.roomID, read.memberID) == ("r1", "bob")
    assert probe.named("typing") == [{"room": "r1"}]
    assert probe.named("myPrefDelete") == ["someKey"]
    assert probe.malformed == []


async def test_malformed_payloads_are_counted_and_skipped(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = await sims()
    sim.create_room("r1", ["alice", "bob"])
    token = sim.issue_token("alice")
    session, probe = open_session(sim.url, token)
    await live(session)

    secret_text = "SECRET-PAYLOAD-TEXT"
    await sim.emit_raw("alice", "chat message", f"{secret_text}!! not base64", encode=False)
    await sim.emit_raw("alice", "chat message", {"room": "r1", "message": secret_text})  # no _id
    await sim.emit_raw("alice", "lastRead", [secret_text])
    await sim.emit_raw("alice", "roomPref", "eyJub3QiOiAianNvbiI=", encode=False)  # base64 of broken JSON
    await sim.send_message("r1", "bob", "still fine")
    await wait_for(lambda: bool(probe.named("chat message")), message="the good message")
    await wait_for(lambda: len(probe.malformed) == 4, message="4 malformed")

    assert sorted(probe.malformed) == ["chat message", "chat message", "lastRead", "roomPref"]
    assert session.malformed_total == 4
    assert [m.text for m in probe.named("chat message")] == ["still fine"]
    assert session.state is SessionState.LIVE
    assert probe.count(SessionState.BACKOFF) == 0
    assert "malformed 'chat message' event skipped" in caplog.text
    assert secret_text not in caplog.text
    assert token not in caplog.text


async def test_a_failing_event_callback_does_not_hurt_the_session(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession
) -> None:
    sim = await sims()
    sim.create_room("r1", ["alice", "bob"])
    session, probe = open_session(sim.url, sim.issue_token("alice"))
    await live(session)
    probe.fail_next_event = True
    await sim.send_message("r1", "bob", "one")
    await sim.send_message("r1", "bob", "two")
    await wait_for(lambda: len(probe.named("chat message")) == 2, message="both messages")
    assert session.state is SessionState.LIVE
    assert probe.count(SessionState.BACKOFF) == 0


async def test_events_arrive_one_at_a_time_in_order(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession
) -> None:
    sim = await sims()
    sim.create_room("r1", ["alice", "bob"])
    session, probe = open_session(sim.url, sim.issue_token("alice"))
    await live(session)
    probe.slow_first_event = 0.2
    sent = [(await sim.send_message("r1", "bob", f"m{i}"))["_id"] for i in range(30)]
    await wait_for(lambda: len(probe.events) == 30, message="30 messages")
    assert [m.id for m in probe.named("chat message")] == sent


async def test_no_secret_in_logs_or_repr(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession, caplog: pytest.LogCaptureFixture
) -> None:
    # python-socketio/engineio log every packet (auth2's token too) at INFO: they must stay quiet.
    caplog.set_level(logging.DEBUG)
    sim = await sims(require_client_key=True)
    sim.create_user("alice")
    token = sim.issue_token("alice")
    session, probe = open_session(sim.url, token, client_key=CLIENT_KEY)
    await live(session)
    await sim.drop_all_sockets()
    await wait_for(lambda: probe.count(SessionState.LIVE) == 2, message="live again")
    session.update_token("not-a-valid-token")
    await wait_for(lambda: session.state is SessionState.AUTH_FAILED, message="auth_failed")
    text = caplog.text + repr(session)
    for secret in (token, "not-a-valid-token", CLIENT_KEY):
        assert secret not in text
    assert "upstream session dev-1" in caplog.text


# ---------------------------------------------------------------------------- auth failures


@pytest.mark.parametrize("case", ["garbage", "expired", "unknown_user", "wrong_signature", "wrong_key"])
async def test_rc_401_parks_in_auth_failed_until_a_new_token(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession, refused_url: str, case: str
) -> None:
    sim = await sims(require_client_key=True)
    sim.create_user("alice")
    key = CLIENT_KEY
    if case == "garbage":
        token = "garbage"
    elif case == "expired":
        token = sim.issue_token("alice", ttl=-10)
    elif case == "unknown_user":
        token = sim.issue_token("nobody")
    elif case == "wrong_signature":
        token = ImkitSim(jwt_secret="another-secret-entirely").issue_token("alice")
    else:
        token, key = sim.issue_token("alice"), "wrong-key"
    session, probe = open_session(sim.url, token, client_key=key, backoff=Backoff(0.01, 0.02))
    await wait_for(lambda: session.state is SessionState.AUTH_FAILED, message="auth_failed")
    assert probe.states[-1] == (SessionState.AUTH_FAILED, "auth_failed")

    # Parked: with its 10-20 ms backoff a retrying session would have reconnected meanwhile.
    await a_retrying_session_reconnected(open_session, refused_url)
    assert sim.auths_total == 1 and sim.connections_total == 1
    assert session.state is SessionState.AUTH_FAILED and session.connects_total == 1

    if case == "wrong_key":
        return  # a new token cannot fix a wrong client key
    session.update_token(sim.issue_token("alice"))
    await live(session)
    assert (SessionState.CONNECTING, "token_updated") in probe.states
    assert sim.auths_total == 2


@pytest.mark.parametrize("check", [True, False], ids=["with_me_check", "without_check"])
async def test_server_disconnect_before_the_auth2_ack_reconnects(
    sims: Callable[..., Awaitable[ImkitSim]],
    open_session: OpenSession,
    me_check: Callable[[ImkitSim], TokenCheck],
    check: bool,
) -> None:
    """IMKIT restarting between auth2 and its ack is no verdict on a valid token: retry, never park."""
    sim = await sims()
    sim.create_user("alice")
    sim.disconnect_next_auths = 2
    kw: dict[str, Any] = {"token_refused": me_check(sim)} if check else {}
    session, probe = open_session(sim.url, sim.issue_token("alice"), backoff=Backoff(0.01, 0.02), **kw)
    await live(session)
    assert probe.count(SessionState.AUTH_FAILED) == 0
    assert probe.count(SessionState.BACKOFF, "server_disconnect") == 2
    assert sim.auths_total == 3 and sim.live_sockets("alice") == 1


async def test_server_disconnect_after_auth2_parks_only_when_me_refuses_the_token(
    sims: Callable[..., Awaitable[ImkitSim]],
    open_session: OpenSession,
    me_check: Callable[[ImkitSim], TokenCheck],
    refused_url: str,
) -> None:
    sim = await sims(disconnect_on_auth_failure=True)
    sim.create_user("alice")
    sim.fail_rest(503)  # GET /me cannot answer: no verdict, so keep retrying
    session, probe = open_session(
        sim.url, sim.issue_token("alice", ttl=-1), backoff=Backoff(0.01, 0.02), token_refused=me_check(sim)
    )
    await wait_for(lambda: probe.count(SessionState.BACKOFF, "server_disconnect") >= 2, message="2 retries")
    assert probe.count(SessionState.AUTH_FAILED) == 0

    sim.fail_rest(None)  # now GET /me says 401: a real authentication failure
    await wait_for(lambda: session.state is SessionState.AUTH_FAILED, message="auth_failed")
    assert probe.states[-1] == (SessionState.AUTH_FAILED, "auth_failed")
    auths = sim.auths_total
    await a_retrying_session_reconnected(open_session, refused_url)
    assert sim.auths_total == auths and session.state is SessionState.AUTH_FAILED

    session.update_token(sim.issue_token("alice"))
    await live(session)
    assert sim.live_sockets("alice") == 1


async def test_without_a_token_check_a_disconnect_after_auth2_is_retried(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession
) -> None:
    sim = await sims(disconnect_on_auth_failure=True)
    sim.create_user("alice")
    session, probe = open_session(sim.url, sim.issue_token("alice", ttl=-1), backoff=Backoff(0.01, 0.02))
    await wait_for(lambda: probe.count(SessionState.BACKOFF, "server_disconnect") >= 3, message="3 retries")
    assert probe.count(SessionState.AUTH_FAILED) == 0
    session.update_token(sim.issue_token("alice"))
    await live(session)


async def test_missing_ack_reconnects_with_backoff(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession
) -> None:
    sim = await sims()
    sim.create_user("alice")
    sim.ack_auth = False
    session, probe = open_session(sim.url, sim.issue_token("alice"), auth_timeout=0.2)
    await wait_for(lambda: probe.count(SessionState.BACKOFF, "auth_timeout") >= 2, message="2 timeouts")
    assert probe.count(SessionState.AUTH_FAILED) == 0
    assert sim.live_sockets("alice") == 0
    sim.ack_auth = True
    await live(session)
    assert sim.auths_total >= 3


async def test_new_token_while_live_reconnects_with_it(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession
) -> None:
    sim = await sims()
    sim.create_user("alice")
    session, probe = open_session(sim.url, sim.issue_token("alice", ttl=3600))
    await live(session)
    new_token = sim.issue_token("alice", ttl=7200)
    session.update_token(new_token)
    await wait_for(lambda: probe.count(SessionState.LIVE) == 2, message="live with the new token")
    assert (SessionState.CONNECTING, "token_updated") in probe.states
    assert probe.count(SessionState.BACKOFF) == 0
    assert sim.last_auth_headers["alice"]["IM-Authorization"] == new_token
    await wait_for(lambda: sim.live_sockets("alice") == 1, message="the old socket is gone")


@pytest.fixture
async def odd_server() -> AsyncIterator[Callable[[Callable[[], Any]], Awaitable[str]]]:
    """A bare python-socketio server whose auth2 ack is whatever ``answer()`` returns (for acks
    the simulator never sends); returns its URL."""
    runners: list[web.AppRunner] = []

    async def start(answer: Callable[[], Any]) -> str:
        sio = socketio.AsyncServer(async_mode="aiohttp")

        async def auth2(sid: str, *args: Any) -> Any:
            return answer()

        sio.on("auth2", auth2)
        app = web.Application()
        sio.attach(app)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize(
    "ack",
    [
        {"RC": 500, "RM": "Internal Server Error"},
        {"RM": "no RC at all"},
        "not base64 at all",
        None,
        ["RC", 0],
    ],
)
async def test_an_unusable_ack_retries_with_backoff(
    odd_server: Callable[[Callable[[], Any]], Awaitable[str]], open_session: OpenSession, ack: Any
) -> None:
    url = await odd_server(lambda: ack)
    session, probe = open_session(url, "token")
    await wait_for(lambda: probe.count(SessionState.BACKOFF, "auth_error") >= 2, message="2 auth errors")
    assert probe.count(SessionState.LIVE) == 0 and probe.count(SessionState.AUTH_FAILED) == 0


@pytest.mark.parametrize(
    ("ack", "client_id"),
    [
        (encode_payload({"RC": 0, "RM": "OK", "result": {"client": "alice"}}), "alice"),
        ({"RC": "0", "result": {"client": {"_id": "bob", "nickname": "Bob"}}}, "bob"),
        ({"RC": 0, "RM": "OK"}, None),
    ],
)
async def test_ack_variants_that_mean_success(
    odd_server: Callable[[Callable[[], Any]], Awaitable[str]],
    open_session: OpenSession,
    ack: Any,
    client_id: str | None,
) -> None:
    url = await odd_server(lambda: ack)
    session, _ = open_session(url, "token", encoding="none")
    await live(session)
    assert session.client_id == client_id


async def test_rc_401_as_base64_parks(
    odd_server: Callable[[Callable[[], Any]], Awaitable[str]], open_session: OpenSession
) -> None:
    url = await odd_server(lambda: encode_payload({"RC": 401, "RM": "Unauthorized"}))
    session, probe = open_session(url, "token")
    await wait_for(lambda: session.state is SessionState.AUTH_FAILED, message="auth_failed")
    assert probe.count(SessionState.BACKOFF) == 0


# ---------------------------------------------------------------------------- reconnects


@pytest.mark.parametrize("clean", [False, True])
async def test_reconnect_after_the_server_drops_every_socket(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession, clean: bool
) -> None:
    sim = await sims()
    users = [f"u{i}" for i in range(20)]
    sim.create_room("r1", users)
    sessions = [open_session(sim.url, sim.issue_token(u), device_id=f"d-{u}") for u in users]
    await wait_for(lambda: all(s.state is SessionState.LIVE for s, _ in sessions), message="20 live")
    assert (sim.confs_total, sim.auths_total, sim.live_sockets()) == (20, 20, 20)

    await sim.drop_sockets(clean=clean)
    reason = "server_disconnect" if clean else "dropped"
    await wait_for(
        lambda: all(p.count(SessionState.LIVE) == 2 for _, p in sessions) and sim.live_sockets() == 20,
        message="20 live again",
    )
    # conf and auth2 were sent again on every new connection
    assert (sim.confs_total, sim.auths_total) == (40, 40)
    for _, probe in sessions:
        assert probe.states[2:] == [
            (SessionState.BACKOFF, reason),
            (SessionState.CONNECTING, reason),
            (SessionState.AUTHENTICATING, "connected"),
            (SessionState.LIVE, "authenticated"),
        ]
    await sim.send_message("r1", "u0", "after the drop")
    await wait_for(lambda: all(p.named("chat message") for _, p in sessions), message="all got it")


async def test_the_upgrade_response_is_not_kept_for_the_socket_life(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession
) -> None:
    """What forget_handshake drops is read by nothing later: events flow, the socket closes cleanly,
    and a dropped socket is replaced by a new one (whose handshake is dropped in turn)."""
    sim = await sims()
    sim.create_room("r1", ["alice", "bob"])
    session, probe = open_session(sim.url, sim.issue_token("alice"))
    await live(session)

    def upgrade_state() -> tuple[object, int]:
        conn = session._conn
        assert conn is not None
        ws = conn.sio.eio.ws
        return ws._reader._protocol._parser, len(ws._response.headers)

    assert upgrade_state() == (None, 0)
    await sim.send_message("r1", "bob", "after the handshake")
    await wait_for(lambda: len(probe.named("chat message")) == 1, message="the message")
    assert await sim.drop_sockets("alice") == 1
    await wait_for(lambda: probe.count(SessionState.LIVE) == 2, message="live again")
    assert upgrade_state() == (None, 0)
    await sim.send_message("r1", "bob", "on the new socket")
    await wait_for(lambda: len(probe.named("chat message")) == 2, message="the second message")
    await session.close()
    assert session.state is SessionState.CLOSED


async def test_an_ended_connection_is_freed_without_the_cycle_collector(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession
) -> None:
    """A worker freezes its heap: a connection left in reference cycles when it ends would stay
    in the frozen heap for good (~8 KiB per reconnect). After a drop and a reconnect, and after
    close, the old connection's objects must be freed by reference counting alone."""
    sim = await sims()
    sim.create_user("alice")
    session, probe = open_session(sim.url, sim.issue_token("alice"))
    await live(session)

    def refs() -> list[weakref.ref[object]]:
        conn = session._conn
        assert conn is not None
        eio = conn.sio.eio
        return [weakref.ref(conn.sio), weakref.ref(eio), weakref.ref(eio.ws)]

    gc.collect()
    gc.disable()
    try:
        first = refs()
        assert await sim.drop_sockets("alice") == 1
        await wait_for(lambda: probe.count(SessionState.LIVE) == 2, message="live again")
        await wait_for(lambda: all(r() is None for r in first), message="the dropped connection freed")
        second = refs()
        await session.close()
        await wait_for(lambda: all(r() is None for r in second), message="the closed connection freed")
    finally:
        gc.enable()


@pytest.mark.parametrize("watched", [True, False], ids=["idle-watch", "per-read-timeout"])
async def test_ping_timeout_reconnects(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession, watched: bool
) -> None:
    sim = await sims(ping_interval=0.3, ping_timeout=0.3)
    sim.create_user("alice")
    proxy = FreezableProxy(sim.port)
    await proxy.start()
    watch = IdleWatch(interval=0.05) if watched else None
    try:
        session, probe = open_session(f"http://127.0.0.1:{proxy.port}", sim.issue_token("alice"), idle_watch=watch)
        await live(session)
        proxy.freeze()  # the network goes silent: no close, no reset, only missing pings
        frozen_at = time.monotonic()
        await wait_for(lambda: probe.count(SessionState.BACKOFF) == 1, 5.0, message="ping timeout")
        # noticed by the missing pings: 0.6 s (interval + timeout) after the last packet, which
        # came at most one interval (0.3 s) before the freeze
        assert time.monotonic() - frozen_at >= 0.25
        assert probe.states[2] == (SessionState.BACKOFF, "dropped")
        if watch is not None:
            assert watch.expired == 1  # the sweep ended it, not a timer of its own
        await wait_for(lambda: probe.count(SessionState.LIVE) == 2, message="live again")
        if watch is not None:
            assert len(watch) == 1  # the new socket is watched, the old one forgotten
    finally:
        await proxy.stop()
        if watch is not None:
            await watch.close()


async def test_imkit_restart(sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession) -> None:
    sim = await sims()
    sim.create_user("alice")
    session, probe = open_session(sim.url, sim.issue_token("alice"), backoff=Backoff(0.05, 0.2))
    await live(session)
    port = sim.port
    await sim.stop()
    await wait_for(lambda: probe.count(SessionState.BACKOFF, "connect_error") >= 2, message="refused")
    await sim.start("127.0.0.1", port)
    await wait_for(lambda: probe.count(SessionState.LIVE) == 2, message="live after restart")
    assert sim.live_sockets("alice") == 1


async def test_backoff_delays_grow_to_the_cap(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession
) -> None:
    sim = await sims()
    sim.create_user("alice")
    sim.refuse_connections(60)
    base, cap = 0.04, 0.16
    session, probe = open_session(sim.url, sim.issue_token("alice"), backoff=Backoff(base, cap, rng=MaxRandom()))
    await wait_for(lambda: probe.count(SessionState.CONNECTING) >= 5, 10.0, message="5 attempts")
    stamps = list(zip(probe.states, probe.stamps, strict=True))
    waits = [
        t1 - t0
        for ((s0, _), t0), ((s1, _), t1) in zip(stamps, stamps[1:], strict=False)
        if s0 is SessionState.BACKOFF and s1 is SessionState.CONNECTING
    ]
    assert len(waits) >= 4
    assert all(r == "connect_error" for s, r in probe.states if s is SessionState.BACKOFF), probe.states
    # attempt n waits exactly min(cap, base * 2**n) with the top-of-range rng
    expected = [min(cap, base * 2**n) for n in range(len(waits))]
    for got, want in zip(waits, expected, strict=True):
        assert want - 0.005 <= got <= want + 0.25, (waits, expected)

    sim.refuse_until = 0.0
    session.update_token(sim.issue_token("alice"))  # cuts the backoff short
    await live(session)


async def test_close_is_final(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession, refused_url: str
) -> None:
    sim = await sims()
    sim.create_room("r1", ["alice", "bob"])
    session, probe = open_session(sim.url, sim.issue_token("alice"))
    await live(session)
    await session.close()
    await session.close()
    assert session.state is SessionState.CLOSED
    assert probe.states[-1] == (SessionState.CLOSED, "closed")
    await wait_for(lambda: sim.connected_sockets() == 0, message="socket closed")
    n_states = len(probe.states)
    await sim.send_message("r1", "bob", "too late")
    session.update_token(sim.issue_token("alice"))
    session.start()
    await a_retrying_session_reconnected(open_session, refused_url)
    assert probe.events == [] and len(probe.states) == n_states
    assert sim.connections_total == 1 and session.connects_total == 1


async def test_close_while_parked_and_before_start(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession, http: aiohttp.ClientSession
) -> None:
    sim = await sims()
    session, probe = open_session(sim.url, "bad")
    await wait_for(lambda: session.state is SessionState.AUTH_FAILED)
    await asyncio.wait_for(session.close(), 2.0)
    assert probe.states[-1] == (SessionState.CLOSED, "closed")

    never = Probe()
    idle = UpstreamSession(
        device_id="idle", client_token="t", url=sim.url, http=http, limiter=ConnectLimiter(),
        on_event=never.on_event, on_state=never.on_state,
    )
    await idle.close()
    assert idle.state is SessionState.CLOSED and never.states == [(SessionState.CLOSED, "closed")]


# ---------------------------------------------------------------------------- the limiter and scale


async def test_connects_respect_the_shared_limiter(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession
) -> None:
    sim = await sims()
    n, rate, burst = 100, 40.0, 5
    limiter = ConnectLimiter(rate, burst)
    # The simulated IMKIT shares this event loop: a stall of the loop (or of the process, on a
    # busy machine) holds back handshakes the limiter already let through, and the server then
    # counts them together. Measure the longest stall, to allow for exactly that bunching.
    stall = 0.0

    async def watch_stalls() -> None:
        nonlocal stall
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            stall = max(stall, time.monotonic() - before - 0.01)

    watcher = asyncio.create_task(watch_stalls())
    t0 = time.monotonic()
    try:
        for i in range(n):
            sim.create_user(f"u{i}")
            open_session(sim.url, sim.issue_token(f"u{i}"), device_id=f"d{i}", limiter=limiter)
        await wait_for(lambda: sim.live_sockets() == n, 20.0, message="all live")
    finally:
        watcher.cancel()
    elapsed = time.monotonic() - t0
    assert elapsed >= (n - burst) / rate * 0.95
    # Any 1 s window holds at most burst + rate connects (+2 for scheduling jitter at the edges),
    # plus what the longest stall held back: rate connects per second of stall.
    assert sim.peak_connect_rate(1.0) <= burst + rate + 2 + int(rate * stall + 0.999)
    assert limiter.granted == n


async def test_a_thousand_sessions_in_one_process(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    n = 1000
    sim = await sims()
    users = [f"user{i:04d}" for i in range(n)]
    sim.create_room("everyone", users)
    limiter = ConnectLimiter(2000, 200)
    t0 = time.monotonic()
    # Generous timeouts: this checks scale and that no session errs, not how fast a loaded machine
    # answers 500 handshakes at once (a 2 s auth2 deadline then fires now and then, and retries).
    pairs = [
        open_session(
            sim.url, sim.issue_token(u), device_id=f"dev{i:04d}", limiter=limiter,
            auth_timeout=30.0, connect_timeout=30.0,
        )
        for i, u in enumerate(users)
    ]
    await wait_for(lambda: all(s.state is SessionState.LIVE for s, _ in pairs), 50.0, interval=0.1)
    t_live = time.monotonic() - t0
    assert sim.live_sockets() == n
    assert {s.client_id for s, _ in pairs} == set(users)

    await sim.send_message("everyone", None, "announcement", "announcement")
    await wait_for(lambda: all(p.named("chat message") for _, p in pairs), 20.0, interval=0.1)
    t_all = time.monotonic() - t0
    assert all(p.count(SessionState.BACKOFF) == 0 for _, p in pairs)
    print(f"\n{n} sessions live in {t_live:.1f}s, all received an event after {t_all:.1f}s")


async def test_handshakes_in_progress_are_capped(
    sims: Callable[..., Awaitable[ImkitSim]], open_session: OpenSession
) -> None:
    """With one handshake slot, sessions connect one after another, and each frees it when live."""
    sim = await sims()
    limiter = ConnectLimiter(1000, 1000, max_in_progress=1)
    sim.ack_auth = False  # the first handshake never finishes ...
    first, _ = open_session(sim.url, sim.issue_token(_user(sim, "cap0")), device_id="cap0", limiter=limiter, auth_timeout=30.0)
    await wait_for(lambda: first.state is SessionState.AUTHENTICATING, 5, message="first authenticating")
    others = [open_session(sim.url, sim.issue_token(_user(sim, f"cap{i}")), device_id=f"cap{i}", limiter=limiter)[0] for i in range(1, 4)]
    # ... so nobody else may even connect while it holds the only slot.
    await wait_for(lambda: limiter.waiting == 3, 5, message="three sessions waiting for the slot")
    assert sim.connections_total == 1
    sim.ack_auth = True
    await first.close()  # closing frees the slot too
    for s in others:
        await live(s)
    assert sim.connections_total == 4


def _user(sim: ImkitSim, client_id: str) -> str:
    sim.create_user(client_id, client_id)
    return client_id


async def test_close_at_any_moment_of_the_handshake_ends_the_socket(
    sims: Callable[..., Awaitable[ImkitSim]], http: aiohttp.ClientSession
) -> None:
    """close() interrupts connect, conf and auth2 wherever they are, and leaves no socket behind.

    A pool closes sessions mid-handshake whenever a device is removed or changes worker; a close
    that hung there (or let the handshake finish) would hold the device's lock and leave a live
    upstream socket nobody owns.
    """
    sim = await sims()
    token = sim.issue_token("alice")
    rng = random.Random(7)
    for i in range(40):
        probe = Probe()
        session = UpstreamSession(
            device_id=f"d{i}", client_token=token, url=sim.url, http=http,
            limiter=ConnectLimiter(), on_event=probe.on_event, on_state=probe.on_state, client_key=CLIENT_KEY,
        )
        session.start()
        # Anywhere from before the connect to just after going live.
        await asyncio.sleep(rng.uniform(0, 0.03))
        await asyncio.wait_for(session.close(), 3.0)
        assert session.state is SessionState.CLOSED
        assert probe.states[-1] == (SessionState.CLOSED, "closed")
        await wait_for(lambda: sim.connected_sockets() == 0, 3.0, message=f"socket of session {i} closed")
        assert sim.live_sockets() == 0
