"""A device's last events for "why no push?", kept compactly.

The same answer as a ``deque`` of 50 ``EventRecord`` objects (``GET /me/devices/{id}``: newest
first, ``at``, ``event``, ``id``, ``room``, ``decision``, ``reason``, ``source``, ``results``,
``pushes``), stored as columns of a ring: the times in an ``array`` of doubles, the decisions in a
``bytearray``, and one list holding references to the strings of each event (its name, message id
and room are the event object's own strings, not copies; names are mapped to shared constants).
What a push adds (push ids, provider results) is held in a tuple created only when a push
happens; a provider result is a plain tuple (a :class:`ProviderResult`'s fields), turned into a
dict only when asked. Tuples of strings and numbers are untracked by the garbage collector. Full, 50 events cost a few KiB and a handful of objects instead of 150.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any, NamedTuple

from bridge.push.provider import Delivered, SendResult, outcome_of
from bridge.upstream.protocol import EVENTS

#: Events kept per device.
HISTORY_SIZE = 50

# Event names arrive as a new string per packet: keep the module's constant instead.
_NAMES: dict[str, str] = {name: name for name in (*EVENTS, "summary")}

# Per event in ``History._rows``: name, message id, room, reason, source, and its pushes: None
# (most events are never pushed), or a tuple of push ids (str) and results (ProviderResult) in the
# order they came.
_WIDTH = 6
_PUSHES = 5


class ProviderResult(NamedTuple):
    """A provider's answer to one push (or the bridge's own, for a push never sent), as the API
    shows it (no token): ``type``, then ``provider`` and ``at`` when it reached a provider,
    ``outcome``, ``id`` (delivered) or ``reason``, ``latency`` (seconds) when known, and the
    ``pushId`` it answers once recorded in a history.

    A history keeps it as a plain tuple (:meth:`History.record_result`): the collector stops
    tracking an exact tuple of strings and numbers after its first young collection (never a
    subclass's), so the thousands a busy worker holds cost no GC time.
    """

    push_type: str
    outcome: str
    provider: str | None = None
    at: float | None = None
    #: "id" or "reason": the key ``detail`` is shown under (absent when None).
    detail_key: str | None = None
    detail: str | None = None
    latency: float | None = None
    push_id: str | None = None

    @classmethod
    def of(
        cls, push_type: str, provider: str, result: SendResult, *, at: float, latency: float | None
    ) -> ProviderResult:
        """A provider's answer; ``at`` is the wall-clock time, ``latency`` is rounded to 0.1 ms
        (None: not shown, as for a test push answered at once)."""
        if isinstance(result, Delivered):
            key, detail = "id", result.provider_id
        else:
            key, detail = "reason", result.reason
        return cls(
            push_type, outcome_of(result), provider=provider, at=at, detail_key=key, detail=detail,
            latency=None if latency is None else round(latency, 4),
        )

    @classmethod
    def local(cls, push_type: str, outcome: str, reason: str | None = None) -> ProviderResult:
        """A push that never reached a provider: ``failed``/``compose_error``, ``duplicate``."""
        return cls(push_type, outcome, detail_key=None if reason is None else "reason", detail=reason)

    def as_dict(self) -> dict[str, Any]:
        """The API's shape, keys in the order the API has always used."""
        out: dict[str, Any] = {"type": self.push_type}
        if self.provider is not None:
            out["provider"] = self.provider
            out["at"] = self.at
        out["outcome"] = self.outcome
        if self.detail_key is not None:
            out[self.detail_key] = self.detail
        if self.latency is not None:
            out["latency"] = self.latency
        if self.push_id is not None:
            out["pushId"] = self.push_id
        return out


class History:
    """The last :data:`HISTORY_SIZE` events of one device, with their decisions and results.

    :meth:`add` returns a ticket for the event, with which the pushes it causes attach their ids
    (:meth:`add_push`) and local failures (:meth:`add_result`); :meth:`record_result` attaches a
    provider's answer to the newest event holding that push id. A ticket whose event has since
    been pushed out of the ring is ignored, as an ``EventRecord`` dropped from a ``deque`` was.
    """

    __slots__ = ("_size", "_count", "_at", "_pushed", "_rows", "_last")

    def __init__(self, size: int = HISTORY_SIZE) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._size = size
        #: Events added so far; event number ``n`` lives in slot ``n % size``.
        self._count = 0
        self._at = array("d")
        self._pushed = bytearray()
        self._rows: list[Any] = []
        #: The last result, as a plain tuple (see :class:`ProviderResult`).
        self._last: tuple[Any, ...] | None = None

    def __len__(self) -> int:
        return min(self._count, self._size)

    def add(
        self,
        at: float,
        event: str,
        msg_id: str | None,
        room: str | None,
        *,
        pushed: bool,
        reason: str,
        source: str = "live",
    ) -> int:
        """Record one event (``at``: epoch seconds); returns its ticket."""
        ticket = self._count
        row = (_NAMES.get(event, event), msg_id, room, reason, source, None)
        if ticket < self._size:
            self._at.append(at)
            self._pushed.append(pushed)
            self._rows.extend(row)
        else:
            slot = ticket % self._size
            self._at[slot] = at
            self._pushed[slot] = pushed
            self._rows[slot * _WIDTH : (slot + 1) * _WIDTH] = row
        self._count = ticket + 1
        return ticket

    def add_push(self, ticket: int, push_id: str) -> None:
        """A push of the event was handed to the dispatcher."""
        self._append(ticket, push_id)

    def add_result(self, ticket: int, result: ProviderResult) -> None:
        """A result known without a provider (compose error, duplicate push id)."""
        self._append(ticket, tuple(result))

    def record_result(self, push_id: str, result: ProviderResult) -> bool:
        """A provider's answer: it becomes the last result, and joins the newest event that holds
        ``push_id`` (False when none does any more)."""
        row = tuple(result._replace(push_id=push_id))
        self._last = row
        rows = self._rows
        for n in range(self._count - 1, self._count - len(self) - 1, -1):
            i = (n % self._size) * _WIDTH + _PUSHES
            pushes = rows[i]
            if pushes is not None and push_id in pushes:
                rows[i] = (*pushes, row)
                return True
        return False

    @property
    def last_result(self) -> dict[str, Any] | None:
        """The last provider answer (``lastProviderResult``), or None."""
        return None if self._last is None else ProviderResult._make(self._last).as_dict()

    def as_dicts(self) -> list[dict[str, Any]]:
        """The events, newest first, as ``GET /me/devices/{id}`` shows them."""
        out: list[dict[str, Any]] = []
        rows = self._rows
        for n in range(self._count - 1, self._count - len(self) - 1, -1):
            slot = n % self._size
            event, msg_id, room, reason, source, pushes = rows[slot * _WIDTH : (slot + 1) * _WIDTH]
            out.append(
                {
                    "at": self._at[slot],
                    "event": event,
                    "id": msg_id,
                    "room": room,
                    "decision": "pushed" if self._pushed[slot] else "suppressed",
                    "reason": reason,
                    "source": source,
                    "results": [
                        ProviderResult._make(r).as_dict() for r in pushes or () if isinstance(r, tuple)
                    ],
                    # Each push handed to the dispatcher; ``shown`` is filled from the app's acks
                    # by :func:`with_acks` where the view is built.
                    "pushes": [
                        {"pushId": p, "shown": None} for p in pushes or () if isinstance(p, str)
                    ],
                }
            )
        return out

    def _append(self, ticket: int, item: str | tuple[Any, ...]) -> None:
        if self._count - len(self) <= ticket < self._count:
            i = (ticket % self._size) * _WIDTH + _PUSHES
            self._rows[i] = (*(self._rows[i] or ()), item)


def with_acks(events: list[dict[str, Any]], acks: dict[str, float]) -> list[dict[str, Any]]:
    """``events`` (as :meth:`History.as_dicts` gives them) with ``shown`` set on each push the app
    acknowledged (epoch seconds of the ack); new dicts, the inputs are not changed. An event
    without ``pushes`` (published by an older worker) is left as it is."""
    return [
        {
            **e,
            "pushes": [
                {**p, "shown": acks.get(p.get("pushId", ""), p.get("shown"))} for p in e["pushes"]
            ],
        }
        if "pushes" in e
        else e
        for e in events
    ]


def sent_push(events: list[dict[str, Any]], push_id: str) -> SentPush | None:
    """Whether the events hold a push with ``push_id``, and its provider's answer if recorded.

    The answer is the newest delivered one (a retried push has several), else the newest any.
    """
    for e in events:
        if not any(p.get("pushId") == push_id for p in e.get("pushes", ())):
            continue
        answers = [r for r in e.get("results", ()) if r.get("pushId") == push_id and r.get("provider")]
        delivered = [r for r in answers if r.get("outcome") == "delivered"]
        best = (delivered or answers or [None])[-1]
        if best is None:
            return SentPush(provider=None, at=None)
        return SentPush(provider=str(best["provider"]), at=float(best["at"]))
    return None


@dataclass(frozen=True, slots=True)
class SentPush:
    """A push found in a device's history: the provider that answered it and when (None while
    the answer is not recorded yet)."""

    provider: str | None
    at: float | None


__all__ = ["HISTORY_SIZE", "History", "ProviderResult", "SentPush", "sent_push", "with_acks"]
