"""Event + device → APNs / FCM request in IMKIT's push payload format. Pure functions, no I/O.

The fields (see /work/shared/imkit-protocol.md, "Push payload format")
-----------------------------------------------------------------------
Every alerting push carries one *data block*, all strings:

- ``title``, ``body``: plain fallback text in the device's language (:mod:`bridge.l10n`).
- ``badge``: the badge count (omitted when unknown).
- ``loc-key``: ``im_loc_<messageType>``. Known types keep IMKIT's spelling with ``-`` turned into
  ``_`` (``im_loc_joinRoom``, ``im_loc_payment_select``); unknown ones are lower-cased and reduced
  to ``[a-z0-9_]`` (at most 48 characters, ``im_loc_unknown`` if nothing is left). Invitations use
  ``im_loc_invitation``, backfill summaries ``im_loc_summary``, test pushes ``im_loc_test``.
- ``loc-args``: a compact JSON array of strings. Text-like types (:data:`TEXT_TYPES`) get
  ``[sender, text]``, every other type ``[sender]``; invitations ``[inviter, room name]`` (a
  localised "a chat" when the room has no name); summaries ``[count]``; test ``[]``.
  The sender is the nickname; a null sender (platform message) is the room name when known, else
  a localised "System"; a sender without a nickname is a localised "Someone".
- ``type``: ``message:<roomId>`` (also for summaries, so a tap opens the room),
  ``invitation:<roomId>``, ``test``.
- ``payload``: the Message (or Invitation) as compact JSON: the fields IMKIT sent, by their IMKIT
  names, as the tolerant model normalised them (``room`` is the room id, ``extra`` an object),
  plus every unknown field as is. ``payloadTrimmed: "1"`` is added whenever ``payload`` is not
  the whole object (see size limits).

Title: the room name when the caller passes one (it does so for group rooms), else the sender.
Body: text-like types show the text (``"<sender>: <text>"`` under a room title); other types, and
text-like ones without text, a localised sentence (``"Alice sent a photo"``); unknown types
``"Alice sent a message"``. Encrypted messages never show their content.

APNs (``ios``, ``ios-voip``)
---------------------------
``payload = {"aps": {...}, **data}``: the top-level custom keys are *exactly* the FCM data block
(all strings), so one parser serves both platforms. ``aps`` is ``{"alert": {title, body, loc-key,
loc-args (array)}, "badge", "sound": "default", "thread-id": roomId, "mutable-content": 1}``.
``ios`` → push type ``alert``, priority 10. ``ios-voip`` → push type ``voip``, priority 10, same
payload without ``sound``/``mutable-content`` (PushKit hands the whole dictionary to the app), and
``topic`` gets the ``.voip`` suffix when the target names one. ``collapse_id`` is the message id
(an edit replaces the notification), ``invitation:<roomId>`` or ``summary:<roomId>``; any id over
64 bytes is replaced by its SHA-256 hex prefix. ``expiration = int(now) + ttl`` (0 when ttl ≤ 0).
``thread_id`` is the room id.

FCM (``fcm``, ``android``, ``web``)
-----------------------------------
``data`` as above; ``notification = {title, body}``; for ``fcm``/``android``,
``android = {"collapse_key": roomId, "priority": "high", "ttl": <int seconds>, "notification":
{body_loc_key, body_loc_args (list), tag: roomId}}``. For ``web`` the Android block is absent and
``webpush = {"headers": {"TTL": "<seconds>", "Urgency": "high"}, "notification": {tag: roomId}}``
instead (browsers have no string resources for loc keys). Title and body are in the top-level
``notification`` only: in FCM v1 the platform blocks' ``title``/``body`` merely override it, and
repeating them would count twice against FCM's size limit.

Silent badge updates (:func:`compose_badge`): APNs push type ``background``, priority 5,
``{"aps": {"badge": n, "content-available": 1}, "type": "badge", "badge": "n"}``; FCM data-only
``{"badge": "n", "type": "badge"}`` with Android priority ``normal`` and collapse key ``badge``
(web: ``Urgency: normal``). An ``ios-voip`` target gets push type ``voip`` (a PushKit token takes
nothing else); callers should not send it badge, summary or test pushes, since iOS 13+ expects
every VoIP push to report a call.

Privacy modes (``Target.content``; docs/privacy.md has the exact fields and the sealed format)
----------------------------------------------------------------------------------------------
``hidden``: no text, no sender (name or id), no room name (unless ``Target.hidden_room_name``: then
it is the title). The data block is ``title``/``body`` (a generic, localised "New message" /
"New invitation" / summary / test alert), ``badge``, ``type``, ``payload`` with ids only (a message
``{_id, room, messageType}``, an invitation ``{room: {_id}}``, none for summaries and tests) and
``content: "hidden"``; no ``loc-key``/``loc-args`` anywhere (they would name the sender), so the
APNs alert is ``{title, body}`` and ``android.notification`` only has its ``tag``.
``encrypted``: the ``hidden`` push plus ``enc``, the ``full`` push's data block sealed with the
registration's key (:mod:`bridge.seal`), and ``content: "encrypted"``; FCM gets it data-only (no
``notification`` blocks) so the app can decrypt before anything is shown. The fitting below works
on the full content until its *sealed* form fits. ``encrypted`` without a 32-byte key is sent as
``hidden`` (never ``full``), and logged once per process.

Size limits
-----------
APNs: the payload as aioapns sends it (``json.dumps(payload, ensure_ascii=False)``, UTF-8; this is
never smaller than the compact form) ≤ 4096 bytes, 5120 for ``voip``. FCM counts the *whole*
message against its 4096 bytes (``data`` keys and values, the notification's title and body, the
platform blocks), not ``data`` alone: the compact UTF-8 JSON of everything but the token
(:func:`fcm_size`) must stay within :data:`FCM_LIMIT` less :data:`FCM_RESERVE` bytes kept for the
fields FCM adds itself. Both counts include the ``pushId`` (32 hex characters) that every push
gets after composing (:func:`with_push_id`). Sender and room names are always capped at
:data:`NAME_MAX` characters ("…" appended). When a push still does not fit, in this order:

1. ``payload`` becomes a reduced object (``_id``, ``room``, ``messageType``, ``sender`` {``_id``,
   ``nickname``}, the timestamps, and the longest prefix of a string ``message`` that fits), still
   valid JSON, with ``payloadTrimmed: "1"``; invitations reduce to ``{room: {_id}, inviter:
   {_id}}``. If even that does not fit, ``payload`` is dropped (``payloadTrimmed`` stays).
2. The text, then the room name, then the sender name are cut to the longest prefix that fits,
   with an ellipsis "…" appended. Cuts are between code points, so UTF-8 stays valid; lone
   surrogates from upstream JSON are replaced by ``?`` beforehand.
3. If ids alone (a pathological room id) still overflow, :class:`ComposeError` is raised.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from bridge import l10n
from bridge.models import ApnsRequest, FcmRequest, PushContent
from bridge.seal import KEY_SIZE, Sealer
from bridge.upstream.protocol import Invitation, Message

APNS_LIMIT = 4096
APNS_VOIP_LIMIT = 5120
#: FCM's limit for a whole message (data, notification and platform blocks), in bytes.
FCM_LIMIT = 4096
#: Bytes of :data:`FCM_LIMIT` left for what FCM adds to a message itself (message id, sender,
#: collapse key...; about 45 bytes by outside measurements), so a message that fits here fits there.
FCM_RESERVE = 64

#: Message types whose text is shown (``loc-args`` ``[sender, text]``).
TEXT_TYPES: frozenset[str] = frozenset(
    {"text", "url", "announcement", "mixed", "line", "ai_streaming"}
)
#: Message types IMKIT documents; their loc-key keeps IMKIT's spelling.
KNOWN_TYPES: frozenset[str] = TEXT_TYPES | l10n.DESCRIBED_TYPES | {"template", "flex"}

ELLIPSIS = "…"
#: Sender and room names longer than this (in characters) are cut with "…" up front: screens
#: show far less, and it keeps a huge name from crowding out the text.
NAME_MAX = 64
log = logging.getLogger(__name__)
_APNS_ID_NAMESPACE = uuid.UUID("6f1c2b0e-8a51-4d8e-9a57-3f0a1c6e2b11")
_LOC_KEY_MAX = 48
_ID_MAX_BYTES = 64

Request = ApnsRequest | FcmRequest


class ComposeError(ValueError):
    """The push cannot fit its size limit even with every text field emptied (ids too long)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a push goes and how it should read: one registration of one device."""

    push_type: str  # "ios" | "ios-voip" | "fcm" | "android" | "web"
    locale: str | None = None  # BCP-47-ish: "zh-TW", "zh_Hant", "zh-CN", "ja", "ko-KR", "en-US"...
    badge: int | None = None
    topic: str | None = None  # APNs bundle id (None: the provider's configured topic)
    content: PushContent = "full"
    ttl: int = 3600  # seconds: APNs expiration = now + ttl; FCM android ttl
    #: ``encrypted``: the registration's 32-byte key (a secret: kept out of the repr, so of logs).
    content_key: bytes | None = field(default=None, repr=False)
    #: ``hidden``/``encrypted``: the generic alert may name the room (``BRIDGE_PUSH_HIDDEN_ROOM_NAME``).
    hidden_room_name: bool = False


# --------------------------------------------------------------------------------------------
# Public API


def compose_message(
    msg: Message, target: Target, *, now: float, room_name: str | None = None
) -> Request:
    """A ``chat message`` as a push for ``target``; ``room_name`` (group rooms) is the title."""
    lang = l10n.resolve_locale(target.locale)
    mode, sealer = _mode(target)
    mtype = msg.messageType
    text_like = mtype in TEXT_TYPES
    room = _clean(room_name or "")
    room_id = _clean(msg.room)
    msg_id = _clean(msg.id)
    seal = None
    if mode != "full":
        hidden = _Hidden(
            l10n.text(lang, "new_message_title"),
            l10n.text(lang, "new_message_body"),
            f"message:{room_id}",
            room_id,
            msg_id,
            room if target.hidden_room_name else "",
            _json(_sanitize({"_id": msg.id, "room": msg.room, "messageType": mtype})),
        )
        if sealer is None:
            return _fit_hidden(target, now, hidden)
        seal = _sealing(sealer, hidden, target)
    if msg.sender is None:
        name = room or l10n.text(lang, "system")
    else:
        name = _clean(msg.sender.nickname or "") or l10n.text(lang, "someone")
    text = _clean(msg.text) if text_like else ""
    loc_key = loc_key_for(mtype)

    def render(v: _Vars) -> _Fields:
        title = v.room or v.name
        if text_like and v.text:
            body = l10n.text(lang, "with_sender", name=v.name, text=v.text) if v.room else v.text
        else:
            body = l10n.describe(lang, mtype, v.name)
        args = (v.name, v.text) if text_like else (v.name,)
        return _Fields(title, body, loc_key, args, f"message:{room_id}", room_id, msg_id, v)

    message_text = msg.message if isinstance(msg.message, str) else None
    return _fit(
        target,
        now,
        render,
        _Vars(text=text, room=room, name=name),
        with_payload=True,
        full_payload=_dump(msg),
        reduced=lambda n: _reduced_message(msg, n),
        reduced_max=len(message_text) if message_text is not None else 0,
        seal=seal,
    )


def compose_invitation(inv: Invitation, target: Target, *, now: float) -> Request:
    """An ``invitation`` as a push: ``im_loc_invitation`` with ``[inviter, room name]``."""
    lang = l10n.resolve_locale(target.locale)
    mode, sealer = _mode(target)
    room_id = _clean(inv.room.id)
    room = _clean(inv.room.name or "")
    collapse = f"invitation:{room_id}"
    seal = None
    if mode != "full":
        hidden = _Hidden(
            l10n.text(lang, "new_invitation_title"),
            l10n.text(lang, "new_invitation_body"),
            f"invitation:{room_id}",
            room_id,
            collapse,
            room if target.hidden_room_name else "",
            _json(_sanitize({"room": {"_id": inv.room.id}})),
        )
        if sealer is None:
            return _fit_hidden(target, now, hidden)
        seal = _sealing(sealer, hidden, target)
    if inv.inviter is None:
        name = l10n.text(lang, "system")
    else:
        name = _clean(inv.inviter.nickname or "") or l10n.text(lang, "someone")
    a_chat = l10n.text(lang, "a_chat")

    def render(v: _Vars) -> _Fields:
        title = v.room or v.name
        body = l10n.text(lang, "invitation", name=v.name, room=v.room or a_chat)
        args = (v.name, v.room or a_chat)
        return _Fields(
            title, body, "im_loc_invitation", args, f"invitation:{room_id}", room_id, collapse, v
        )

    return _fit(
        target,
        now,
        render,
        _Vars(room=room, name=name),
        with_payload=True,
        full_payload=_dump(inv),
        reduced=lambda _n: _reduced_invitation(inv),
        reduced_max=0,
        seal=seal,
    )


def compose_badge(target: Target, badge: int, *, now: float) -> Request:
    """A silent badge update: no alert, no sound (APNs ``background``, FCM data-only)."""
    data = {"badge": str(badge), "type": "badge"}
    ttl = max(target.ttl, 0)
    if _is_apns(target):
        voip = target.push_type == "ios-voip"
        return ApnsRequest(
            payload={"aps": {"badge": badge, "content-available": 1}, **data},
            push_type="voip" if voip else "background",
            priority=10 if voip else 5,
            topic=_topic(target),
            expiration=_expiration(now, ttl),
        )
    if target.push_type == "web":
        return FcmRequest(data=data, webpush={"headers": {"TTL": str(ttl), "Urgency": "normal"}})
    return FcmRequest(
        data=data, android={"collapse_key": "badge", "priority": "normal", "ttl": ttl}
    )


def compose_summary(
    room_id: str, count: int, target: Target, *, now: float, room_name: str | None = None
) -> Request:
    """One "N new messages" push for a room (backfill): ``im_loc_summary`` with ``[count]``."""
    lang = l10n.resolve_locale(target.locale)
    mode, sealer = _mode(target)
    rid = _clean(room_id)
    body = l10n.summary(lang, count)
    generic = l10n.text(lang, "summary_title")
    room = _clean(room_name or "")
    seal = None
    if mode != "full":
        hidden = _Hidden(
            generic, body, f"message:{rid}", rid, f"summary:{rid}", room if target.hidden_room_name else ""
        )
        if sealer is None:
            return _fit_hidden(target, now, hidden)
        seal = _sealing(sealer, hidden, target)

    def render(v: _Vars) -> _Fields:
        return _Fields(
            v.room or generic,
            body,
            "im_loc_summary",
            (str(count),),
            f"message:{rid}",
            rid,
            f"summary:{rid}",
            v,
        )

    return _fit(target, now, render, _Vars(room=room), seal=seal)


def compose_test(target: Target, *, now: float) -> Request:
    """A test notification (``im_loc_test``), for ``POST /me/devices/{id}/test-push``.

    It follows the registration's content mode, so an app can check its decryption with it.
    """
    lang = l10n.resolve_locale(target.locale)
    mode, sealer = _mode(target)
    title = l10n.text(lang, "test_title")
    body = l10n.text(lang, "test_body")
    seal = None
    if mode != "full":
        hidden = _Hidden(title, body, "test", None, None)
        if sealer is None:
            return _fit_hidden(target, now, hidden)
        seal = _sealing(sealer, hidden, target)

    def render(v: _Vars) -> _Fields:
        return _Fields(title, body, "im_loc_test", (), "test", None, None, v)

    return _fit(target, now, render, _Vars(), seal=seal)


def push_id(device_id: str, kind: str, ident: str) -> str:
    """A stable id per (device, kind, message/room id): 32 hex chars of SHA-256."""
    raw = "\x00".join((device_id, kind, ident)).encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:32]


def apns_id(push_id: str) -> str:
    """A deterministic UUID (v5) for the ``apns-id`` header, so a retry reuses the same id."""
    return str(uuid.uuid5(_APNS_ID_NAMESPACE, push_id))


def loc_key_for(message_type: str) -> str:
    """``im_loc_<type>``: IMKIT's spelling for known types, ``[a-z0-9_]`` for any other."""
    if message_type in KNOWN_TYPES:
        return "im_loc_" + message_type.replace("-", "_")
    key = re.sub(r"[^a-z0-9_]+", "_", message_type.lower()).strip("_")[:_LOC_KEY_MAX]
    return "im_loc_" + (key or "unknown")


