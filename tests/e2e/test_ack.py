"""Delivery receipts (issue 14, part 3): every push carries ``pushId``; the app acknowledges it with
``POST /me/devices/{deviceId}/ack``; "why no push?" shows ``shown``; the metrics count acks and
the push → ack latency. Through the API against the simulators, embedded and api + worker."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from prometheus_client.parser import text_string_to_metric_families

from bridge.sim.stack import SimStack
from tests._poll import wait_for
from tests._redis import RedisServer, redis_server  # noqa: F401  # fixture
from tests.e2e._bridge import running_bridge
from tests.e2e._stack import ANDROID, IOS, Stack, stack, stack_options, stack_settings  # noqa: F401  # fixtures

PUSH_ID = re.compile(r"[0-9a-f]{32}")


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text ``text`` (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def ack(client: httpx.AsyncClient, device_id: str, push_id: Any) -> httpx.Response:
    return await client.post(f"/me/devices/{device_id}/ack", json={"pushId": push_id})


def pushes(event: dict[str, Any]) -> dict[str, Any]:
    """pushId → shown of one event."""
    return {p["pushId"]: p["shown"] for p in event["pushes"]}


async def test_pushes_carry_push_id_and_acks_show_and_count(stack: Stack) -> None:
    await stack.subscribe("iphone", "ios", IOS)
    await stack.subscribe("pixel", "android", ANDROID)
    await stack.wait_live("iphone", "pixel")
    await stack.imkit.send_message("r1", "bob", "Lunch at noon?")
    await wait_for(lambda: stack.delivered_apns() and stack.delivered_fcm(), 10, message="both delivered")

    apns_id = stack.delivered_apns()[0].payload["pushId"]  # top-level, next to ``aps``
    fcm_id = stack.delivered_fcm()[0].message["data"]["pushId"]
    assert PUSH_ID.fullmatch(apns_id) and PUSH_ID.fullmatch(fcm_id) and apns_id != fcm_id

    event = (await stack.wait_event("iphone", 1))[0]
    assert pushes(event) == {apns_id: None}
    assert [(r["pushId"], r["outcome"]) for r in event["results"]] == [(apns_id, "delivered")]
    sent_at = event["results"][0]["at"]

    r = await ack(stack.alice, "iphone", apns_id)
    assert r.status_code == 200, r.text
    acked = r.json()["result"]
    assert acked["deviceId"] == "iphone" and acked["pushId"] == apns_id and acked["ackedAt"] >= sent_at
    event = (await stack.device("iphone"))["events"][0]
    assert pushes(event) == {apns_id: acked["ackedAt"]}

    metrics = (await stack.alice.get("/metrics")).text
    assert metric(metrics, "bridge_push_acks_total", provider="apns") == 1
    assert metric(metrics, "bridge_push_ack_latency_seconds_count", provider="apns") == 1
    latency = metric(metrics, "bridge_push_ack_latency_seconds_sum", provider="apns")
    assert 0 <= latency <= acked["ackedAt"] - sent_at + 1e-6

    # Idempotent: the same answer, counted once.
    again = await ack(stack.alice, "iphone", apns_id)
    assert again.status_code == 200 and again.json()["result"] == acked
    metrics = (await stack.alice.get("/metrics")).text
    assert metric(metrics, "bridge_push_acks_total", provider="apns") == 1
    assert metric(metrics, "bridge_push_ack_latency_seconds_count", provider="apns") == 1

    # The FCM push, acked by its own device, counts for FCM.
    await stack.wait_event("pixel", 1)
    assert (await ack(stack.alice, "pixel", fcm_id)).status_code == 200
    metrics = (await stack.alice.get("/metrics")).text
    assert metric(metrics, "bridge_push_acks_total", provider="fcm") == 1
    assert metric(metrics, "bridge_push_ack_latency_seconds_count", provider="fcm") == 1
    assert pushes((await stack.device("pixel"))["events"][0])[fcm_id] is not None


async def test_unknown_foreign_and_malformed_push_ids(stack: Stack) -> None:
    await stack.subscribe("iphone", "ios", IOS)
    await stack.subscribe("pixel", "android", ANDROID)
    await stack.wait_live("iphone", "pixel")
    await stack.imkit.send_message("r1", "bob", "hi")
    await wait_for(lambda: stack.delivered_apns() and stack.delivered_fcm(), 10, message="both delivered")
    apns_id = stack.delivered_apns()[0].payload["pushId"]
    await stack.wait_event("iphone", 1)

    def code(r: httpx.Response) -> tuple[int, str]:
        return r.status_code, r.json()["error"]["code"]

    assert code(await ack(stack.alice, "iphone", "0" * 32)) == (404, "NOT_FOUND")  # never sent
    assert code(await ack(stack.alice, "pixel", apns_id)) == (404, "NOT_FOUND")  # sent to another device
    assert code(await ack(stack.alice, "no-such-device", apns_id)) == (404, "NOT_FOUND")
    async with stack.bridge.client(stack.imkit.issue_token("bob")) as bob:
        assert code(await ack(bob, "iphone", apns_id)) == (404, "NOT_FOUND")  # alice's device
    for bad in (apns_id.upper(), apns_id[:31], apns_id + "0", "g" * 32, 12, None):
        assert code(await ack(stack.alice, "iphone", bad)) == (400, "INVALID_PARAMETER"), bad
    r = await stack.alice.post("/me/devices/iphone/ack", json={})
    assert code(r) == (400, "MISSING_PARAMETER")
    # None of these was recorded or counted.
    assert pushes((await stack.device("iphone"))["events"][0]) == {apns_id: None}
    assert metric((await stack.alice.get("/metrics")).text, "bridge_push_acks_total", provider="apns") == 0
    assert await stack.bridge.bridge.store.get_acks("iphone") == {}


async def test_test_push_carries_a_push_id(stack: Stack) -> None:
    await stack.subscribe("iphone", "ios", IOS)
    await stack.subscribe("iphone", "fcm", ANDROID)
    r = await stack.alice.post("/me/devices/iphone/test-push")
    assert r.status_code == 200, r.text
    assert PUSH_ID.fullmatch(stack.delivered_apns()[-1].payload["pushId"])
    assert PUSH_ID.fullmatch(stack.delivered_fcm()[-1].message["data"]["pushId"])


@pytest.fixture
async def split(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[tuple[Stack, SimStack]]:  # noqa: F811
    """``push-bridge api`` and ``push-bridge worker`` (in this process) on one Redis."""
    sims = await SimStack.start(tmp_path)
    for cid in ("alice", "bob"):
        sims.imkit.create_user(cid, cid.title())
    sims.imkit.create_room("r1", ["alice", "bob"], name="Lunch")
    settings = stack_settings(
        sims, tmp_path, store=redis_server.url, secret_key=Fernet.generate_key().decode(), lease_ttl=2.0
    )
    try:
        async with (
            running_bridge(settings, role="worker"),
            running_bridge(settings, role="api") as api,
            api.client(sims.imkit.issue_token("alice")) as alice,
        ):
            yield Stack(sims.imkit, sims.apns, sims.fcm, api, alice), sims
    finally:
        await sims.stop()


async def test_ack_in_api_worker_mode(split: tuple[Stack, SimStack]) -> None:
    """The API reads the history the worker publishes (about once a second): an ack sent as soon
    as the push arrived waits for it instead of answering 404."""
    stack, _ = split
    await stack.subscribe("iphone", "ios", IOS)
    await stack.wait_live("iphone")
    await stack.imkit.send_message("r1", "bob", "hi")
    await wait_for(lambda: stack.delivered_apns(), 10, message="delivered")
    push_id = stack.delivered_apns()[0].payload["pushId"]

    r = await ack(stack.alice, "iphone", push_id)  # at once, as a notification service extension does
    assert r.status_code == 200, r.text
    metrics = (await stack.alice.get("/metrics")).text  # the API process counts the acks
    assert metric(metrics, "bridge_push_acks_total", provider="apns") == 1
    assert metric(metrics, "bridge_push_ack_latency_seconds_count", provider="apns") == 1
    event = (await stack.device("iphone"))["events"][0]
    assert pushes(event) == {push_id: r.json()["result"]["ackedAt"]}
    assert (await ack(stack.alice, "iphone", "0" * 32)).status_code == 404


def test_dashboard_shows_sent_vs_acknowledged() -> None:
    """The panels exist and query the metrics the bridge exports under those names."""
    import json

    from bridge.metrics import Metrics

    exported = {s.name for family in Metrics().registry.collect() for s in family.samples} | {
        family.name for family in Metrics().registry.collect()
    }
    dashboard = json.loads((Path(__file__).parents[2] / "deploy" / "grafana-dashboard.json").read_text())
    exprs = {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dashboard["panels"]}
    sent = " ".join(exprs["Pushes sent vs acknowledged"])
    assert 'bridge_pushes_total{job=~"$job", outcome="delivered"}' in sent and "bridge_push_acks_total" in sent
    assert any("bridge_push_ack_latency_seconds_bucket" in e for e in exprs["Push → ack latency"])
    assert {"bridge_push_acks", "bridge_push_ack_latency_seconds"} <= exported
