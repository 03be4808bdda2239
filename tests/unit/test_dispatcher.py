"""The dispatcher's own logic, with small in-test providers (the real ones are tested elsewhere)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from bridge._backoff import Backoff
from bridge.metrics import Metrics
from bridge.models import Notification
from bridge.push.claims import MemoryClaims
from bridge.push.dispatcher import Dispatcher, DispatcherClosed
from bridge.push.provider import Delivered, Failed, Provider, Retry, SendResult, TokenInvalid
from tests._poll import wait_for

TOKEN = "SECRET-PUSH-TOKEN-0123456789abcdef"
DELIVERED = Delivered("ok")

Step = SendResult | Exception | Callable[[Notification], SendResult]


@dataclass
class Call:
    push_id: str
    device_id: str
    attempt: int
    mono: float
    wall: float


class FakeProvider:
    """Answers from a script (then ``default``); sends matching ``hold`` wait for ``gate``."""

    def __init__(
        self,
        name: str = "apns",
        script: Iterable[Step] = (),
        default: Step = DELIVERED,
        hold: Callable[[Notification], bool] | None = None,
    ) -> None:
        self.name = name
        self.script = list(script)
        self.default = default
        self.hold = hold
        self.gate = asyncio.Event()
        self.calls: list[Call] = []
        self.held: list[str] = []

    async def send(self, notification: Notification) -> SendResult:
        n = notification
        self.calls.append(Call(n.push_id, n.device_id, n.attempt, time.monotonic(), time.time()))
        if self.hold is not None and self.hold(n):
            self.held.append(n.push_id)
            await self.gate.wait()
        step = self.script.pop(0) if self.script else self.default
        if isinstance(step, Exception):
            raise step
        if callable(step):
            return step(n)
        return step

    async def close(self) -> None:
        pass

    def attempts(self, push_id: str) -> int:
        return sum(1 for c in self.calls if c.push_id == push_id)


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Harness:
    """A dispatcher plus what its callbacks saw and its metric values."""

    def __init__(self, providers: dict[str, Provider], **kw: Any) -> None:
        self.metrics = Metrics()
        self.results: dict[str, SendResult] = {}
        self.result_count = 0
        self.invalid: list[tuple[str, str]] = []
        kw.setdefault("backoff", Backoff(0.01, 0.05, random.Random(7)))
        self.d = Dispatcher(
            providers,
            metrics=self.metrics,
            on_result=self._on_result,
            on_token_invalid=self._on_invalid,
            **kw,
        )

    async def _on_result(self, n: Notification, result: SendResult) -> None:
        self.results[n.push_id] = result
        self.result_count += 1

    async def _on_invalid(self, n: Notification, result: TokenInvalid) -> None:
        self.invalid.append((n.push_id, result.reason))

    def value(self, name: str, **labels: str) -> float:
        v = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(*providers: FakeProvider, **kw: Any) -> Harness:
        h = Harness({p.name: p for p in providers}, **kw)
        made.append(h)
        return h

    yield factory
    for h in made:
        await h.d.close(timeout=0)


def note(
    push_id: str = "p1", device_id: str = "d1", push_type: str = "ios", **kw: Any
) -> Notification:
    return Notification(
        device_id=device_id, push_type=push_type, token=TOKEN, push_id=push_id, kind="message", **kw
    )


async def settle(rounds: int = 50) -> None:
    """Let every ready task run a few times (to show something did *not* happen)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# ---------------------------------------------------------------------- outcomes


async def test_delivered(make: Callable[..., Harness]) -> None:
    apns = FakeProvider()
    h = make(apns)
    await h.d.start()
    assert await h.d.submit(note("p1", received_at=time.monotonic() - 0.5)) is True
    assert await h.d.drain(5)
    assert h.results == {"p1": Delivered("ok")}
    assert [c.attempt for c in apns.calls] == [1]
    assert h.value("bridge_pushes_total", provider="apns", outcome="delivered") == 1
    assert h.value("bridge_push_latency_seconds_count", provider="apns") == 1
    assert 0.5 <= h.value("bridge_push_latency_seconds_sum", provider="apns") < 5
    assert h.value("bridge_push_queue_depth") == 0
    assert h.d.depth == 0


