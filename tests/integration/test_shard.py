"""Membership, leases and the shard coordinator against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge.redis_keys import LEASE_PREFIX, WORKER_PREFIX, WORKERS_KEY
from bridge.worker.coordinator import PARALLEL, ShardCoordinator
from bridge.worker.shard import Leases, Membership, rendezvous_owner
from tests._poll import wait_for
from tests._redis import (  # noqa: F401 - fixtures, used by name
    RedisServer,
    expire_now,
    gone,
    redis_client,
    redis_server,
    redis_server_factory,
)

TTL = 1.0
TICK = 0.1


# ------------------------------------------------------------------ membership


async def test_membership_lists_live_workers_and_forgets_expired_ones(redis: Redis) -> None:
    a = Membership(redis, "worker-a", ttl=30)
    b = Membership(redis, "worker-b", ttl=30)
    assert await a.heartbeat() is False  # first beat: nobody could have seen us yet
    assert await a.heartbeat() is True
    await b.heartbeat()
    assert await a.members() == ["worker-a", "worker-b"]
    raw = await redis.get(WORKER_PREFIX + "worker-a")
    assert raw is not None
    stored = json.loads(raw)
    assert stored["id"] == "worker-a" and stored["ts"] >= stored["started"]
    assert stored["instance"] == a.instance != b.instance
    assert 0 < await redis.pttl(WORKER_PREFIX + "worker-a") <= 30_000

    await expire_now(redis, WORKER_PREFIX + "worker-b")  # b stopped beating
    assert await a.members() == ["worker-a"]
    assert await redis.smembers(WORKERS_KEY) == {b"worker-a"}  # the lapsed one is pruned
    assert await b.heartbeat() is False  # b's key had lapsed
    assert await a.members() == ["worker-a", "worker-b"]

    await a.leave()
    assert await b.members() == ["worker-b"]
    assert await redis.smembers(WORKERS_KEY) == {b"worker-b"}


async def test_members_cost_one_call_whatever_the_keyspace(redis: Redis) -> None:
    a = Membership(redis, "worker-a", ttl=30)
    await a.heartbeat()
    await redis.mset({f"pb:claim:{i}": "c:x" for i in range(20_000)})  # a busy day of claims
    await redis.config_resetstat()
    assert await a.members() == ["worker-a"]
    stats = await redis.info("commandstats")
    assert "cmdstat_scan" not in stats


async def test_members_with_a_decoding_client(redis_server: RedisServer) -> None:  # noqa: F811 - a pytest fixture
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        m = Membership(client, "w1", ttl=5)
        await m.heartbeat()
        assert await m.members() == ["w1"]
        leases = Leases(client, "w1", ttl=5)
        assert await leases.acquire(["d1"]) == {"d1"}
        assert await leases.holder("d1") == "w1"
        assert await leases.renew() == set()
    finally:
        await client.aclose()


# ------------------------------------------------------------------ leases


async def test_leases_are_exclusive(redis: Redis) -> None:
    a = Leases(redis, "worker-a", ttl=5)
    b = Leases(redis, "worker-b", ttl=5)
    ids = [f"d{i}" for i in range(10)]
    assert await a.acquire(ids[:6]) == set(ids[:6])
    assert await b.acquire(ids) == set(ids[6:])
    assert a.held == set(ids[:6]) and b.held == set(ids[6:])
    assert await a.acquire(ids) == set(ids[:6])  # already ours counts; b's stay b's
    assert {await a.holder(d) for d in ids[:6]} == {"worker-a"}
    assert await a.holder("nope") is None


async def test_concurrent_acquire_never_double_grants(redis: Redis) -> None:
    ids = [f"d{i}" for i in range(500)]
    workers = [Leases(redis, f"w{i}", ttl=5) for i in range(4)]
    results = await asyncio.gather(*(w.acquire(ids) for w in workers))
    assert set().union(*results) == set(ids)
    for x, y in itertools.combinations(results, 2):
        assert not x & y


async def test_acquire_extends_and_batches(redis: Redis) -> None:
    a = Leases(redis, "worker-a", ttl=5)
    ids = [f"d{i}" for i in range(2500)]  # three batches
    assert await a.acquire(ids) == set(ids)
    assert await redis.dbsize() == 2500
    a.ttl = 30  # only for the check below: acquire again with a longer TTL must extend ours
    a._ttl_ms = 30_000
    assert await a.acquire(ids) == set(ids)
    assert await redis.pttl(LEASE_PREFIX + "d2499") > 10_000
    assert await a.renew() == set()
    await a.release(ids)
    assert a.held == set()
    assert await redis.dbsize() == 0


async def test_renew_reports_leases_taken_over_after_expiry(redis: Redis) -> None:
    a = Leases(redis, "worker-a", ttl=30)
    b = Leases(redis, "worker-b", ttl=30)
    assert await a.acquire(["x", "y"]) == {"x", "y"}
    await expire_now(redis, LEASE_PREFIX + "x")
    await expire_now(redis, LEASE_PREFIX + "y")
    assert await b.acquire(["x"]) == {"x"}
    # x went to b; y lapsed but nobody took it, so a keeps it.
    assert await a.renew() == {"x"}
    assert a.held == {"y"}
    assert await a.holder("y") == "worker-a"
    assert await a.holder("x") == "worker-b"
    assert await a.renew() == set()


async def test_renew_extends_the_ttl(redis: Redis) -> None:
    a = Leases(redis, "worker-a", ttl=30)
    await a.acquire(["x"])
    for _ in range(3):
        # Most of the lease's time has run out (set explicitly: a real short TTL would race).
        await redis.pexpire(LEASE_PREFIX + "x", 5_000)
        assert await a.renew() == set()
        assert await redis.pttl(LEASE_PREFIX + "x") > 20_000  # extended, not retaken after a lapse
    assert await a.holder("x") == "worker-a"


async def test_release_deletes_only_our_own(redis: Redis) -> None:
    a = Leases(redis, "worker-a", ttl=5)
    b = Leases(redis, "worker-b", ttl=5)
    await a.acquire(["x", "y"])
    await b.release(["x"])  # not b's: untouched
    assert await a.holder("x") == "worker-a"
    await a.release(["x"])
    assert await a.holder("x") is None
    assert a.held == {"y"}
    assert await b.acquire(["x"]) == {"x"}


async def test_errors_reach_the_caller(redis_server: RedisServer, redis: Redis) -> None:  # noqa: F811 - a pytest fixture
    m = Membership(redis, "w", ttl=5)
    leases = Leases(redis, "w", ttl=5)
    await leases.acquire(["x"])
    await asyncio.to_thread(redis_server.stop)
    with pytest.raises(RedisConnectionError):
        await m.heartbeat()
    with pytest.raises(RedisConnectionError):
        await leases.renew()
    assert leases.held == {"x"}  # unknown outcome: still believed held


# ------------------------------------------------------------------ coordinator


@dataclass
class Ledger:
    """Every adopt/drop of every pool, and the invariant: one open session per device at a time."""

    open_by: dict[str, str] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


class FakePool:
    """An in-memory PoolLike that records into a shared ledger."""

    def __init__(self, name: str, ledger: Ledger) -> None:
        self.name = name
        self.ledger = ledger
        self.sessions: set[str] = set()
        self.adopts = 0

    async def adopt(self, device_id: str) -> None:
        if device_id in self.sessions:
            return
        other = self.ledger.open_by.get(device_id)
        if other is not None:
            self.ledger.violations.append(f"{self.name} adopted {device_id} still open at {other}")
        self.ledger.open_by[device_id] = self.name
        self.ledger.events.append((self.name, "adopt", device_id))
        self.sessions.add(device_id)
        self.adopts += 1

    async def drop(self, device_id: str) -> None:
        if device_id not in self.sessions:
            return
        await asyncio.sleep(0)  # closing a session takes a moment; let others run meanwhile
        self.sessions.discard(device_id)
        if self.ledger.open_by.get(device_id) == self.name:
            del self.ledger.open_by[device_id]
        self.ledger.events.append((self.name, "drop", device_id))

    def owned(self) -> set[str]:
        return set(self.sessions)

    def crash(self) -> None:
        """The process died: its sessions are gone, without any goodbye to Redis."""
        for device_id in self.sessions:
            if self.ledger.open_by.get(device_id) == self.name:
                del self.ledger.open_by[device_id]
        self.sessions.clear()


@dataclass
class Node:
    pool: FakePool
    coord: ShardCoordinator
    task: asyncio.Task[None]
    client: Redis


class Cluster:
    def __init__(self, url: str, device_ids: list[str]) -> None:
        self.url = url
        self.ids = device_ids
        self.ledger = Ledger()
        self.nodes: dict[str, Node] = {}

    async def list_ids(self) -> list[str]:
        return list(self.ids)

    def start(self, name: str) -> Node:
        client = Redis.from_url(self.url)
        pool = FakePool(name, self.ledger)
        coord = ShardCoordinator(
            pool,
            membership=Membership(client, name, ttl=TTL),
            leases=Leases(client, name, ttl=TTL),
            device_ids=self.list_ids,
            tick=TICK,
        )
        node = Node(pool, coord, asyncio.create_task(coord.run()), client)
        self.nodes[name] = node
        return node

    async def crash(self, name: str) -> None:
        node = self.nodes.pop(name)
        node.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await node.task
        node.pool.crash()
        await node.client.aclose()

    async def stop_all(self) -> None:
        for node in self.nodes.values():
            node.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await node.task
            await node.coord.close()
            await node.client.aclose()
        self.nodes.clear()

    def partitioned(self) -> bool:
        """Every device open at exactly one live node, the one rendezvous hashing picks."""
        members = sorted(self.nodes)
        seen: dict[str, str] = {}
        for name, node in self.nodes.items():
            for d in node.pool.sessions:
                if d in seen:
                    return False
                seen[d] = name
        return seen == {d: rendezvous_owner(d, members) for d in self.ids}

    async def leases_match(self, redis: Redis) -> bool:
        for name, node in self.nodes.items():
            for d in node.pool.sessions:
                if await redis.get(LEASE_PREFIX + d) != name.encode():
                    return False
        return True


@pytest.fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[Callable[[list[str]], Cluster]]:  # noqa: F811 - a pytest fixture
    made: list[Cluster] = []

    def make(ids: list[str]) -> Cluster:
        c = Cluster(redis_server.url, ids)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            await c.stop_all()


IDS = [f"device-{i}" for i in range(300)]


async def test_three_workers_crash_and_join(
    cluster: Callable[[list[str]], Cluster], redis: Redis
) -> None:
    c = cluster(IDS)
    for name in ("worker-a", "worker-b", "worker-c"):
        c.start(name)
    await wait_for(c.partitioned, timeout=5.0, message="3 workers partition 300 ids")
    assert await c.leases_match(redis)
    assert all(n.pool.adopts == len(n.pool.sessions) for n in c.nodes.values())  # no churn
    assert c.ledger.violations == []

    # A crash: no close, no release. Its devices move once its heartbeat and leases lapse.
    crashed = set(c.nodes["worker-b"].pool.sessions)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await c.crash("worker-b")
    # Within the TTL and a few ticks (2 s of slack for a busy host: a condition, not a window).
    await wait_for(c.partitioned, timeout=TTL + 10 * TICK + 2.0, message="survivors take over")
    took = loop.time() - t0
    print(f"take-over after crash: {took:.2f}s")
    assert c.ledger.violations == []
    survivors = {n: set(node.pool.sessions) for n, node in c.nodes.items()}
    assert crashed <= survivors["worker-a"] | survivors["worker-c"]
    assert await c.leases_match(redis)

    # A fourth (and the second) joins: balanced, and every hand-over closes before it reopens.
    # worker-d's heartbeat is already there, as for a worker restarting under the same id within
    # the TTL: it skips the start-up pause, so it races the others' hand-over.
    await Membership(redis, "worker-d", ttl=TTL).heartbeat()
    c.start("worker-d")
    c.start("worker-b")
    await wait_for(c.partitioned, timeout=5.0, message="4 workers partition 300 ids")
    sizes = sorted(len(n.pool.sessions) for n in c.nodes.values())
    print(f"4-worker shard sizes: {sizes}")
    assert sizes[0] >= 0.8 * 75 and sizes[-1] <= 1.2 * 75, sizes
    assert await c.leases_match(redis)
    assert c.ledger.violations == []
    # Moves went only to the newcomers.
    for name in ("worker-a", "worker-c"):
        assert c.nodes[name].pool.sessions <= survivors[name]


async def test_new_device_is_adopted_without_waiting_for_a_tick(redis: Redis) -> None:
    ids = ["d1"]
    ledger = Ledger()
    pools = {n: FakePool(n, ledger) for n in ("w1", "w2")}

    async def list_ids() -> list[str]:
        return list(ids)

    coords = {
        n: ShardCoordinator(
            pool,
            membership=Membership(redis, n, ttl=60),
            leases=Leases(redis, n, ttl=60),
            device_ids=list_ids,
            tick=30,  # never ticks by itself here
        )
        for n, pool in pools.items()
    }
    for coord in coords.values():
        await coord.step()
    for coord in coords.values():  # both saw each other once; now first steps are over
        coord._settle_until = 0.0  # skip the start-up pause; its effect is tested elsewhere
        await coord.step()
    assert set().union(*(p.sessions for p in pools.values())) == {"d1"}

    ids.append("d2")
    owner = rendezvous_owner("d2", ["w1", "w2"])
    for coord in coords.values():
        await coord.on_device_change("d2")
    assert {n for n, p in pools.items() if "d2" in p.sessions} == {owner}
    assert coords[owner or ""].is_mine("d2")
    assert await redis.get(LEASE_PREFIX + "d2") == (owner or "").encode()

    for coord in coords.values():
        await coord.close()
    assert all(not p.sessions for p in pools.values())
    assert await redis.keys("pb:*") == []
    assert ledger.violations == []


async def test_start_up_waits_for_peers_before_taking_devices(redis: Redis) -> None:
    ledger = Ledger()

    async def list_ids() -> list[str]:
        return list(IDS)

    pool = FakePool("w1", ledger)
    coord = ShardCoordinator(
        pool,
        membership=Membership(redis, "w1", ttl=60),
        leases=Leases(redis, "w1", ttl=60),
        device_ids=list_ids,
        tick=0.5,
    )
    await coord.step()
    assert coord.settling and pool.sessions == set()
    await Membership(redis, "w2", ttl=60).heartbeat()  # a peer announces itself meanwhile
    await wait_for(lambda: not coord.settling, timeout=3.0)
    await coord.step()
    assert pool.sessions == {d for d in IDS if rendezvous_owner(d, ["w1", "w2"]) == "w1"}
    assert pool.adopts == len(pool.sessions)  # it never took w2's share
    await coord.close()


async def test_redis_restart_keeps_sessions_and_recovers(
    cluster: Callable[[list[str]], Cluster],
    redis_server: RedisServer,  # noqa: F811 - a pytest fixture
    redis: Redis,
) -> None:
    c = cluster(IDS)
    for name in ("worker-a", "worker-b", "worker-c"):
        c.start(name)
    await wait_for(c.partitioned, timeout=5.0)
    before = {n: set(node.pool.sessions) for n, node in c.nodes.items()}
    adopts = {n: node.pool.adopts for n, node in c.nodes.items()}

    await asyncio.to_thread(redis_server.stop)
    await wait_for(
        lambda: all(n.coord.healthy is False for n in c.nodes.values()),
        timeout=10.0,
        message="every coordinator noticed the outage",
    )
    # While Redis is down nothing changes hands: sessions stay open.
    assert {n: set(node.pool.sessions) for n, node in c.nodes.items()} == before

    await asyncio.to_thread(redis_server.start)  # empty: no persistence

    async def recovered() -> bool:
        return (
            all(n.coord.healthy for n in c.nodes.values())
            and c.partitioned()
            and await redis.dbsize() == len(IDS) + len(c.nodes) + 1  # leases, heartbeats, the set
            and await c.leases_match(redis)
        )

    await wait_for(recovered, timeout=10.0, interval=0.05, message="recovered after restart")
    assert {n: set(node.pool.sessions) for n, node in c.nodes.items()} == before
    # Leases were re-taken in place: no session was closed and reopened.
    assert {n: node.pool.adopts for n, node in c.nodes.items()} == adopts
    assert c.ledger.violations == []


async def test_store_outage_keeps_leases_renewed(redis: Redis) -> None:
    ledger = Ledger()
    pool = FakePool("w1", ledger)
    store_up = True
    # What each failing step saw in Redis right after its renewal: (lease holder, members).
    during_outage: list[tuple[bytes | None, list[str]]] = []

    async def list_ids() -> list[str]:
        if not store_up:
            during_outage.append((await redis.get(LEASE_PREFIX + "d1"), await membership.members()))
            raise OSError("store down")
        return ["d1", "d2"]

    membership = Membership(redis, "w1", ttl=0.5)
    await membership.heartbeat()  # already announced: no start-up pause
    coord = ShardCoordinator(
        pool,
        membership=membership,
        leases=Leases(redis, "w1", ttl=0.5),
        device_ids=list_ids,
        tick=0.1,
    )
    task = asyncio.create_task(coord.run())
    try:
        await wait_for(lambda: pool.sessions == {"d1", "d2"}, timeout=3.0)
        store_up = False
        await wait_for(lambda: coord.healthy is False, timeout=3.0)
        # Ten failing steps: at least ten ticks, twice the TTL.
        await wait_for(lambda: len(during_outage) >= 10, timeout=10.0, interval=0.05)
        assert pool.sessions == {"d1", "d2"}
        assert during_outage[:10] == [(b"w1", ["w1"])] * 10
        store_up = True
        await wait_for(lambda: coord.healthy is True, timeout=3.0)
        assert pool.adopts == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await coord.close()


class GatedPool(FakePool):
    """A FakePool whose adopts and drops wait for the test to open the gate (a slow, busy host)."""

    def __init__(self, name: str, ledger: Ledger) -> None:
        super().__init__(name, ledger)
        self.gate = asyncio.Event()
        self.waiting = 0

    async def adopt(self, device_id: str) -> None:
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1
        await super().adopt(device_id)

    async def drop(self, device_id: str) -> None:
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1
        await super().drop(device_id)


async def renewed(redis: Redis, key: str) -> None:
    """Cut ``key``'s remaining time to 300 ms and wait until its owner extends it again."""
    await redis.pexpire(key, 300)

    async def extended() -> bool:
        return await redis.pttl(key) > 300

    await wait_for(extended, timeout=5.0, interval=0.01, message=f"{key} renewed")