#: The key of the push id every push carries (APNs: top-level custom key; FCM: ``data``), so the
#: app can acknowledge it (``POST /me/devices/{id}/ack``).
PUSH_ID_KEY = "pushId"


def with_push_id(req: Request, push_id: str) -> Request:
    """A copy of ``req`` carrying ``push_id`` (a composed request is shared between tokens)."""
    if isinstance(req, ApnsRequest):
        return replace(req, payload={**req.payload, PUSH_ID_KEY: push_id})
    return replace(req, data={**req.data, PUSH_ID_KEY: push_id})


#: The badge a composition shared between devices is made with (:func:`with_badge` then puts
#: each device's own in its place): as wide as any badge up to it, so the copy fits as well.
BADGE_ROOM = 999_999


def with_badge(req: Request, badge: int | None) -> Request:
    """A copy of ``req``, composed with ``badge=BADGE_ROOM``, carrying ``badge`` instead.

    None removes the badge. ``badge`` must be within ``0..BADGE_ROOM``: a wider number could
    push the request over its size limit (compose such a push on its own).
    """
    if badge is not None and not 0 <= badge <= BADGE_ROOM:
        raise ValueError(f"badge {badge} is outside 0..{BADGE_ROOM}")
    if isinstance(req, ApnsRequest):
        payload = dict(req.payload)
        aps = dict(payload["aps"])
        _set_badge(aps, badge)
        payload["aps"] = aps
        _set_badge(payload, None if badge is None else str(badge))
        return replace(req, payload=payload)
    data = dict(req.data)
    _set_badge(data, None if badge is None else str(badge))
    return replace(req, data=data)


