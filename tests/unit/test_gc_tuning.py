"""bridge.gc_tuning: the collector is tuned only when asked, and the heap frozen in large steps."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Iterator

import pytest

from bridge import gc_tuning
from bridge.config import Settings
from bridge.gc_tuning import HeapFreezer
from bridge.metrics import GcPauses
from tests._poll import wait_for


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()
    gc_tuning._freezer = None


def test_off_leaves_the_collector_alone() -> None:
    before = gc.get_threshold()
    assert gc_tuning.configure(Settings(gc_freeze=False)) is None
    assert gc.get_threshold() == before
    assert gc_tuning.freezer() is None


def test_on_raises_the_thresholds() -> None:
    freezer = gc_tuning.configure(Settings(gc_freeze=True))
    assert freezer is not None and gc_tuning.freezer() is freezer
    assert gc.get_threshold() == gc_tuning.THRESHOLDS


def test_allocation_bursts_collect_the_middle_generation_every_other_time() -> None:
    # While sessions connect by the hundred nearly every object survives a young collection; a
    # middle generation left to fill over ten of them took 20-146 ms to walk at 10,000 sessions.
    gc_tuning.configure(Settings(gc_freeze=True))
    before = [g["collections"] for g in gc.get_stats()]
    survivors = [[i] for i in range(12 * gc_tuning.THRESHOLDS[0])]
    after = [g["collections"] for g in gc.get_stats()]
    young, middle = after[0] - before[0], after[1] - before[1]
    assert middle >= 4
    assert young <= middle + 1
    assert len(survivors) == 12 * gc_tuning.THRESHOLDS[0]


def test_freezes_after_start_up_then_only_after_large_growth() -> None:
    f = HeapFreezer(min_growth=1_000, ratio=0.25)
    f.freeze(2_000, "pool started")
    assert f.freezes == 1 and gc.get_freeze_count() > 0
    assert not f.maybe_freeze(2_999)  # +999: below the minimum step
    assert f.maybe_freeze(8_000)
    assert not f.maybe_freeze(9_999)  # 25% of 8,000 is 2,000: more than the minimum step
    assert f.maybe_freeze(10_000)
    assert not f.maybe_freeze(100)  # devices leaving: nothing to do
    assert f.freezes == 3 and f.frozen_at == 10_000


def test_freezes_again_after_as_many_sessions_reconnected() -> None:
    # IMKIT dropped every session and they came back: the count is where it was, but each new
    # connection is a new set of objects the full collections would walk.
    f = HeapFreezer(min_growth=1_000, ratio=0.25)
    f.freeze(8_000, "pool started", arrivals=8_000)
    assert not f.maybe_freeze(8_000, arrivals=9_999)  # 25% of 8,000 is 2,000
    assert f.maybe_freeze(8_000, arrivals=10_000)
    assert f.frozen_at == 8_000 and f.arrivals_at == 10_000
    assert not f.maybe_freeze(8_000, arrivals=11_000)
    assert f.maybe_freeze(10_000, arrivals=11_000)  # growth: the arrivals' mark moves too
    assert not f.maybe_freeze(10_000, arrivals=13_000)  # 25% of 10,000 is 2,500
    assert f.freezes == 3 and f.arrivals_at == 11_000


async def test_watch_collects_the_young_generations_on_a_clock_and_freezes_on_growth() -> None:
    f = HeapFreezer(min_growth=10, ratio=0.25)
    f.freeze(10, "pool started")
    sessions = 10
    before = [g["collections"] for g in gc.get_stats()]
    task = asyncio.create_task(f.watch(lambda: sessions, interval=0.05, young_every=0.01))
    try:
        sessions = 100
        await wait_for(lambda: f.young_collections >= 3 and f.freezes >= 2)
        assert f.frozen_at == 100
        ticks = f.young_collections
        after = [g["collections"] for g in gc.get_stats()]
        # Every tick collected generations 0 and 1 together (counted in generation 1's figure):
        # the middle generation never holds more than one tick's survivors.
        assert after[1] - before[1] >= ticks
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_watch_freezes_after_reconnects_at_a_steady_count() -> None:
    f = HeapFreezer(min_growth=10, ratio=0.25)
    f.freeze(100, "pool started", arrivals=100)
    went_live = 100
    task = asyncio.create_task(
        f.watch(lambda: 100, interval=0.02, young_every=0.01, arrivals=lambda: went_live)
    )
    try:
        await wait_for(lambda: f.young_collections >= 4)
        assert f.freezes == 1  # nothing reconnected: no freeze
        went_live = 130
        await wait_for(lambda: f.freezes == 2)
        assert f.frozen_at == 100 and f.arrivals_at == 130
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_gc_pauses_keeps_the_longest_and_logs_a_long_one_with_what_started_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    pauses = GcPauses(clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="bridge.metrics")
    # No real collection in between: the process-wide GcPauses other tests registered would
    # log its own long pauses, and the counts logged must be the ones read here.
    gc.disable()
    try:
        pauses("start", {"generation": 0})
        now[0] += 0.005
        pauses("stop", {"generation": 0, "collected": 3})
        assert pauses.longest == pytest.approx(0.005)
        assert not [r for r in caplog.records if r.msg == "long gc pause"]

        counts = gc.get_count()
        pauses("start", {"generation": 1})
        now[0] += 0.030
        pauses("stop", {"generation": 1, "collected": 0})
    finally:
        gc.enable()
    assert pauses.longest == pytest.approx(0.030)
    (record,) = [r for r in caplog.records if r.msg == "long gc pause"]
    assert record.__dict__["generation"] == 1 and record.__dict__["pause_ms"] == 30.0
    # The collector's counts at its start tell an allocation-triggered collection from the clock's.
    assert record.__dict__["counts"][1:] == list(counts[1:])
