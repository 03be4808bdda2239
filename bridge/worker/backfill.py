"""Backfill after a gap: fetch what a device missed from IMKIT, and plan the pushes for it.

Two halves. :func:`fetch_missed` does the I/O: rooms with activity since the checkpoint
(``GET /rooms?updatedAfter=``), then each room's messages after its anchor (the anchor itself
dropped) or, without an anchor, its most recent messages filtered by time, and the pending
invitations. :func:`plan_backfill` is pure: it drops what is too old, what was already handled
live and what the caller's decision rejects, and turns a room with too many missed messages into
one "N new messages" summary. The worker pool keeps the checkpoint, calls both and pushes the plan.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from bridge.decide import Gap, Seen, already_handled
from bridge.upstream.protocol import Invitation, Message, iso_ms
from bridge.upstream.rest import ImkitRest, RequestRejected

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Rooms fetched at once for one device: enough to hide latency, few enough not to hammer IMKIT.
DEFAULT_CONCURRENCY = 4


@dataclass(frozen=True, slots=True)
class RoomSummary:
    """One "N new messages" notification standing in for ``count`` missed messages of a room."""

    room_id: str
    count: int
    #: The newest of them (by ``version_ms``): what the checkpoint moves to once it is pushed.
    newest: Message
    room_name: str | None = None


@dataclass(frozen=True, slots=True)
class BackfillPlan:
    """What to push after a gap."""

    #: Oldest first (by ``version_ms``), each to be decided and pushed individually.
    messages: list[Message]
    invitations: list[Invitation]
    #: Rooms over the cap: one summary instead of N messages.
    summaries: list[RoomSummary]
    #: Messages (each ``_id`` once) and invitations older than the maximum age.
    skipped_old: int


@dataclass(frozen=True, slots=True)
class Missed:
    """What IMKIT holds that arrived after the checkpoint."""

    #: Room id -> its messages after the anchor or newer than ``since_ms``, oldest first.
    rooms: dict[str, list[Message]]
    room_names: dict[str, str]
    invitations: list[Invitation]
    #: Items that failed to parse (skipped).
    malformed: int


async def fetch_missed(
    rest: ImkitRest,
    token: str,
    *,
    since_ms: int,
    anchors: Mapping[str, str],
    per_room_limit: int = 100,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> Missed:
    """Fetch everything the token's user received after ``since_ms`` (epoch milliseconds).

    ``anchors`` maps a room id to the id of the last message handled in it: those rooms are read
    after the anchor (IMKIT's order, the anchor dropped), which is exact even when several
    messages share a millisecond. Other rooms get their ``per_room_limit`` most recent messages,
    kept when updated after ``since_ms``. An anchor IMKIT no longer knows (404) falls back to the
    time filter. When a room has more than ``per_room_limit`` messages after its anchor, its most
    recent page is fetched as well, so the newest message is always present (the count is then a
    lower bound). Invitations with a timestamp at or before ``since_ms`` are left out; ones
    without any timestamp are kept. At most ``concurrency`` rooms are fetched at once.

    ``InvalidToken``, ``UpstreamUnavailable`` and ``RequestRejected`` propagate; items that do not
    parse are skipped and counted in ``malformed``.
    """
    if per_room_limit < 1:
        raise ValueError("per_room_limit must be at least 1")
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    rooms = await rest.rooms_updated_after(token, since_ms)
    room_ids: list[str] = []
    names: dict[str, str] = {}
    for room in rooms:
        rid = str(room.get("_id") or room.get("id"))  # rest drops rooms without an id
        room_ids.append(rid)
        name = room.get("name")
        if isinstance(name, str) and name:
            names[rid] = name
    raw_invitations = await rest.invitations(token)

    limiter = asyncio.Semaphore(concurrency)

    async def fetch_room(rid: str) -> tuple[list[dict[str, Any]], bool]:
        async with limiter:
            return await _room_items(rest, token, rid, anchors.get(rid), per_room_limit)

    pages = await _gather_or_cancel([fetch_room(rid) for rid in room_ids])

    malformed = 0
    by_room: dict[str, list[Message]] = {}
    for rid, (items, time_filtered) in zip(room_ids, pages, strict=True):
        parsed: dict[str, Message] = {}
        for item in items:
            msg = _parse_message(item, rid)
            if msg is None:
                malformed += 1
                continue
            if time_filtered and msg.version_ms <= since_ms:
                continue
            prev = parsed.get(msg.id)
            if prev is None or msg.version_ms >= prev.version_ms:  # keep an edit's newest version
                parsed[msg.id] = msg
        if parsed:
            by_room[rid] = sorted(parsed.values(), key=_message_order)

    invitations: list[Invitation] = []
    for item in raw_invitations:
        try:
            inv = Invitation.model_validate(item)
        except ValidationError:
            malformed += 1
            continue
        ms = invitation_ms(inv)
        if ms is None or ms > since_ms:
            invitations.append(inv)

    if malformed:
        logger.warning("backfill skipped %d malformed item(s)", malformed)
    logger.debug(
        "backfill fetched %d message(s) in %d room(s) and %d invitation(s)",
        sum(len(v) for v in by_room.values()),
        len(by_room),
        len(invitations),
    )
    return Missed(rooms=by_room, room_names=names, invitations=invitations, malformed=malformed)


def plan_backfill(
    missed: Missed,
    *,
    now_ms: int,
    max_age_ms: int,
    room_cap: int,
    pushable: Callable[[Message], bool],
    seen: Seen,
    gap: Gap | None = None,
) -> BackfillPlan:
    """Decide what to push for ``missed`` (pure).

    Per room, two versions of one ``_id`` (an edit, a recall) count once, as the newest. A message
    older than ``now_ms - max_age_ms`` is dropped and counted; one ``seen`` says was handled
    (live, or by an earlier backfill; ``gap`` is the gap being filled, see
    :meth:`bridge.worker.dedupe.SeenMessages.seen`) is dropped, as is one ``pushable`` rejects. A
    room with more than ``room_cap`` messages left gets one :class:`RoomSummary` instead of them.
    Invitations are deduplicated by room, dropped when ``seen`` holds the room's invitation, and
    dropped and counted when their timestamp is older than the maximum age (one without a
    timestamp is kept).
    """
    if room_cap < 0:
        raise ValueError("room_cap must not be negative")
    cutoff = now_ms - max_age_ms
    skipped_old = 0
    messages: list[Message] = []
    summaries: list[RoomSummary] = []
    for room_id, room_messages in missed.rooms.items():
        kept: list[Message] = []
        for msg in _newest_versions(room_messages):
            if msg.version_ms < cutoff:
                skipped_old += 1
                continue
            if already_handled("chat message", msg, seen, gap) or not pushable(msg):
                continue
            kept.append(msg)
        if len(kept) > room_cap:
            newest = max(kept, key=_message_order)
            summaries.append(
                RoomSummary(room_id, len(kept), newest, missed.room_names.get(room_id))
            )
        else:
            messages.extend(kept)
    messages.sort(key=_message_order)
    summaries.sort(key=lambda s: _message_order(s.newest))

    by_room: dict[str, Invitation] = {}
    for inv in missed.invitations:
        prev = by_room.get(inv.room.id)
        if prev is None or (invitation_ms(inv) or 0) >= (invitation_ms(prev) or 0):
            by_room[inv.room.id] = inv
    invitations: list[Invitation] = []
    for inv in by_room.values():
        ms = invitation_ms(inv)
        if ms is not None and ms < cutoff:
            skipped_old += 1
        elif not seen.invited(inv.room.id):
            invitations.append(inv)
    invitations.sort(key=lambda i: (invitation_ms(i) or 0, i.room.id))
    return BackfillPlan(
        messages=messages, invitations=invitations, summaries=summaries, skipped_old=skipped_old
    )


def invitation_ms(inv: Invitation) -> int | None:
    """When an invitation was last updated (epoch ms): ``updatedTimeMS``, ``createdTimeMS``, or the
    ISO ``updatedAt`` / ``createdAt`` variants; None when it carries no usable timestamp."""
    if inv.updatedTimeMS is not None:
        return inv.updatedTimeMS
    if inv.createdTimeMS is not None:
        return inv.createdTimeMS
    extra = inv.model_extra or {}
    for key in ("updatedAt", "createdAt"):
        ms = iso_ms(extra.get(key))
        if ms is not None:
            return ms
    return None


async def _room_items(
    rest: ImkitRest, token: str, room_id: str, anchor: str | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """One room's raw messages, and whether they still need filtering by time (no anchor used)."""
    if anchor:
        try:
            items = await rest.messages_after(token, room_id, anchor, limit)
        except RequestRejected as exc:
            if exc.status != 404:
                raise
            # The anchor was deleted (or IMKIT forgot it): fall back to the time filter.
            logger.info("backfill anchor gone in room %s; using time instead", room_id)
        else:
            if len(items) >= limit:
                # More after the anchor than one page: add the newest page so the newest
                # message (what a summary and the checkpoint need) is not cut off.
                items = items + await rest.recent_messages(token, room_id, limit)
            return items, False
    return await rest.recent_messages(token, room_id, limit), True


def _parse_message(item: dict[str, Any], room_id: str) -> Message | None:
    if item.get("room") is None:  # listed under its room, so the room is known even if left out
        item = {**item, "room": room_id}
    try:
        return Message.model_validate(item)
    except ValidationError:
        return None


def _newest_versions(messages: Iterable[Message]) -> list[Message]:
    newest: dict[str, Message] = {}
    for msg in messages:
        prev = newest.get(msg.id)
        if prev is None or msg.version_ms >= prev.version_ms:
            newest[msg.id] = msg
    return list(newest.values())


def _message_order(msg: Message) -> tuple[int, str]:
    return (msg.version_ms, msg.id)


async def _gather_or_cancel(coros: list[Awaitable[_T]]) -> list[_T]:
    """Run ``coros`` concurrently; on the first error cancel the rest and re-raise it as is
    (a TaskGroup would wrap it in an ExceptionGroup, which callers do not expect)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
