"""Membership, leases, claims and the shard coordinator against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from conftest import wait_for
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge.worker.coordinator import ShardCoordinator
from bridge.worker.shard import (
    LEASE_PREFIX,
    WORKER_PREFIX,
    Leases,
    Membership,
    RedisClaims,
    rendezvous_owner,
)
from tests._redis import RedisServer, redis_server, redis_server_factory  # noqa: F401 - fixtures, used by name

TTL = 1.0
TICK = 0.1


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:  # noqa: F811 - a pytest fixture
    client = Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


# ------------------------------------------------------------------ membership


async def test_membership_lists_live_workers_and_forgets_expired_ones(redis: Redis) -> None:
    a = Membership(redis, "worker-a", ttl=0.5)
    b = Membership(redis, "worker-b", ttl=0.5)
    assert await a.heartbeat() is False  # first beat: nobody could have seen us yet
    assert await a.heartbeat() is True
    await b.heartbeat()
    assert await a.members() == ["worker-a", "worker-b"]
    raw = await redis.get(WORKER_PREFIX + "worker-a")
    assert raw is not None
    stored = json.loads(raw)
    assert stored["id"] == "worker-a" and stored["ts"] >= stored["started"]
    assert 0 < await redis.pttl(WORKER_PREFIX + "worker-a") <= 500

    async def only_a_left() -> bool:
        await a.heartbeat()  # a keeps beating, b has stopped
        return await a.members() == ["worker-a"]

    await wait_for(only_a_left, timeout=3.0, interval=0.05)
    assert await b.heartbeat() is False  # b's key had lapsed

    await a.leave()
    assert await b.members() == ["worker-b"]


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
    a = Leases(redis, "worker-a", ttl=0.5)
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
    a = Leases(redis, "worker-a", ttl=0.3)
    b = Leases(redis, "worker-b", ttl=5)
    assert await a.acquire(["x", "y"]) == {"x", "y"}

    async def expired() -> bool:
        return await redis.exists(LEASE_PREFIX + "x", LEASE_PREFIX + "y") == 0

    await wait_for(expired, timeout=3.0, interval=0.02)
    assert await b.acquire(["x"]) == {"x"}
    # x went to b; y lapsed but nobody took it, so a keeps it.
    assert await a.renew() == {"x"}
    assert a.held == {"y"}
    assert await a.holder("y") == "worker-a"
    assert await a.holder("x") == "worker-b"
    assert await a.renew() == set()


async def test_renew_extends_the_ttl(redis: Redis) -> None:
    a = Leases(redis, "worker-a", ttl=0.4)
    await a.acquire(["x"])
    for _ in range(5):  # well past the TTL in total, renewed in between
        await asyncio.sleep(0.15)
        assert await a.renew() == set()
        assert await redis.pttl(LEASE_PREFIX + "x") > 300
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


# ------------------------------------------------------------------ claims


async def test_claims_once_across_workers(redis: Redis) -> None:
    one, two = RedisClaims(redis), RedisClaims(redis)
    assert await one.claim("dev:msg1", 30) is True
    assert await one.claim("dev:msg1", 30) is False
    assert await two.claim("dev:msg1", 30) is False
    assert await redis.exists("pb:claim:dev:msg1") == 1
    await two.release("dev:msg1")
    assert await one.claim("dev:msg1", 30) is True
    await one.release("never-claimed")

    results = await asyncio.gather(*(RedisClaims(redis).claim("race", 30) for _ in range(20)))
    assert results.count(True) == 1


async def test_claims_expire(redis: Redis) -> None:
    claims = RedisClaims(redis, prefix="test:claim:")
    assert await claims.claim("p", 0.2) is True
    assert await claims.claim("p", 0.2) is False
    await wait_for(lambda: claims.claim("p", 0.2), timeout=3.0, interval=0.02)
    assert await redis.exists("test:claim:p") == 1


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
    await wait_for(c.partitioned, timeout=TTL + 10 * TICK + 2.0, message="survivors take over")
    took = loop.time() - t0
    print(f"take-over after crash: {took:.2f}s")
    assert took < TTL + 10 * TICK, took
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
            and await redis.dbsize() == len(IDS) + len(c.nodes)
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

    async def list_ids() -> list[str]:
        if not store_up:
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
        loop = asyncio.get_running_loop()
        until = loop.time() + 1.0  # twice the TTL
        await wait_for(lambda: loop.time() > until, timeout=3.0, interval=0.05)
        assert pool.sessions == {"d1", "d2"}
        assert await redis.get(LEASE_PREFIX + "d1") == b"w1"
        assert await membership.members() == ["w1"]
        store_up = True
        await wait_for(lambda: coord.healthy is True, timeout=3.0)
        assert pool.adopts == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await coord.close()