async def test_leases_and_heartbeat_stay_alive_during_a_slow_hand_over(redis: Redis) -> None:
    """Opening or closing many sessions on a busy host took longer than a lease lives: the
    worker's own leases and heartbeat lapsed mid-step, the others took its devices, and the
    devices flapped between workers. Renewals now go on while a step works."""
    ledger = Ledger()
    pool = GatedPool("w1", ledger)
    ids = [f"d{i}" for i in range(100)]

    async def list_ids() -> list[str]:
        return list(ids)

    membership = Membership(redis, "w1", ttl=1.0)
    await membership.heartbeat()  # already announced: no start-up pause
    coord = ShardCoordinator(
        pool, membership=membership, leases=Leases(redis, "w1", ttl=1.0), device_ids=list_ids, tick=0.1
    )
    step = asyncio.create_task(coord.step())
    try:
        await wait_for(lambda: pool.waiting == PARALLEL, timeout=5.0, message="adopts in flight")
        for _ in range(3):  # the step is stuck opening sessions, for as long as we like
            await renewed(redis, LEASE_PREFIX + "d0")
            await renewed(redis, LEASE_PREFIX + "d99")  # not even started yet
            await renewed(redis, WORKER_PREFIX + "w1")
        assert not step.done()
        pool.gate.set()
        await step
        assert pool.sessions == set(ids)

        pool.gate.clear()
        ids.clear()  # every device deleted: the next step closes them all, slowly
        step = asyncio.create_task(coord.step())
        await wait_for(lambda: pool.waiting > 0, timeout=5.0, message="drops in flight")
        await renewed(redis, LEASE_PREFIX + "d50")  # not closed yet: still ours, still renewed
        await renewed(redis, WORKER_PREFIX + "w1")
        pool.gate.set()
        await step
        assert pool.sessions == set()
        assert await redis.exists(LEASE_PREFIX + "d50") == 0  # released once closed
        assert ledger.violations == []
    finally:
        pool.gate.set()
        if not step.done():
            step.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await step
        await coord.close()


