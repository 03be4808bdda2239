"""Compose each chat message once per process and per kind of recipient, not once per device.

A message in a room of 50 members is pushed to up to 50 local devices. Most of them read it the
same way: the same platform, language, content mode and room title. Only the badge (per user)
and the push id (per device, added later by ``notification_for``) differ. :class:`ComposeCache`
composes the first one with a placeholder badge (:data:`bridge.compose.BADGE_ROOM`, as wide as
any real one, so the size fitting holds for all) and hands every later recipient a copy with its
own badge (:func:`bridge.compose.with_badge`): rendering, size fitting and the JSON measuring
that goes with it are paid once.

The key is the message *object* (the decode cache gives every session the same one for the same
packet) with its id and version, plus everything of the target that changes the text. An entry
keeps its message alive, so the object's ``id()`` cannot be reused while the entry exists. Not
cached: ``encrypted`` pushes (each device has its own key, and sealing is per push) and badges
wider than the placeholder. Entries are reused for :data:`MAX_AGE` seconds at most, so the APNs
expiration computed from the first recipient's clock stays close to everyone's.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable

from bridge import compose
from bridge.upstream.protocol import Message

#: Distinct (message, kind of recipient) compositions kept; a fan-out needs its entry briefly.
MAX_ENTRIES = 256
#: Seconds an entry is reused.
MAX_AGE = 2.0

_Key = tuple[int, str, int, compose.Target, str | None]


class ComposeCache:
    """Shared compositions of chat messages; ``hits``/``misses`` count lookups."""

    __slots__ = ("_items", "_max_entries", "_clock", "hits", "misses")

    def __init__(
        self, *, max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._items: OrderedDict[_Key, tuple[float, Message, compose.Request]] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def message(
        self, msg: Message, target: compose.Target, *, now: float, room_name: str | None = None
    ) -> compose.Request:
        """What :func:`bridge.compose.compose_message` returns for these arguments.

        Raises :class:`bridge.compose.ComposeError` as it does (failures are not cached).
        """
        badge = target.badge
        if target.content == "encrypted" or (badge is not None and not 0 <= badge <= compose.BADGE_ROOM):
            return compose.compose_message(msg, target, now=now, room_name=room_name)
        shared = dataclasses.replace(target, badge=None if badge is None else compose.BADGE_ROOM)
        key: _Key = (id(msg), msg.id, msg.version_ms, shared, room_name)
        at = self._clock()
        entry = self._items.get(key)
        if entry is not None and at - entry[0] <= MAX_AGE and entry[1] is msg:
            self.hits += 1
            req = entry[2]
        else:
            self.misses += 1
            req = compose.compose_message(msg, shared, now=now, room_name=room_name)
            self._items[key] = (at, msg, req)
            self._items.move_to_end(key)
            while len(self._items) > self._max_entries:
                self._items.popitem(last=False)
        return compose.with_badge(req, badge) if badge is not None else req