def _set_badge(block: dict[str, Any], value: object) -> None:
    if value is None:
        block.pop("badge", None)
    elif "badge" in block:
        block["badge"] = value


def fits(req: Request) -> bool:
    """Whether a request is within its provider's size limit (see module docstring), counting the
    ``pushId`` added after composing: measured with one of the same length (32 hex characters)."""
    req = with_push_id(req, "0" * 32)
    if isinstance(req, ApnsRequest):
        limit = APNS_VOIP_LIMIT if req.push_type == "voip" else APNS_LIMIT
        return _apns_size(req.payload) <= limit
    return fcm_size(req) <= FCM_LIMIT - FCM_RESERVE


def fcm_size(req: FcmRequest) -> int:
    """What an FCM message weighs: the compact UTF-8 JSON of every block but the token.

    For the messages composed here (several blocks, many keys) this exceeds FCM's own count (JSON
    quotes and braces, key names); :data:`FCM_RESERVE` covers what FCM adds on its side.
    """
    message = {
        name: block
        for name, block in (
            ("data", req.data),
            ("notification", req.notification),
            ("android", req.android),
            ("apns", req.apns),
            ("webpush", req.webpush),
        )
        if block
    }
    return len(_json(message).encode("utf-8"))


# --------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True, slots=True)
class _Vars:
    """The parts that may be cut to fit; everything else in a push is fixed."""

    text: str = ""
    room: str = ""
    name: str = ""
    payload: str | None = None
    payload_trimmed: bool = False


