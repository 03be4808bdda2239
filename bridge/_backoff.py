"""Exponential backoff with full jitter, shared by every retry loop of the bridge."""

from __future__ import annotations

import random


class Backoff:
    """``delay(attempt)`` is uniform in ``[0, min(cap, base * 2**attempt)]`` ("full jitter").

    Full jitter spreads a crowd of clients that failed together (an IMKIT restart) over the whole
    window instead of letting them retry in lock-step. ``rng`` is injectable for tests.
    """

    def __init__(self, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None) -> None:
        if base <= 0 or cap <= 0:
            raise ValueError("base and cap must be positive")
        if cap < base:
            raise ValueError("cap must be >= base")
        self.base = base
        self.cap = cap
        # The random module's shared generator unless one is injected: a Random() of its own
        # costs 2.5 KiB, and every upstream session has a Backoff.
        self._uniform = rng.uniform if rng is not None else random.uniform

    def ceiling(self, attempt: int) -> float:
        """The upper bound of :meth:`delay` for this attempt (0-based)."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        # Cap the exponent first: 2**attempt for a large attempt would overflow a float.
        if attempt >= 64:
            return self.cap
        return min(self.cap, self.base * (2.0**attempt))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        return self._uniform(0.0, self.ceiling(attempt))

    def __repr__(self) -> str:
        return f"Backoff(base={self.base!r}, cap={self.cap!r})"
