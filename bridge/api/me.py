"""The app API: ``/me/subscribe``, ``/me/unsubscribe``, ``/me/state``, ``/me/devices/...``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Security

from bridge import compose
from bridge.api.auth import CLIENT_TOKEN, PLATFORM_KEY, Caller
from bridge.api.deps import ApiContext, context
from bridge.api.errors import ApiError, error_responses, ok
from bridge.api.presenters import device_view
from bridge.api.schemas import (
    CLIENT_ID,
    DEVICE_ID,
    EXAMPLE_DEVICE_ID,
    AckBody,
    StateBody,
    SubscribeBody,
    UnsubscribeBody,
)
from bridge.decide import route
from bridge.models import AppState, Device, Notification, Registration, provider_for
from bridge.worker.fanout import fan_out
from bridge.worker.history import SentPush, sent_push
from bridge.worker.results import result_dict

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/me",
    tags=["app"],
    dependencies=[Security(CLIENT_TOKEN), Security(PLATFORM_KEY)],
    responses=error_responses(400, 401, 403, 429, 503),
)

Ctx = Annotated[ApiContext, Depends(context)]
DeviceIdPath = Annotated[
    str,
    Path(min_length=1, max_length=128, pattern=DEVICE_ID, examples=[EXAMPLE_DEVICE_ID], description="the app's device id"),
]
ClientIdQuery = Annotated[
    str | None,
    Query(min_length=1, max_length=128, pattern=CLIENT_ID, examples=["alice"], description="with IM-API-KEY only: the user"),
]


def _not_found() -> ApiError:
    # The same answer whether the device does not exist or belongs to someone else.
    return ApiError(404, "NOT_FOUND", "no such device")


async def _owned_device(ctx: ApiContext, caller: Caller, device_id: str) -> Device:
    device = await ctx.bridge.store.get_device(device_id)
    if device is None or device.client_id != caller.client_id:
        raise _not_found()
    return device


def _foreground_until(ctx: ApiContext, state: str | None, ttl: int | None) -> float | None:
    if state != "foreground":
        return None
    return time.time() + (ttl or ctx.bridge.settings.foreground_ttl)


def _same_phone(device: Device, push_token: str) -> bool:
    """True if ``push_token`` is one of the device's registered push tokens."""
    given = push_token.encode()
    return any(hmac.compare_digest(r.token.encode(), given) for r in device.registrations.values())


async def _release_push_token(ctx: ApiContext, client_id: str, push_token: str, keep: str) -> None:
    """Remove ``push_token`` from other users' devices: the phone it reaches changed hands.

    A device left without registrations is deleted, like after its last unsubscribe.
    """
    store = ctx.bridge.store
    for device_id, push_type in await store.find_push_token(push_token):
        if device_id == keep:
            continue
        device = await store.get_device(device_id)
        if device is None or device.client_id == client_id:
            continue
        reg = device.registrations.get(push_type)
        if reg is None or not hmac.compare_digest(reg.token.encode(), push_token.encode()):
            continue
        del device.registrations[push_type]
        if device.registrations:
            device.updated_at = time.time()
            await store.put_device(device)
        else:
            await store.delete_device(device_id)
        await ctx.bridge.device_changed(device_id)
        log.info("push token moved to another user; removed here", extra={"device_id": device_id, "push_type": push_type})


def _content_key(text: str | None) -> bytes | None:
    """The 32-byte ``contentKey`` from standard or URL-safe base64; 400 if it is anything else."""
    if text is None:
        return None
    try:
        key = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != 32:
        raise ApiError(400, "INVALID_PARAMETER", "contentKey must be 32 bytes, base64-encoded")
    return key


