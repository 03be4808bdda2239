"""The dispatcher's shutdown with the claims in a real redis-server (several workers).

A worker shutting down hands its devices to the next owner, which backfills from the stored
checkpoint and re-creates the pushes that were not answered. Their claims must be free by then, or
the next owner takes them for sent and drops them.
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from bridge.metrics import Metrics
from bridge.models import Notification
from bridge.push.dispatcher import Dispatcher
from bridge.push.provider import Delivered, Retry, SendResult
from bridge.push.redis_claims import RedisClaims
from bridge.redis_keys import CLAIM_PREFIX
from bridge.worker.shard import Membership
from tests._poll import wait_for
from tests._redis import RedisServer, redis_client, redis_server, redis_server_factory  # noqa: F401 - fixtures, used by name


class ScriptedProvider:
    """Answers each push id from ``answers`` (then Delivered), counting the sends."""

    name = "apns"

    def __init__(self, answers: dict[str, SendResult] | None = None) -> None:
        self.answers = dict(answers or {})
        self.sent: list[str] = []

    async def send(self, notification: Notification) -> SendResult:
        self.sent.append(notification.push_id)
        return self.answers.pop(notification.push_id, Delivered("ok"))

    async def close(self) -> None:
        pass


def note(push_id: str) -> Notification:
    return Notification(
        device_id="dev-1", push_type="ios", token="a1" * 32, push_id=push_id, kind="message"
    )


async def worker(
    name: str, provider: ScriptedProvider, redis: Redis, results: dict[str, SendResult]
) -> Dispatcher:
    """A live worker's dispatcher (announced, so its claims count as held by a live process)."""
    membership = Membership(redis, name, ttl=30)
    await membership.heartbeat()

    async def on_result(n: Notification, result: SendResult) -> None:
        results[n.push_id] = result

    claims = RedisClaims(redis, membership)
    return Dispatcher({"apns": provider}, metrics=Metrics(), claims=claims, on_result=on_result)


async def test_a_push_waiting_for_its_retry_at_shutdown_goes_out_from_the_next_owner(
    redis: Redis,
) -> None:
    # Worker A: one push delivered, one answered "retry in 30 s" and still waiting at shutdown.
    a_results: dict[str, SendResult] = {}
    a_provider = ScriptedProvider({"waiting": Retry("ServiceUnavailable", time.time() + 30)})
    a = await worker("w-a", a_provider, redis, a_results)
    await a.start()
    assert await a.submit(note("delivered"))
    assert await a.submit(note("waiting"))
    await wait_for(
        lambda: "delivered" in a_results and a.depth == 1, message="one delivered, one waiting"
    )
    await asyncio.wait_for(a.close(timeout=0.05), 5)
    assert "waiting" not in a_results  # not final: handed back, not reported

    # Its claim is gone; the delivered one's stays.
    assert await redis.exists(CLAIM_PREFIX + "waiting") == 0
    assert await redis.exists(CLAIM_PREFIX + "delivered") == 1

    # Worker B takes the device over and its backfill re-creates both pushes.
    b_results: dict[str, SendResult] = {}
    b_provider = ScriptedProvider()
    b = await worker("w-b", b_provider, redis, b_results)
    await b.start()
    try:
        assert await b.submit(note("delivered")) is False  # sent already: not twice
        assert await b.submit(note("waiting")) is True  # not lost
        assert await b.drain(5)
        assert b_results == {"waiting": Delivered("ok")}
        assert a_provider.sent.count("delivered") + b_provider.sent.count("delivered") == 1
    finally:
        await b.close(timeout=0)


async def test_claims_reachable_follows_redis(redis_server: RedisServer, redis: Redis) -> None:  # noqa: F811 - a pytest fixture
    """A backfill asks this before pushing what a previous owner may have pushed already."""
    dispatcher = await worker("w1", ScriptedProvider(), redis, {})
    assert await dispatcher.claims_reachable() is True
    await asyncio.to_thread(redis_server.stop)
    try:
        assert await dispatcher.claims_reachable() is False
    finally:
        await asyncio.to_thread(redis_server.start)
    assert await dispatcher.claims_reachable() is True
