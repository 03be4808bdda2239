"""The process-wide idle watch: which sockets a sweep ends, and when its task runs."""

from __future__ import annotations

import asyncio

import pytest

from bridge.upstream.idle import IdleWatch
from tests._poll import wait_for


class FakeSocket:
    """A watched socket with a settable deadline; records how often it was ended."""

    def __init__(self, deadline: float | None, fail: bool = False) -> None:
        self.deadline = deadline
        self.fail = fail
        self.expired = 0

    def idle_deadline(self) -> float | None:
        return self.deadline

    def expire(self) -> None:
        self.expired += 1
        if self.fail:
            raise RuntimeError("broken socket")


async def test_sweep_ends_only_sockets_past_their_deadline() -> None:
    watch = IdleWatch(interval=3600)  # the sweeps here are called by hand
    silent, fresh, not_reading = FakeSocket(10.0), FakeSocket(30.0), FakeSocket(None)
    for sock in (silent, fresh, not_reading):
        watch.watch(sock)
    assert watch.sweep(20.0) == 1
    assert (silent.expired, fresh.expired, not_reading.expired) == (1, 0, 0)
    assert len(watch) == 2  # an ended socket is no longer watched: it is not ended twice
    assert watch.sweep(20.0) == 0
    assert watch.sweep(31.0) == 1 and fresh.expired == 1
    assert watch.expired == 2
    await watch.close()


async def test_a_socket_that_fails_to_end_does_not_stop_the_sweep(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = IdleWatch(interval=3600)
    broken, other = FakeSocket(1.0, fail=True), FakeSocket(1.0)
    watch.watch(broken)
    watch.watch(other)
    assert watch.sweep(2.0) == 2
    assert other.expired == 1
    assert "ending a silent upstream socket failed" in caplog.text
    await watch.close()


async def test_forgotten_sockets_are_not_swept() -> None:
    watch = IdleWatch(interval=3600)
    sock = FakeSocket(1.0)
    watch.watch(sock)
    watch.forget(sock)
    watch.forget(sock)  # twice is harmless (a read loop ends once, but close may race it)
    assert watch.sweep(2.0) == 0 and sock.expired == 0
    await watch.close()


async def test_the_sweep_task_runs_on_the_loop_clock_and_stops_with_the_last_socket() -> None:
    loop = asyncio.get_running_loop()
    watch = IdleWatch(interval=0.01)
    sock = FakeSocket(loop.time() + 0.05)
    watch.watch(sock)
    task = watch._task
    assert task is not None
    await wait_for(lambda: sock.expired == 1, 2.0, message="the sweep ended the silent socket")
    assert len(watch) == 0
    await asyncio.wait_for(task, 2.0)  # nothing left to watch: the task ends by itself
    # A new socket starts a new sweep task.
    later = FakeSocket(loop.time() + 0.05)
    watch.watch(later)
    await wait_for(lambda: later.expired == 1, 2.0, message="a second sweep task")
    await watch.close()


async def test_close_stops_the_sweep_while_sockets_remain() -> None:
    watch = IdleWatch(interval=0.01)
    sock = FakeSocket(None)
    watch.watch(sock)
    task = watch._task
    assert task is not None and not task.done()
    await watch.close()
    assert task.done()
    await watch.close()  # idempotent
