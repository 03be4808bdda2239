"""The checkpoint a device hands on: exact at a hand-over, and never past a gap not backfilled.

Found while chasing the lost push of issue 11:

- after a gap (a reconnect, or a hand-over to another worker) a backfill that failed once (IMKIT
  timing out under load) was skipped for good, and the live events that followed moved the
  checkpoint past the gap, so neither this worker nor the device's next owner pushed what it held;
- a hand-over saved the checkpoint before the last pushes were answered, so the next owner's
  backfill fetched them again and only the Redis claims kept them from going out twice: during a
  Redis outage they went out twice.
"""

from __future__ import annotations

import json

from bridge.upstream.protocol import Message
from tests._poll import wait_for
from tests.e2e._stack import IOS, Stack, stack, stack_options  # noqa: F401 - fixtures used by name


def pushed_ids(stack: Stack) -> list[str]:
    return [json.loads(r.payload["payload"])["_id"] for r in stack.delivered_apns() if "payload" in r.payload]


async def test_failed_backfill_is_retried_and_holds_the_checkpoint(stack: Stack) -> None:
    im = stack.imkit
    bridge = stack.bridge.bridge
    pool = bridge.pool
    assert pool is not None
    await stack.subscribe("iphone", "ios", IOS)
    await stack.wait_live("iphone")
    before = await im.send_message("r1", "bob", "before the gap")
    await wait_for(lambda: pushed_ids(stack) == [before["_id"]], 10, message="first push")

    # A gap, and IMKIT's REST API failing when the session comes back: the backfill cannot run.
    im.rest_fail_paths["/rooms"] = 503
    im.refuse_connections(0.5)
    await im.drop_all_sockets()
    await wait_for(lambda: im.live_sockets("alice") == 0, 5, message="socket dropped")
    requests = im.rest_requests_total
    missed = await im.send_message("r1", "bob", "sent during the gap")
    # Back: IMKIT counts the new socket once auth2 succeeded (the bridge may still think the old
    # one is live for a moment), and the backfill that follows is refused.
    await wait_for(lambda: im.live_sockets("alice") == 1, 10, message="reconnected")
    await wait_for(lambda: im.rest_requests_total > requests, 10, message="a backfill attempt refused")

    # Live traffic goes on meanwhile; its checkpoint must not pass the message still owed.
    after = await im.send_message("r1", "bob", "after the gap")
    await wait_for(lambda: after["_id"] in pushed_ids(stack), 10, message="live push after the gap")
    await pool.flush_checkpoints()
    stored = await bridge.store.get_device("iphone")
    assert stored is not None and stored.checkpoint_ms is not None
    # The invariant: the checkpoint never passes a message not pushed yet. (In one CI run of 40 the
    # gap's message had already been pushed here, by a backfill that got past the refused path;
    # not explained yet, see the note on issue 11.)
    if missed["_id"] not in pushed_ids(stack):
        assert stored.checkpoint_ms < Message.model_validate(missed).version_ms

    # IMKIT recovers: the retry pushes the gap, once, and the checkpoint moves on.
    del im.rest_fail_paths["/rooms"]
    await wait_for(lambda: missed["_id"] in pushed_ids(stack), 15, message="the gap backfilled")
    assert sorted(pushed_ids(stack)) == sorted([before["_id"], missed["_id"], after["_id"]])

    async def checkpoint_moved() -> bool:
        await pool.flush_checkpoints()
        device = await bridge.store.get_device("iphone")
        return device is not None and (device.checkpoint_ms or 0) >= Message.model_validate(after).version_ms

    await wait_for(checkpoint_moved, 10, interval=0.1, message="checkpoint past the backfilled gap")


async def test_hand_over_waits_for_the_answers_so_the_checkpoint_is_exact(stack: Stack) -> None:
    im = stack.imkit
    bridge = stack.bridge.bridge
    pool = bridge.pool
    assert pool is not None
    await stack.subscribe("iphone", "ios", IOS)
    await stack.wait_live("iphone")
    stack.apns.script(IOS, stall=0.5, times=1)  # Apple is slow to answer this one
    msg = await im.send_message("r1", "bob", "in flight at the hand-over")
    await wait_for(lambda: len(stack.apns.received) == 1, 10, message="the push reached APNs")

    await pool.drop("iphone")  # the shard coordinator hands the device to another worker

    stored = await bridge.store.get_device("iphone")
    assert stored is not None
    # Past the push sent here: the next owner's backfill starts after it, claims or no claims.
    assert stored.checkpoint_ms == Message.model_validate(msg).version_ms
    assert pushed_ids(stack) == [msg["_id"]]
