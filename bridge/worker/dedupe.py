"""Which messages a device (or a user) has already handled, in memory that does not grow.

It replaces the 2,000-entry sets of ``m:<id>`` strings kept per device (``seen``: never alert
twice for one ``_id``, never alert for an edit or a recall) and per user (``counted``: one badge
increment per message). Those cost ~290 KiB each once full, whatever the traffic; this costs at
most ``max_rooms`` records of ``16 + 16 * per_room`` bytes (~4.5 KiB in 20 rooms with the
defaults), each one immutable ``bytes``: no object per room for the garbage collector to walk.

The rule
--------
A message's *time* is its creation time (:func:`message_time`): an edit, a recall or a re-send of
an ``_id`` has the same one. Per room the structure keeps ``high``, the newest time handled there,
and a *window*: the ids (as 64-bit hashes) of the handled messages whose time is at least ``low``.
``low`` only rises: to ``high - window_ms`` as ``high`` moves, and past the oldest id whenever more
than ``per_room`` are held. A message is **already handled** when

1. its id is in its room's window (exact: an edit, recall or re-send of a recent message), or
2. its time is before its room's ``low`` (older than anything the window tells apart), or
3. its room is not tracked and its time is at or before ``floor``: the newest ``high`` of any room
   evicted as the least recently used of ``max_rooms``. A room evicted then seen again starts with
   ``low = floor + 1``, so an edit or recall of an old message there is never pushed.

Out-of-order arrival (two senders; an older message arriving after a newer one) is new as long as
its time is within the window (``window_ms`` of the room's newest, and fewer than ``per_room``
newer messages handled since): it is pushed once, then held. Beyond that it is taken as handled.

The trade-off: exact for recent messages; for older ones the answer errs towards "handled", so a
late message is suppressed rather than an old one alerted twice. Rule 2 would also hide the gap
messages a backfill fetches after a reconnect when live traffic has moved the window past them,
so :meth:`SeenMessages.seen` takes the ``gap``: times strictly inside it were never heard live,
and only the window (rule 1) can say they were handled.

* The ``gap`` comes from the caller: ``after_ms`` is where the backfill starts (the newest message
  version handled before the drop), ``before_ms`` when listening resumed (the bridge's clock at
  the reconnect: a skew against IMKIT's clock only matters for messages of the last moments
  before it, in a room busy enough to fill its window during the backfill).
* Messages sharing one millisecond in one room cannot be told apart by time: the newest
  millisecond's ids are kept together, up to a burst of ``4 * per_room``.
* A message with no time at all is held at its room's newest edge and is handled only while its
  id is in the window (rules 2 and 3 cannot place it).
* An AI reply (``chat message`` of type ``ai_streaming``, then the finished message with the same
  ``_id``) is tracked apart: the placeholder's id is held in a small exact list until the finished
  message is added, so a long stream in a busy room still ends in one push (see
  :meth:`SeenMessages.streaming`). ``ai_streaming`` socket events carry no ``_id`` and are not
  tracked at all.
* Invitations (one per room, dropped on ``cancelInvitation``) are an exact list of room ids, the
  last ``max_invitations``.
* Ids are compared by ``hash(str)``: 64 bits, salted per process (nothing here is persisted or
  shared between processes); a collision within one room's window (``per_room`` entries) has a
  probability of about ``per_room / 2**64``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bridge.upstream.protocol import Message

#: Out-of-order tolerance in time: ids are told apart this far behind a room's newest message.
WINDOW_MS = 120_000
#: ...and in count: at most this many ids per room.
PER_ROOM = 8
#: Rooms tracked per device (least recently used evicted; see the module docstring, rule 3).
MAX_ROOMS = 32
#: AI replies still streaming, tracked at once.
MAX_STREAMS = 16
#: Pending invitations remembered.
MAX_INVITATIONS = 32

# A room record is one immutable ``bytes`` (not an ``array`` or a list, which the garbage collector
# would track): the int64s ``high, low``, then ``(time, id hash)`` pairs sorted by time.
_HEAD = struct.Struct("qq")
_PAIR = struct.Struct("qq")
_INT64 = struct.Struct("q")
_H = _HEAD.size  # where the pairs start
_P = _PAIR.size


@dataclass(frozen=True, slots=True)
class DedupeLimits:
    """The bounds of a :class:`SeenMessages`; one instance is shared by all of them."""

    window_ms: int = WINDOW_MS
    per_room: int = PER_ROOM
    max_rooms: int = MAX_ROOMS
    max_streams: int = MAX_STREAMS
    max_invitations: int = MAX_INVITATIONS

    def __post_init__(self) -> None:
        if self.window_ms < 0:
            raise ValueError("window_ms must not be negative")
        if min(self.per_room, self.max_rooms, self.max_streams, self.max_invitations) < 1:
            raise ValueError("per_room, max_rooms, max_streams and max_invitations must be >= 1")


DEFAULT_LIMITS = DedupeLimits()


def message_time(msg: Message) -> int | None:
    """The time a message keeps through edits and recalls (epoch ms): ``createdAtMS``, else
    ``messageTimeMS``, else ``updatedAtMS``; None when it carries none."""
    return msg.createdAtMS or msg.messageTimeMS or msg.updatedAtMS or None


class SeenMessages:
    """The messages, AI streams and invitations one device (or one user) has handled.

    Answers "already handled?" with :meth:`seen`, :meth:`streaming` and :meth:`invited`; told with
    :meth:`add`, :meth:`add_invitation` and :meth:`cancel_invitation`. Pure, no clock.
    """

    __slots__ = ("_limits", "_rooms", "_floor", "_streams", "_invited")

    def __init__(self, limits: DedupeLimits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        #: Room id -> packed record; insertion order is recency of :meth:`add` (LRU first).
        self._rooms: dict[str, bytes] = {}
        self._floor = 0
        # Tuples of atomic values: untracked by the GC, and () costs nothing.
        self._streams: tuple[int, ...] = ()
        self._invited: tuple[str, ...] = ()

    # ------------------------------------------------------------------ messages

    def seen(
        self, room: str, msg_id: str, at_ms: int | None, *, gap: tuple[int, int] | None = None
    ) -> bool:
        """Was this message (or an earlier version of it) already handled?

        ``at_ms`` is :func:`message_time`. ``gap`` is ``(after_ms, before_ms)`` for a backfill:
        message times strictly between were not heard live (the connection was down), so such a
        message counts as handled only when its id is in the window.
        """
        h = hash(msg_id)
        if h in self._streams:
            return False  # only its placeholder was seen: the finished message is still to come
        rec = self._rooms.get(room)
        if rec is None:
            low = self._floor + 1
        else:
            if _holds(rec, h):
                return True
            low = _HEAD.unpack_from(rec)[1]
        if at_ms is None or (gap is not None and gap[0] < at_ms < gap[1]):
            return False
        return at_ms < low

    def add(
        self,
        room: str,
        msg_id: str,
        at_ms: int | None,
        *,
        streaming: bool = False,
        gap: tuple[int, int] | None = None,
    ) -> None:
        """Remember a handled message (whatever was decided for it).

        ``streaming`` marks an AI reply's placeholder (or a partial update): it does not make the
        finished message, which has the same ``_id``, a duplicate. ``gap`` is the backfill's, as
        for :meth:`seen`: a message inside it that the window has moved past is held at the
        window's newest edge, so a second backfill of the same gap still finds it (rule 1).
        """
        h = hash(msg_id)
        limits = self._limits
        in_gap = gap is not None and at_ms is not None and gap[0] < at_ms < gap[1]
        if streaming:
            if h not in self._streams and not self.seen(room, msg_id, at_ms):
                self._streams = (*self._streams, h)[-limits.max_streams :]
            return
        if h in self._streams:
            self._streams = tuple(x for x in self._streams if x != h)
        rooms = self._rooms
        rec = rooms.get(room)
        if rec is None:
            if at_ms is not None and at_ms <= self._floor and not in_gap:
                return  # handled by rule 3 already: nothing to remember
            if len(rooms) >= limits.max_rooms:
                evicted = rooms.pop(next(iter(rooms)))
                self._floor = max(self._floor, _HEAD.unpack_from(evicted)[0])
            high, low = self._floor, self._floor + 1
            pairs = b""
        elif _holds(rec, h):
            self._touch(room, rec)
            return
        else:
            high, low = _HEAD.unpack_from(rec)
            pairs = rec[_H:]
        t = at_ms if at_ms is not None else max(high, low)
        if t < low:
            if not in_gap:
                if rec is not None:
                    self._touch(room, rec)
                return  # handled by rule 2 already
            t = max(high, low)
        # Insert sorted by time: in order (the usual case) it goes last.
        end = len(pairs)
        while end and _INT64.unpack_from(pairs, end - _P)[0] > t:
            end -= _P
        if end == len(pairs):
            pairs += _PAIR.pack(t, h)
        else:
            pairs = pairs[:end] + _PAIR.pack(t, h) + pairs[end:]
        if t > high:
            high = t
        if high - limits.window_ms > low:
            low = high - limits.window_ms
        n = len(pairs) // _P
        if n > limits.per_room:
            # Drop the oldest ids; ``low`` must pass the time of the last one dropped (ties with
            # it go too). Messages sharing the newest millisecond are kept, up to a burst of
            # 4 x ``per_room``, so that the next one at that millisecond is still new.
            dropped = _INT64.unpack_from(pairs, _P * (n - limits.per_room - 1))[0]
            if dropped < high:
                low = max(low, dropped + 1)
            elif n <= 4 * limits.per_room:
                low = max(low, high)
            else:
                low = high + 1
        cut = 0
        while cut < len(pairs) and _INT64.unpack_from(pairs, cut)[0] < low:
            cut += _P
        if rec is not None and next(reversed(rooms)) != room:
            del rooms[room]  # re-inserted below as the most recently used
        rooms[room] = _HEAD.pack(high, low) + pairs[cut:]

    def streaming(self, msg_id: str) -> bool:
        """Was this ``_id`` seen as an AI reply still streaming, and not finished yet?"""
        return hash(msg_id) in self._streams

    def _touch(self, room: str, rec: bytes) -> None:
        """Make ``room`` the most recently used."""
        rooms = self._rooms
        if next(reversed(rooms)) != room:
            del rooms[room]
            rooms[room] = rec

    # ------------------------------------------------------------------ invitations

    def invited(self, room: str) -> bool:
        """Was an invitation to this room handled (and not cancelled since)?"""
        return room in self._invited

    def add_invitation(self, room: str) -> None:
        """Remember a handled invitation to ``room``."""
        rest = tuple(r for r in self._invited if r != room)
        self._invited = (*rest, room)[-self._limits.max_invitations :]

    def cancel_invitation(self, room: str) -> None:
        """The invitation was cancelled: a new one to the same room is new again."""
        if room in self._invited:
            self._invited = tuple(r for r in self._invited if r != room)

    # ------------------------------------------------------------------ size

    def __len__(self) -> int:
        """Entries held: message ids in the windows, streams and invitations."""
        pairs = sum((len(rec) - _H) // _P for rec in self._rooms.values())
        return pairs + len(self._streams) + len(self._invited)

    @property
    def room_count(self) -> int:
        """Rooms tracked (at most ``max_rooms``)."""
        return len(self._rooms)


def _holds(rec: bytes, h: int) -> bool:
    """Is the id hash ``h`` in the room record's window? (A byte search, not a loop over ints.)"""
    needle = _INT64.pack(h)
    i = rec.find(needle, _H)
    while i >= 0:
        if (i - _H) % _P == 8:  # a hash slot; elsewhere the bytes only happen to look alike
            return True
        i = rec.find(needle, i + 1)
    return False


__all__ = ["DEFAULT_LIMITS", "DedupeLimits", "SeenMessages", "message_time"]