@dataclass(frozen=True, slots=True)
class _Fields:
    title: str
    body: str
    loc_key: str | None  # None: no loc-key/loc-args anywhere (hidden and encrypted alerts)
    loc_args: tuple[str, ...]
    type: str
    room_id: str | None
    collapse: str | None
    vars: _Vars
    content: PushContent | None = None  # the ``content`` key: only hidden/encrypted pushes say it
    enc: str | None = None  # encrypted: the sealed data block of the full push


@dataclass(frozen=True, slots=True)
class _Hidden:
    """The generic alert of a ``hidden`` push (also the clear part of an ``encrypted`` one)."""

    title: str
    body: str
    type: str
    room_id: str | None
    collapse: str | None
    room: str = ""  # the room name, when BRIDGE_PUSH_HIDDEN_ROOM_NAME allows it: the title
    payload: str | None = None  # ids only, as compact JSON

    def render(self, v: _Vars) -> _Fields:
        return _Fields(
            v.room or self.title,
            self.body,
            None,
            (),
            self.type,
            self.room_id,
            self.collapse,
            v,
            "hidden",
        )


def _data(f: _Fields, badge: int | None) -> dict[str, str]:
    data = {"title": f.title, "body": f.body}
    if badge is not None:
        data["badge"] = str(badge)
    if f.loc_key is not None:
        data["loc-key"] = f.loc_key
        data["loc-args"] = _json(list(f.loc_args))
    data["type"] = f.type
    if f.vars.payload is not None:
        data["payload"] = f.vars.payload
    if f.vars.payload_trimmed:
        data["payloadTrimmed"] = "1"
    if f.content is not None:
        data["content"] = f.content
    if f.enc is not None:
        data["enc"] = f.enc
    return data


