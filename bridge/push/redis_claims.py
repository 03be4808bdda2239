"""Push claims in Redis, shared by every worker (:class:`bridge.push.claims.Claims`).

Two workers that briefly both hold a device during a hand-over still send each push once: the
first to claim a push id sends it. A claim names the worker process that took it; one whose
process died before starting the send can be taken over, so a SIGKILLed worker's queued pushes
are sent by the device's next owner instead of being lost. Whether a holder is alive is read
from its heartbeat (:class:`bridge.worker.shard.Membership`).
"""

from __future__ import annotations

import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bridge.redis_keys import CLAIM_PREFIX, WORKER_PREFIX
from bridge.worker.shard import Membership, ttl_ms

# Is the process named in a claim value (``c:<workerId> <instance>``) alive? Its worker's heartbeat
# must exist and carry the same instance: a worker restarted under the same id (a StatefulSet pod)
# is a new instance, and the dead one's claims are free.
_HOLDER_ALIVE = """
local function holder_alive(value, heartbeat_prefix)
  local holder = string.sub(value, 3)
  local space = string.find(holder, ' ', 1, true)
  if not space then return true end
  local beat = redis.call('GET', heartbeat_prefix .. string.sub(holder, 1, space - 1))
  if not beat then return false end
  local ok, info = pcall(cjson.decode, beat)
  return (not ok) or type(info) ~= 'table' or info['instance'] == string.sub(holder, space + 1)
end
"""

# KEYS[1]: the claim; ARGV[1]: our holder, ARGV[2]: ttl in ms, ARGV[3]: heartbeat key prefix.
# 1 if the claim is ours now: it was free, or claimed by a process that died before sending it.
_CLAIM = _HOLDER_ALIVE + """
local v = redis.call('GET', KEYS[1])
if v then
  if string.sub(v, 1, 2) ~= 'c:' or v == 'c:' .. ARGV[1] or holder_alive(v, ARGV[3]) then
    return 0
  end
end
redis.call('SET', KEYS[1], 'c:' .. ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1]: the claim; ARGV[1]: our holder, ARGV[2]: ttl in ms. Marks our claim as being sent; 1 if
# we may send: the claim is ours, or gone (expired, Redis restarted empty: nobody else has it).
_SENDING = """
local v = redis.call('GET', KEYS[1])
if v == 's:' .. ARGV[1] then return 1 end
if v == 'c:' .. ARGV[1] then
  redis.call('SET', KEYS[1], 's:' .. ARGV[1], 'KEEPTTL')
  return 1
end
if not v then
  redis.call('SET', KEYS[1], 's:' .. ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS[1]: the claim; ARGV[1]: our holder. Deletes the claim only while it is ours.
_RELEASE_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v == 'c:' .. ARGV[1] or v == 's:' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisClaims:
    """:class:`bridge.push.claims.Claims` in Redis, shared by every worker.

    A claim records which worker process holds it (``c:<workerId> <instance>``) until the send
    starts (``s:...``). The claim of a process that is gone (no heartbeat, or a heartbeat of
    another instance) and had not started the send can be taken by the next owner of the device:
    without that, a worker SIGKILLed between queueing a push and sending it would leave a claim
    that makes the next owner's backfill drop the push for a day. ``sending`` is also the fence
    for the opposite case: a worker presumed dead (its heartbeat lapsed) whose claim was taken
    over finds out before it sends, and leaves the push to the new holder.
    """

    shared = True

    def __init__(self, redis: Redis, membership: Membership, *, prefix: str = CLAIM_PREFIX) -> None:
        self._redis = redis
        self._membership = membership
        self._prefix = prefix
        self.holder = f"{membership.worker_id} {membership.instance}"
        self._claim = redis.register_script(_CLAIM)
        self._sending = redis.register_script(_SENDING)
        self._release = redis.register_script(_RELEASE_CLAIM)

    def __repr__(self) -> str:
        return f"RedisClaims(holder={self.holder!r}, prefix={self._prefix!r})"

    async def claim(self, push_id: str, ttl: float) -> bool:
        """True if ``push_id`` is ours now: unclaimed, or claimed by a dead worker before its send."""
        ok = await self._claim(
            keys=[self._prefix + push_id], args=[self.holder, ttl_ms(ttl), WORKER_PREFIX]
        )
        return bool(int(ok))

    async def sending(self, push_id: str, ttl: float) -> bool:
        """Mark our claim as being sent; False if another worker holds it now (do not send)."""
        ok = await self._sending(keys=[self._prefix + push_id], args=[self.holder, ttl_ms(ttl)])
        return bool(int(ok))

    def confirm_before_send(self) -> bool:
        """True unless our heartbeat is fresh (acknowledged within half its TTL).

        With a fresh heartbeat no other worker can have taken our claims over; after a stall or
        an outage it may have, so a send then waits for :meth:`sending` to say it is still ours.
        """
        beat = self._membership.last_beat
        return beat is None or time.monotonic() - beat > self._membership.ttl / 2

    async def release(self, push_id: str) -> None:
        """Forget ``push_id`` if the claim is still ours, so a later try may claim it."""
        await self._release(keys=[self._prefix + push_id], args=[self.holder])

    async def reachable(self) -> bool:
        """Whether Redis answers a claim-like read now.

        Not PING: a restarting Redis answers PING while it is still loading its data, and
        refuses the claims themselves (``BusyLoadingError``) until it has.
        """
        try:
            await self._redis.exists(self._prefix + "reachable")
        except RedisError:
            return False
        return True
