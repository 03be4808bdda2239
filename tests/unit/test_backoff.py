"""Full-jitter exponential backoff: bounds, spread and input checks."""

from __future__ import annotations

import random

import pytest

from bridge._backoff import Backoff


@pytest.mark.parametrize(
    ("base", "cap", "attempt", "ceiling"),
    [
        (1.0, 60.0, 0, 1.0),
        (1.0, 60.0, 1, 2.0),
        (1.0, 60.0, 2, 4.0),
        (1.0, 60.0, 5, 32.0),
        (1.0, 60.0, 6, 60.0),
        (1.0, 60.0, 7, 60.0),
        (1.0, 60.0, 10_000, 60.0),
        (0.5, 3.0, 0, 0.5),
        (0.5, 3.0, 2, 2.0),
        (0.5, 3.0, 3, 3.0),
        (2.0, 2.0, 0, 2.0),
        (2.0, 2.0, 9, 2.0),
    ],
)
def test_ceiling(base: float, cap: float, attempt: int, ceiling: float) -> None:
    assert Backoff(base, cap).ceiling(attempt) == ceiling


@pytest.mark.parametrize("attempt", [0, 1, 3, 6, 50, 5000])
def test_delay_stays_within_zero_and_ceiling(attempt: int) -> None:
    b = Backoff(1.0, 60.0, rng=random.Random(attempt))
    ceiling = b.ceiling(attempt)
    samples = [b.delay(attempt) for _ in range(2000)]
    assert all(0.0 <= d <= ceiling for d in samples)
    # Full jitter: the whole window is used, not just its top (as "equal jitter" would).
    assert min(samples) < 0.05 * ceiling
    assert max(samples) > 0.95 * ceiling
    assert 0.45 * ceiling < sum(samples) / len(samples) < 0.55 * ceiling


def test_same_seed_same_delays() -> None:
    a = Backoff(rng=random.Random(7))
    b = Backoff(rng=random.Random(7))
    assert [a.delay(i) for i in range(10)] == [b.delay(i) for i in range(10)]


def test_defaults_are_one_second_and_one_minute() -> None:
    b = Backoff()
    assert (b.base, b.cap) == (1.0, 60.0)
    assert b.ceiling(100) == 60.0


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0), (2.0, 1.0)])
def test_rejects_bad_settings(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base, cap)


def test_rejects_negative_attempt() -> None:
    with pytest.raises(ValueError):
        Backoff().delay(-1)
