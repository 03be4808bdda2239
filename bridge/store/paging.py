"""Paging through devices: how a store cuts a page of ``list_devices``, how callers walk every
page, and how long id lists are cut into batches (one round trip or statement each)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TypeVar

from bridge.models import Device
from bridge.store.base import Store

T = TypeVar("T")

#: Devices per page when walking all of them: one round trip per page, small enough for memory.
WALK_PAGE = 500


def check_limit(limit: int) -> None:
    """Raise :class:`ValueError` for a page size below one."""
    if limit < 1:
        raise ValueError("limit must be at least 1")


def cut_page(rows: list[T], limit: int, key: Callable[[T], str]) -> tuple[list[T], str | None]:
    """The page of ``rows`` fetched as ``limit + 1`` (the extra row only says a next page exists),
    and the cursor of the next page: the last key of this one, None at the end."""
    if len(rows) > limit:
        return rows[:limit], key(rows[limit - 1])
    return rows, None


async def walk_devices(store: Store, page: int = WALK_PAGE) -> AsyncIterator[list[Device]]:
    """Every device of ``store``, a page at a time in device id order (lets
    :class:`~bridge.store.base.StoreUnavailable` through)."""
    cursor: str | None = None
    while True:
        devices, cursor = await store.list_devices(limit=page, cursor=cursor)
        yield devices
        if cursor is None:
            return


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
