"""Drives which devices this worker serves when several workers share one Redis.

Each tick: heartbeat, list the live workers, compute the devices this worker wins by rendezvous
hashing, renew the leases it holds (closing sessions whose lease another worker took), hand over
the devices it no longer wins (close the session, then release the lease, so the next owner can
only open its session after ours is closed), and take the leases of the devices it now wins
(those still held by a dead worker free up when their TTL runs out), opening their sessions.

Opening and closing many sessions (a worker joined or died) can take longer than a lease lives,
on a busy host: those phases run a few dozen devices at a time, and the heartbeat and the leases
are renewed every tick while they run, so a slow hand-over never lets this worker's own leases
lapse (which would make the others take its devices, and the devices flap between workers).

While Redis is unreachable nothing changes hands: open sessions stay open and keep pushing with
their cached state, and the coordinator tries again every tick. When this worker's own heartbeat
had lapsed (start-up, a long outage, Redis restarted empty), or its last step failed (another
worker's heartbeat may have lapsed during the outage while ours survived), it renews and hands
over at once but waits :data:`SETTLE_TICKS` before taking new devices, so a member list that the
other workers have not re-joined yet does not make it grab their devices (and make them
reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol

from bridge.metrics import Metrics
from bridge.worker.shard import Leases, Membership, rendezvous_owner

log = logging.getLogger(__name__)

#: Ticks to wait before taking new leases when this worker's heartbeat had lapsed (start-up,
#: an outage longer than the TTL, Redis restarted empty): enough for every live worker to beat.
SETTLE_TICKS = 2
#: Sessions opened or closed at once within a step.
PARALLEL = 32


class PoolLike(Protocol):
    """What the coordinator needs from the worker pool."""

    async def adopt(self, device_id: str) -> None:
        """Open the device's session (no-op if it is open)."""
        ...

    async def drop(self, device_id: str) -> None:
        """Close the device's session (no-op if it is not open)."""
        ...

    def owned(self) -> set[str]:
        """Ids of the devices with an open session."""
        ...