def _request(f: _Fields, target: Target, now: float) -> Request:
    data = _data(f, target.badge)
    ttl = max(target.ttl, 0)
    if _is_apns(target):
        voip = target.push_type == "ios-voip"
        alert: dict[str, Any] = {"title": f.title, "body": f.body}
        if f.loc_key is not None:
            alert["loc-key"] = f.loc_key
            alert["loc-args"] = list(f.loc_args)
        aps: dict[str, Any] = {"alert": alert}
        if target.badge is not None:
            aps["badge"] = target.badge
        if not voip:
            aps["sound"] = "default"
        if f.room_id is not None:
            aps["thread-id"] = f.room_id
        if not voip:
            aps["mutable-content"] = 1
        return ApnsRequest(
            payload={"aps": aps, **data},
            push_type="voip" if voip else "alert",
            priority=10,
            topic=_topic(target),
            collapse_id=_short_id(f.collapse) if f.collapse is not None else None,
            expiration=_expiration(now, ttl),
            thread_id=f.room_id,
        )
    # Encrypted: data only. With a notification block Android and browsers show it themselves
    # while the app is in the background and never hand it the data to decrypt.
    sealed = f.enc is not None
    # Title and body only here: the platform blocks' copies would merely repeat (override) them
    # and count twice against FCM's size limit.
    notification = None if sealed else {"title": f.title, "body": f.body}
    if target.push_type == "web":
        webpush: dict[str, Any] = {"headers": {"TTL": str(ttl), "Urgency": "high"}}
        if f.room_id is not None and not sealed:
            webpush["notification"] = {"tag": f.room_id}
        return FcmRequest(data=data, notification=notification, webpush=webpush)
    if sealed:
        android_data: dict[str, Any] = {"priority": "high", "ttl": ttl}
        if f.room_id is not None:
            android_data = {"collapse_key": f.room_id, **android_data}
        return FcmRequest(data=data, android=android_data)
    a_note: dict[str, Any] = {}
    if f.loc_key is not None:
        a_note = {"body_loc_key": f.loc_key, "body_loc_args": list(f.loc_args)}
    if f.room_id is not None:
        a_note["tag"] = f.room_id
    android: dict[str, Any] = {"priority": "high", "ttl": ttl}
    if a_note:
        android["notification"] = a_note
    if f.room_id is not None:
        android = {"collapse_key": f.room_id, **android}
    return FcmRequest(data=data, android=android, notification=notification)


