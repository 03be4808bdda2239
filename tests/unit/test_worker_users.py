"""bridge.worker.users: per-user facts of a worker, kept from IMKIT's REST answers.

Given a fake REST client and the devices (a plain dict) through the constructor.
"""

from __future__ import annotations

import asyncio
import time

from bridge.upstream.rest import InvalidToken, RequestRejected, UpstreamUnavailable
from bridge.worker.state import DeviceRuntime
from bridge.worker.users import UserFacts
from tests._poll import wait_for
from tests.unit._worker_fakes import FakeRest, device, runtime


def rig() -> tuple[UserFacts, FakeRest, dict[str, DeviceRuntime]]:
    rest = FakeRest(mute=frozenset({"r1"}), badge=4)
    runtimes: dict[str, DeviceRuntime] = {}
    return UserFacts(rest, runtimes=runtimes), rest, runtimes  # type: ignore[arg-type]


def add(users: UserFacts, runtimes: dict[str, DeviceRuntime], device_id: str, client_id: str = "alice") -> DeviceRuntime:
    rt = runtimes[device_id] = runtime(device(device_id, client_id=client_id))
    users.join(rt.device)
    return rt


async def test_refresh_fetches_mutes_and_badge_unless_fresh() -> None:
    users, rest, runtimes = rig()
    add(users, runtimes, "d1")

    await users.refresh("alice", min_age=5.0)
    alice = users.of("alice")
    assert (alice.muted, alice.badge) == (frozenset({"r1"}), 4)
    assert rest.calls == [("me", "ct-alice"), ("badge", "ct-alice")]

    await users.refresh("alice", min_age=5.0)  # fetched just now
    assert len(rest.calls) == 2
    assert users.stale(time.monotonic() - 60) == []
    assert users.stale(time.monotonic() + 1) == ["alice"]


async def test_a_failed_refresh_keeps_what_was_known() -> None:
    users, rest, runtimes = rig()
    add(users, runtimes, "d1")
    alice = users.of("alice")
    alice.badge = 2
    rest.fail = UpstreamUnavailable("down")

    await users.refresh("alice")
    await users.refresh_mutes(runtimes["d1"].device, alice)
    assert await users.refresh_badge(runtimes["d1"].device) is None

    assert (alice.muted, alice.badge, alice.fetched_at) == (frozenset(), 2, 0.0)


async def test_refresh_mutes_and_badge_use_the_devices_token() -> None:
    users, rest, runtimes = rig()
    rt = add(users, runtimes, "d1")

    await users.refresh_mutes(rt.device, users.of("alice"))
    assert await users.refresh_badge(rt.device) == 4

    assert users.of("alice").muted == frozenset({"r1"}) and users.of("alice").badge == 4
    assert rest.calls == [("me", "ct-alice"), ("badge", "ct-alice")]


async def test_a_user_is_forgotten_with_their_last_device() -> None:
    users, rest, runtimes = rig()
    phone, tablet = add(users, runtimes, "phone"), add(users, runtimes, "tablet")

    users.leave(phone.device)
    assert users.get("alice") is not None
    users.leave(tablet.device)
    assert users.get("alice") is None
    await users.refresh("alice")  # nobody to refresh: no call
    assert rest.calls == []


async def test_only_a_401_says_a_client_token_is_refused() -> None:
    users, rest, _ = rig()
    assert not await users.token_refused("t")
    rest.fail = InvalidToken("401")
    assert await users.token_refused("t")
    for exc in (UpstreamUnavailable("down"), RequestRejected("no", status=403)):
        rest.fail = exc
        assert not await users.token_refused("t")


async def test_a_refresh_under_way_is_not_started_again() -> None:
    """The periodic tick and reconnects ask again while IMKIT is slow: one set of calls per user."""
    users, rest, runtimes = rig()
    add(users, runtimes, "d1")
    rest.gate = asyncio.Event()
    first = asyncio.create_task(users.refresh("alice"))
    await wait_for(lambda: rest.calls == [("me", "ct-alice")], 2.0, message="the first refresh waits for GET /me")
    # Both return at once (the answer under way serves them), not after GET /me.
    await asyncio.wait_for(asyncio.gather(users.refresh("alice"), users.refresh("alice")), 2.0)
    rest.gate.set()
    await first
    assert rest.calls == [("me", "ct-alice"), ("badge", "ct-alice")]
    assert users.of("alice").badge == 4

    await users.refresh("alice")  # none under way any more: fetched again
    assert len(rest.calls) == 4
