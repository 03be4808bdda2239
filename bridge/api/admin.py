"""The operators' API under ``/admin`` (bearer ``BRIDGE_ADMIN_TOKEN``)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Security

from bridge.api.auth import ADMIN_BEARER
from bridge.api.deps import ApiContext, context
from bridge.api.errors import ApiError, error_responses, ok
from bridge.api.presenters import device_view
from bridge.api.schemas import EXAMPLE_DEVICE_ID
from bridge.store.paging import walk_devices

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Security(ADMIN_BEARER)],
    # 404 also when the admin API is off (no BRIDGE_ADMIN_TOKEN).
    responses=error_responses(401, 404, 503),
)
DeviceIdPath = Annotated[str, Path(examples=[EXAMPLE_DEVICE_ID])]


async def _admin(request: Request, ctx: Annotated[ApiContext, Depends(context)]) -> ApiContext:
    ctx.auth.require_admin_bearer(request)
    return ctx


Admin = Annotated[ApiContext, Depends(_admin)]


@router.get("/status", summary="Devices, sessions, pushes, queue and workers at a glance")
async def status(ctx: Admin) -> dict[str, Any]:
    bridge = ctx.bridge
    platforms: Counter[str] = Counter()
    states: Counter[str] = Counter()
    now = time.time()
    async for devices in walk_devices(bridge.store):
        for d in devices:
            states[d.effective_state(now).value] += 1
            for r in d.active_registrations:
                platforms[r.type] += 1
    pushes: dict[str, dict[str, float]] = {}
    for metric in bridge.metrics.pushes.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                prov = sample.labels["provider"]
                pushes.setdefault(prov, {})[sample.labels["outcome"]] = sample.value
    pool = bridge.pool
    return ok(
        {
            "devices": {"byPlatform": dict(platforms), "byState": dict(states), "total": sum(states.values())},
            "sessions": pool.session_counts() if pool else {},
            "pushes": pushes,
            "queueDepth": bridge.dispatcher.depth,
            "workers": [{"id": bridge.worker_id, "devices": pool.device_count}] if pool else [],
        }
    )


@router.get("/devices", summary="List devices, filtered and paged", responses=error_responses(400))
async def list_devices(
    ctx: Admin,
    clientId: Annotated[str | None, Query(max_length=128, examples=["alice"])] = None,
    session: Annotated[
        str | None, Query(examples=["live"], description="only devices whose session is in this state")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, examples=[100])] = 100,
    cursor: Annotated[
        str | None, Query(max_length=256, examples=[EXAMPLE_DEVICE_ID], description="nextCursor of the previous page")
    ] = None,
) -> dict[str, Any]:
    bridge = ctx.bridge
    devices, next_cursor = await bridge.store.list_devices(client_id=clientId, limit=limit, cursor=cursor)
    out = []
    for d in devices:
        view = device_view(d, await bridge.device_status(d.device_id, d.client_id))
        view.pop("events", None)
        if session is None or view["session"] == session:
            out.append(view)
    return ok({"data": out, "nextCursor": next_cursor})


@router.get("/devices/{deviceId}", summary="One device, with its recent decisions")
async def get_device(deviceId: DeviceIdPath, ctx: Admin) -> dict[str, Any]:
    bridge = ctx.bridge
    device = await bridge.store.get_device(deviceId)
    if device is None:
        raise ApiError(404, "NOT_FOUND", "no such device")
    return ok(device_view(device, await bridge.device_status(deviceId, device.client_id)))


@router.delete("/devices/{deviceId}", summary="Remove a device and close its session")
async def delete_device(deviceId: DeviceIdPath, ctx: Admin) -> dict[str, Any]:
    if not await ctx.bridge.store.delete_device(deviceId):
        raise ApiError(404, "NOT_FOUND", "no such device")
    await ctx.bridge.device_changed(deviceId)
    return ok({"n": 1, "ok": 1})
