"""Shared fixtures of the end-to-end tests: the whole embedded bridge against the simulators."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.config import Settings
from bridge.sim.apns import ApnsSim
from bridge.sim.fcm import FcmSim
from bridge.sim.imkit import ImkitSim
from bridge.sim.stack import SimStack
from tests._poll import wait_for
from tests.e2e._bridge import RunningBridge, running_bridge

IOS = "a1" * 32
ANDROID = "fcm-token-android-1"


@dataclass
class Stack:
    imkit: ImkitSim
    apns: ApnsSim
    fcm: FcmSim
    bridge: RunningBridge
    alice: httpx.AsyncClient

    def delivered_apns(self, token: str = IOS) -> list[Any]:
        return [r for r in self.apns.received if r.token == token and r.status == 200]

    def delivered_fcm(self, token: str = ANDROID) -> list[Any]:
        return [r for r in self.fcm.received if r.token == token and r.status == 200]

    async def device(self, device_id: str) -> dict[str, Any]:
        r = await self.alice.get(f"/me/devices/{device_id}")
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()["result"]
        return result

    async def subscribe(self, device_id: str, type_: str, token: str, **kw: Any) -> None:
        r = await self.alice.post("/me/subscribe", json={"type": type_, "token": token, "deviceId": device_id, **kw})
        assert r.status_code == 200, r.text

    async def wait_live(self, *device_ids: str) -> None:
        async def live() -> bool:
            states = [(await self.device(d))["session"] for d in device_ids]
            return all(s == "live" for s in states)

        await wait_for(live, 15, interval=0.05, message=f"{device_ids} live")

    async def wait_event(self, device_id: str, n: int, *, settled: bool = True) -> list[dict[str, Any]]:
        """Wait until the device has decided ``n`` events and every pushed one has a provider answer."""
        events: list[dict[str, Any]] = []

        async def ready() -> bool:
            nonlocal events
            events = (await self.device(device_id))["events"]
            if len(events) < n:
                return False
            return not settled or all(e["results"] for e in events if e["decision"] == "pushed")

        await wait_for(ready, 10, interval=0.02, message=f"{n} events on {device_id}")
        return events


def stack_settings(sims: SimStack, tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(
        store=f"sqlite:///{tmp_path / 'bridge.db'}",
        backoff_base=0.05,
        backoff_cap=0.5,
        mute_refresh_interval=0.3,
        push_timeout=3,
        rate_limit_per_minute=100_000,  # the tests poll GET /me/devices; limits are tested in test_api
        **sims.settings(),
    )
    base.update(kw)
    return Settings(_env_file=None, **base)  # type: ignore[call-arg]


@pytest.fixture
def stack_options() -> dict[str, Any]:
    """Extra settings for the ``stack`` fixture (override in a test module)."""
    return {}


@pytest.fixture
async def stack(tmp_path: Path, stack_options: dict[str, Any]) -> AsyncIterator[Stack]:
    sims = await SimStack.start(tmp_path)
    imkit, apns, fcm = sims.imkit, sims.apns, sims.fcm
    for cid in ("alice", "bob", "carol"):
        imkit.create_user(cid, cid.title())
    imkit.create_room("r1", ["alice", "bob"], name="Lunch")
    imkit.create_room("r2", ["alice", "bob"], name="Random")
    settings = stack_settings(sims, tmp_path, **stack_options)
    try:
        async with running_bridge(settings) as b, b.client(imkit.issue_token("alice")) as alice:
            yield Stack(imkit, apns, fcm, b, alice)
    finally:
        await sims.stop()