async def test_retry_then_delivered(make: Callable[..., Harness]) -> None:
    apns = FakeProvider(script=[Retry("503"), RuntimeError("boom"), Delivered("x")])
    h = make(apns)
    await h.d.start()
    await h.d.submit(note("p1"))
    assert await h.d.drain(5)
    assert h.results == {"p1": Delivered("x")}
    assert h.result_count == 1  # only the final answer is reported
    assert [c.attempt for c in apns.calls] == [1, 2, 3]
    assert h.value("bridge_pushes_total", provider="apns", outcome="retry") == 2
    assert h.value("bridge_pushes_total", provider="apns", outcome="delivered") == 1
    assert h.value("bridge_push_latency_seconds_count", provider="apns") == 1


async def test_backoff_delays_follow_the_policy(make: Callable[..., Harness]) -> None:
    expected = Backoff(0.04, 0.2, random.Random(3))
    delays = [expected.delay(0), expected.delay(1)]
    apns = FakeProvider(script=[Retry("503"), Retry("503")])
    h = make(apns, backoff=Backoff(0.04, 0.2, random.Random(3)))
    await h.d.start()
    await h.d.submit(note("p1"))
    assert await h.d.drain(5)
    gaps = [b.mono - a.mono for a, b in zip(apns.calls, apns.calls[1:], strict=False)]
    assert len(gaps) == 2
    for gap, delay in zip(gaps, delays, strict=True):
        assert delay - 0.005 <= gap < delay + 1.0


async def test_retries_exhausted(make: Callable[..., Harness]) -> None:
    apns = FakeProvider(default=Retry("503"))
    h = make(apns, max_attempts=3)
    await h.d.start()
    await h.d.submit(note("p1"))
    assert await h.d.drain(5)
    assert h.results == {"p1": Failed("retries_exhausted")}
    assert apns.attempts("p1") == 3
    assert h.value("bridge_pushes_total", provider="apns", outcome="retry") == 3
    assert h.value("bridge_pushes_dropped_total", provider="apns", reason="retries_exhausted") == 1
    assert h.value("bridge_push_latency_seconds_count", provider="apns") == 0


async def test_a_push_given_up_after_retries_releases_its_claim(
    make: Callable[..., Harness],
) -> None:
    claims = MemoryClaims()
    apns = FakeProvider(default=Retry("503"))
    h = make(apns, max_attempts=2, claims=claims)
    await h.d.start()
    await h.d.submit(note("p1"))
    assert await h.d.drain(5)
    assert h.results == {"p1": Failed("retries_exhausted")}
    # Never delivered: a later try of the same push (a backfill elsewhere) must not be refused.
    assert await claims.claim("p1", ttl=10)


async def test_final_answers_keep_their_claims(make: Callable[..., Harness]) -> None:
    claims = MemoryClaims()
    apns = FakeProvider(script=[DELIVERED, TokenInvalid("Unregistered"), Failed("PayloadTooLarge")])
    h = make(apns, concurrency=1, claims=claims)
    await h.d.start()
    for push_id in ("ok", "dead", "bad"):
        await h.d.submit(note(push_id))
    assert await h.d.drain(5)
    assert [type(h.results[p]) for p in ("ok", "dead", "bad")] == [Delivered, TokenInvalid, Failed]
    for push_id in ("ok", "dead", "bad"):
        assert not await claims.claim(push_id, ttl=10)


async def test_retry_after_is_honoured(make: Callable[..., Harness]) -> None:
    not_before: list[float] = []

    def throttled(n: Notification) -> SendResult:
        not_before.append(time.time() + 0.25)
        return Retry("TooManyRequests", not_before=not_before[-1])

    apns = FakeProvider(script=[throttled])
    h = make(apns)  # backoff alone would retry within 0.01 s
    await h.d.start()
    await h.d.submit(note("p1"))
    await wait_for(lambda: h.d.depth == 1)  # waiting for its retry
    assert await h.d.drain(5)
    assert h.results == {"p1": Delivered("ok")}
    first, second = apns.calls
    assert second.wall >= not_before[0] - 0.005
    assert second.mono - first.mono >= 0.24


