"""What the worker keeps per user and per device: plain data and small methods on it.

The other parts of the worker (:mod:`~bridge.worker.fanout`, :mod:`~bridge.worker.results`,
:mod:`~bridge.worker.checkpoints`, :mod:`~bridge.worker.catchup`) read and update these; the pool
creates and forgets them with the device.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from bridge.models import Device, SessionState
from bridge.upstream.protocol import Message
from bridge.upstream.session import UpstreamSession
from bridge.worker.dedupe import SeenMessages
from bridge.worker.history import History

#: Rooms whose last message id is kept per device, as anchors for the backfill.
MAX_ANCHORS = 64


@dataclass(slots=True)
class UserState:
    """Per-user facts shared by all of the user's devices in this worker."""

    client_id: str
    muted: frozenset[str] = frozenset()
    notifications_enabled: bool = True
    badge: int | None = None
    fetched_at: float = 0.0
    room_names: dict[str, str] = field(default_factory=dict)
    #: Messages already counted in ``badge`` (one unread per message, whichever device pushed it).
    counted: SeenMessages = field(default_factory=SeenMessages)

    def remember_room(self, room_id: str, name: str | None) -> None:
        if name:
            self.room_names[room_id] = name[:200]
            if len(self.room_names) > 2000:
                self.room_names.pop(next(iter(self.room_names)))


@dataclass(slots=True)
class DeviceRuntime:
    device: Device
    #: None while the device has no active registration: nothing could be pushed to it.
    session: UpstreamSession | None = None
    #: What the device decided on already (dedupe of edits, recalls, re-sends, invitations).
    seen: SeenMessages = field(default_factory=SeenMessages)
    #: The last events with their decisions and provider answers ("why no push?").
    history: History = field(default_factory=History)
    was_live: bool = False
    #: Newest chat message (version ms, id) this device has decided on, live or backfilled.
    high_water: tuple[int, str] | None = None
    #: Pushes handed to the dispatcher and not answered yet: push id -> message version ms.
    pending: dict[str, int] = field(default_factory=dict)
    #: The checkpoint last written to the store.
    saved_ms: int = 0
    #: Last message id seen per room, the :data:`MAX_ANCHORS` most recent rooms: exact anchors for
    #: the backfill after a reconnect (a room without one is read by time, still correct).
    anchors: OrderedDict[str, str] = field(default_factory=OrderedDict)
    backfilling: bool = False
    #: No backfill reaches back before this (epoch ms): set when the session starts again after
    #: the device had no active registration, as what came meanwhile had nowhere to go.
    floor_ms: int = 0
    #: Start (epoch ms) of a gap not backfilled yet (IMKIT failed, or the backfill still runs):
    #: the checkpoint stays at it, so a retry here or the device's next owner still covers it.
    gap_ms: int | None = None
    #: Counts the session's connects: a backfill retry of an older one gives way to a newer one.
    live_gen: int = 0
    #: Set when ``pending`` empties, while a hand-over waits for that (see
    #: :meth:`bridge.worker.pool.WorkerPool.drop`).
    drained: asyncio.Event | None = None

    def note_message(self, msg: Message) -> None:
        if self.high_water is None or msg.version_ms >= self.high_water[0]:
            self.high_water = (msg.version_ms, msg.id)
        self.anchors[msg.room] = msg.id
        self.anchors.move_to_end(msg.room)
        while len(self.anchors) > MAX_ANCHORS:
            self.anchors.popitem(last=False)

    def safe_checkpoint(self) -> tuple[int, str] | None:
        """Everything at or before this was handled: pushed to a provider, or not to be pushed."""
        if self.high_water is None:
            return None
        cp = self.high_water
        if self.pending:
            cp = (min(self.pending.values()) - 1, self.high_water[1])
        if self.gap_ms is not None and cp[0] > self.gap_ms:
            # Live events move past a gap whose messages are not pushed yet.
            cp = (self.gap_ms, cp[1])
        return cp

    def gap_start(self) -> tuple[int, dict[str, str]]:
        """Where the gap before this connect began, taken before any new live event moves it."""
        if self.was_live and self.high_water is not None:
            # A reconnect: up to here we saw live.
            return max(self.high_water[0], self.floor_ms), dict(self.anchors)
        saved = self.device.checkpoint_ms
        # A new session (start-up, hand-over): from the stored checkpoint, no anchors.
        since = saved if saved is not None else int(self.device.created_at * 1000)
        return max(since, self.floor_ms), {}

    def status(self) -> dict[str, Any]:
        """Session state, last events with their decisions, and the last provider answer."""
        return {
            # Whose history this is: a worker that has not applied a change of owner yet may
            # still publish the old owner's; readers drop it, so history never crosses users.
            "clientId": self.device.client_id,
            "session": (self.session.state if self.session else SessionState.CLOSED).value,
            "events": self.history.as_dicts(),
            "lastProviderResult": self.history.last_result,
        }
