"""The small queue and event the upstream Engine.IO client uses (bridge.upstream.transport)."""

from __future__ import annotations

import asyncio

import pytest

from bridge.upstream.transport import SendQueue, SmallEvent


async def test_first_in_first_out_and_empty() -> None:
    q = SendQueue()
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()
    for item in ("a", None, "b"):
        await q.put(item)
    assert q.qsize() == 3 and not q.empty()
    assert [q.get_nowait(), await q.get(), q.get_nowait()] == ["a", None, "b"]
    assert q.empty()


async def test_get_waits_for_a_put() -> None:
    q = SendQueue()
    getter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not getter.done()  # nothing to take yet
    q.put_nowait("ping")
    assert await asyncio.wait_for(getter, 5) == "ping"
    assert q.empty()


async def test_a_cancelled_get_loses_nothing() -> None:
    q = SendQueue()
    getter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    # The put wakes the getter, which is cancelled before it runs: the item stays queued.
    q.put_nowait("pong")
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    assert q.get_nowait() == "pong"
    # And a getter cancelled while waiting leaves no waiter behind: the next one still wakes.
    stale = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    stale.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stale
    fresh = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.put_nowait("message")
    assert await asyncio.wait_for(fresh, 5) == "message"


async def test_waiter_is_done_once_an_item_is_queued() -> None:
    """What the write loop awaits instead of get(): a bare future, reused while pending."""
    q = SendQueue()
    fut = q.waiter()
    assert not fut.done() and q.waiter() is fut  # one pending future, however often asked
    q.put_nowait("pong")
    assert fut.done()
    assert q.waiter().done()  # an item is queued: done at once
    assert q.get_nowait() == "pong"
    fresh = q.waiter()
    assert fresh is not fut and not fresh.done()
    fresh.cancel()  # a write loop cancelled while waiting: the next wait gets a new future
    again = q.waiter()
    assert again is not fresh and not again.done()
    q.put_nowait("message")
    await asyncio.wait_for(again, 5)


async def test_small_event_wakes_every_waiter_and_clears() -> None:
    event = SmallEvent()
    assert not event.is_set()
    waiters = [asyncio.ensure_future(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    event.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 5) == [True, True, True]
    assert event.is_set() and await event.wait()  # set: returns at once
    event.clear()
    late = asyncio.ensure_future(event.wait())
    await asyncio.sleep(0)
    assert not late.done()
    late.cancel()  # a cancelled waiter is removed; a later set() does not trip over it
    with pytest.raises(asyncio.CancelledError):
        await late
    event.set()
    assert event.is_set()