async def test_backoff_wins_when_later_than_retry_after(make: Callable[..., Harness]) -> None:
    apns = FakeProvider(script=[Retry("503", not_before=time.time() - 10)])
    h = make(apns, backoff=Backoff(0.15, 0.15, random.Random(1)))
    expected = Backoff(0.15, 0.15, random.Random(1)).delay(0)
    await h.d.start()
    await h.d.submit(note("p1"))
    assert await h.d.drain(5)
    first, second = apns.calls
    assert second.mono - first.mono >= expected - 0.005


async def test_provider_timeout_counts_as_retry(make: Callable[..., Harness]) -> None:
    apns = FakeProvider(hold=lambda n: n.attempt == 1)
    h = make(apns, send_timeout=0.05)
    await h.d.start()
    await h.d.submit(note("p1"))
    assert await h.d.drain(5)
    assert h.results == {"p1": Delivered("ok")}
    assert [c.attempt for c in apns.calls] == [1, 2]
    assert h.value("bridge_pushes_total", provider="apns", outcome="retry") == 1


# ---------------------------------------------------------------------- max age


async def test_max_age_drops_before_any_send_and_releases_claim(
    make: Callable[..., Harness],
) -> None:
    clock = FakeClock()
    apns = FakeProvider()
    h = make(apns, clock=clock, max_age=3600)
    await h.d.start()
    await h.d.submit(note("old", created_at=clock.t - 3601))
    assert await h.d.drain(5)
    assert h.results == {"old": Failed("max_age")}
    assert apns.calls == []
    assert h.value("bridge_pushes_dropped_total", provider="apns", reason="max_age") == 1
    # Never sent, so its claim was given back: a fresh try of the same push may go out.
    assert await h.d.submit(note("old", created_at=clock.t))
    assert await h.d.drain(5)
    assert h.results == {"old": Delivered("ok")}


async def test_max_age_checked_before_every_attempt(make: Callable[..., Harness]) -> None:
    clock = FakeClock()
    apns = FakeProvider(hold=lambda n: n.push_id == "p1")
    h = make(apns, clock=clock, max_age=3600, concurrency=1)
    await h.d.start()
    await h.d.submit(note("p1", created_at=clock.t))
    await wait_for(lambda: apns.held == ["p1"])
    await h.d.submit(note("p2", created_at=clock.t))  # queued behind p1
    clock.t += 3601
    apns.gate.set()
    assert await h.d.drain(5)
    assert h.results == {"p1": Delivered("ok"), "p2": Failed("max_age")}
    assert apns.attempts("p2") == 0


async def test_max_age_reached_while_retrying(make: Callable[..., Harness]) -> None:
    clock = FakeClock()

    def slow_retry(n: Notification) -> SendResult:
        clock.t += 2000
        return Retry("503")

    apns = FakeProvider(default=slow_retry)
    h = make(apns, clock=clock, max_age=3600)
    await h.d.start()
    await h.d.submit(note("p1", created_at=clock.t))
    assert await h.d.drain(5)
    assert h.results == {"p1": Failed("max_age")}
    assert apns.attempts("p1") == 2
    assert h.value("bridge_pushes_dropped_total", provider="apns", reason="max_age") == 1


async def test_retry_after_past_max_age_gives_up_at_once(make: Callable[..., Harness]) -> None:
    clock = FakeClock()
    apns = FakeProvider(script=[Retry("429", not_before=clock.t + 7200)])
    h = make(apns, clock=clock, max_age=3600)
    await h.d.start()
    await h.d.submit(note("p1", created_at=clock.t))
    assert await h.d.drain(5)  # not held for two hours
    assert h.results == {"p1": Failed("max_age")}
    assert apns.attempts("p1") == 1


# ---------------------------------------------------------------------- tokens, dedupe, providers


async def test_token_invalid_callback_and_metric(make: Callable[..., Harness]) -> None:
    apns = FakeProvider(default=TokenInvalid("Unregistered"))
    h = make(apns)
    await h.d.start()
    await h.d.submit(note("p1"))
    assert await h.d.drain(5)
    assert h.invalid == [("p1", "Unregistered")]
    assert h.results == {"p1": TokenInvalid("Unregistered")}
    assert apns.attempts("p1") == 1  # never retried
    assert h.value("bridge_invalid_tokens_total", provider="apns", reason="Unregistered") == 1
    assert h.value("bridge_pushes_total", provider="apns", outcome="token_invalid") == 1


