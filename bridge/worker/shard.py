"""Sharding primitives for several worker processes sharing one Redis.

- :func:`rendezvous_owner`: which live worker a device belongs to (highest-random-weight hashing,
  so adding or removing a worker moves only the devices that must move).
- :class:`Membership`: a worker announces itself with an expiring heartbeat key, listed in a set
  of known workers (so finding the live ones costs one call, not a scan of the whole keyspace).
- :class:`Leases`: a worker opens a device's session only while it holds the device's lease, a key
  whose value is the worker id and which expires unless renewed.

The push claims that two workers overlapping in a hand-over share are in
``bridge/push/redis_claims.py``; they tell a live claim holder from a dead one by its heartbeat.
Every key is named in ``bridge/redis_keys.py``.

Every method lets redis' ``ConnectionError``/``TimeoutError`` reach the caller: the coordinator
decides what an outage means.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis

from bridge.redis_keys import LEASE_PREFIX, WORKER_PREFIX, WORKERS_KEY
from bridge.store.paging import batches

log = logging.getLogger(__name__)

#: Keys per pipeline or script call: big enough to amortise round trips, small enough not to
#: block Redis (a single-threaded server) for long.
BATCH = 1000

# KEYS: lease keys; ARGV[1]: worker id, ARGV[2]: ttl in ms. Per key: 1 if the lease is ours after
# the call (newly taken, or already ours and extended), 0 if another worker holds it.
_ACQUIRE = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 1
  elseif redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: lease keys; ARGV as above. Per key: 1 if extended (still ours) or retaken (it had expired
# and nobody took it: no one else can have held it since, only the key's timer ran out, or Redis
# restarted empty), 0 if another worker holds it now.
_RENEW = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  elseif not v then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: lease keys; ARGV[1]: worker id. Deletes only the keys whose value is ours; returns how many.
_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    n = n + redis.call('DEL', key)
  end
end
return n
"""

# KEYS[1]: this worker's heartbeat key, KEYS[2]: the set of workers; ARGV[1]: the heartbeat value,
# ARGV[2]: ttl in ms, ARGV[3]: worker id. Returns 1 if the previous heartbeat was still there.
_HEARTBEAT = """
local previous = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if previous then return 1 end
return 0
"""

# KEYS[1]: the set of workers; ARGV[1]: the heartbeat key prefix. Returns the ids whose heartbeat
# key is alive and removes the others from the set. (It reads keys it is not given, as the lease
# scripts' callers never run on Redis Cluster either: one Redis, or a primary with replicas.)
_MEMBERS = """
local live = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then
    live[#live + 1] = id
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return live
"""

def rendezvous_owner(device_id: str, members: Sequence[str]) -> str | None:
    """The member that wins ``device_id`` by highest-random-weight hashing; None if no members.

    Pure and stable across processes and Python versions (blake2b, not ``hash()``). Ties, which
    would need a 64-bit collision, go to the greater member id so the answer never depends on order.
    """
    best: str | None = None
    best_weight = -1
    for member in members:
        digest = hashlib.blake2b(f"{member}\0{device_id}".encode(), digest_size=8).digest()
        weight = int.from_bytes(digest, "big")
        if weight > best_weight or (weight == best_weight and best is not None and member > best):
            best, best_weight = member, weight
    return best


def _text(value: Any) -> str:
    """A Redis reply as str, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else str(value)


def ttl_ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least 1, for Redis ``PX``; raises for ``seconds <= 0``."""
    if seconds <= 0:
        raise ValueError("ttl must be positive")
    return max(1, int(seconds * 1000))



