"""Push claims in Redis (bridge/push/redis_claims.py) against a real redis-server: at most one
send per push id across workers, and a dead worker's unsent claims taken over."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from redis.asyncio import Redis

from bridge.metrics import Metrics
from bridge.models import Notification
from bridge.push.dispatcher import Dispatcher
from bridge.push.provider import Delivered, SendResult
from bridge.push.redis_claims import RedisClaims
from bridge.redis_keys import WORKER_PREFIX
from bridge.worker.shard import Membership
from tests._poll import wait_for
from tests._redis import (  # noqa: F401 - fixtures, used by name
    RedisServer,
    expire_now,
    gone,
    redis_client,
    redis_server,
)


async def live_claims(redis: Redis, worker_id: str) -> tuple[Membership, RedisClaims]:
    """A worker that has announced itself, and its claims."""
    membership = Membership(redis, worker_id, ttl=30)
    await membership.heartbeat()
    return membership, RedisClaims(redis, membership)


async def test_claims_once_across_workers(redis: Redis) -> None:
    _, one = await live_claims(redis, "w1")
    _, two = await live_claims(redis, "w2")
    assert await one.claim("dev:msg1", 30) is True
    assert await one.claim("dev:msg1", 30) is False
    assert await two.claim("dev:msg1", 30) is False  # w1 is alive: it sends it
    assert await redis.get("pb:claim:dev:msg1") == f"c:{one.holder}".encode()
    await two.release("dev:msg1")  # not two's claim: kept
    assert await two.claim("dev:msg1", 30) is False
    await one.release("dev:msg1")
    assert await two.claim("dev:msg1", 30) is True
    await one.release("never-claimed")

    results = await asyncio.gather(*(c.claim("race", 30) for c in [one, two] * 10))
    assert results.count(True) == 1


async def test_claims_expire(redis: Redis) -> None:
    membership = Membership(redis, "w1", ttl=30)
    await membership.heartbeat()
    claims = RedisClaims(redis, membership, prefix="test:claim:")
    assert await claims.claim("p", 30) is True
    assert await claims.claim("p", 30) is False
    await expire_now(redis, "test:claim:p")
    assert await claims.claim("p", 30) is True
    assert await redis.exists("test:claim:p") == 1


async def test_a_dead_workers_unsent_claim_is_taken_over(redis: Redis) -> None:
    """A worker SIGKILLed between claiming a push and sending it must not leave a claim that
    makes the next owner's backfill drop the push as a duplicate (the push would be lost)."""
    dead, claims_dead = await live_claims(redis, "w1")
    _, claims_next = await live_claims(redis, "w2")
    assert await claims_dead.claim("dev:m1", 86_400) is True  # queued, never sent
    assert await claims_dead.claim("dev:m2", 86_400) is True
    assert await claims_dead.sending("dev:m2", 86_400) is True  # its send had started
    assert await claims_next.claim("dev:m1", 86_400) is False  # w1 alive: it will send it

    await expire_now(redis, WORKER_PREFIX + dead.worker_id)  # SIGKILL: the heartbeat lapses
    assert await claims_next.claim("dev:m1", 86_400) is True  # the next owner sends it
    assert await claims_next.claim("dev:m2", 86_400) is False  # may have gone out: at most once
    # Had w1 only stalled, it learns before sending that the push is not its own any more.
    await dead.heartbeat()
    assert await claims_dead.sending("dev:m1", 86_400) is False
    assert await claims_next.sending("dev:m1", 86_400) is True


async def test_claims_of_a_previous_instance_are_free(redis: Redis) -> None:
    """A worker restarted under the same id (a StatefulSet pod) is a new instance."""
    _, before = await live_claims(redis, "w1")
    assert await before.claim("dev:m1", 86_400) is True
    _, after = await live_claims(redis, "w1")  # the restarted process beats under the same id
    _, other = await live_claims(redis, "w2")
    assert await other.claim("dev:m1", 86_400) is True
    assert await after.claim("dev:m1", 86_400) is False


@dataclass
class RecordingApns:
    """An APNs stand-in that records what it was asked to send."""

    name: str = "apns"
    sent: list[str] = field(default_factory=list)

    async def send(self, notification: Notification) -> SendResult:
        self.sent.append(notification.push_id)
        return Delivered("ok")

    async def close(self) -> None:
        pass


async def test_push_queued_by_a_killed_worker_is_sent_by_the_next_owner(redis: Redis) -> None:
    """Dispatchers as in two worker processes: the first claims a push and dies before sending it
    (its dispatcher never ran its workers); the next owner's backfill re-creates the push."""
    push = Notification(device_id="d1", push_type="ios", token="t" * 64, push_id="d1/ios/m1", kind="message")
    dead_membership, dead_claims = await live_claims(redis, "w1")
    dying = Dispatcher({"apns": RecordingApns()}, metrics=Metrics(), claims=dead_claims)
    assert await dying.submit(push) is True  # claimed and queued: never started, never sent

    await expire_now(redis, WORKER_PREFIX + dead_membership.worker_id)
    apns = RecordingApns()
    answers: list[SendResult] = []

    async def on_result(n: Notification, result: SendResult) -> None:
        answers.append(result)

    _, next_claims = await live_claims(redis, "w2")
    next_owner = Dispatcher({"apns": apns}, metrics=Metrics(), claims=next_claims, on_result=on_result)
    await next_owner.start()
    try:
        again = Notification(device_id="d1", push_type="ios", token="t" * 64, push_id="d1/ios/m1", kind="message")
        assert await next_owner.submit(again) is True
        await wait_for(lambda: bool(answers), timeout=5.0, message="the push answered")
        assert apns.sent == ["d1/ios/m1"]
        assert await redis.get("pb:claim:d1/ios/m1") == f"s:{next_claims.holder}".encode()
    finally:
        await next_owner.close(timeout=1)


async def test_a_worker_presumed_dead_leaves_a_taken_over_push_to_the_new_holder(redis: Redis) -> None:
    """A stalled worker (its heartbeat lapsed) whose claim another worker took over must not send
    the push when it resumes: the new holder does."""
    stalled = Membership(redis, "w1", ttl=0.3)
    await stalled.heartbeat()
    apns = RecordingApns()
    answers: list[SendResult] = []

    async def on_result(n: Notification, result: SendResult) -> None:
        answers.append(result)

    dispatcher = Dispatcher(
        {"apns": apns}, metrics=Metrics(), claims=RedisClaims(redis, stalled), on_result=on_result
    )
    push = Notification(device_id="d1", push_type="ios", token="t" * 64, push_id="d1/ios/m1", kind="message")
    assert await dispatcher.submit(push) is True  # claimed and queued, then the process stalls
    await wait_for(lambda: gone(redis, WORKER_PREFIX + "w1"), timeout=5.0, message="heartbeat lapsed")
    _, other = await live_claims(redis, "w2")
    assert await other.claim("d1/ios/m1", 86_400) is True  # the device's next owner took it
    await dispatcher.start()  # the stalled process resumes
    try:
        await wait_for(lambda: bool(answers), timeout=5.0, message="the push answered")
        assert apns.sent == []
        assert [type(a).__name__ for a in answers] == ["Failed"]
        assert await redis.get("pb:claim:d1/ios/m1") == f"c:{other.holder}".encode()
    finally:
        await dispatcher.close(timeout=1)