async def test_duplicate_push_id_is_sent_once(make: Callable[..., Harness]) -> None:
    apns = FakeProvider()
    h = make(apns)
    await h.d.start()
    assert await h.d.submit(note("p1")) is True
    assert await h.d.submit(note("p1")) is False  # while the first is pending
    assert await h.d.drain(5)
    assert await h.d.submit(note("p1")) is False  # and after it was delivered
    assert await h.d.drain(5)
    assert apns.attempts("p1") == 1
    assert h.result_count == 1


async def test_shared_claims_dedupe_across_dispatchers(make: Callable[..., Harness]) -> None:
    claims = MemoryClaims()
    a, b = FakeProvider(), FakeProvider()
    ha, hb = make(a, claims=claims), make(b, claims=claims)
    await ha.d.start()
    await hb.d.start()
    assert await ha.d.submit(note("p1"))
    assert not await hb.d.submit(note("p1"))  # the other worker of a hand-over
    assert await ha.d.drain(5) and await hb.d.drain(5)
    assert len(a.calls) + len(b.calls) == 1


class FlakyClaims(MemoryClaims):
    """Shared claims whose store can be switched off (then every call raises, as Redis does)."""

    shared = True

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def claim(self, push_id: str, ttl: float) -> bool:
        if self.down:
            raise ConnectionError("claims store down")
        return await super().claim(push_id, ttl)

    async def sending(self, push_id: str, ttl: float) -> bool:
        if self.down:
            raise ConnectionError("claims store down")
        return True


async def test_a_push_sent_unchecked_is_not_sent_again_by_this_process(make: Callable[..., Harness]) -> None:
    """Claims out of reach: the push goes out (fail open), but never twice from here, neither
    during the outage nor after it, when the shared store holds no key for it."""
    claims = FlakyClaims()
    apns = FakeProvider()
    h = make(apns, claims=claims)
    await h.d.start()
    claims.down = True
    assert await h.d.submit(note("p1")) is True
    assert await h.d.drain(5)
    assert await h.d.submit(note("p1")) is False  # e.g. a backfill during the outage
    claims.down = False
    assert await h.d.submit(note("p1")) is False  # ... or after it
    assert await h.d.submit(note("p2")) is True  # others are claimed as usual
    assert await h.d.drain(5)
    assert apns.attempts("p1") == 1 and apns.attempts("p2") == 1


async def test_missing_provider_fails_at_once(make: Callable[..., Harness]) -> None:
    h = make(FakeProvider("apns"))
    await h.d.start()
    assert await h.d.submit(note("f1", push_type="android"))
    assert h.results == {"f1": Failed("no_provider")}
    assert h.value("bridge_pushes_dropped_total", provider="fcm", reason="no_provider") == 1
    assert await h.d.send_now(note("f2", push_type="fcm")) == Failed("no_provider")


async def test_callback_errors_do_not_stop_the_workers(make: Callable[..., Harness]) -> None:
    apns = FakeProvider(script=[TokenInvalid("BadDeviceToken")])
    seen: list[str] = []

    async def bad_result(n: Notification, result: SendResult) -> None:
        seen.append(n.push_id)
        raise RuntimeError("handler bug")

    async def bad_invalid(n: Notification, result: TokenInvalid) -> None:
        raise RuntimeError("store down")

    metrics = Metrics()
    d = Dispatcher(
        {"apns": apns},
        metrics=metrics,
        concurrency=1,
        on_result=bad_result,
        on_token_invalid=bad_invalid,
    )
    await d.start()
    try:
        for i in range(3):
            await d.submit(note(f"p{i}"))
        assert await d.drain(5)
        assert seen == ["p0", "p1", "p2"]
    finally:
        await d.close(timeout=0)


# ---------------------------------------------------------------------- bounds and isolation