@router.post("/subscribe", summary="Register or update a device's push token", responses=error_responses(413))
async def subscribe(body: SubscribeBody, request: Request, ctx: Ctx) -> dict[str, Any]:
    """Idempotent on ``type`` + ``deviceId``. Verifies the client token with IMKIT first."""
    caller = await ctx.auth.caller(request, body.clientId)
    if caller.token is None:
        raise ApiError(400, "MISSING_PARAMETER", "IM-Authorization (the user's client token) is required to subscribe")
    if body.apnsEnvironment is not None and provider_for(body.type) != "apns":
        raise ApiError(400, "INVALID_PARAMETER", "apnsEnvironment applies to ios and ios-voip registrations only")
    content_key = _content_key(body.contentKey)
    store = ctx.bridge.store
    now = time.time()
    device = await store.get_device(body.deviceId)
    if device is not None and device.client_id != caller.client_id:
        # A deviceId is not a secret: only the same phone (one of its push tokens) may take the
        # device over, e.g. the app signed in as another user. It then starts afresh as theirs.
        if not _same_phone(device, body.token):
            raise ApiError(
                403,
                "FORBIDDEN",
                "this deviceId is registered by another user; only the same push token can move it",
            )
        log.info("device changed hands", extra={"device_id": body.deviceId})
        device = None
    if device is None:
        count = await store.count_client_devices(caller.client_id)
        limit = ctx.bridge.settings.max_devices_per_user
        if count >= limit:
            raise ApiError(403, "FORBIDDEN", f"device limit reached ({limit} per user); unsubscribe one first")
        device = Device(device_id=body.deviceId, client_id=caller.client_id, client_token=caller.token, created_at=now)
    elif device.client_token != caller.token:
        device.client_token = caller.token
        device.token_version += 1
    previous = device.registrations.get(body.type)
    reg = Registration(type=body.type, token=body.token, updated_at=now)
    if previous is not None:
        # Omitted optional fields keep what the app said before (a token refresh resends little).
        reg.apns_environment = previous.apns_environment if previous.token == body.token else None
        reg.content, reg.content_key = previous.content, previous.content_key
    if body.apnsEnvironment is not None:
        reg.apns_environment = body.apnsEnvironment
    if body.content is not None:
        reg.content = body.content
    if content_key is not None:
        reg.content_key = content_key  # a new key replaces the old one: key rotation
    effective = reg.content or ctx.bridge.settings.push_content
    if effective == "encrypted" and reg.content_key is None:
        raise ApiError(400, "MISSING_PARAMETER", "content=encrypted needs contentKey (32 bytes, base64)")
    device.registrations[body.type] = reg
    if body.locale is not None:
        device.locale = body.locale
    if body.state is not None:
        device.state = AppState(body.state)
        device.foreground_until = _foreground_until(ctx, body.state, body.ttl)
    device.updated_at = now
    await store.put_device(device)
    await _release_push_token(ctx, caller.client_id, body.token, keep=device.device_id)
    await ctx.bridge.device_changed(device.device_id)
    log.info("device subscribed", extra={"device_id": device.device_id, "push_type": body.type})
    return ok(device_view(device, await ctx.bridge.device_status(device.device_id, device.client_id)))


@router.post("/unsubscribe", summary="Remove a device's push token", responses=error_responses(413))
async def unsubscribe(body: UnsubscribeBody, request: Request, ctx: Ctx) -> dict[str, Any]:
    """Removes the ``type`` registration; the device (and its session) goes with its last one."""
    caller = await ctx.auth.caller(request, body.clientId)
    store = ctx.bridge.store
    device = await store.get_device(body.deviceId)
    if device is None or device.client_id != caller.client_id or body.type not in device.registrations:
        return ok({"n": 0, "ok": 1})
    del device.registrations[body.type]
    if device.registrations:
        device.updated_at = time.time()
        await store.put_device(device)
    else:
        await store.delete_device(device.device_id)
    await ctx.bridge.device_changed(device.device_id)
    log.info("device unsubscribed", extra={"device_id": device.device_id, "push_type": body.type})
    return ok({"n": 1, "ok": 1})


@router.post(
    "/state",
    summary="Tell the bridge the app went to the foreground or background",
    responses=error_responses(404, 413),
)
async def set_state(body: StateBody, request: Request, ctx: Ctx) -> dict[str, Any]:
    """A foreground state expires after ``ttl`` seconds unless renewed."""
    caller = await ctx.auth.caller(request, body.clientId)
    device = await _owned_device(ctx, caller, body.deviceId)
    until = _foreground_until(ctx, body.state, body.ttl)
    if caller.token is not None and caller.token != device.client_token:
        # A newer token IMKIT just verified (the app refreshed it): the session re-authenticates
        # with it, as after a subscribe, instead of failing later with the old one.
        device.client_token = caller.token
        device.token_version += 1
        device.state = AppState(body.state)
        device.foreground_until = until
        device.updated_at = time.time()
        await ctx.bridge.store.put_device(device)
    elif not await ctx.bridge.store.set_app_state(body.deviceId, AppState(body.state), until):
        raise _not_found()
    await ctx.bridge.device_changed(body.deviceId)
    return ok({"deviceId": body.deviceId, "state": body.state, "foregroundUntil": until})


@router.get(
    "/devices/{deviceId}", summary="The device as the bridge sees it (why no push?)", responses=error_responses(404)
)
async def get_device(deviceId: DeviceIdPath, request: Request, ctx: Ctx, clientId: ClientIdQuery = None) -> dict[str, Any]:
    """State, session state, the last 50 events with the decision for each, last provider answer."""
    caller = await ctx.auth.caller(request, clientId)
    device = await _owned_device(ctx, caller, deviceId)
    return ok(device_view(device, await ctx.bridge.device_status(deviceId, device.client_id)))


