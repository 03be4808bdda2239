"""The FCM layout: a composed push as an FCM v1 message, and what FCM counts against its limit.

Kept apart from :mod:`bridge.push.fcm` (which turns these blocks into firebase-admin messages and
sends them) so that composing needs no Firebase client.

- ``data`` is the data block (:func:`bridge.push.content.data_block`, APNs' custom keys);
  ``notification = {title, body}``.
- ``fcm``/``android``: ``android = {"collapse_key": roomId, "priority": "high", "ttl": <int
  seconds>, "notification": {body_loc_key, body_loc_args (a list), tag: roomId}}``. ``web``: no
  Android block but ``webpush = {"headers": {"TTL": "<seconds>", "Urgency": "high"},
  "notification": {tag: roomId}}`` (browsers have no string resources for loc keys). Title and
  body are in the top-level ``notification`` only: in FCM v1 the platform blocks' ``title``/
  ``body`` merely override it, and repeating them would count twice against the size limit.
- Encrypted pushes are data only (no ``notification`` blocks): with one, Android and browsers
  show it themselves while the app is in the background and never hand it the data to decrypt.
- Silent badge updates: data only, ``{"badge": "n", "type": "badge"}``, Android priority
  ``normal`` and collapse key ``badge`` (web: ``Urgency: normal``).
- Size: FCM counts the whole message against its 4096 bytes (data keys and values, the
  notification's title and body, the platform blocks), not ``data`` alone: the compact UTF-8
  JSON of everything but the token (:func:`size`) must stay within :data:`FCM_LIMIT` less
  :data:`FCM_RESERVE`, counting the ``pushId`` every push gets after composing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bridge.models import FcmRequest
from bridge.push.content import PUSH_ID_KEY, Content, Target, compact_json, data_block

#: FCM's limit for a whole message (data, notification and platform blocks), in bytes.
FCM_LIMIT = 4096
#: Bytes of :data:`FCM_LIMIT` left for what FCM adds to a message itself (message id, sender,
#: collapse key...; about 45 bytes by outside measurements), so a message that fits here fits there.
FCM_RESERVE = 64
#: What :meth:`FcmLayout.fits` measures in place of the push id added later: as long as one.
_PUSH_ID_STAND_IN = "0" * 32


def blocks(req: FcmRequest) -> dict[str, Any]:
    """The v1 message but the token: the blocks ``req`` has, by their v1 names."""
    named = (
        ("data", req.data),
        ("notification", req.notification),
        ("android", req.android),
        ("webpush", req.webpush),
    )
    return {name: block for name, block in named if block}


def size(req: FcmRequest) -> int:
    """What an FCM message weighs: the compact UTF-8 JSON of every block but the token.

    For the messages composed here (several blocks, many keys) this exceeds FCM's own count (JSON
    quotes and braces, key names); :data:`FCM_RESERVE` covers what FCM adds on its side.
    """
    return len(compact_json(blocks(req)).encode("utf-8"))


class FcmLayout:
    """The :class:`~bridge.push.provider.Layout` of ``fcm``, ``android`` and ``web`` registrations."""

    def limit(self, target: Target) -> int:
        return FCM_LIMIT

    def request(self, content: Content, target: Target, now: float) -> FcmRequest:
        data = data_block(content, target.badge)
        ttl = max(target.ttl, 0)
        room_id = content.room_id
        sealed = content.enc is not None
        notification = None if sealed else {"title": content.title, "body": content.body}
        if target.push_type == "web":
            webpush: dict[str, Any] = {"headers": {"TTL": str(ttl), "Urgency": "high"}}
            if room_id is not None and not sealed:
                webpush["notification"] = {"tag": room_id}
            return FcmRequest(data=data, notification=notification, webpush=webpush)
        android: dict[str, Any] = {"priority": "high", "ttl": ttl}
        if not sealed:
            note: dict[str, Any] = {}
            if content.loc_key is not None:
                note = {"body_loc_key": content.loc_key, "body_loc_args": list(content.loc_args)}
            if room_id is not None:
                note["tag"] = room_id
            if note:
                android["notification"] = note
        if room_id is not None:
            android = {"collapse_key": room_id, **android}
        return FcmRequest(data=data, android=android, notification=notification)

    def badge(self, target: Target, badge: int, now: float) -> FcmRequest:
        data = {"badge": str(badge), "type": "badge"}
        ttl = max(target.ttl, 0)
        if target.push_type == "web":
            return FcmRequest(
                data=data, webpush={"headers": {"TTL": str(ttl), "Urgency": "normal"}}
            )
        return FcmRequest(
            data=data, android={"collapse_key": "badge", "priority": "normal", "ttl": ttl}
        )

    def fits(self, request: FcmRequest) -> bool:
        return size(self.with_push_id(request, _PUSH_ID_STAND_IN)) <= FCM_LIMIT - FCM_RESERVE

    def with_badge(self, request: FcmRequest, badge: int | None) -> FcmRequest:
        data = dict(request.data)
        if badge is None:
            data.pop("badge", None)
        elif "badge" in data:
            data["badge"] = str(badge)
        return replace(request, data=data)

    def with_push_id(self, request: FcmRequest, push_id: str) -> FcmRequest:
        return replace(request, data={**request.data, PUSH_ID_KEY: push_id})


LAYOUT = FcmLayout()