async def test_full_queue_blocks_the_producer_until_space(make: Callable[..., Harness]) -> None:
    apns = FakeProvider(hold=lambda n: True)
    h = make(apns, queue_size=2, concurrency=1)
    await h.d.start()
    await h.d.submit(note("p1"))
    await wait_for(lambda: apns.held == ["p1"])
    await h.d.submit(note("p2"))  # p1 in flight + p2 queued: the lane is full
    blocked = asyncio.create_task(h.d.submit(note("p3")))
    await settle()
    assert not blocked.done()
    assert h.d.depth == 1
    assert h.value("bridge_push_queue_depth") == 1
    apns.gate.set()
    assert await asyncio.wait_for(blocked, 5) is True
    assert await h.d.drain(5)
    assert set(h.results) == {"p1", "p2", "p3"}


async def test_cancelled_blocked_producer_releases_its_claim(make: Callable[..., Harness]) -> None:
    claims = MemoryClaims()
    apns = FakeProvider(hold=lambda n: True)
    h = make(apns, queue_size=1, concurrency=1, claims=claims)
    await h.d.start()
    await h.d.submit(note("p1"))
    blocked = asyncio.create_task(h.d.submit(note("p2")))
    await settle()
    assert not blocked.done()
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert await claims.claim("p2", ttl=10)  # it was given back


async def test_stalled_provider_does_not_delay_another(make: Callable[..., Harness]) -> None:
    apns = FakeProvider("apns", hold=lambda n: True)
    fcm = FakeProvider("fcm")
    h = make(apns, fcm, queue_size=1, concurrency=1)
    await h.d.start()
    await h.d.submit(note("a1"))
    await wait_for(lambda: apns.held == ["a1"])
    blocked = asyncio.create_task(h.d.submit(note("a2")))  # APNs lane is full
    assert await asyncio.wait_for(h.d.submit(note("f1", push_type="android")), 1)
    await wait_for(lambda: "f1" in h.results)
    assert h.results["f1"] == Delivered("ok")
    assert "a1" not in h.results and not blocked.done()
    apns.gate.set()
    assert await asyncio.wait_for(blocked, 5)
    assert await h.d.drain(5)


async def test_stalled_device_does_not_delay_other_devices(make: Callable[..., Harness]) -> None:
    apns = FakeProvider(hold=lambda n: n.device_id == "stuck")
    h = make(apns, concurrency=4)
    await h.d.start()
    await h.d.submit(note("s1", device_id="stuck"))
    await wait_for(lambda: apns.held == ["s1"])
    for i in range(10):
        await h.d.submit(note(f"p{i}", device_id=f"d{i}"))
    await wait_for(lambda: len(h.results) == 10)
    assert "s1" not in h.results
    apns.gate.set()
    assert await h.d.drain(5)


async def test_retry_wait_does_not_hold_a_worker(make: Callable[..., Harness]) -> None:
    apns = FakeProvider(script=[Retry("503", not_before=time.time() + 30)])
    h = make(apns, concurrency=1)
    await h.d.start()
    await h.d.submit(note("p1"))
    await wait_for(lambda: h.d.depth == 1 and apns.attempts("p1") == 1)
    await h.d.submit(note("p2"))
    await wait_for(lambda: "p2" in h.results)
    assert apns.attempts("p1") == 1 and "p1" not in h.results
    assert h.value("bridge_push_queue_depth") == 1


# ---------------------------------------------------------------------- drain and close


async def test_drain_reports_timeout_and_success(make: Callable[..., Harness]) -> None:
    apns = FakeProvider(hold=lambda n: True)
    h = make(apns)
    assert await h.d.drain(0)  # nothing accepted yet
    await h.d.start()
    await h.d.submit(note("p1"))
    assert await h.d.drain(0.05) is False
    apns.gate.set()
    assert await h.d.drain(5) is True


async def test_close_drains_first_and_refuses_new_work(make: Callable[..., Harness]) -> None:
    apns = FakeProvider(hold=lambda n: n.push_id == "p1")
    h = make(apns, concurrency=1)
    await h.d.start()
    for i in range(1, 4):
        await h.d.submit(note(f"p{i}"))
    await wait_for(lambda: apns.held == ["p1"])
    closing = asyncio.create_task(h.d.close(timeout=5))
    await settle()
    assert not closing.done()
    with pytest.raises(DispatcherClosed):
        await h.d.submit(note("late"))
    apns.gate.set()
    await asyncio.wait_for(closing, 5)
    assert set(h.results) == {"p1", "p2", "p3"}
    assert h.value("bridge_pushes_dropped_total", provider="apns", reason="shutdown") == 0
    await h.d.close()  # idempotent
    with pytest.raises(DispatcherClosed):
        await h.d.start()


