"""Answers that blame the bridge's configuration: said loudly, once an interval, not once a push.

APNs' ``InvalidProviderToken`` or FCM's ``SENDER_ID_MISMATCH`` mean that our configuration is
wrong, not the device's token: every push fails the same way until it is fixed. The providers
fail such pushes (no registration is disabled) and report them here, which logs one ERROR line
per reason and interval, counting the answers since the last line.
"""

from __future__ import annotations

import logging
import time

#: A configuration error is logged at most once per reason in this many seconds.
CONFIG_LOG_INTERVAL = 60.0


class ConfigErrors:
    """One provider's configuration errors and when each was last logged."""

    def __init__(self, logger: logging.Logger, interval: float = CONFIG_LOG_INTERVAL) -> None:
        self._logger = logger
        self._interval = interval
        #: Per reason: when it was last logged, and how often it came since.
        self._logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def report(self, reason: str, message: str, *args: object) -> None:
        """Count one answer with ``reason``; log ``message % args`` unless logged lately."""
        now = time.monotonic()
        self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
        last = self._logged.get(reason)
        if last is not None and now - last < self._interval:
            return
        self._logged[reason] = now
        self._logger.error(
            message + " These pushes fail; no registration is disabled. %d such answer(s) "
            "since the last line like this one.",
            *args,
            self._unlogged.pop(reason),
        )