# --------------------------------------------------------------------------------------------
# Fitting


def _fit(
    target: Target,
    now: float,
    render: Callable[[_Vars], _Fields],
    start: _Vars,
    *,
    with_payload: bool = False,
    full_payload: str | None = None,
    reduced: Callable[[int], str | None] | None = None,
    reduced_max: int = 0,
    seal: Callable[[_Fields], _Fields] | None = None,
) -> Request:
    """Render, then cut parts in the documented order until the push fits its limit.

    ``full_payload`` None with ``with_payload`` means the event could not be serialised whole.
    ``seal`` (encrypted) turns each rendering into the fields actually sent, so the cuts apply to
    the full content until its sealed form fits.
    """
    limit = _limit(target)

    def attempt(v: _Vars) -> Request | None:
        f = render(v)
        req = _request(seal(f) if seal is not None else f, target, now)
        return req if fits(req) else None

    def cutting(base: _Vars, part: str, original: str) -> Callable[[int], Request | None]:
        return lambda n: attempt(_with(base, part, _cut(original, n)))

    # Text longer than the limit in characters can never fit: cap early so huge text costs nothing.
    v = replace(
        start,
        text=_cap(start.text, limit),
        room=_cap(start.room, NAME_MAX),
        name=_cap(start.name, NAME_MAX),
    )
    originals = {"text": v.text, "room": v.room, "name": v.name}
    if with_payload:
        if full_payload is not None and len(full_payload) <= limit:
            got = attempt(replace(v, payload=full_payload))
            if got is not None:
                return got
        v = replace(v, payload_trimmed=True)
        if reduced is not None:
            best = _longest(
                min(reduced_max, limit), lambda n: attempt(replace(v, payload=reduced(n)))
            )
            if best is not None:
                return best
    got = attempt(v)
    if got is not None:
        return got

    for part in ("text", "room", "name"):
        original = originals[part]
        if not original:
            continue
        best = _longest(len(original) - 1, cutting(v, part, original))
        if best is not None:
            return best
        v = _with(v, part, "")
    got = attempt(v)
    if got is None:
        raise ComposeError("push does not fit its size limit even without text (room id too long?)")
    return got


