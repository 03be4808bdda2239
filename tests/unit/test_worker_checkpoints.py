"""bridge.worker.checkpoints: a device's safe checkpoint is written when it moved, and statuses
are published only where another process reads them.

Given the devices (a plain dict) and a fake store.
"""

from __future__ import annotations

from bridge.worker.checkpoints import BATCH, Checkpoints
from bridge.worker.state import DeviceRuntime
from tests.unit._worker_fakes import FakeStore, device, message, runtime


def devices(*ids: str) -> dict[str, DeviceRuntime]:
    return {d: runtime(device(d)) for d in ids}


async def test_a_checkpoint_is_written_once_per_move() -> None:
    store, runtimes = FakeStore(), devices("d1")
    cps = Checkpoints(store, runtimes=runtimes, publish_status=False)  # type: ignore[arg-type]
    rt = runtimes["d1"]

    await cps.flush()
    assert store.checkpoints == []  # nothing decided yet

    rt.note_message(message("m1", at_ms=1_000))
    rt.pending["p2"] = 2_000  # pushed, not answered: the checkpoint waits before it
    rt.note_message(message("m2", at_ms=2_000))
    await cps.flush()
    await cps.flush()
    assert store.checkpoints == [("d1", "m2", 1_999)]

    del rt.pending["p2"]
    assert await cps.save(rt)
    assert store.checkpoints[-1] == ("d1", "m2", 2_000)
    assert rt.saved_ms == 2_000


async def test_a_store_outage_keeps_the_checkpoint_for_the_next_flush() -> None:
    store, runtimes = FakeStore(), devices("d1", "d2")
    cps = Checkpoints(store, runtimes=runtimes, publish_status=False)  # type: ignore[arg-type]
    for rt in runtimes.values():
        rt.note_message(message("m1", at_ms=1_000))

    store.down = True
    assert not await cps.save(runtimes["d1"])
    await cps.flush()
    assert runtimes["d1"].saved_ms == 0

    store.down = False
    await cps.flush()
    assert sorted(store.checkpoints) == [("d1", "m1", 1_000), ("d2", "m1", 1_000)]


async def test_many_moved_checkpoints_go_in_batches() -> None:
    store, runtimes = FakeStore(), devices(*(f"d{i}" for i in range(BATCH * 2 + 1)))
    cps = Checkpoints(store, runtimes=runtimes, publish_status=False)  # type: ignore[arg-type]
    for rt in runtimes.values():
        rt.note_message(message("m1", at_ms=1_000))
    await cps.flush()
    assert store.checkpoint_batches == 3
    assert len(store.checkpoints) == len(runtimes)
    assert all(rt.saved_ms == 1_000 for rt in runtimes.values())
    await cps.flush()
    assert store.checkpoint_batches == 3  # nothing moved since


async def test_statuses_are_published_only_when_asked_and_retried_after_an_outage() -> None:
    store, runtimes = FakeStore(), devices("d1")
    local = Checkpoints(store, runtimes=runtimes, publish_status=False)  # type: ignore[arg-type]
    local.status_changed("d1")
    await local.flush()
    assert store.statuses == {}

    shared = Checkpoints(store, runtimes=runtimes, publish_status=True)  # type: ignore[arg-type]
    shared.status_changed("d1")
    shared.status_changed("gone")  # left the worker since: nothing to publish
    store.down = True
    await shared.flush()
    store.down = False
    await shared.flush()
    assert list(store.statuses) == ["d1"]
    assert store.statuses["d1"] == runtimes["d1"].status()
    assert store.statuses["d1"]["clientId"] == "alice"
    store.statuses.clear()
    await shared.flush()
    assert store.statuses == {}  # published once per change
