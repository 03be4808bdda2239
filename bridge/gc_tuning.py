"""Garbage-collector settings for a process holding many long-lived objects.

A worker keeps thousands of sessions, each a few hundred objects that live as long as the device
does. CPython's collector walks all of them in every full collection (1.7-2.3 s pauses at 10,000
sessions) and often, as the default thresholds are tuned for short-lived objects. So the process
that runs workers (``serve``, ``worker``; never tests or the ``api`` role):

* collects the young generations on a clock (both of them every :data:`YOUNG_EVERY` seconds),
  not only on allocation counts. The collector counts allocations *minus deallocations*; in a
  busy worker each session's pending read (a coroutine chain, futures, a timer: ~25 objects,
  re-created by every packet) replaces the one before it, so the count hardly moves while the
  young generation silently fills with every session's reads (50,000 objects at 2,000
  sessions, seen in docs/benchmarks.md) and one collection walks them all: 50-100 ms pauses. On
  the clock, a collection walks what the last 0.2 s created;
* keeps the middle generation small (:data:`THRESHOLDS`): a collection of it walks everything
  that survived a young collection since the last one, and while sessions connect by the
  hundred per second nearly everything survives (~75,000 objects a second at 10,000 sessions
  after IMKIT dropped them all). Collected once a second, it held 50,000-220,000 objects and
  took 20-146 ms; collected with every young collection (the clock's, and every other
  allocation-triggered one), it holds a fifth of a second's survivors. Each object is still
  walked once there, so the CPU is the same, in smaller pieces. The young threshold stays
  raised so that allocation bursts trigger fewer collections, and full collections stay rare
  (the oldest threshold counts middle collections, now five times as many);
* freezes the heap (``gc.freeze()``: what is alive now is never walked again) once the pool has
  opened its devices, and again whenever the live sessions have grown by a large step since the
  last freeze (start-up connects over seconds; a hand-over or a large reconcile adds devices), or
  as many sessions have gone live again since then (IMKIT dropped them all and they reconnected:
  the count is back where it was, but every new connection is unfrozen, and full collections
  walking them took ~1 s at 10,000 sessions).

The cost: garbage in reference cycles among frozen objects (a device removed later, say) is not
reclaimed by the collector; reference counting still frees everything else. ``BRIDGE_GC_FREEZE=
false`` turns all of this off.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable

from bridge.config import Settings

log = logging.getLogger(__name__)

#: ``gc.set_threshold`` for a worker process (the defaults are ``(700, 10, 10)``). A middle
#: threshold of 0 collects the middle generation at every second allocation-triggered
#: collection (CPython compares with ``>``); 500 middle collections between full ones is one
#: per ~100 s on the clock.
THRESHOLDS = (10_000, 0, 500)
#: Seconds between collections of the two young generations on the clock.
YOUNG_EVERY = 0.2
#: Freeze again when the live sessions grew by this many since the last freeze...
MIN_GROWTH = 250
#: ... and by this share of them. Small steps: what is not frozen yet ends up in the oldest
#: generation, and every full collection (one per 500 middle ones, so every ~100 s on the clock)
#: walks it: with 25 % steps, 2,000+ unfrozen sessions at 10,000 made 122 ms pauses. A freeze
#: itself costs a young collection.
GROWTH_RATIO = 0.05
#: Seconds between looks at the session count (for a freeze).
INTERVAL = 5.0


class HeapFreezer:
    """Freezes the heap after start-up and after each large growth of ``count()`` or of
    ``arrivals()``; collects the young generations on a clock (:meth:`watch`)."""

    def __init__(self, *, min_growth: int = MIN_GROWTH, ratio: float = GROWTH_RATIO) -> None:
        self._min_growth = min_growth
        self._ratio = ratio
        #: ``count()`` at the last freeze.
        self.frozen_at = 0
        #: ``arrivals()`` at the last freeze.
        self.arrivals_at = 0
        self.freezes = 0
        #: Young collections :meth:`watch` made on the clock.
        self.young_collections = 0

    def freeze(self, count: int, why: str, arrivals: int | None = None) -> None:
        # The youngest garbage is collected first (cheap: at most one threshold's worth of
        # objects) so little of it is frozen with the live heap; a collection of generation 1
        # (up to 20 x 50,000 objects) would itself be a pause of hundreds of ms.
        gc.collect(0)
        gc.freeze()
        self.frozen_at = count
        if arrivals is not None:
            self.arrivals_at = arrivals
        self.freezes += 1
        # No gc.get_freeze_count() here: it counts the frozen objects one by one (~18 ms at
        # 1.5 million), and with freezes every 5 % of growth that was a stall of every session
        # each time. How often it froze says enough.
        log.info("heap frozen", extra={"why": why, "sessions": count, "freezes": self.freezes})

    def maybe_freeze(self, count: int, arrivals: int | None = None) -> bool:
        """Freeze if ``count`` grew by a large step since the last freeze, or ``arrivals`` (a
        running total of sessions gone live) did: reconnects make new objects, not more."""
        step = max(self._min_growth, int(self.frozen_at * self._ratio))
        if count >= self.frozen_at + step:
            self.freeze(count, "sessions grew", arrivals)
            return True
        if arrivals is not None and arrivals >= self.arrivals_at + step:
            self.freeze(count, "sessions reconnected", arrivals)
            return True
        return False

    async def watch(
        self,
        count: Callable[[], int],
        interval: float = INTERVAL,
        young_every: float = YOUNG_EVERY,
        arrivals: Callable[[], int] | None = None,
    ) -> None:
        """Collect the two young generations every ``young_every`` seconds; look at ``count()``
        (and ``arrivals()``) every ``interval`` seconds, for ever (cancel to stop)."""
        ticks_per_look = max(1, round(interval / young_every))
        tick = 0
        while True:
            await asyncio.sleep(young_every)
            tick += 1
            try:
                gc.collect(1)
                self.young_collections += 1
                if tick % ticks_per_look == 0:
                    self.maybe_freeze(count(), None if arrivals is None else arrivals())
            except Exception:  # a tuning aid must never take the worker down
                log.exception("gc pacing failed")


_freezer: HeapFreezer | None = None


def configure(settings: Settings) -> HeapFreezer | None:
    """Tune this process's collector (called by the CLI's ``serve``/``worker``, never on import).

    Returns the freezer :class:`bridge.service.Bridge` uses after start-up, or None when
    ``BRIDGE_GC_FREEZE`` is off.
    """
    global _freezer
    if not settings.gc_freeze:
        _freezer = None
        return None
    gc.set_threshold(*THRESHOLDS)
    _freezer = HeapFreezer()
    return _freezer


def freezer() -> HeapFreezer | None:
    """The process's freezer, if :func:`configure` turned tuning on."""
    return _freezer


__all__ = ["THRESHOLDS", "HeapFreezer", "configure", "freezer"]
