"""Operators' probes: ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.api.deps import ApiContext, context

router = APIRouter(tags=["ops"])
Ctx = Annotated[ApiContext, Depends(context)]


@router.get("/healthz", summary="The process is alive (no dependency is checked)")
async def healthz() -> dict[str, Any]:
    return {"RC": 0, "RM": "OK", "result": {"status": "alive"}}


@router.get(
    "/readyz",
    summary="Store reachable, worker loop running, providers configured",
    responses={503: {"description": "Not ready, with the reasons"}},
)
async def readyz(ctx: Ctx) -> JSONResponse:
    reasons = await ctx.bridge.readiness()
    if reasons:
        return JSONResponse(
            {"RC": 503, "RM": "not ready", "error": {"code": "NOT_READY", "message": "; ".join(reasons)}, "result": {"ready": False, "reasons": reasons}},
            status_code=503,
        )
    return JSONResponse({"RC": 0, "RM": "OK", "result": {"ready": True, "reasons": []}})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(ctx: Ctx) -> Response:
    ctx.bridge.metrics.push_queue_depth.set(ctx.bridge.dispatcher.depth)
    return Response(generate_latest(ctx.bridge.metrics.registry), media_type=CONTENT_TYPE_LATEST)