async def test_close_cancels_the_rest_and_releases_their_claims(
    make: Callable[..., Harness],
) -> None:
    claims = MemoryClaims()
    apns = FakeProvider(
        script=[Retry("503", not_before=time.time() + 30)],
        hold=lambda n: n.push_id == "held",
    )
    h = make(apns, concurrency=1, claims=claims)
    await h.d.start()
    await h.d.submit(note("retrying"))
    await wait_for(lambda: h.d.depth == 1 and apns.attempts("retrying") == 1)
    await h.d.submit(note("held"))
    await wait_for(lambda: apns.held == ["held"])
    await h.d.submit(note("queued"))
    assert h.d.depth == 2
    await asyncio.wait_for(h.d.close(timeout=0.05), 5)
    assert h.results == {}  # not final: handed back, not reported
    assert h.value("bridge_pushes_dropped_total", provider="apns", reason="shutdown") == 3
    assert h.d.depth == 0 and h.value("bridge_push_queue_depth") == 0
    # Not delivered as far as anyone knows: whoever takes the device over may send them. A
    # claim kept for "retrying" would make the next owner's backfill drop that push for a day.
    assert await claims.claim("queued", ttl=10)
    assert await claims.claim("retrying", ttl=10)
    assert await claims.claim("held", ttl=10)  # unanswered after the whole drain


async def test_close_wakes_blocked_producers(make: Callable[..., Harness]) -> None:
    claims = MemoryClaims()
    apns = FakeProvider(hold=lambda n: True)
    h = make(apns, queue_size=1, concurrency=1, claims=claims)
    await h.d.start()
    await h.d.submit(note("p1"))
    blocked = asyncio.create_task(h.d.submit(note("p2")))
    await settle()
    await asyncio.wait_for(h.d.close(timeout=0.05), 5)
    with pytest.raises(DispatcherClosed):
        await asyncio.wait_for(blocked, 5)
    assert await claims.claim("p2", ttl=10)


# ---------------------------------------------------------------------- send_now


async def test_send_now_bypasses_queue_and_claims(make: Callable[..., Harness]) -> None:
    apns = FakeProvider(script=[Delivered("a"), RuntimeError("x"), TokenInvalid("BadDeviceToken")])
    h = make(apns, concurrency=1)  # not started: no workers, send_now still sends
    assert await h.d.send_now(note("t1")) == Delivered("a")
    assert await h.d.send_now(note("t1")) == Retry("exception")  # same id, sent again
    assert await h.d.send_now(note("t2")) == TokenInvalid("BadDeviceToken")
    assert len(apns.calls) == 3
    assert h.invalid == [("t2", "BadDeviceToken")]
    assert h.results["t2"] == TokenInvalid("BadDeviceToken")
    assert h.value("bridge_pushes_total", provider="apns", outcome="delivered") == 1
    assert h.value("bridge_pushes_total", provider="apns", outcome="retry") == 1
    assert h.value("bridge_invalid_tokens_total", provider="apns", reason="BadDeviceToken") == 1
    assert h.d.depth == 0


# ---------------------------------------------------------------------- secrets


async def test_tokens_never_reach_the_logs(
    make: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge.push.dispatcher")
    apns = FakeProvider(
        script=[
            RuntimeError(f"400 for /3/device/{TOKEN}"),
            Retry("503"),
            TokenInvalid("Unregistered"),
        ]
    )
    clock = FakeClock()
    h = make(apns, max_attempts=5, clock=clock)
    await h.d.start()
    await h.d.submit(note("p1", created_at=clock.t))
    await h.d.submit(note("old", created_at=clock.t - 7200))
    await h.d.submit(note("f1", push_type="fcm"))
    assert await h.d.drain(5)
    assert h.results["p1"] == TokenInvalid("Unregistered")
    assert caplog.records
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert TOKEN not in repr(record.__dict__)