async def test_a_redis_outage_does_not_hand_over_a_slower_peers_devices(
    redis_server_factory: Callable[..., RedisServer],  # noqa: F811 - a pytest fixture
) -> None:
    """Redis comes back from an outage; one worker's heartbeat and leases lapsed meanwhile while
    another's survived (written a moment later), and the surviving one steps first. It must not
    take the other's devices: that one is alive, only Redis was not."""
    server = redis_server_factory(appendonly=True)  # keys and their deadlines survive the restart
    client = Redis.from_url(server.url)
    ledger = Ledger()
    ids = [f"d{i}" for i in range(40)]

    async def list_ids() -> list[str]:
        return list(ids)

    pools = {n: FakePool(n, ledger) for n in ("first", "late")}
    coords = {
        n: ShardCoordinator(
            pools[n],
            membership=Membership(client, n, ttl=30),
            leases=Leases(client, n, ttl=30),
            device_ids=list_ids,
            tick=0.1,
        )
        for n in pools
    }
    first, late = coords["first"], coords["late"]
    for coord in coords.values():
        await coord.step()
    for coord in coords.values():
        coord._settle_until = 0.0  # skip the start-up pause; its effect is tested elsewhere
        await coord.step()
    before = {n: set(p.sessions) for n, p in pools.items()}
    assert before["first"] and before["late"] and not before["first"] & before["late"]
    try:
        # "late" wrote its heartbeat and leases longest ago: they ran out during the outage.
        for key in [WORKER_PREFIX + "late", *(LEASE_PREFIX + d for d in before["late"])]:
            await expire_now(client, key)
        await asyncio.to_thread(server.stop)
        with pytest.raises(RedisConnectionError):
            await first.step()
        await asyncio.to_thread(server.start)  # "first" keeps its heartbeat, "late" is unseen

        await first.step()  # the first step after the outage, before "late" could beat again
        assert pools["first"].sessions == before["first"]
        await late.step()  # back: it re-takes its own lapsed leases, nobody else held them
        # "first" takes nothing new for a whole lease TTL after the outage: time enough for any
        # live peer to re-take its lapsed leases. Skipped here (30 s), as the start-up pause is.
        assert first.settling and first._settle_until - time.monotonic() > 29
        first._settle_until = late._settle_until = 0.0
        for coord in coords.values():
            await coord.step()
        assert {n: set(p.sessions) for n, p in pools.items()} == before
        assert all(p.adopts == len(before[n]) for n, p in pools.items())  # no churn at all
        assert {await client.get(LEASE_PREFIX + d) for d in before["late"]} == {b"late"}
        assert ledger.violations == []
    finally:
        for coord in coords.values():
            await coord.close()
        await client.aclose()
