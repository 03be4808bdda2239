"""MemoryClaims: first claim wins within the TTL, release frees, memory stays bounded."""

from __future__ import annotations

import pytest

from bridge.push.claims import Claims, MemoryClaims


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_first_claim_wins_within_ttl() -> None:
    claims = MemoryClaims(clock=FakeClock())
    assert await claims.claim("p1", ttl=10) is True
    assert await claims.claim("p1", ttl=10) is False
    assert await claims.claim("p2", ttl=10) is True


async def test_claim_expires_after_ttl() -> None:
    clock = FakeClock()
    claims = MemoryClaims(clock=clock)
    assert await claims.claim("p1", ttl=10)
    clock.t += 9.999
    assert not await claims.claim("p1", ttl=10)
    clock.t += 0.001
    assert await claims.claim("p1", ttl=10)
    # The new claim runs its own TTL from now.
    clock.t += 5
    assert not await claims.claim("p1", ttl=10)


async def test_release_lets_a_later_try_claim() -> None:
    claims = MemoryClaims(clock=FakeClock())
    assert await claims.claim("p1", ttl=10)
    await claims.release("p1")
    assert await claims.claim("p1", ttl=10)
    await claims.release("never-claimed")  # no error


async def test_expired_entries_are_purged() -> None:
    clock = FakeClock()
    claims = MemoryClaims(clock=clock)
    for i in range(50):
        await claims.claim(f"p{i}", ttl=1)
    assert len(claims) == 50
    clock.t += 2
    await claims.claim("fresh", ttl=1)
    assert len(claims) == 1


async def test_size_is_bounded_and_oldest_forgotten_first() -> None:
    claims = MemoryClaims(max_entries=3, clock=FakeClock())
    for push_id in ("a", "b", "c", "d"):
        assert await claims.claim(push_id, ttl=100)
    assert len(claims) == 3
    assert await claims.claim("a", ttl=100)  # "a" was evicted, so it can be claimed again
    assert not await claims.claim("d", ttl=100)
    assert len(claims) == 3


def test_rejects_empty_bound() -> None:
    with pytest.raises(ValueError):
        MemoryClaims(max_entries=0)


def test_memory_claims_is_a_claims() -> None:
    claims: Claims = MemoryClaims()
    assert claims is not None
