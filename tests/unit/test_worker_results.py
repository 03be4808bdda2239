"""bridge.worker.results: the providers' answers land on their event and release the checkpoint.

The sink is given the devices (a plain dict), a fake store and a callback recording status
changes; the runtimes are filled by hand as the fan-out would have left them.
"""

from __future__ import annotations

import asyncio

from bridge.models import Notification
from bridge.push.provider import Delivered, Failed, Retry, TokenInvalid
from bridge.worker.results import ResultSink, result_dict
from bridge.worker.state import DeviceRuntime
from tests.unit._worker_fakes import FakeStore, message, runtime


class Rig:
    def __init__(self) -> None:
        self.store = FakeStore()
        self.runtimes: dict[str, DeviceRuntime] = {}
        self.changed: list[str] = []
        self.sink = ResultSink(self.store, runtimes=self.runtimes, status_changed=self.changed.append)  # type: ignore[arg-type]

    def sent(self, push_ids: dict[str, int]) -> DeviceRuntime:
        """Device d1 after pushing a message per push id (id -> its version ms), each unanswered."""
        rt = runtime()
        self.runtimes["d1"] = rt
        for push_id, version_ms in push_ids.items():
            msg = message(f"m-{push_id}", at_ms=version_ms)
            ticket = rt.history.add(1.0, "chat message", msg.id, msg.room, pushed=True, reason="pushed")
            rt.history.add_push(ticket, push_id)
            rt.pending[push_id] = version_ms
            rt.note_message(msg)
        return rt


def note(push_id: str, push_type: str = "ios") -> Notification:
    return Notification(device_id="d1", push_type=push_type, token="d1-ios-token", push_id=push_id, kind="message")


async def test_delivered_moves_the_safe_checkpoint_and_empties_pending() -> None:
    rig = Rig()
    rt = rig.sent({"p1": 1_000, "p2": 2_000})
    assert rt.safe_checkpoint() == (999, "m-p2")

    await rig.sink.handle_result(note("p1"), Delivered("apns-1"))
    assert rt.pending == {"p2": 2_000}
    assert rt.safe_checkpoint() == (1_999, "m-p2")

    await rig.sink.handle_result(note("p2"), Failed("BadTopic"))  # final too: nothing to wait for
    assert rt.pending == {}
    assert rt.safe_checkpoint() == (2_000, "m-p2")
    events = rt.history.as_dicts()
    assert [[r["outcome"] for r in e["results"]] for e in events] == [["failed"], ["delivered"]]
    assert events[1]["results"][0]["id"] == "apns-1"
    assert rig.changed == ["d1", "d1"]


async def test_a_retry_keeps_the_checkpoint_held() -> None:
    rig = Rig()
    rt = rig.sent({"p1": 1_000})

    await rig.sink.handle_result(note("p1"), Retry("TooManyRequests"))

    assert rt.pending == {"p1": 1_000}
    assert rt.safe_checkpoint() == (999, "m-p1")
    assert rt.history.as_dicts()[0]["results"][0]["outcome"] == "retry"


async def test_the_last_answer_wakes_a_hand_over() -> None:
    rig = Rig()
    rt = rig.sent({"p1": 1_000, "p2": 2_000})
    rt.drained = asyncio.Event()

    await rig.sink.handle_result(note("p1"), Delivered())
    assert not rt.drained.is_set()
    await rig.sink.handle_result(note("p2"), Delivered())
    assert rt.drained.is_set()


async def test_an_answer_for_a_device_no_longer_here_is_dropped() -> None:
    rig = Rig()
    await rig.sink.handle_result(note("p1"), Delivered())
    assert rig.changed == []


async def test_a_dead_token_disables_its_registration() -> None:
    rig = Rig()
    await rig.sink.handle_token_invalid(note("p1"), TokenInvalid("Unregistered", since=5.0))
    assert rig.store.disabled == [("d1", "ios", "d1-ios-token", "Unregistered")]

    rig.store.down = True  # logged, not raised: the next answer about the token tries again
    await rig.sink.handle_token_invalid(note("p2"), TokenInvalid("Unregistered"))
    assert len(rig.store.disabled) == 1


def test_result_dict_shows_no_token_and_no_latency() -> None:
    shown = result_dict(note("p1"), Delivered("apns-1"))
    assert shown["type"] == "ios" and shown["outcome"] == "delivered" and shown["id"] == "apns-1"
    assert "latency" not in shown and "d1-ios-token" not in str(shown)
