"""How devices are shown by the API (never with their tokens)."""

from __future__ import annotations

import time
from typing import Any

from bridge.logs import fingerprint
from bridge.models import Device


def device_view(device: Device, status: dict[str, Any] | None) -> dict[str, Any]:
    """A device as the bridge sees it: app state, registrations, session and recent decisions."""
    now = time.time()
    status = status or {}
    return {
        "deviceId": device.device_id,
        "clientId": device.client_id,
        "locale": device.locale,
        "state": device.effective_state(now).value,
        "requestedState": device.state.value,
        "foregroundUntil": device.foreground_until,
        "registrations": [
            {
                "type": r.type,
                "provider": r.provider,
                "tokenHash": fingerprint(r.token),
                "active": r.active,
                "disabledReason": r.disabled_reason,
                "updatedAt": r.updated_at,
                # Only where it applies; the content key itself is never shown.
                **({"apnsEnvironment": r.apns_environment} if r.provider == "apns" else {}),
                "content": r.content,
                "hasContentKey": r.content_key is not None,
            }
            for r in device.registrations.values()
        ],
        "createdAt": device.created_at,
        "updatedAt": device.updated_at,
        "session": status.get("session", "unknown"),
        "events": status.get("events", []),
        "lastProviderResult": status.get("lastProviderResult"),
    }
