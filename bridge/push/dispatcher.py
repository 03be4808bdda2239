"""The push dispatcher: per-provider bounded queues, one retry policy, at-most-once, push metrics.

Each provider gets a lane of its own: a bounded capacity, a ready queue and ``concurrency``
workers, so a stalled provider never delays another and a stalled device holds one worker of
its provider, not the lane. A notification waiting for a retry sits on a loop timer, not in a
worker. Every push id is claimed before it is queued, so a push is sent at most once.

A claim is kept when the provider gave a final answer (delivered, token invalid, failed) and
released when the bridge itself gave up on the push (shutdown, ``max_age``, retries exhausted, an
internal error): the push did not go out, and whoever re-creates it (the next owner of the device
after a hand-over or a restart, backfilling from its checkpoint) must be free to send it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge._backoff import Backoff
from bridge.metrics import Metrics
from bridge.models import Notification
from bridge.push.claims import Claims, MemoryClaims
from bridge.push.provider import (
    Delivered,
    Failed,
    Provider,
    Retry,
    SendResult,
    TokenInvalid,
    outcome_of,
)

log = logging.getLogger(__name__)

#: Called once with every final result: delivered, token invalid, failed, or a give-up as
#: ``Failed("max_age")`` / ``Failed("retries_exhausted")`` / ``Failed("no_provider")``.
ResultHandler = Callable[[Notification, SendResult], Awaitable[None]]
#: Called with the notification and the provider's answer when its token is dead.
TokenInvalidHandler = Callable[[Notification, TokenInvalid], Awaitable[None]]

#: How long a claimed push id stays claimed: longer than any path that may re-create the same
#: push (a hand-over, a backfill after a gap), so a late duplicate is still recognised.
DEFAULT_CLAIM_TTL = 86_400.0


#: Push ids sent unchecked (claims out of reach) that one process remembers.
UNCHECKED_MAX = 50_000

class DispatcherClosed(RuntimeError):
    """``submit`` or ``start`` was called after ``close`` began."""


@dataclass(eq=False, slots=True)
class _Item:
    """A notification inside the dispatcher (identity semantics: kept in sets)."""

    n: Notification
    timer: asyncio.TimerHandle | None = None


class _Lane:
    """One provider's capacity, ready queue, retry timers and workers."""

    def __init__(self, name: str, provider: Provider, queue_size: int) -> None:
        self.name = name
        self.provider = provider
        #: One unit per accepted, unfinished notification (queued, in flight or waiting to retry).
        self.capacity = asyncio.Semaphore(queue_size)
        self.ready: asyncio.Queue[_Item] = asyncio.Queue()
        self.waiting: set[_Item] = set()
        self.in_flight: set[_Item] = set()
        self.workers: list[asyncio.Task[None]] = []

    @property
    def depth(self) -> int:
        return self.ready.qsize() + len(self.waiting)