@router.post("/devices/{deviceId}/test-push", summary="Send a test notification now", responses=error_responses(404))
async def test_push(deviceId: DeviceIdPath, request: Request, ctx: Ctx, clientId: ClientIdQuery = None) -> dict[str, Any]:
    """Sends one test notification to each active alert registration; the providers' answers.

    Disabled registrations (a provider refused the token) and ``ios-voip`` (iOS kills an app
    that gets a VoIP push without reporting a call) are skipped and listed in ``skipped``; with
    none left ``results`` is empty.
    """
    caller = await ctx.auth.caller(request, clientId)
    device = await _owned_device(ctx, caller, deviceId)
    now = time.time()
    # route() leaves out ios-voip (see above); what it keeps may still be disabled.
    routed = route("test", None, device.registrations)
    skipped = [
        {"type": reg.type, "reason": "disabled" if reg.type in routed else "voip"}
        for reg in device.registrations.values()
        if reg.type not in routed or not reg.active
    ]

    def compose_for(target: compose.Target) -> compose.Request:
        return compose.compose_test(target, now=now)

    pushes = list(
        fan_out(
            ctx.bridge.settings, device, "test", f"{now:.6f}", compose_for,
            received_at=time.monotonic(),
        )
    )  # fmt: skip
    sent = [n for n in pushes if isinstance(n, Notification)]
    answers = iter(await asyncio.gather(*(ctx.bridge.dispatcher.send_now(n) for n in sent)))
    out = [result_dict(n, next(answers)) if isinstance(n, Notification) else n.as_dict() for n in pushes]
    return ok({"deviceId": deviceId, "results": out, "skipped": skipped})


#: In api/worker mode the API reads the history a worker publishes about once a second, so an ack
#: sent as soon as the push arrived may come before it: a push id not found (or not answered yet)
#: is looked up again for this long before the answer is 404.
ACK_LOOKUP_WAIT = 2.5
ACK_LOOKUP_INTERVAL = 0.2


def _published_only(ctx: ApiContext, device_id: str) -> bool:
    """Whether this process knows the device's history only as a worker published it."""
    pool = ctx.bridge.pool
    if pool is not None and pool.session_state(device_id) is not None:
        return False  # this process serves the device: its history is live
    return pool is None or ctx.bridge.coordinator is not None


async def _sent_push(ctx: ApiContext, device: Device, push_id: str) -> SentPush | None:
    """The push ``push_id`` among the device's last events (None: this device was not sent it)."""
    deadline = time.monotonic() + ACK_LOOKUP_WAIT
    while True:
        status = await ctx.bridge.device_status(device.device_id, device.client_id)
        sent = sent_push((status or {}).get("events", []), push_id)
        if (sent is not None and sent.at is not None) or not _published_only(ctx, device.device_id):
            return sent
        if time.monotonic() >= deadline:
            return sent
        await asyncio.sleep(ACK_LOOKUP_INTERVAL)


@router.post(
    "/devices/{deviceId}/ack",
    summary="Confirm a push reached the phone (from the notification service extension)",
    responses=error_responses(404, 413),
)
async def ack_push(deviceId: DeviceIdPath, body: AckBody, request: Request, ctx: Ctx) -> dict[str, Any]:
    """``pushId`` is the id the push carried; it must be one of the device's last 50 events'
    pushes (else 404, as for another user's device). Acking twice answers the first time."""
    caller = await ctx.auth.caller(request, body.clientId)
    device = await _owned_device(ctx, caller, deviceId)
    store = ctx.bridge.store
    acked_at = (await store.get_acks(deviceId)).get(body.pushId)
    if acked_at is None:
        sent = await _sent_push(ctx, device, body.pushId)
        if sent is None:
            raise ApiError(404, "NOT_FOUND", "no such push for this device")
        now = time.time()
        if await store.record_ack(deviceId, body.pushId, now):
            acked_at = now
            provider = sent.provider or "unknown"
            ctx.bridge.metrics.push_acks.labels(provider).inc()
            if sent.at is not None:
                ctx.bridge.metrics.push_ack_latency.labels(provider).observe(max(0.0, now - sent.at))
        else:  # a concurrent ack of the same push recorded it first
            acked_at = (await store.get_acks(deviceId)).get(body.pushId, now)
    return ok({"deviceId": deviceId, "pushId": body.pushId, "ackedAt": acked_at})
