"""The log provider: one JSON line per notification, for development, the demo and the fallback."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import deque
from typing import Any

from bridge.models import Notification
from bridge.push.provider import Delivered, SendResult

logger = logging.getLogger(__name__)


def token_ref(token: str) -> str:
    """A short, stable stand-in for a push token in logs: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def notification_record(notification: Notification) -> dict[str, Any]:
    """What the log line holds: ids, kind and the composed payload; never the token itself."""
    record: dict[str, Any] = {
        "device_id": notification.device_id,
        "push_type": notification.push_type,
        "provider": notification.provider,
        "push_id": notification.push_id,
        "kind": notification.kind,
        "token_sha256": token_ref(notification.token),
        "attempt": notification.attempt,
    }
    if notification.apns is not None:
        record["apns"] = dataclasses.asdict(notification.apns)
    if notification.fcm is not None:
        record["fcm"] = dataclasses.asdict(notification.fcm)
    return record


class LogProvider:
    """Logs each notification as one JSON line at INFO and reports it delivered.

    The last ``keep`` records (see :func:`notification_record`) stay in :attr:`sent`.
    """

    name = "log"

    def __init__(self, *, keep: int = 100) -> None:
        self.sent: deque[dict[str, Any]] = deque(maxlen=keep)

    async def send(self, notification: Notification) -> SendResult:
        """Log the notification and return :class:`Delivered`."""
        record = notification_record(notification)
        logger.info("%s", json.dumps(record, ensure_ascii=False, sort_keys=True, default=str))
        self.sent.append(record)
        return Delivered(provider_id=f"log:{notification.push_id}")

    async def close(self) -> None:
        """Nothing to release."""