class ShardCoordinator:
    """Keeps a pool's sessions equal to the devices this worker wins and holds the lease of."""

    def __init__(
        self,
        pool: PoolLike,
        *,
        membership: Membership,
        leases: Leases,
        device_ids: Callable[[], Awaitable[list[str]]],
        tick: float = 2.0,
        metrics: Metrics | None = None,
    ) -> None:
        if tick <= 0:
            raise ValueError("tick must be positive")
        if leases.ttl <= tick or membership.ttl <= tick:
            # A lease or heartbeat that may expire between two renewals would flap.
            raise ValueError("membership and lease ttl must be longer than the tick")
        self._pool = pool
        self._membership = membership
        self._leases = leases
        self._device_ids = device_ids
        self._tick = tick
        self._metrics = metrics
        self.worker_id = membership.worker_id
        self._members: list[str] = []
        self._lock = asyncio.Lock()
        self._closed = False
        self._settle_until = 0.0
        self._step_failed = False
        # Owner of each device under ``_owners_members`` (recomputed when the members change).
        self._owners: dict[str, str | None] = {}
        self._owners_members: list[str] = []
        #: False after a failed step, True after a successful one (None before the first).
        self.healthy: bool | None = None
        #: time.monotonic() of the last successful step.
        self.last_step_ok: float | None = None

    def __repr__(self) -> str:
        return f"ShardCoordinator(worker_id={self.worker_id!r}, held={len(self._leases.held)})"

    @property
    def members(self) -> list[str]:
        """The live workers as of the last successful step (sorted)."""
        return list(self._members)

    @property
    def settling(self) -> bool:
        """True while new leases are not taken yet (see :data:`SETTLE_TICKS`)."""
        return time.monotonic() < self._settle_until

    def is_mine(self, device_id: str) -> bool:
        """Whether this worker holds ``device_id``'s lease (as of its last acquire or renew)."""
        return device_id in self._leases.held

    async def step(self) -> None:
        """One round of membership, lease renewal, hand-over and take-over.

        Raises what Redis or ``device_ids`` raise; :meth:`run` logs and retries.
        """
        async with self._lock:
            if self._closed:
                return
            if self._step_failed:
                # The last step failed (Redis out of reach): the other workers' heartbeats and
                # leases may have lapsed meanwhile, ours surviving by a moment, and they are no
                # less alive. Take nothing new for a whole lease TTL: a live worker renews (re-takes)
                # its lapsed leases within that by definition, so only a dead one's are left then.
                # Sooner, a busy peer's device could be taken and backfilled from a checkpoint its
                # owner could not write during the outage: its pushes from then would go out twice.
                wait = max(SETTLE_TICKS * self._tick, self._leases.ttl + self._tick)
                self._settle_until = max(self._settle_until, time.monotonic() + wait)
            self._step_failed = True  # until this step gets to its end
            # Renew first: a failing store (device_ids) must not let our leases lapse.
            await self._keepalive()
            # Lost leases, and any session open without a lease (e.g. the pool opened it itself).
            await self._drop_all(self._pool.owned() - self._leases.held)

            members = await self._membership.members()
            if self.worker_id not in members:
                # Our heartbeat was just written; a SCAN racing an expiry must not exclude us.
                members = sorted([*members, self.worker_id])
            all_ids = await self._device_ids()
            self._members = members
            wanted = self._wanted(all_ids, members)

            giving_up = (self._pool.owned() | self._leases.held) - wanted
            if giving_up:
                await self._drop_all(giving_up)
                # Release only what is really closed: a session whose close failed keeps its lease
                # (and is retried next tick) so no other worker opens a second one meanwhile.
                await self._leases.release(giving_up - self._pool.owned())
                log.info("handed over %d devices", len(giving_up), extra={"worker": self.worker_id})

            to_take = wanted - self._leases.held
            if to_take and not self.settling:
                await self._leases.acquire(to_take)
            # Newly taken, plus held ones whose adopt failed earlier or whose session the pool closed.
            await self._adopt_all((self._leases.held & wanted) - self._pool.owned())
            self._report()
            self._step_failed = False

    async def on_device_change(self, device_id: str) -> None:
        """A device appeared (or changed) in the change feed: adopt it now if this worker wins it.

        Call it for upserts only; a removed device is closed by the pool and its lease released
        by the next step (it is no longer in ``device_ids``).

        Uses the member list of the last successful step; before the first step it does nothing
        (the first step will). Raises what Redis raises.
        """
        async with self._lock:
            if self._closed or not self._members:
                return
            if rendezvous_owner(device_id, self._members) != self.worker_id:
                return
            if device_id not in self._leases.held:
                if self.settling:
                    return  # the first step after settling takes it
                await self._leases.acquire([device_id])
            if device_id in self._leases.held and device_id not in self._pool.owned():
                await self._adopt_all([device_id])
            self._report()

    async def run(self) -> None:
        """Call :meth:`step` every ``tick`` seconds until cancelled; failures are retried."""
        while not self._closed:
            started = time.monotonic()
            try:
                await self.step()
                _raise_if_cancelled()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.healthy is not False:
                    # Logged on the transition only, not on every failing tick.
                    log.warning(
                        "shard step failed, keeping current sessions: %s: %s",
                        type(exc).__name__,
                        exc,
                        extra={"worker": self.worker_id},
                    )
                self.healthy = False
            else:
                if self.healthy is False:
                    log.info("shard step recovered", extra={"worker": self.worker_id})
                self.healthy = True
                self.last_step_ok = time.monotonic()
            await asyncio.sleep(max(0.0, self._tick - (time.monotonic() - started)))
            _raise_if_cancelled()

    async def close(self) -> None:
        """Close every session, release every lease and leave the membership. Idempotent.

        Redis errors here are logged, not raised: the keys expire within their TTL anyway.
        """
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            await self._drop_all(self._pool.owned())
            try:
                await self._leases.release(set(self._leases.held))
                await self._membership.leave()
            except Exception as exc:
                log.warning(
                    "could not release leases on close (they expire on their own): %s: %s",
                    type(exc).__name__,
                    exc,
                    extra={"worker": self.worker_id},
                )
            self._report()

    async def _keepalive(self) -> None:
        """Heartbeat and renew the leases; note the leases lost to other workers."""
        if not await self._membership.heartbeat():
            # We were unseen (start, long outage, Redis restarted empty): the others may not
            # have re-announced themselves yet, and a partial member list would make us grab
            # their devices. Renew and hand over now, take new devices only once it settles.
            self._settle_until = time.monotonic() + SETTLE_TICKS * self._tick
        lost = await self._leases.renew()
        if lost:
            log.warning(
                "%d device leases were taken over by other workers",
                len(lost),
                extra={"worker": self.worker_id},
            )

    async def _kept_alive(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a long phase of a step, keeping the heartbeat and the leases alive every tick."""
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                await asyncio.wait([task], timeout=self._tick)
                if task.done():
                    break
                try:
                    await self._keepalive()
                except Exception as exc:  # the step's own Redis calls report an outage
                    log.debug("keepalive during a step failed: %s", type(exc).__name__)
        except BaseException:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise
        task.result()

    def _wanted(self, device_ids: Iterable[str], members: list[str]) -> set[str]:
        """The devices this worker wins; hashes are cached while the member list is unchanged."""
        previous = self._owners if members == self._owners_members else {}
        owners: dict[str, str | None] = {}
        for d in device_ids:
            owners[d] = previous[d] if d in previous else rendezvous_owner(d, members)
        self._owners, self._owners_members = owners, members
        return {d for d, owner in owners.items() if owner == self.worker_id}

    async def _adopt_all(self, device_ids: Iterable[str]) -> None:
        async def adopt(device_id: str) -> None:
            if device_id not in self._leases.held:
                return  # lost meanwhile (a renewal during this phase): not ours to open
            try:
                await self._pool.adopt(device_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Still held and wanted, so the next step tries again.
                log.exception(
                    "adopt failed", extra={"worker": self.worker_id, "device_id": device_id}
                )

        await self._in_parallel(adopt, device_ids)

    async def _drop_all(self, device_ids: Iterable[str]) -> None:
        async def drop(device_id: str) -> None:
            try:
                await self._pool.drop(device_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "drop failed", extra={"worker": self.worker_id, "device_id": device_id}
                )

        await self._in_parallel(drop, device_ids)

    async def _in_parallel(
        self, each: Callable[[str], Awaitable[None]], device_ids: Iterable[str]
    ) -> None:
        """``each`` for every id, :data:`PARALLEL` at a time, renewing our leases meanwhile."""
        ids = sorted(device_ids)
        if not ids:
            return

        async def run_all() -> None:
            for start in range(0, len(ids), PARALLEL):
                await asyncio.gather(*(each(d) for d in ids[start : start + PARALLEL]))

        await self._kept_alive(run_all())

    def _report(self) -> None:
        if self._metrics is not None:
            self._metrics.worker_devices.labels(worker=self.worker_id).set(len(self._pool.owned()))


def _raise_if_cancelled() -> None:
    """Stop if this task was asked to although no CancelledError came out of the awaits.

    A cancellation can be swallowed on the way (Python 3.11's ``wait_for``, used inside the
    libraries, returns the result instead when the awaited call completes at the same moment):
    the loop would then run on for ever and its owner wait on it at shutdown.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