class Dispatcher:
    """Queues notifications per provider, sends them with retries, and reports every outcome.

    Arguments (all but ``providers`` keyword-only):

    - ``providers``: keyed by provider name (``"apns"``, ``"fcm"``: :attr:`Notification.provider`).
    - ``metrics``: where ``bridge_pushes_total``, ``bridge_push_latency_seconds``,
      ``bridge_push_queue_depth``, ``bridge_invalid_tokens_total`` and
      ``bridge_pushes_dropped_total`` are counted.
    - ``claims``: the at-most-once keys (default: an in-process :class:`MemoryClaims`).
    - ``queue_size``: per provider, how many notifications may be accepted and unfinished
      (queued, in flight or waiting to retry); past it ``submit`` waits for room.
    - ``concurrency``: per provider, how many sends may be in flight.
    - ``max_age``: seconds after :attr:`Notification.created_at` when a push is dropped instead
      of (re)tried (``BRIDGE_PUSH_MAX_AGE``).
    - ``max_attempts``: sends per notification before a ``Retry`` answer means giving up.
    - ``backoff``: delay before a retry (full jitter); a later ``Retry.not_before`` wins.
    - ``on_result``: every final result; ``on_token_invalid``: a provider said the token is dead
      (the owner disables the registration in the store).
    - ``clock``: wall clock (epoch seconds) for ``max_age`` and ``Retry.not_before``.
    - ``claim_ttl``: how long a push id stays claimed.
    - ``send_timeout``: seconds before a send that has not answered counts as ``Retry("timeout")``
      (None: rely on the provider's own timeouts).
    """

    def __init__(
        self,
        providers: Mapping[str, Provider],
        *,
        metrics: Metrics,
        claims: Claims | None = None,
        queue_size: int = 10_000,
        concurrency: int = 100,
        max_age: float = 3600.0,
        max_attempts: int = 8,
        backoff: Backoff | None = None,
        on_result: ResultHandler | None = None,
        on_token_invalid: TokenInvalidHandler | None = None,
        clock: Callable[[], float] = time.time,
        claim_ttl: float = DEFAULT_CLAIM_TTL,
        send_timeout: float | None = None,
    ) -> None:
        if queue_size < 1 or concurrency < 1 or max_attempts < 1:
            raise ValueError("queue_size, concurrency and max_attempts must be at least 1")
        if max_age <= 0 or claim_ttl <= 0:
            raise ValueError("max_age and claim_ttl must be positive")
        self._lanes = {name: _Lane(name, p, queue_size) for name, p in providers.items()}
        self._metrics = metrics
        self._claims: Claims = claims if claims is not None else MemoryClaims()
        # Push ids sent unchecked while the shared claims were out of reach: this process at
        # least never sends one of them twice (e.g. live during an outage, then again from a
        # backfill once the claims answer, where no key says it went out).
        self._unchecked = MemoryClaims(max_entries=UNCHECKED_MAX)
        self._concurrency = concurrency
        self._max_age = max_age
        self._max_attempts = max_attempts
        self._backoff = backoff if backoff is not None else Backoff()
        self._on_result = on_result
        self._on_token_invalid = on_token_invalid
        self._clock = clock
        self._claim_ttl = claim_ttl
        self._send_timeout = send_timeout
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = False
        self._closing = False
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start each provider's workers (idempotent)."""
        if self._closing:
            raise DispatcherClosed("the dispatcher is closed")
        if self._started:
            return
        self._started = True
        for lane in self._lanes.values():
            lane.workers = [
                asyncio.create_task(self._work(lane), name=f"push-{lane.name}-{i}")
                for i in range(self._concurrency)
            ]

    @property
    def depth(self) -> int:
        """Notifications queued or waiting for a retry, over all providers (not those in flight)."""
        return sum(lane.depth for lane in self._lanes.values())

    async def drain(self, timeout: float) -> bool:
        """Wait until every accepted notification is finished (True), or ``timeout`` passes (False)."""
        if self._outstanding == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, drain for up to ``timeout`` seconds, then cancel what is left.

        Answers that arrive during the drain are reported as usual (the owner must still be
        listening). What is left unfinished (queued, waiting for a retry, or a send still
        unanswered after the whole drain) is counted as dropped (``shutdown``), is not reported,
        and has its claim released, so whoever takes over the device may send it. Providers are
        not closed: they belong to whoever built them. Idempotent.
        """
        if self._closing:
            return
        self._closing = True
        if self._started and self._outstanding:
            await self.drain(timeout)
        left: list[tuple[_Lane, _Item]] = []
        workers: list[asyncio.Task[None]] = []
        for lane in self._lanes.values():
            # Taken before cancelling: no worker runs between here and the gather below.
            left.extend((lane, item) for item in lane.in_flight)
            while not lane.ready.empty():
                left.append((lane, lane.ready.get_nowait()))
            for item in lane.waiting:
                if item.timer is not None:
                    item.timer.cancel()
                left.append((lane, item))
            lane.waiting.clear()
            workers.extend(lane.workers)
            lane.workers = []
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for lane, item in left:
            self._metrics.pushes_dropped.labels(lane.name, "shutdown").inc()
            # Not delivered as far as we know: a claim kept here would make the next owner's
            # backfill treat the push as sent (for a day) and drop it.
            await self._release_claim(item.n)
            self._finish(lane)
        if left:
            log.warning("dispatcher closed with %d pushes unfinished", len(left))
        self._closed = True

    # ------------------------------------------------------------------ producers

    async def submit(self, n: Notification) -> bool:
        """Queue ``n``; False if its push id was already claimed (a duplicate, not queued).

        Waits while the provider's lane is full. A notification for a provider that is not
        configured is reported as ``Failed("no_provider")`` at once. Raises
        :class:`DispatcherClosed` once ``close`` has begun.
        """
        if self._closing:
            raise DispatcherClosed("the dispatcher is closed")
        lane = self._lanes.get(n.provider)
        if lane is None:
            self._metrics.pushes_dropped.labels(n.provider, "no_provider").inc()
            log.warning("no %s provider configured; push dropped", n.provider, extra=_ctx(n))
            await self._report(n, Failed("no_provider"))
            return True
        if not await self._claim(n):
            log.debug("duplicate push not queued", extra=_ctx(n))
            return False
        try:
            await lane.capacity.acquire()
        except BaseException:
            await self._release_claim(n)
            raise
        if self._closing:
            lane.capacity.release()
            await self._release_claim(n)
            raise DispatcherClosed("the dispatcher is closed")
        self._outstanding += 1
        self._idle.clear()
        lane.ready.put_nowait(_Item(n))
        self._update_depth()
        return True

    async def claims_reachable(self) -> bool:
        """Whether the claims can be checked now (never raises).

        A live push whose claim cannot be checked goes out unchecked: only its device's holder
        sees the event, and losing it would be worse. A backfill is different: it re-fetches what
        the device's previous owner may have pushed already, and only the claims tell; so it
        asks here first and waits (retries later) while they are out of reach.
        """
        try:
            return await self._claims.reachable()
        except Exception:
            return False

    async def send_now(self, n: Notification) -> SendResult:
        """Send ``n`` once, now, bypassing queue, claims and retries (the test push).

        The answer is counted, reported to ``on_result``, and a dead token is handled as usual.
        """
        lane = self._lanes.get(n.provider)
        if lane is None:
            result: SendResult = Failed("no_provider")
        else:
            result = await self._send_once(lane, n)
        await self._report(n, result)
        return result

    # ------------------------------------------------------------------ workers

    async def _work(self, lane: _Lane) -> None:
        while True:
            item = await lane.ready.get()
            self._update_depth()
            lane.in_flight.add(item)
            try:
                await self._attempt(lane, item)
            except Exception as exc:
                # A bug here must not kill the worker or leave the item unaccounted for.
                log.error(
                    "dispatcher error (%s); push dropped", type(exc).__name__, extra=_ctx(item.n)
                )
                await self._release_claim(item.n)
                self._finish(lane)
            finally:
                lane.in_flight.discard(item)

    async def _attempt(self, lane: _Lane, item: _Item) -> None:
        n = item.n
        if self._clock() - n.created_at > self._max_age:
            await self._give_up(lane, item, "max_age")
            return
        marking: asyncio.Task[bool] | None = None
        if n.attempt == 0 and self._claims.shared:
            # Mark the claim as being sent: a worker killed after the mark leaves the push to
            # nobody (it may have gone out), one killed before leaves it to the next owner. The
            # mark runs alongside the send, so both writes leave within about one loop step,
            # unless another worker may hold the claim by now: then the send waits for it.
            marking = asyncio.ensure_future(self._sending(n))
            if self._claims.confirm_before_send() and not await marking:
                # It took the claim over (it believed this one dead): it sends the push.
                self._metrics.pushes_dropped.labels(lane.name, "claimed_elsewhere").inc()
                log.info("push claimed by another worker meanwhile; not sent here", extra=_ctx(n))
                await self._report(n, Failed("claimed_elsewhere"))
                self._finish(lane)
                return
        result = await self._send_once(lane, n)
        if marking is not None and not await marking:
            log.warning("push sent while another worker held its claim (a duplicate)", extra=_ctx(n))
        if not isinstance(result, Retry):
            await self._report(n, result)
            self._finish(lane)
            return
        if n.attempt >= self._max_attempts:
            await self._give_up(lane, item, "retries_exhausted")
            return
        delay = self._backoff.delay(n.attempt - 1)
        if result.not_before is not None:
            delay = max(delay, result.not_before - self._clock())
        if self._clock() + delay - n.created_at > self._max_age:
            # It would be too old by the time of the retry: give up now rather than hold it.
            await self._give_up(lane, item, "max_age")
            return
        log.debug("push retry in %.3fs (%s)", delay, result.reason, extra=_ctx(n))
        item.timer = asyncio.get_running_loop().call_later(delay, self._requeue, lane, item)
        lane.waiting.add(item)
        self._update_depth()

    def _requeue(self, lane: _Lane, item: _Item) -> None:
        lane.waiting.discard(item)
        item.timer = None
        lane.ready.put_nowait(item)

    async def _send_once(self, lane: _Lane, n: Notification) -> SendResult:
        """One send, never raising (but for cancellation); counts it and handles a dead token."""
        n.attempt += 1
        try:
            if self._send_timeout is None:
                result = await lane.provider.send(n)
            else:
                # A timeout scope, not wait_for: no extra task, so the request is written in this
                # step, right after its claim was marked as sending.
                async with asyncio.timeout(self._send_timeout):
                    result = await lane.provider.send(n)
        except TimeoutError:
            result = Retry("timeout")
        except Exception as exc:
            # Only the type: a provider's message may quote the request, token included.
            log.warning("push provider raised %s", type(exc).__name__, extra=_ctx(n))
            result = Retry("exception")
        self._metrics.pushes.labels(lane.name, outcome_of(result)).inc()
        if isinstance(result, Delivered | TokenInvalid | Failed):
            latency = max(0.0, time.monotonic() - n.received_at)
            self._metrics.push_latency.labels(lane.name).observe(latency)
        if isinstance(result, TokenInvalid):
            await self._token_invalid(lane, n, result)
        return result

    async def _give_up(self, lane: _Lane, item: _Item, reason: str) -> None:
        self._metrics.pushes_dropped.labels(lane.name, reason).inc()
        log.info("push dropped (%s)", reason, extra=_ctx(item.n))
        await self._release_claim(item.n)  # not sent, or answered "retry": not delivered
        await self._report(item.n, Failed(reason))
        self._finish(lane)

    def _finish(self, lane: _Lane) -> None:
        lane.capacity.release()
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()
        self._update_depth()

    def _update_depth(self) -> None:
        self._metrics.push_queue_depth.set(self.depth)

    # ------------------------------------------------------------------ callbacks and claims

    async def _token_invalid(self, lane: _Lane, n: Notification, result: TokenInvalid) -> None:
        self._metrics.invalid_tokens.labels(lane.name, result.reason).inc()
        log.info("push token invalid (%s)", result.reason, extra=_ctx(n))
        if self._on_token_invalid is None:
            return
        try:
            await self._on_token_invalid(n, result)
        except Exception as exc:
            log.error("token-invalid handler raised %s", type(exc).__name__, extra=_ctx(n))

    async def _report(self, n: Notification, result: SendResult) -> None:
        if self._on_result is None:
            return
        try:
            await self._on_result(n, result)
        except Exception as exc:
            log.error("result handler raised %s", type(exc).__name__, extra=_ctx(n))

    async def _claim(self, n: Notification) -> bool:
        if self._unchecked.holds(n.push_id):
            return False  # this process sent it unchecked already
        try:
            return await self._claims.claim(n.push_id, self._claim_ttl)
        except Exception as exc:
            # Fail open: a rare duplicate is better than silently losing the user's push.
            log.warning(
                "push claim failed (%s); sending unchecked", type(exc).__name__, extra=_ctx(n)
            )
            return await self._unchecked.claim(n.push_id, self._claim_ttl)

    async def _sending(self, n: Notification) -> bool:
        try:
            return await self._claims.sending(n.push_id, self._claim_ttl)
        except Exception as exc:
            # Fail open, as for the claim itself.
            log.warning(
                "push claim not marked as sending (%s); sending anyway", type(exc).__name__, extra=_ctx(n)
            )
            return True

    async def _release_claim(self, n: Notification) -> None:
        await self._unchecked.release(n.push_id)
        try:
            await self._claims.release(n.push_id)
        except Exception as exc:
            log.warning("push claim not released (%s)", type(exc).__name__, extra=_ctx(n))


def _ctx(n: Notification) -> dict[str, Any]:
    """Log context of a notification (never its token)."""
    return {
        "device_id": n.device_id,
        "push_id": n.push_id,
        "provider": n.provider,
        "attempt": n.attempt,
    }
