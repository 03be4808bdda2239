"""bridge.worker.users: per-user facts of a worker, kept from IMKIT's REST answers.

Given a fake REST client and the devices (a plain dict) through the constructor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from bridge.upstream.rest import InvalidToken, RequestRejected, UpstreamUnavailable
from bridge.worker.state import DeviceRuntime
from bridge.worker.users import CATCH_UP, UserFacts
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
    assert time.monotonic() - alice.fetched_at < 5.0


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


class Spawner:
    """What the pool's ``_spawn`` does, recording when each refresh was started."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        self.started: list[float] = []

    def __call__(self, coro: Coroutine[Any, Any, None]) -> None:
        self.started.append(time.monotonic())
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


@contextlib.asynccontextmanager
async def refreshing(users: UserFacts, interval: float, spawn: Spawner, step: float) -> AsyncIterator[None]:
    """``users.keep_fresh`` running in a task for the block."""
    task = asyncio.create_task(users.keep_fresh(interval, spawn, step=step))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def me_calls(rest: FakeRest) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind, token in rest.calls:
        if kind == "me":
            counts[token] = counts.get(token, 0) + 1
    return counts


async def test_users_due_together_are_refreshed_at_a_bounded_rate() -> None:
    """40 users fetched in the same instant fall due together: their periodic refreshes are
    spread out (never faster than CATCH_UP x users / interval), and every one of them is done."""
    users, rest, runtimes = rig()
    for i in range(40):
        add(users, runtimes, f"d{i}", client_id=f"u{i}")
        users.of(f"u{i}").fetched_at = time.monotonic()
    interval, step = 1.0, 0.05
    spawn = Spawner()
    async with refreshing(users, interval, spawn, step):
        await wait_for(lambda: len(me_calls(rest)) == 40, 10.0, message="every user refreshed")
        rate = CATCH_UP * 40 / interval
        # In any window, at most the window's share plus one step's allowance (no bursts).
        for i, t0 in enumerate(spawn.started):
            for j in range(i, len(spawn.started)):
                assert j - i + 1 <= rate * (spawn.started[j] - t0) + rate * step + 1
        assert spawn.started[-1] - spawn.started[0] >= (40 - rate * step - 1) / rate
        assert all(n == 1 for n in me_calls(rest).values())


async def test_a_user_fetched_meanwhile_waits_a_full_interval_and_one_who_left_is_dropped() -> None:
    users, rest, runtimes = rig()
    add(users, runtimes, "d1", client_id="u1")
    gone = add(users, runtimes, "d2", client_id="u2")
    interval = 0.6
    spawn = Spawner()
    async with refreshing(users, interval, spawn, 0.02):
        await asyncio.sleep(0)  # the refresher scheduled both users an interval from now
        # As if a reconnect refreshed u1 half an interval later, and u2's device left.
        fetched = users.of("u1").fetched_at = time.monotonic() + interval / 2
        users.leave(gone.device)
        await wait_for(lambda: len(rest.calls) > 0, 5.0, message="u1's periodic refresh")
        # Not at its first due time, but an interval after the later fetch.
        assert spawn.started[0] >= fetched + interval
        assert ("me", "ct-u2") not in rest.calls


async def test_a_failed_periodic_refresh_is_tried_again() -> None:
    users, rest, runtimes = rig()
    add(users, runtimes, "d1", client_id="u1")
    users.of("u1").fetched_at = time.monotonic()
    rest.fail = UpstreamUnavailable("down")
    async with refreshing(users, 0.2, Spawner(), 0.02):
        await wait_for(lambda: me_calls(rest).get("ct-u1", 0) >= 2, 5.0, message="two failed tries")
        assert users.of("u1").badge is None
        rest.fail = None
        await wait_for(lambda: users.of("u1").badge == 4, 5.0, message="a try that succeeds")
