"""Sharding primitives for several worker processes sharing one Redis.

- :func:`rendezvous_owner`: which live worker a device belongs to (highest-random-weight hashing,
  so adding or removing a worker moves only the devices that must move).
- :class:`Membership`: a worker announces itself with an expiring heartbeat key.
- :class:`Leases`: a worker opens a device's session only while it holds the device's lease, a key
  whose value is the worker id and which expires unless renewed.
- :class:`RedisClaims`: per-push "send at most once" keys (:class:`bridge.push.claims.Claims`), so
  two workers that briefly overlap during a hand-over still send each push once.

Every method lets redis' ``ConnectionError``/``TimeoutError`` reach the caller: the coordinator
decides what an outage means.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from redis.asyncio import Redis

log = logging.getLogger(__name__)

#: Prefix of every key this module writes.
KEY_PREFIX = "pb:"
#: ``pb:worker:<workerId>`` → JSON ``{id, started, ts}``, expires unless the worker heartbeats.
WORKER_PREFIX = KEY_PREFIX + "worker:"
#: ``pb:lease:<deviceId>`` → the holding worker's id, expires unless renewed.
LEASE_PREFIX = KEY_PREFIX + "lease:"
#: ``pb:claim:<pushId>`` → "1", a push that has been (or is being) sent.
CLAIM_PREFIX = KEY_PREFIX + "claim:"

#: Keys per pipeline or script call: big enough to amortise round trips, small enough not to
#: block Redis (a single-threaded server) for long.
BATCH = 1000
#: SCAN page size hint for the member listing.
SCAN_COUNT = 1000

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


def _ms(seconds: float) -> int:
    if seconds <= 0:
        raise ValueError("ttl must be positive")
    return max(1, int(seconds * 1000))


def _chunks(items: Sequence[str], size: int = BATCH) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Membership:
    """This worker's heartbeat key, and the list of live workers."""

    def __init__(self, redis: Redis, worker_id: str, *, ttl: float = 15.0) -> None:
        if not worker_id:
            raise ValueError("worker_id must not be empty")
        self._redis = redis
        self.worker_id = worker_id
        self.ttl = ttl
        self._ttl_ms = _ms(ttl)
        self._key = WORKER_PREFIX + worker_id
        self._started = time.time()

    def __repr__(self) -> str:
        return f"Membership(worker_id={self.worker_id!r}, ttl={self.ttl})"

    async def heartbeat(self) -> bool:
        """(Re)write ``pb:worker:<id>`` so it lives ``ttl`` more seconds.

        Returns whether the previous heartbeat was still there: False on the first beat, and
        after a gap longer than ``ttl`` or a Redis restart that lost its data, i.e. whenever
        other workers may not have seen this one, or may not have re-announced themselves yet.
        """
        value = json.dumps({"id": self.worker_id, "started": self._started, "ts": time.time()})
        previous = await self._redis.set(self._key, value, px=self._ttl_ms, get=True)
        return previous is not None

    async def members(self) -> list[str]:
        """Ids of the live workers (those whose heartbeat key has not expired), sorted."""
        found: set[str] = set()
        # SCAN may return a key twice; the set takes care of it.
        async for key in self._redis.scan_iter(match=WORKER_PREFIX + "*", count=SCAN_COUNT):
            found.add(_text(key)[len(WORKER_PREFIX) :])
        return sorted(found)

    async def leave(self) -> None:
        """Delete this worker's heartbeat key (graceful shutdown), so others take over at once."""
        await self._redis.delete(self._key)


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
        self._ttl_ms = _ms(ttl)
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
        for chunk in _chunks(ids):
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
        for chunk in _chunks(ids):
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
        for chunk in _chunks(ids):
            await self._release(keys=[LEASE_PREFIX + d for d in chunk], args=[self.worker_id])

    async def holder(self, device_id: str) -> str | None:
        """The worker id that holds ``device_id``'s lease in Redis now, or None."""
        value = await self._redis.get(LEASE_PREFIX + device_id)
        return None if value is None else _text(value)


class RedisClaims:
    """:class:`bridge.push.claims.Claims` in Redis, shared by every worker: ``SET NX PX``."""

    def __init__(self, redis: Redis, *, prefix: str = CLAIM_PREFIX) -> None:
        self._redis = redis
        self._prefix = prefix

    def __repr__(self) -> str:
        return f"RedisClaims(prefix={self._prefix!r})"

    async def claim(self, push_id: str, ttl: float) -> bool:
        """True the first time ``push_id`` is claimed within ``ttl`` seconds (by any worker)."""
        ok = await self._redis.set(self._prefix + push_id, "1", nx=True, px=_ms(ttl))
        return bool(ok)

    async def release(self, push_id: str) -> None:
        """Forget ``push_id`` so a later try may claim it (no error if it is unknown)."""
        await self._redis.delete(self._prefix + push_id)
