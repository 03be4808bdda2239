"""The APNs layout: a composed push as an APNs request, what fits in one, and where it goes.

Kept apart from :mod:`bridge.push.apns` (which sends) so that composing needs no APNs client.

- ``payload = {"aps": {...}, **data}``: the top-level custom keys are exactly the data block
  (:func:`bridge.push.content.data_block`, FCM's ``data``), so one parser serves both platforms.
  ``aps`` is ``{"alert": {title, body, loc-key, loc-args (an array)}, "badge", "sound":
  "default", "thread-id": roomId, "mutable-content": 1}``; hidden and encrypted alerts have no
  ``loc-key``/``loc-args``.
- ``ios``: push type ``alert``, priority 10. ``ios-voip``: push type ``voip``, priority 10, the
  same payload without ``sound``/``mutable-content`` (PushKit hands the whole dictionary to the
  app), sent to the app's ``.voip`` topic (:func:`topic`).
- ``apns-collapse-id``: the content's collapse id (the message id, so an edit replaces the
  notification; ``invitation:<roomId>``; ``summary:<roomId>``), replaced by its SHA-256 hex
  prefix when over 64 bytes. ``expiration = int(now) + ttl``, 0 ("now or never") when ttl ≤ 0.
- Silent badge updates: push type ``background``, priority 5, ``{"aps": {"badge": n,
  "content-available": 1}, "badge": "n", "type": "badge"}``; an ``ios-voip`` token takes nothing
  but ``voip`` (priority 10).
- Size: the payload as aioapns sends it (``json.dumps(payload, ensure_ascii=False)``, UTF-8,
  never smaller than the compact form), at most :data:`APNS_LIMIT` bytes, :data:`APNS_VOIP_LIMIT`
  for ``voip``, counting the ``pushId`` every push gets after composing.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import replace
from typing import Any

from bridge.models import ApnsRequest
from bridge.push.content import PUSH_ID_KEY, Content, Target, data_block

APNS_LIMIT = 4096
APNS_VOIP_LIMIT = 5120
_ID_MAX_BYTES = 64
_APNS_ID_NAMESPACE = uuid.UUID("6f1c2b0e-8a51-4d8e-9a57-3f0a1c6e2b11")
#: What :meth:`ApnsLayout.fits` measures in place of the push id added later: as long as one.
_PUSH_ID_STAND_IN = "0" * 32


def topic(push_type: str, app_topic: str) -> str:
    """The ``apns-topic`` of a push of ``push_type`` for the app whose bundle id is ``app_topic``:
    PushKit pushes go to ``<bundle id>.voip``."""
    if push_type == "voip" and not app_topic.endswith(".voip"):
        return app_topic + ".voip"
    return app_topic


def apns_id(push_id: str) -> str:
    """A deterministic UUID (v5) for the ``apns-id`` header, so a retry reuses the same id."""
    return str(uuid.uuid5(_APNS_ID_NAMESPACE, push_id))


class ApnsLayout:
    """The :class:`~bridge.push.provider.Layout` of ``ios`` and ``ios-voip`` registrations."""

    def limit(self, target: Target) -> int:
        return APNS_VOIP_LIMIT if target.push_type == "ios-voip" else APNS_LIMIT

    def request(self, content: Content, target: Target, now: float) -> ApnsRequest:
        voip = target.push_type == "ios-voip"
        alert: dict[str, Any] = {"title": content.title, "body": content.body}
        if content.loc_key is not None:
            alert["loc-key"] = content.loc_key
            alert["loc-args"] = list(content.loc_args)
        aps: dict[str, Any] = {"alert": alert}
        if target.badge is not None:
            aps["badge"] = target.badge
        if not voip:
            aps["sound"] = "default"
        if content.room_id is not None:
            aps["thread-id"] = content.room_id
        if not voip:
            aps["mutable-content"] = 1
        collapse = content.collapse
        return ApnsRequest(
            payload={"aps": aps, **data_block(content, target.badge)},
            push_type="voip" if voip else "alert",
            priority=10,
            collapse_id=_short_id(collapse) if collapse is not None else None,
            expiration=_expiration(now, target.ttl),
            thread_id=content.room_id,
        )

    def badge(self, target: Target, badge: int, now: float) -> ApnsRequest:
        voip = target.push_type == "ios-voip"
        return ApnsRequest(
            payload={
                "aps": {"badge": badge, "content-available": 1},
                "badge": str(badge),
                "type": "badge",
            },
            push_type="voip" if voip else "background",
            priority=10 if voip else 5,
            expiration=_expiration(now, target.ttl),
        )

    def fits(self, request: ApnsRequest) -> bool:
        limit = APNS_VOIP_LIMIT if request.push_type == "voip" else APNS_LIMIT
        payload = {**request.payload, PUSH_ID_KEY: _PUSH_ID_STAND_IN}
        # aioapns sends json.dumps(message, ensure_ascii=False) with the default separators.
        return len(json.dumps(payload, ensure_ascii=False).encode("utf-8")) <= limit

    def with_badge(self, request: ApnsRequest, badge: int | None) -> ApnsRequest:
        payload = dict(request.payload)
        aps = dict(payload["aps"])
        _set(aps, "badge", badge)
        payload["aps"] = aps
        _set(payload, "badge", None if badge is None else str(badge))
        return replace(request, payload=payload)

    def with_push_id(self, request: ApnsRequest, push_id: str) -> ApnsRequest:
        return replace(request, payload={**request.payload, PUSH_ID_KEY: push_id})


LAYOUT = ApnsLayout()


def _set(block: dict[str, Any], key: str, value: object) -> None:
    """Replace ``block[key]`` if it is there (None: remove it)."""
    if value is None:
        block.pop(key, None)
    elif key in block:
        block[key] = value


def _expiration(now: float, ttl: int) -> int:
    return int(now) + ttl if ttl > 0 else 0


def _short_id(ident: str) -> str:
    if len(ident.encode("utf-8")) <= _ID_MAX_BYTES:
        return ident
    return hashlib.sha256(ident.encode("utf-8")).hexdigest()[:_ID_MAX_BYTES]
