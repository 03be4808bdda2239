"""The simulated IMKIT, driven through a real Socket.IO client (websocket) and real HTTP."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import socketio

from bridge.sim.imkit import ImkitSim, run
from bridge.upstream.protocol import decode_payload
from tests._poll import wait_for

NEW_HEADERS = "new"
OLD_HEADERS = "old"


def headers_for(variant: str, token: str, key: str = "sim-client-key") -> dict[str, str]:
    if variant == NEW_HEADERS:
        return {
            "IM-CLIENT-KEY": key,
            "IM-Authorization": token,
            "IM-Device-ID": "dev-1",
            "deviceId": "dev-1",
        }
    return {"CLIENT_KEY": key, "Authorization": token, "deviceId": "dev-1"}


class Peer:
    """A Socket.IO client as a device would use it, recording every event it receives."""

    def __init__(self, *, reconnection: bool = False) -> None:
        self.sio = socketio.AsyncClient(
            reconnection=reconnection, reconnection_delay=0.05, reconnection_delay_max=0.1
        )
        self.raw: list[tuple[str, Any]] = []
        self.disconnects = 0
        self.sio.on("*", self._on_any)
        self.sio.on("disconnect", self._on_disconnect)

    async def _on_any(self, event: str, *args: Any) -> None:
        self.raw.append((event, args[0] if args else None))

    async def _on_disconnect(self, *args: Any) -> None:
        self.disconnects += 1

    async def connect(self, url: str, *, b64: bool = True) -> None:
        await self.sio.connect(url, transports=["websocket"], wait_timeout=5)
        if b64:
            ack = await self.sio.call("conf", {"encoding": "base64"}, timeout=5)
            assert decode_payload(ack)["RC"] == 0

    async def auth(
        self, token: str, variant: str = NEW_HEADERS, key: str = "sim-client-key"
    ) -> Any:
        return await self.sio.call("auth2", (token, headers_for(variant, token, key)), timeout=5)

    def events(self, name: str) -> list[Any]:
        """Decoded payloads of every ``name`` event received so far."""
        return [
            decode_payload(p, allow_bare_string=(e == "myPrefDelete"))
            for e, p in self.raw
            if e == name
        ]

    def names(self) -> list[str]:
        return [e for e, _ in self.raw]


@pytest.fixture
async def peers() -> AsyncIterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def make(**kw: Any) -> Peer:
        p = Peer(**kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.sio.reconnection = False
        await p.sio.disconnect()


async def live_peer(
    sim: ImkitSim, peers: Callable[..., Peer], client_id: str, *, b64: bool = True
) -> Peer:
    p = peers()
    await p.connect(sim.url, b64=b64)
    ack = decode_payload(await p.auth(sim.issue_token(client_id)))
    assert ack["RC"] == 0
    return p


async def marker(sim: ImkitSim, client_id: str, *ps: Peer) -> None:
    """Send a marker event to ``client_id`` and wait until every peer has it.

    Socket.IO keeps order on one connection, so anything emitted before the marker that a peer
    would get has arrived by then: an absence checked afterwards is a real absence.
    """
    before = [len(p.events("marker")) for p in ps]
    assert await sim.emit_raw(client_id, "marker", {"m": 1}) == len(ps)
    await wait_for(
        lambda: all(len(p.events("marker")) > n for p, n in zip(ps, before, strict=True))
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- conf + auth2


@pytest.mark.parametrize("b64", [True, False], ids=["base64", "plain"])
@pytest.mark.parametrize("variant", [NEW_HEADERS, OLD_HEADERS])
async def test_auth2_acks_client_id_in_each_encoding_and_header_variant(
    imkit_sim: ImkitSim, peers: Callable[..., Peer], b64: bool, variant: str
) -> None:
    imkit_sim.create_user("alice", "Alice")
    p = peers()
    await p.connect(imkit_sim.url, b64=b64)
    raw = await p.auth(imkit_sim.issue_token("alice"), variant)
    assert isinstance(raw, str) is b64  # base64 string of JSON after conf, a plain object without
    assert decode_payload(raw) == {"RC": 0, "RM": "OK", "result": {"client": "alice"}}
    assert imkit_sim.live_sockets("alice") == 1
    assert imkit_sim.live_sockets() == 1
    assert imkit_sim.confs_total == (1 if b64 else 0)
    assert imkit_sim.auths_total == 1 and imkit_sim.auth_failures_total == 0
    assert imkit_sim.last_auth_headers["alice"]["deviceId"] == "dev-1"
    if variant == NEW_HEADERS:
        assert imkit_sim.last_auth_headers["alice"]["IM-Device-ID"] == "dev-1"


async def test_conf_accepts_a_base64_payload_too(
    imkit_sim: ImkitSim, peers: Callable[..., Peer]
) -> None:
    imkit_sim.create_user("alice")
    p = peers()
    await p.sio.connect(imkit_sim.url, transports=["websocket"], wait_timeout=5)
    conf = base64.b64encode(b'{"encoding":"base64"}').decode()
    assert isinstance(await p.sio.call("conf", conf, timeout=5), str)
    assert isinstance(await p.auth(imkit_sim.issue_token("alice")), str)


@pytest.mark.parametrize("b64", [True, False], ids=["base64", "plain"])
async def test_bad_expired_foreign_and_unknown_user_tokens_get_401(
    imkit_sim: ImkitSim, peers: Callable[..., Peer], b64: bool
) -> None:
    imkit_sim.create_user("alice")
    foreign = ImkitSim(jwt_secret="another-secret").issue_token("alice")
    tokens = [
        "garbage",
        imkit_sim.issue_token("alice", ttl=-10),
        foreign,
        imkit_sim.issue_token("ghost"),
    ]
    p = peers()
    await p.connect(imkit_sim.url, b64=b64)
    for token in tokens:
        raw = await p.auth(token)
        assert isinstance(raw, str) is b64
        ack = decode_payload(raw)
        assert ack["RC"] == 401 and ack["RM"] == "Unauthorized"
    assert imkit_sim.auth_failures_total == len(tokens)
    assert imkit_sim.live_sockets() == 0
    assert p.sio.connected  # a plain 401 leaves the socket open


async def test_auth_failure_on_an_authenticated_socket_unauthenticates_it(
    imkit_sim: ImkitSim, peers: Callable[..., Peer]
) -> None:
    imkit_sim.create_user("alice")
    p = await live_peer(imkit_sim, peers, "alice")
    assert decode_payload(await p.auth("garbage"))["RC"] == 401
    assert imkit_sim.live_sockets("alice") == 0


@pytest.mark.parametrize("variant", [NEW_HEADERS, OLD_HEADERS])
async def test_required_client_key_is_checked_in_both_header_variants(
    peers: Callable[..., Peer], variant: str
) -> None:
    sim = ImkitSim(client_key="right-key", require_client_key=True)
    await sim.start()
    try:
        sim.create_user("alice")
        p = peers()
        await p.connect(sim.url)
        token = sim.issue_token("alice")
        assert decode_payload(await p.auth(token, variant, key="wrong-key"))["RC"] == 401
        missing = (
            {"IM-Authorization": token} if variant == NEW_HEADERS else {"Authorization": token}
        )
        assert decode_payload(await p.sio.call("auth2", (token, missing), timeout=5))["RC"] == 401
        assert sim.live_sockets() == 0
        assert decode_payload(await p.auth(token, variant, key="right-key"))["RC"] == 0
        assert sim.live_sockets("alice") == 1
        assert sim.auth_failures_total == 2
    finally:
        await sim.stop()


async def test_disconnect_on_auth_failure_drops_instead_of_acking(
    peers: Callable[..., Peer]
) -> None:
    sim = ImkitSim(disconnect_on_auth_failure=True)
    await sim.start()
    try:
        p = peers()
        await p.connect(sim.url)
        ack_task = asyncio.create_task(p.auth("garbage"))
        await wait_for(
            lambda: not p.sio.connected and p.disconnects == 1, message="client disconnected"
        )
        assert sim.auth_failures_total == 1 and sim.connected_sockets() == 0
        ack_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ack_task
    finally:
        await sim.stop()


async def test_ack_auth_false_never_acks_and_leaves_socket_unauthenticated(
    imkit_sim: ImkitSim, peers: Callable[..., Peer]
) -> None:
    imkit_sim.create_user("alice")
    imkit_sim.ack_auth = False
    p = peers()
    await p.connect(imkit_sim.url)
    with pytest.raises(socketio.exceptions.TimeoutError):
        await p.sio.call(
            "auth2", (imkit_sim.issue_token("alice"), headers_for(NEW_HEADERS, "t")), timeout=0.5
        )
    assert imkit_sim.auths_total == 1 and imkit_sim.auth_failures_total == 0
    assert imkit_sim.live_sockets() == 0
    assert p.sio.connected
    assert await imkit_sim.emit_raw("alice", "typing", {"room": "r"}) == 0
    imkit_sim.ack_auth = True
    assert decode_payload(await p.auth(imkit_sim.issue_token("alice")))["RC"] == 0


# ---------------------------------------------------------------- events


async def test_every_event_reaches_each_socket_of_the_members_only(
    imkit_sim: ImkitSim, peers: Callable[..., Peer]
) -> None:
    sim = imkit_sim
    sim.create_user("alice", "Alice")
    sim.create_room("r1", ["alice", "bob"], name="Room One")
    sim.create_user("carol")
    a1 = await live_peer(sim, peers, "alice", b64=True)
    a2 = await live_peer(sim, peers, "alice", b64=False)  # one user, two sockets, two encodings
    b = await live_peer(sim, peers, "bob")
    c = await live_peer(sim, peers, "carol")  # not a member of r1
    assert sim.live_sockets("alice") == 2

    msg = await sim.send_message("r1", "bob", "hi there", mentions=["alice"], extra={"k": "v"})
    assert msg["_id"] == msg["id"] and msg["room"] == "r1" and msg["messageType"] == "text"
    assert msg["sender"] == {
        "_id": "bob",
        "id": "bob",
        "nickname": "bob",
        "avatarUrl": "",
        "isRobot": False,
    }
    assert msg["appID"] == "SimApp" and msg["mentions"] == ["alice"] and msg["extra"] == {"k": "v"}
    assert msg["messageTimeMS"] == msg["createdAtMS"] == msg["updatedAtMS"]
    assert msg["messageTime"].endswith("Z")
    edited = await sim.edit_message(msg["_id"], "hi there (edited)")
    assert (
        edited["_id"] == msg["_id"]
        and edited["updatedAtMS"] > msg["updatedAtMS"]
        and edited["editedAt"]
    )
    recalled = await sim.recall_message(msg["_id"])
    assert recalled["messageType"] == "recall" and recalled["updatedAtMS"] > edited["updatedAtMS"]
    platform = await sim.send_message("r1", None, {"text": "system"}, message_type="announcement")
    assert platform["sender"] is None
    assert await sim.resend_message(platform["_id"]) == 3
    await sim.read("bob", "r1")
    await sim.mute("alice", "r1", True)
    inv = await sim.invite("r1", "alice", "carol")
    await sim.cancel_invitation("r1", "carol")
    raw_events: list[tuple[str, object]] = [
        ("typing", {"room": "r1", "message": "typ"}),
        ("ai_streaming", {"room": "r1", "sender": "bot", "text": "chunk"}),
        ("room", {"_id": "r1", "name": "Renamed"}),
        ("myPrefChange", {"key": "demokey", "data": {"foo": "bar"}}),
        ("myPrefDelete", "demokey"),
        (
            "userDeleteMessages",
            {"room": "r1", "messages": ["m1"], "isUserDeleteAllMessagesInRoom": False},
        ),
        ("messageDeleted", {"room": "r1", "messageID": "_all"}),
    ]
    for event, payload in raw_events:
        assert await sim.emit_raw("alice", event, payload) == 2
        assert await sim.emit_raw("carol", event, payload) == 1

    await marker(sim, "alice", a1, a2)
    await marker(sim, "bob", b)
    await marker(sim, "carol", c)

    for p in (a1, a2, b):
        got = p.events("chat message")
        assert [m["_id"] for m in got] == [msg["_id"]] * 3 + [platform["_id"]] * 2
        assert got[0] == msg and got[1] == edited and got[2] == recalled and got[3] == platform
        assert p.events("lastRead") == [
            {"roomID": "r1", "memberID": "bob", "messageID": platform["_id"]}
        ]
    for p in (a1, a2):
        assert p.events("roomPref") == [{"room": "r1", "muted": True}]
        for event, payload in raw_events:
            assert p.events(event) == [payload]
    assert b.events("roomPref") == []
    assert "invitation" not in a1.names() + a2.names() + b.names()

    # carol: the invitation and its cancellation and her own raw events, nothing of r1
    assert c.events("invitation") == [inv]
    assert (
        inv["room"]["_id"] == "r1"
        and inv["inviter"]["_id"] == "alice"
        and inv["invitee"]["_id"] == "carol"
    )
    assert c.events("cancelInvitation") == [{"room": "r1"}]
    assert [n for n in c.names() if n in ("chat message", "lastRead", "roomPref")] == []
    assert c.events("typing") == [{"room": "r1", "message": "typ"}]

    # base64 sockets got strings, the plain one objects
    assert all(isinstance(raw, str) for _, raw in a1.raw)
    assert all(not isinstance(raw, str) for e, raw in a2.raw if e != "myPrefDelete")


async def test_my_pref_delete_is_a_bare_key_string(
    imkit_sim: ImkitSim, peers: Callable[..., Peer]
) -> None:
    imkit_sim.create_user("alice")
    b64 = await live_peer(imkit_sim, peers, "alice", b64=True)
    plain = await live_peer(imkit_sim, peers, "alice", b64=False)
    assert await imkit_sim.emit_raw("alice", "myPrefDelete", "demokey") == 2
    await marker(imkit_sim, "alice", b64, plain)
    b64_raw = [raw for e, raw in b64.raw if e == "myPrefDelete"]
    plain_raw = [raw for e, raw in plain.raw if e == "myPrefDelete"]
    # base64 of the text itself, not of its JSON form '"demokey"'
    assert b64_raw == [base64.b64encode(b"demokey").decode()]
    assert plain_raw == ["demokey"]
    assert b64.events("myPrefDelete") == ["demokey"]


async def test_emit_raw_without_encoding_sends_the_payload_untouched(
    imkit_sim: ImkitSim, peers: Callable[..., Peer]
) -> None:
    imkit_sim.create_user("alice")
    p = await live_peer(imkit_sim, peers, "alice", b64=True)
    assert (
        await imkit_sim.emit_raw("alice", "chat message", "%%% not base64 %%%", encode=False) == 1
    )
    assert await imkit_sim.emit_raw("alice", "chat message", {"plain": True}, encode=False) == 1
    await marker(imkit_sim, "alice", p)
    assert [raw for e, raw in p.raw if e == "chat message"] == [
        "%%% not base64 %%%",
        {"plain": True},
    ]
    assert await imkit_sim.emit_raw("nobody", "typing", {}) == 0


# ---------------------------------------------------------------- connection control


async def test_drop_all_sockets_cuts_connections_and_clients_reconnect(
    imkit_sim: ImkitSim, peers: Callable[..., Peer]
) -> None:
    imkit_sim.create_user("alice")
    imkit_sim.create_user("bob")
    pa = peers(reconnection=True)
    await pa.connect(imkit_sim.url)
    assert decode_payload(await pa.auth(imkit_sim.issue_token("alice")))["RC"] == 0
    pb = await live_peer(imkit_sim, peers, "bob")
    unauthed = peers()
    await unauthed.connect(imkit_sim.url)
    assert imkit_sim.connected_sockets() == 3

    assert await imkit_sim.drop_all_sockets() == 3
    assert imkit_sim.live_sockets() == 0  # immediately, not when the server notices
    await wait_for(
        lambda: pa.disconnects == 1 and pb.disconnects == 1 and unauthed.disconnects == 1
    )
    # A cut connection is a transport error, so a client with reconnection on comes back.
    await wait_for(
        lambda: pa.sio.connected and imkit_sim.connections_total == 4, message="reconnected"
    )
    assert imkit_sim.live_sockets() == 0  # it must authenticate again
    assert decode_payload(await pa.auth(imkit_sim.issue_token("alice")))["RC"] == 0
    assert imkit_sim.live_sockets("alice") == 1


async def test_drop_sockets_of_one_user_cleanly(
    imkit_sim: ImkitSim, peers: Callable[..., Peer]
) -> None:
    imkit_sim.create_user("alice")
    imkit_sim.create_user("bob")
    pa = await live_peer(imkit_sim, peers, "alice")
    pb = await live_peer(imkit_sim, peers, "bob")
    assert await imkit_sim.drop_sockets("alice", clean=True) == 1
    await wait_for(lambda: not pa.sio.connected)
    assert pb.sio.connected and imkit_sim.live_sockets("bob") == 1


async def test_refuse_connections_until_the_deadline(
    imkit_sim: ImkitSim, peers: Callable[..., Peer]
) -> None:
    imkit_sim.refuse_connections(30)
    p = peers()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await p.sio.connect(imkit_sim.url, transports=["websocket"], wait_timeout=5)
    assert imkit_sim.refused_total == 1 and imkit_sim.connections_total == 0
    imkit_sim.refuse_until = 0.0
    await peers().connect(imkit_sim.url)
    assert imkit_sim.connections_total == 1 and len(imkit_sim.connect_times) == 1


async def test_counters_and_peak_connect_rate(
    imkit_sim: ImkitSim, peers: Callable[..., Peer]
) -> None:
    imkit_sim.create_user("alice")
    for _ in range(3):
        await live_peer(imkit_sim, peers, "alice")
    s = imkit_sim.stats()
    assert s["connections_total"] == 3 and s["auths_total"] == 3 and s["confs_total"] == 3
    assert s["live_sockets"] == 3 and s["auth_failures_total"] == 0
    assert 1 <= s["peak_connect_rate"] <= 3
    imkit_sim.connect_times = [10.0, 10.5, 10.9, 11.0, 11.95, 12.0]
    assert imkit_sim.peak_connect_rate() == 3  # 10.5, 10.9, 11.0: a window is half-open
    imkit_sim.connect_times = []
    assert imkit_sim.peak_connect_rate() == 0


async def test_restart_keeps_users_and_tokens(peers: Callable[..., Peer]) -> None:
    sim = ImkitSim()
    await sim.start()
    port = sim.port
    sim.create_user("alice")
    token = sim.issue_token("alice")
    await sim.stop()
    await sim.start(port=port)
    try:
        assert sim.port == port
        p = peers()
        await p.connect(sim.url)
        assert decode_payload(await p.auth(token))["RC"] == 0
    finally:
        await sim.stop()


# ---------------------------------------------------------------- REST


def rest_headers(token: str, key: str | None = None) -> dict[str, str]:
    h = {"IM-Authorization": token}
    if key is not None:
        h["IM-CLIENT-KEY"] = key
    return h


async def test_rest_me_and_unauthorized(imkit_sim: ImkitSim) -> None:
    sim = imkit_sim
    sim.create_user("alice", "Alice")
    sim.create_room("r1", ["alice"])
    await sim.mute("alice", "r1")
    sim.set_notification_enabled("alice", False)
    async with httpx.AsyncClient(base_url=sim.url) as http:
        r = await http.get("/me", headers=rest_headers(sim.issue_token("alice")))
        assert r.status_code == 200
        body = r.json()
        assert body["RC"] == 0 and body["RM"] == "OK"
        me = body["result"]
        assert me["_id"] == me["id"] == "alice" and me["nickname"] == "Alice"
        assert me["mute"] == ["r1"] and me["notificationEnabled"] is False
        for headers in (
            {},
            rest_headers("garbage"),
            rest_headers(sim.issue_token("alice", ttl=-5)),
        ):
            r = await http.get("/me", headers=headers)
            assert (
                r.status_code == 401 and r.json()["RC"] == 401 and r.json()["RM"] == "Unauthorized"
            )


async def test_rest_wrong_client_key_is_401() -> None:
    sim = ImkitSim(client_key="k1", require_client_key=True)
    await sim.start()
    try:
        sim.create_user("alice")
        token = sim.issue_token("alice")
        async with httpx.AsyncClient(base_url=sim.url) as http:
            assert (await http.get("/me", headers=rest_headers(token))).status_code == 401
            assert (await http.get("/me", headers=rest_headers(token, "k2"))).status_code == 401
            assert (await http.get("/me", headers=rest_headers(token, "k1"))).status_code == 200
    finally:
        await sim.stop()


async def test_rest_badge_counts_unread_from_others_since_last_read(imkit_sim: ImkitSim) -> None:
    sim = imkit_sim
    sim.create_room("r1", ["alice", "bob"])
    sim.create_room("r2", ["alice", "carol"])
    sim.create_room("r3", ["bob", "carol"])
    token = sim.issue_token("alice")

    async def badge() -> int:
        async with httpx.AsyncClient(base_url=sim.url) as http:
            r = await http.get("/me/badge", headers=rest_headers(token))
            assert r.status_code == 200
            return int(r.json()["result"]["badge"])

    assert await badge() == 0
    m1 = await sim.send_message("r1", "bob", "1")
    await sim.send_message("r1", "bob", "2")
    await sim.send_message("r1", "alice", "mine")  # own messages never count
    await sim.send_message("r2", "carol", "3")
    await sim.send_message("r3", "carol", "not alice's room")
    assert await badge() == 3
    await sim.read("alice", "r1", m1["_id"])
    assert await badge() == 2
    await sim.read("alice", "r1")
    assert await badge() == 1
    recalled = await sim.send_message("r2", "carol", "oops")
    assert await badge() == 2
    await sim.recall_message(recalled["_id"])
    assert await badge() == 1
    assert sim.unread("alice", "r2") == 1 and sim.badge("bob") == 2


async def test_rest_rooms_updated_after_with_paging(imkit_sim: ImkitSim) -> None:
    sim = imkit_sim
    for i in range(5):
        sim.create_room(f"r{i}", ["alice", "bob"], name=f"Room {i}")
    sim.create_room("other", ["bob"])
    await sim.mute("alice", "r1")
    msgs = [await sim.send_message(f"r{i}", "bob", f"m{i}") for i in range(5)]
    token = sim.issue_token("alice")
    async with httpx.AsyncClient(base_url=sim.url) as http:

        async def rooms(**params: int | str) -> dict[str, Any]:
            r = await http.get("/rooms", params=params, headers=rest_headers(token))
            assert r.status_code == 200
            result: dict[str, Any] = r.json()["result"]
            return result

        everything = await rooms()
        assert everything["totalCount"] == 5
        newest_first = ["r4", "r3", "r2", "r1", "r0"]
        assert [r["_id"] for r in everything["data"]] == newest_first
        r1 = next(r for r in everything["data"] if r["_id"] == "r1")
        assert (
            r1["muted"] is True
            and r1["name"] == "Room 1"
            and r1["lastMessage"]["_id"] == msgs[1]["_id"]
        )
        assert r1["updatedAtMS"] == msgs[1]["updatedAtMS"]
        assert all(r["muted"] is False for r in everything["data"] if r["_id"] != "r1")

        after = await rooms(updatedAfter=msgs[2]["updatedAtMS"])
        assert [r["_id"] for r in after["data"]] == ["r4", "r3"] and after["totalCount"] == 2

        pages = [await rooms(skip=s, limit=2) for s in (0, 2, 4)]
        assert [r["_id"] for p in pages for r in p["data"]] == ["r4", "r3", "r2", "r1", "r0"]
        assert all(p["totalCount"] == 5 for p in pages)

        # an edit of an old message makes its room recent again
        await sim.edit_message(msgs[0]["_id"], "edited")
        again = await rooms(updatedAfter=msgs[4]["updatedAtMS"])
        assert [r["_id"] for r in again["data"]] == ["r0"]

        bad = await http.get("/rooms", params={"skip": "x"}, headers=rest_headers(token))
        assert bad.status_code == 400


async def test_rest_messages_after_include_the_anchor_first(imkit_sim: ImkitSim) -> None:
    sim = imkit_sim
    sim.create_room("r1", ["alice", "bob"])
    sim.create_room("r2", ["bob"])
    msgs = [await sim.send_message("r1", "bob", f"m{i}") for i in range(5)]
    await sim.edit_message(msgs[0]["_id"], "m0 edited")  # updated after everything else
    token = sim.issue_token("alice")
    async with httpx.AsyncClient(base_url=sim.url) as http:

        async def get(room: str, **params: int | str) -> httpx.Response:
            return await http.get(
                f"/rooms/{room}/messages/v3", params=params, headers=rest_headers(token)
            )

        r = await get("r1", afterMessage=msgs[2]["_id"], sortOrder="asc", limit=10)
        assert r.status_code == 200
        result = r.json()["result"]
        ids = [m["_id"] for m in result["data"]]
        assert ids == [msgs[2]["_id"], msgs[3]["_id"], msgs[4]["_id"], msgs[0]["_id"]]
        assert result["totalCount"] == 4
        assert result["data"][-1]["message"] == "m0 edited"

        limited = (await get("r1", afterMessage=msgs[2]["_id"], sortOrder="asc", limit=2)).json()[
            "result"
        ]
        assert [m["_id"] for m in limited["data"]] == [msgs[2]["_id"], msgs[3]["_id"]]

        last = (await get("r1", afterMessage=msgs[0]["_id"], limit=10)).json()["result"]
        # only the anchor: nothing was updated after it
        assert [m["_id"] for m in last["data"]] == [msgs[0]["_id"]]

        everything = (await get("r1", limit=100)).json()["result"]
        assert len(everything["data"]) == 5

        assert (await get("nope", afterMessage="x")).status_code == 404
        assert (await get("r1", afterMessage="no-such-message")).status_code == 404
        assert (await get("r2")).status_code == 403  # alice is not a member


async def test_rest_invitations_pending_for_the_user(imkit_sim: ImkitSim) -> None:
    sim = imkit_sim
    sim.create_room("r1", ["bob"], name="Group")
    sim.create_room("r2", ["bob"])
    await sim.invite("r1", "bob", "alice")
    await sim.invite("r2", "bob", "alice")
    await sim.invite("r2", "bob", "carol")
    await sim.cancel_invitation("r2", "alice")
    async with httpx.AsyncClient(base_url=sim.url) as http:
        r = await http.get("/rooms/invitations", headers=rest_headers(sim.issue_token("alice")))
        assert r.status_code == 200
        result = r.json()["result"]
        assert result["totalCount"] == 1
        inv = result["data"][0]
        assert inv["room"]["_id"] == "r1" and inv["room"]["name"] == "Group"
        assert inv["inviter"]["_id"] == "bob" and inv["createdTimeMS"] > 0


async def test_rest_fault_switches(imkit_sim: ImkitSim) -> None:
    imkit_sim.create_user("alice")
    headers = rest_headers(imkit_sim.issue_token("alice"))
    async with httpx.AsyncClient(base_url=imkit_sim.url) as http:
        imkit_sim.fail_rest(503)
        r = await http.get("/me", headers=headers)
        assert r.status_code == 503 and r.json()["RC"] == 503
        assert (await http.get("/sim/stats")).status_code == 200  # the control API is never failed
        imkit_sim.fail_rest(200, "<html>not json</html>")
        assert (await http.get("/me", headers=headers)).text == "<html>not json</html>"
        imkit_sim.fail_rest(None)
        assert (await http.get("/me", headers=headers)).status_code == 200
    assert imkit_sim.rest_requests_total == 3


# ---------------------------------------------------------------- control API


async def test_control_api_drives_the_model(
    imkit_sim: ImkitSim, peers: Callable[..., Peer]
) -> None:
    sim = imkit_sim
    async with httpx.AsyncClient(base_url=sim.url) as http:

        async def post(path: str, body: object | None = None, status: int = 200) -> Any:
            r = await http.post(path, json=body) if body is not None else await http.post(path)
            assert r.status_code == status, r.text
            return r.json()

        alice_token = (await post("/sim/users", {"clientId": "alice", "nickname": "Alice"}))[
            "token"
        ]
        bob_token = (await post("/sim/users", {"clientId": "bob"}))["token"]
        assert (await post("/sim/tokens", {"clientId": "alice", "ttl": 60}))["token"]
        await post("/sim/rooms", {"roomId": "r1", "members": ["alice", "bob"], "name": "R"})
        pa = peers()
        await pa.connect(sim.url)
        assert decode_payload(await pa.auth(alice_token))["result"]["client"] == "alice"

        msg = await post(
            "/sim/messages",
            {
                "roomId": "r1",
                "senderId": "bob",
                "message": "hey",
                "messageType": "text",
                "messageId": "m-1",
                "extra": {"x": 1},
            },
        )
        assert msg["_id"] == "m-1" and msg["extra"] == {"x": 1} and msg["sender"]["_id"] == "bob"
        await post(
            "/sim/messages", {"roomId": "r1", "senderId": "bob", "messageId": "m-1"}, status=400
        )
        edited = await post("/sim/messages/m-1/edit", {"message": "hey!"})
        assert edited["message"] == "hey!" and edited["editedAt"]
        assert (await post("/sim/messages/m-1/recall"))["messageType"] == "recall"
        inv = await post(
            "/sim/invitations", {"roomId": "r1", "inviterId": "bob", "inviteeId": "alice"}
        )
        assert inv["room"]["_id"] == "r1"
        await post("/sim/invitations/cancel", {"roomId": "r1", "inviteeId": "alice"})
        await post("/sim/mute", {"clientId": "alice", "roomId": "r1", "muted": True})
        await post("/sim/notification-enabled", {"clientId": "alice", "enabled": False})
        await post("/sim/read", {"clientId": "alice", "roomId": "r1", "messageId": "m-1"})
        assert (
            await post(
                "/sim/emit", {"clientId": "alice", "event": "typing", "payload": {"room": "r1"}}
            )
        ) == {"sockets": 1}
        await wait_for(lambda: "typing" in pa.names())
        assert pa.names() == [
            "chat message",
            "chat message",
            "chat message",
            "invitation",
            "cancelInvitation",
            "roomPref",
            "lastRead",
            "typing",
        ]
        me = (await http.get("/me", headers=rest_headers(alice_token))).json()["result"]
        assert me["mute"] == ["r1"] and me["notificationEnabled"] is False
        badge = (await http.get("/me/badge", headers=rest_headers(bob_token))).json()["result"]
        assert badge == {"badge": 0}

        # errors: missing fields 400, unknown things 404, non-JSON 400
        await post("/sim/rooms", {"roomId": "r2"}, status=400)
        await post("/sim/messages", {"roomId": "nope", "senderId": "bob"}, status=404)
        await post("/sim/messages/nope/edit", {"message": "x"}, status=404)
        await post("/sim/mute", {"clientId": "ghost", "roomId": "r1"}, status=404)
        await post("/sim/notification-enabled", {"clientId": "ghost", "enabled": True}, status=404)
        await post(
            "/sim/read", {"clientId": "alice", "roomId": "r1", "messageId": "zzz"}, status=404
        )
        await post("/sim/refuse", {"seconds": "soon"}, status=400)
        await post("/sim/users", {"clientId": "x", "ttl": "long"}, status=400)
        r = await http.post("/sim/rooms", content=b"not json")
        assert r.status_code == 400 and r.json() == {"error": "body must be JSON"}

        assert await post("/sim/ack-auth", {"enabled": False}) == {"ackAuth": False}
        assert sim.ack_auth is False
        await post("/sim/ack-auth", {"enabled": True})
        await post("/sim/refuse", {"seconds": 0.0})
        assert (await post("/sim/drop")) == {"dropped": 1}
        await wait_for(lambda: not pa.sio.connected)
        await post("/sim/rest-fail", {"status": 500})
        assert (await http.get("/me", headers=rest_headers(alice_token))).status_code == 500
        await post("/sim/rest-fail", {})
        assert (await http.get("/me", headers=rest_headers(alice_token))).status_code == 200

        stats = (await http.get("/sim/stats")).json()
        assert stats == {
            **stats,
            "connections_total": 1,
            "auths_total": 1,
            "auth_failures_total": 0,
            "confs_total": 1,
            "live_sockets": 0,
            "peak_connect_rate": 1,
        }

        await post("/sim/refuse", {"seconds": 30})
        with pytest.raises(socketio.exceptions.ConnectionError):
            await peers().sio.connect(sim.url, transports=["websocket"], wait_timeout=5)
        assert (await http.get("/sim/stats")).json()["refused_total"] == 1


async def test_run_serves_until_cancelled() -> None:
    port = free_port()
    task = asyncio.create_task(run("127.0.0.1", port, require_client_key=True))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def up() -> bool:
                try:
                    return bool((await http.get("/sim/stats")).json()["connections_total"] == 0)
                except httpx.ConnectError:
                    return False

            await wait_for(up, 10, message="sim serving")
            token = (await http.post("/sim/users", json={"clientId": "alice"})).json()["token"]
            r = await http.get("/me", headers=rest_headers(token))
            assert r.status_code == 401  # run() passed require_client_key through
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{port}/sim/stats")
