"""Decode each upstream packet once per process, however many local sessions receive it.

A chat message in a room of 50 members reaches the bridge 50 times, as 50 equal payloads (one
per device session). :class:`DecodeCache` keys :func:`bridge.upstream.protocol.parse_event` by
``(event name, raw payload)`` so the base64, JSON and validation work is done once and the 50
sessions share one event object. Only hashable raw payloads are cached (``str``: base64 mode;
``bytes``); an already decoded ``dict`` (plain JSON mode, decoded per socket by python-socketio)
goes straight to ``parse_event`` every time.

The cache is small and first-in first-out: a fan-out arrives within milliseconds, so an entry is
only needed briefly; ``max_entries`` and ``max_bytes`` (the raw payloads' total length) bound it.

Shared results must be treated as read-only by every consumer (the protocol's models are not
frozen, and their ``mentions``/``extra``/``message`` containers are mutable).

A payload that fails to decode is remembered too (its cost is not paid again), but each call
still raises, so every session still counts and logs its malformed event: the first caller gets
the original exception, later ones a :class:`~bridge.upstream.protocol.DecodeError` whose text is
what the session logs for it (the error's own safe message, or only its type name).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.upstream import protocol
from bridge.upstream.protocol import DecodeError

#: Entries kept: decoded events of the last few hundred distinct packets.
MAX_ENTRIES = 512
#: Total length of the raw payloads kept (a few large packets must not pin much memory).
MAX_BYTES = 4 * 1024 * 1024
#: A payload longer than this is never cached.
MAX_ITEM_BYTES = 256 * 1024

_MISSING = object()


class _Failure:
    """A payload that did not decode, by the description a session logs for it."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class DecodeCache:
    """A bounded map from ``(name, raw payload)`` to the decoded, validated event."""

    __slots__ = ("_parse", "_max_entries", "_max_bytes", "_items", "_bytes", "hits", "misses")

    def __init__(
        self,
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        parse: Callable[[str, Any], Any] = protocol.parse_event,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be at least 1")
        self._parse = parse
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._items: dict[tuple[str, str | bytes], Any] = {}
        self._bytes = 0
        #: Decodes served from the cache, and decodes done (for benchmarks and metrics).
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def parse_event(self, name: str, raw: Any) -> Any:
        """What :func:`bridge.upstream.protocol.parse_event` returns (or raises) for this payload."""
        if not isinstance(raw, str | bytes) or len(raw) > MAX_ITEM_BYTES:
            return self._parse(name, raw)
        key = (name, raw)
        cached = self._items.get(key, _MISSING)
        if cached is not _MISSING:
            self.hits += 1
            if isinstance(cached, _Failure):
                raise DecodeError(cached.message)
            return cached
        self.misses += 1
        try:
            value = self._parse(name, raw)
        except Exception as exc:
            self._put(key, _Failure(str(exc) if isinstance(exc, DecodeError) else type(exc).__name__))
            raise
        self._put(key, value)
        return value

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def _put(self, key: tuple[str, str | bytes], value: Any) -> None:
        items = self._items
        items[key] = value
        self._bytes += len(key[1])
        while len(items) > self._max_entries or self._bytes > self._max_bytes:
            oldest = next(iter(items))
            del items[oldest]
            self._bytes -= len(oldest[1])


#: The process's cache: every session decodes through it.
CACHE = DecodeCache()


def parse_event(name: str, raw: Any) -> Any:
    """:func:`bridge.upstream.protocol.parse_event` through the process's :data:`CACHE`."""
    return CACHE.parse_event(name, raw)


__all__ = ["CACHE", "DecodeCache", "parse_event"]
