"""What a push says on every platform: its :class:`Target`, its rendered :class:`Content`,
IMKIT's data block, and the event as the block's ``payload`` carries it.

:mod:`bridge.compose` renders the content of a push for a target; the platform's layout
(:mod:`bridge.push.apns_layout`, :mod:`bridge.push.fcm_layout`) lays it out as that platform's
request. The data block (:func:`data_block`) is the same on both platforms, all strings, so one
parser in the app serves both (docs/mobile.md, "Payload reference", lists its keys).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from bridge.models import PushContent
from bridge.upstream.protocol import Invitation, Message

#: The key of the push id every push carries in its data block, so the app can acknowledge it
#: (``POST /me/devices/{id}/ack``).
PUSH_ID_KEY = "pushId"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a push goes and how it should read: one registration of one device."""

    push_type: str  # "ios" | "ios-voip" | "fcm" | "android" | "web"
    locale: str | None = None  # BCP-47-ish: "zh-TW", "zh_Hant", "zh-CN", "ja", "ko-KR", "en-US"...
    badge: int | None = None
    content: PushContent = "full"
    ttl: int = 3600  # seconds: APNs expiration = now + ttl; FCM android ttl
    #: ``encrypted``: the registration's 32-byte key (a secret: kept out of the repr, so of logs).
    content_key: bytes | None = field(default=None, repr=False)
    #: ``hidden``/``encrypted``: the generic alert may name the room (``BRIDGE_PUSH_HIDDEN_ROOM_NAME``).
    hidden_room_name: bool = False


@dataclass(frozen=True, slots=True)
class Content:
    """A push as :mod:`bridge.compose` renders it, before a platform lays it out."""

    title: str
    body: str
    #: None: no ``loc-key``/``loc-args`` anywhere (the generic alert of hidden and encrypted pushes).
    loc_key: str | None
    loc_args: tuple[str, ...]
    #: The ``type`` key: ``message:<roomId>``, ``invitation:<roomId>`` or ``test``.
    type: str
    #: The room the push is about (APNs ``thread-id``; FCM ``collapse_key`` and ``tag``).
    room_id: str | None
    #: What a later push replaces this one by (APNs ``apns-collapse-id``).
    collapse: str | None
    #: The event as compact JSON, and whether that is less than the whole event.
    payload: str | None = None
    payload_trimmed: bool = False
    #: The ``content`` key: only hidden and encrypted pushes say it.
    content: PushContent | None = None
    #: Encrypted: the full push's data block, sealed with the device's key.
    enc: str | None = None


def data_block(c: Content, badge: int | None) -> dict[str, str]:
    """IMKIT's data block: FCM's ``data``, and the top-level custom keys of an APNs payload."""
    data = {"title": c.title, "body": c.body}
    if badge is not None:
        data["badge"] = str(badge)
    if c.loc_key is not None:
        data["loc-key"] = c.loc_key
        data["loc-args"] = compact_json(list(c.loc_args))
    data["type"] = c.type
    if c.payload is not None:
        data["payload"] = c.payload
    if c.payload_trimmed:
        data["payloadTrimmed"] = "1"
    if c.content is not None:
        data["content"] = c.content
    if c.enc is not None:
        data["enc"] = c.enc
    return data


def compact_json(obj: Any) -> str:
    """JSON as a push carries it in a string: compact, UTF-8 as is, strict (no NaN)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def event_json(model: Message | Invitation) -> str | None:
    """The event as compact JSON: the fields IMKIT sent, by their IMKIT names, as the tolerant
    model normalised them (``room`` is the room id, ``extra`` an object), plus every unknown
    field as is. None if it cannot be serialised: the reduced form is used."""
    try:
        return compact_json(
            sanitize(model.model_dump(mode="json", by_alias=True, exclude_unset=True))
        )
    except (ValueError, TypeError, RecursionError):
        return None


def reduced_message_json(msg: Message, n: int) -> str | None:
    """A message as the reduced ``payload`` of a push that does not fit whole: ids, sender,
    timestamps, and the first ``n`` characters of a string ``message``."""
    obj: dict[str, Any] = {"_id": msg.id, "room": msg.room, "messageType": msg.messageType}
    obj["sender"] = (
        None if msg.sender is None else {"_id": msg.sender.id, "nickname": msg.sender.nickname}
    )
    for key in ("messageTimeMS", "createdAtMS", "updatedAtMS"):
        value = getattr(msg, key)
        if value is not None:
            obj[key] = value
    if isinstance(msg.message, str):
        obj["message"] = msg.message[:n]
    return compact_json(sanitize(obj))


def reduced_invitation_json(inv: Invitation) -> str | None:
    """An invitation as the reduced ``payload``: the room's and the inviter's ids."""
    inviter = None if inv.inviter is None else {"_id": inv.inviter.id}
    return compact_json(sanitize({"room": {"_id": inv.room.id}, "inviter": inviter}))


def sanitize(obj: Any) -> Any:
    """JSON-safe copy: strings without lone surrogates, non-finite floats as null."""
    if isinstance(obj, str):
        return clean(obj)
    if isinstance(obj, bool) or obj is None or isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {clean(str(k)): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [sanitize(v) for v in obj]
    return clean(str(obj))


def clean(s: str) -> str:
    """Replace lone surrogates (legal in JSON escapes, illegal in UTF-8) with ``?``."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-8", "replace").decode("utf-8")
    return s
