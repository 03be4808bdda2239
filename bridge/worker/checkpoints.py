"""Checkpoints: each device's safe checkpoint written to the store when it moved.

The checkpoint is where a backfill starts after a restart or at the device's next owner, so it
never passes a message whose push has not been answered yet (see
:meth:`~bridge.worker.state.DeviceRuntime.safe_checkpoint`). With several workers the API reads
"why no push?" from the store, so the changed statuses are written here too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from bridge.store.base import Store, StoreUnavailable
from bridge.worker.state import DeviceRuntime

log = logging.getLogger(__name__)

#: Checkpoints written per store round trip.
BATCH = 500


class Checkpoints:
    """Writes the devices' checkpoints (and, if asked to, their statuses) to the store."""

    def __init__(
        self, store: Store, *, runtimes: Mapping[str, DeviceRuntime], publish_status: bool
    ) -> None:
        self._store = store
        self._runtimes = runtimes
        self._publish_status = publish_status
        self._status_dirty: set[str] = set()

    def status_changed(self, device_id: str) -> None:
        """The device's status (session state, history) changed: publish it at the next flush."""
        if self._publish_status:
            self._status_dirty.add(device_id)

    async def run(self) -> None:
        """Flush every second, until cancelled."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.flush()
            except Exception:
                log.exception("checkpoint flush failed")

    async def flush(self) -> None:
        """Persist each device's safe checkpoint when it moved (called every second and at close).

        In batches of :data:`BATCH`: one store round trip each, not one per device (at 1,000
        pushes/s about as many devices move every second)."""
        moved: dict[str, tuple[str, int]] = {}
        owners: dict[str, DeviceRuntime] = {}
        for rt in list(self._runtimes.values()):
            cp = rt.safe_checkpoint()
            if cp is not None and cp[0] > rt.saved_ms:
                moved[rt.device.device_id] = (cp[1], cp[0])
                owners[rt.device.device_id] = rt
        items = list(moved.items())
        for start in range(0, len(items), BATCH):
            batch = dict(items[start : start + BATCH])
            try:
                await self._store.set_checkpoints(batch)
            except StoreUnavailable as exc:
                log.warning("checkpoints not saved: %s", exc)
                return
            for device_id, (_, ms) in batch.items():
                rt = owners[device_id]
                rt.saved_ms = max(rt.saved_ms, ms)  # a hand-over's save may have gone further
        if self._status_dirty:
            dirty, self._status_dirty = self._status_dirty, set()
            for device_id in dirty:
                owned = self._runtimes.get(device_id)
                if owned is not None:
                    try:
                        await self._store.put_status(device_id, owned.status())
                    except StoreUnavailable:
                        self._status_dirty.add(device_id)

    async def save(self, rt: DeviceRuntime) -> bool:
        """Write the device's checkpoint if it moved; False if the store is unavailable."""
        cp = rt.safe_checkpoint()
        if cp is None or cp[0] <= rt.saved_ms:
            return True
        try:
            await self._store.set_checkpoint(rt.device.device_id, cp[1], cp[0])
        except StoreUnavailable as exc:
            log.warning("checkpoints not saved: %s", exc)
            return False
        rt.saved_ms = cp[0]
        return True
