"""The API's per-client sliding-window limit (bridge.api.auth.RateLimiter), on a fake clock."""

from __future__ import annotations

import pytest

from bridge.api.auth import RateLimiter
from bridge.api.errors import ApiError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window_and_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(3, clock=clock)
    for step in (0.0, 10.0, 20.0):
        clock.now += step
        limiter.check("alice")
    with pytest.raises(ApiError) as refused:
        limiter.check("alice")
    assert refused.value.status == 429 and refused.value.code == "RATE_LIMITED"
    # The oldest call (t=1000) leaves the window at t=1060: 30 s from now (t=1030), plus one.
    assert refused.value.headers == {"Retry-After": "31"}
    limiter.check("bob")  # another caller has a window of its own
    clock.now = 1060.0  # exactly 60 s after the first call: it is out
    limiter.check("alice")
    with pytest.raises(ApiError):
        limiter.check("alice")


def test_idle_callers_are_forgotten_within_two_minutes() -> None:
    clock = Clock()
    limiter = RateLimiter(5, clock=clock)
    for i in range(100):
        limiter.check(f"user{i}")
    assert len(limiter) == 100
    clock.now += 61.0
    limiter.check("late")  # the sweep runs at most once a minute, on a call
    assert len(limiter) == 1
