"""Catching a device up after a gap: fetch what it missed, plan, push the plan like live events.

:mod:`bridge.worker.backfill` fetches and plans; this runs both for one device and hands the plan
to :class:`~bridge.worker.fanout.Fanout`. The pool decides when (after every (re)connect) and
retries while this answers False.
"""

from __future__ import annotations

import asyncio
import logging
import time

from bridge.config import Settings
from bridge.decide import DeviceView, Gap, UserView, decide
from bridge.metrics import Metrics
from bridge.models import AppState
from bridge.push.dispatcher import Dispatcher
from bridge.upstream.protocol import Message
from bridge.upstream.rest import ImkitRest, InvalidToken, RequestRejected, UpstreamUnavailable
from bridge.worker.backfill import fetch_missed, plan_backfill
from bridge.worker.fanout import Fanout
from bridge.worker.state import DeviceRuntime
from bridge.worker.users import UserFacts, rest_error

log = logging.getLogger(__name__)


class CatchUp:
    """Backfills devices' gaps, a few devices at a time."""

    def __init__(
        self,
        settings: Settings,
        *,
        rest: ImkitRest,
        metrics: Metrics,
        users: UserFacts,
        fanout: Fanout,
        dispatcher: Dispatcher,
    ) -> None:
        self._settings = settings
        self._dispatcher = dispatcher
        self._rest = rest
        self._metrics = metrics
        self._users = users
        self._fanout = fanout
        self._sem = asyncio.Semaphore(8)

    async def backfill(
        self, rt: DeviceRuntime, since_ms: int, anchors: dict[str, str], live_ms: int | None = None
    ) -> bool:
        """Fetch what the device missed since ``since_ms`` and push it like live events.

        ``live_ms`` is when the session went live again (now if not given): messages from between
        are new unless the device's recent window holds them, however far live traffic moved on.

        False if it has to be tried again: IMKIT was unavailable, the push claims were (see
        :meth:`~bridge.push.dispatcher.Dispatcher.claims_reachable`), or another backfill of this
        device was running (it may have fetched before this gap began).
        """
        device = rt.device
        settings = self._settings
        now = time.time()
        if rt.backfilling:
            log.debug("backfill busy", extra={"device_id": device.device_id})
            return False
        if device.in_foreground(now) or not device.active_registrations:
            log.debug("no backfill", extra={"device_id": device.device_id})
            return True
        now_ms = int(now * 1000)
        max_age_ms = int(settings.backfill_max_age * 1000)
        since_ms = max(since_ms, now_ms - max_age_ms)
        gap: Gap = (since_ms, now_ms if live_ms is None else live_ms)
        user = self._users.of(device.client_id)
        rt.backfilling = True
        try:
            async with self._sem:
                missed = await fetch_missed(self._rest, device.client_token, since_ms=since_ms, anchors=anchors)
        except UpstreamUnavailable as exc:
            log.info("backfill failed; will retry", extra={"device_id": device.device_id, "error": rest_error(exc)})
            rt.backfilling = False
            return False
        except (InvalidToken, RequestRejected) as exc:
            log.info("backfill skipped", extra={"device_id": device.device_id, "error": rest_error(exc)})
            rt.backfilling = False
            return True
        if not await self._dispatcher.claims_reachable():
            # What the gap holds may have been pushed by the device's previous owner: only the
            # claims can tell, so push nothing unchecked (they would go out twice); try again.
            log.info("backfill waits for the push claims store", extra={"device_id": device.device_id})
            rt.backfilling = False
            return False
        try:
            if missed.malformed:
                self._metrics.upstream_malformed.labels("backfill").inc(missed.malformed)
            for rid, name in missed.room_names.items():
                user.remember_room(rid, name)
            view = UserView(device.client_id, user.muted, user.notifications_enabled)
            background = DeviceView(AppState.BACKGROUND, has_active_token=True)

            def pushable(m: Message) -> bool:
                return decide("chat message", m, user=view, device=background, seen=rt.seen, system_messages=settings.system_messages, gap=gap).push

            plan = plan_backfill(missed, now_ms=now_ms, max_age_ms=max_age_ms, room_cap=settings.backfill_room_cap, pushable=pushable, seen=rt.seen, gap=gap)
            log.debug(
                "backfill plan",
                extra={
                    "device_id": device.device_id,
                    "since_ms": since_ms,
                    "rooms": len(missed.rooms),
                    "fetched": sum(len(v) for v in missed.rooms.values()),
                    "messages": len(plan.messages),
                },
            )
            for msg in plan.messages:
                await self._fanout.on_event(rt, "chat message", msg, source="backfill", gap=gap)
            for inv in plan.invitations:
                await self._fanout.on_event(rt, "invitation", inv, source="backfill", gap=gap)
            for summary in plan.summaries:
                await self._fanout.push_summary(rt, user, summary)
            for msgs in missed.rooms.values():
                for m in msgs:
                    rt.note_message(m)
            if plan.messages or plan.summaries or plan.invitations:
                log.info(
                    "backfilled",
                    extra={"device_id": device.device_id, "messages": len(plan.messages), "summaries": len(plan.summaries), "invitations": len(plan.invitations), "too_old": plan.skipped_old},
                )
        finally:
            rt.backfilling = False
        return True
