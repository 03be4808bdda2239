"""The result sink: the providers' final answers to the pushes the worker sent.

An answer is recorded on the event that caused the push ("why no push?") and, unless it is a
retry, releases the push's hold on the device's checkpoint. A dead token disables its
registration in the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from bridge.models import Notification
from bridge.push.provider import Retry, SendResult, TokenInvalid
from bridge.store.base import Store, StoreUnavailable
from bridge.worker.history import ProviderResult
from bridge.worker.state import DeviceRuntime

log = logging.getLogger(__name__)


class ResultSink:
    """Takes the dispatcher's answers for the devices of one pool."""

    def __init__(
        self,
        store: Store,
        *,
        runtimes: Mapping[str, DeviceRuntime],
        status_changed: Callable[[str], None],
    ) -> None:
        self._store = store
        self._runtimes = runtimes
        self._status_changed = status_changed

    async def handle_result(self, n: Notification, result: SendResult) -> None:
        """Record a provider's final answer on the event that caused it; move the checkpoint."""
        latency = time.monotonic() - n.received_at
        rt = self._runtimes.get(n.device_id)
        if rt is None:
            return
        answer = ProviderResult.of(n.push_type, n.provider, result, at=time.time(), latency=latency)
        rt.history.record_result(n.push_id, answer)
        if not isinstance(result, Retry):
            rt.pending.pop(n.push_id, None)
            if not rt.pending and rt.drained is not None:
                rt.drained.set()  # a hand-over waits for this (WorkerPool.drop)
        self._status_changed(n.device_id)

    async def handle_token_invalid(self, n: Notification, result: TokenInvalid) -> None:
        """A provider said the token is dead: disable that registration, if it still holds it.

        The store compares the token (and APNs' "invalid since" time): an answer about an old
        token, arriving after the app registered a new one, changes nothing.
        """
        ctx = {"device_id": n.device_id, "push_type": n.push_type, "reason": result.reason}
        try:
            disabled = await self._store.disable_registration(
                n.device_id, n.push_type, n.token, result.reason, since=result.since
            )
        except StoreUnavailable as exc:
            log.warning("could not disable registration", extra={"device_id": n.device_id, "error": str(exc)})
            return
        if disabled:
            log.info("push token invalid; registration disabled", extra=ctx)
        else:
            log.info("push token invalid; registration unchanged (already disabled, or re-registered since)", extra=ctx)


def result_dict(n: Notification, result: SendResult) -> dict[str, Any]:
    """A provider's answer as shown by the API (no token), without a latency."""
    return ProviderResult.of(n.push_type, n.provider, result, at=time.time(), latency=None).as_dict()