class Membership:
    """This worker's heartbeat key, and the list of live workers.

    ``instance`` tells this process apart from an earlier one with the same worker id (a pod
    restarted under its name): the claims of a dead instance are free even while a new one beats.
    """

    def __init__(
        self, redis: Redis, worker_id: str, *, ttl: float = 15.0, instance: str | None = None
    ) -> None:
        if not worker_id or " " in worker_id:
            raise ValueError("worker_id must be non-empty and without spaces")
        self._redis = redis
        self.worker_id = worker_id
        self.instance = instance or secrets.token_hex(8)
        self.ttl = ttl
        self._ttl_ms = ttl_ms(ttl)
        self._key = WORKER_PREFIX + worker_id
        self._started = time.time()
        #: ``time.monotonic()`` of the last heartbeat Redis acknowledged (None before the first).
        self.last_beat: float | None = None
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._members = redis.register_script(_MEMBERS)

    def __repr__(self) -> str:
        return f"Membership(worker_id={self.worker_id!r}, ttl={self.ttl})"

    async def heartbeat(self) -> bool:
        """(Re)write ``pb:worker:<id>`` so it lives ``ttl`` more seconds.

        Returns whether the previous heartbeat was still there: False on the first beat, and
        after a gap longer than ``ttl`` or a Redis restart that lost its data, i.e. whenever
        other workers may not have seen this one, or may not have re-announced themselves yet.
        """
        value = json.dumps(
            {"id": self.worker_id, "instance": self.instance, "started": self._started, "ts": time.time()}
        )
        started = time.monotonic()
        previous = await self._heartbeat(
            keys=[self._key, WORKERS_KEY], args=[value, self._ttl_ms, self.worker_id]
        )
        self.last_beat = started
        return bool(int(previous))

    async def members(self) -> list[str]:
        """Ids of the live workers (those whose heartbeat key has not expired), sorted.

        One call whatever the size of the keyspace (a SCAN for ``pb:worker:*`` would walk every
        device, lease and claim key, every tick).
        """
        ids = await self._members(keys=[WORKERS_KEY], args=[WORKER_PREFIX])
        return sorted({_text(i) for i in ids})

    async def leave(self) -> None:
        """Delete this worker's heartbeat key (graceful shutdown), so others take over at once."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(self._key)
            pipe.srem(WORKERS_KEY, self.worker_id)
            await pipe.execute()


class Leases:
    """Device leases held by one worker: ``pb:lease:<deviceId>`` = worker id, with a TTL.

    ``held`` is what this worker believes it holds; it is only as fresh as the last
    :meth:`acquire`/:meth:`renew`, so renew at least a few times per ``ttl``.
    """

    def __init__(self, redis: Redis, worker_id: str, *, ttl: float = 15.0) -> None:
        if not worker_id:
            raise ValueError("worker_id must not be empty")
        self._redis = redis
        self.worker_id = worker_id
        self.ttl = ttl
        self._ttl_ms = ttl_ms(ttl)
        self.held: set[str] = set()
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def __repr__(self) -> str:
        return f"Leases(worker_id={self.worker_id!r}, ttl={self.ttl}, held={len(self.held)})"

    async def acquire(self, device_ids: Iterable[str]) -> set[str]:
        """Take the leases that are free (and extend those already ours), in batches.

        Returns the ids whose lease is ours after the call (newly taken ∪ already ours) and adds
        them to ``held``; ids held by another worker are left alone (they free up when that
        worker releases them or its lease expires).
        """
        ids = sorted(set(device_ids))
        ours: set[str] = set()
        for chunk in batches(ids, BATCH):
            keys = [LEASE_PREFIX + d for d in chunk]
            flags = await self._acquire(keys=keys, args=[self.worker_id, self._ttl_ms])
            got = {d for d, ok in zip(chunk, flags, strict=True) if int(ok)}
            self.held |= got
            ours |= got
        return ours

    async def renew(self) -> set[str]:
        """Extend every lease in ``held``; return the ids lost to another worker (and forget them).

        A lease that expired without anyone taking it is taken again rather than reported lost:
        nobody can have held it in between, and it keeps sessions open across a Redis restart
        that lost every key. On a Redis error ``held`` keeps whatever was not yet checked.
        """
        ids = sorted(self.held)
        lost: set[str] = set()
        for chunk in batches(ids, BATCH):
            keys = [LEASE_PREFIX + d for d in chunk]
            flags = await self._renew(keys=keys, args=[self.worker_id, self._ttl_ms])
            chunk_lost = {d for d, ok in zip(chunk, flags, strict=True) if not int(ok)}
            self.held -= chunk_lost
            lost |= chunk_lost
        return lost

    async def release(self, device_ids: Iterable[str]) -> None:
        """Give up these leases: delete each key only while its value is still ours.

        The ids leave ``held`` first, so even if Redis fails here they are never renewed again
        and simply expire within ``ttl``.
        """
        ids = sorted(set(device_ids))
        self.held.difference_update(ids)
        for chunk in batches(ids, BATCH):
            await self._release(keys=[LEASE_PREFIX + d for d in chunk], args=[self.worker_id])

    async def holder(self, device_id: str) -> str | None:
        """The worker id that holds ``device_id``'s lease in Redis now, or None."""
        value = await self._redis.get(LEASE_PREFIX + device_id)
        return None if value is None else _text(value)