def _fit_hidden(target: Target, now: float, hidden: _Hidden) -> Request:
    """A ``hidden`` push: the generic alert and ids only; only a permitted room name is cut."""
    return _fit(
        target,
        now,
        hidden.render,
        _Vars(room=hidden.room),
        with_payload=hidden.payload is not None,
        full_payload=hidden.payload,
    )


def _sealing(sealer: Sealer, hidden: _Hidden, target: Target) -> Callable[[_Fields], _Fields]:
    """Encrypted: the full push's data block, sealed, inside the fields of the hidden push."""
    clear = hidden.render(_Vars(room=_cap(hidden.room, NAME_MAX), payload=hidden.payload))
    clear = replace(clear, content="encrypted")

    def seal(f: _Fields) -> _Fields:
        plain = _json(_data(f, target.badge)).encode("utf-8")
        return replace(clear, enc=sealer.seal(plain))

    return seal


_warned_no_key = False


def _mode(target: Target) -> tuple[PushContent, Sealer | None]:
    """The content mode to apply, and the sealer for ``encrypted``.

    ``encrypted`` without a usable key (subscribe prevents it; a store bug might not) falls back
    to ``hidden``, never to ``full``: what the device asked to keep off Apple's and Google's
    servers stays off them. Any unknown mode is ``hidden`` for the same reason.
    """
    global _warned_no_key
    if target.content == "full":
        return "full", None
    if target.content == "encrypted":
        key = target.content_key
        if key is not None and len(key) == KEY_SIZE:
            return "encrypted", Sealer(key)
        if not _warned_no_key:
            _warned_no_key = True
            log.warning(
                "content=encrypted without a 32-byte key: sent as hidden",
                extra={"push_type": target.push_type},
            )
    return "hidden", None


def _with(v: _Vars, part: str, value: str) -> _Vars:
    if part == "text":
        return replace(v, text=value)
    if part == "room":
        return replace(v, room=value)
    return replace(v, name=value)


def _longest(n_max: int, attempt: Callable[[int], Request | None]) -> Request | None:
    """The result for the largest ``n`` in ``[0, n_max]`` that fits (sizes grow with ``n``)."""
    if n_max < 0:
        return None
    best = attempt(0)
    if best is None:
        return None
    lo, hi = 0, n_max  # invariant: lo fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        got = attempt(mid)
        if got is not None:
            lo, best = mid, got
        else:
            hi = mid - 1
    return best


def _cut(s: str, n: int) -> str:
    return s if n >= len(s) else s[:n] + ELLIPSIS


def _cap(s: str, limit: int) -> str:
    return s if len(s) <= limit else s[:limit] + ELLIPSIS


def _limit(target: Target) -> int:
    if target.push_type == "ios-voip":
        return APNS_VOIP_LIMIT
    return APNS_LIMIT if _is_apns(target) else FCM_LIMIT


def _apns_size(payload: dict[str, Any]) -> int:
    # aioapns sends json.dumps(message, ensure_ascii=False) with the default separators.
    return len(json.dumps(payload, ensure_ascii=False).encode("utf-8"))


# --------------------------------------------------------------------------------------------
# Payload JSON


def _dump(model: Message | Invitation) -> str | None:
    """The event as compact JSON (None if it cannot be serialised: the reduced form is used)."""
    try:
        return _json(_sanitize(model.model_dump(mode="json", by_alias=True, exclude_unset=True)))
    except (ValueError, TypeError, RecursionError):
        return None


def _reduced_message(msg: Message, n: int) -> str | None:
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
    return _json(_sanitize(obj))


def _reduced_invitation(inv: Invitation) -> str | None:
    inviter = None if inv.inviter is None else {"_id": inv.inviter.id}
    return _json(_sanitize({"room": {"_id": inv.room.id}, "inviter": inviter}))


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _sanitize(obj: Any) -> Any:
    """JSON-safe copy: strings without lone surrogates, non-finite floats as null."""
    if isinstance(obj, str):
        return _clean(obj)
    if isinstance(obj, bool) or obj is None or isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {_clean(str(k)): _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_sanitize(v) for v in obj]
    return _clean(str(obj))


def _clean(s: str) -> str:
    """Replace lone surrogates (legal in JSON escapes, illegal in UTF-8) with ``?``."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-8", "replace").decode("utf-8")
    return s


# --------------------------------------------------------------------------------------------
# Small helpers


def _is_apns(target: Target) -> bool:
    return target.push_type in ("ios", "ios-voip")


def _topic(target: Target) -> str | None:
    if target.topic and target.push_type == "ios-voip" and not target.topic.endswith(".voip"):
        return target.topic + ".voip"
    return target.topic


def _expiration(now: float, ttl: int) -> int:
    return int(now) + ttl if ttl > 0 else 0


def _short_id(ident: str) -> str:
    if len(ident.encode("utf-8")) <= _ID_MAX_BYTES:
        return ident
    return hashlib.sha256(ident.encode("utf-8")).hexdigest()[:_ID_MAX_BYTES]
