"""What a push says: an event rendered for one device in IMKIT's push payload format, cut to fit.

Pure functions, no I/O. Each ``compose_*`` function renders the texts (in the device's language,
:mod:`bridge.l10n`) and the ids of one kind of push as a :class:`~bridge.push.content.Content`,
applies the device's privacy mode (docs/privacy.md) and hands the content to its platform's
layout (:mod:`bridge.push.apns_layout`, :mod:`bridge.push.fcm_layout`), which makes the request.
What differs between platforms stays in their layouts; what is the same on all of them is here:
the texts, the ids, and the size policy (:func:`_fit`), which cuts the same parts in the same
order whatever the platform, asking its layout what fits. docs/mobile.md ("Payload reference")
describes every key for app developers.

A composed request is shared between devices where only the badge and the push id differ
(:mod:`bridge.worker.compose_cache`): it is composed with :data:`BADGE_ROOM` and copied with each
device's own badge (:func:`with_badge`) and push id (:func:`with_push_id`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from bridge import l10n
from bridge.models import ApnsRequest, FcmRequest, PushContent, provider_for
from bridge.push import apns_layout, fcm_layout
from bridge.push.content import (
    Content,
    clean,
    compact_json,
    data_block,
    event_json,
    reduced_invitation_json,
    reduced_message_json,
    sanitize,
)
from bridge.push.content import Target as Target  # re-exported: callers make targets here
from bridge.push.provider import Layout
from bridge.seal import KEY_SIZE, Sealer
from bridge.upstream.protocol import Invitation, Message

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
#: The badge a composition shared between devices is made with (:func:`with_badge` then puts
#: each device's own in its place): as wide as any badge up to it, so the copy fits as well.
BADGE_ROOM = 999_999
log = logging.getLogger(__name__)
_LOC_KEY_MAX = 48

Request = ApnsRequest | FcmRequest

#: Each platform's layout, by provider (:func:`bridge.models.provider_for`) and by request type.
_LAYOUTS: dict[str, Layout[Any]] = {"apns": apns_layout.LAYOUT, "fcm": fcm_layout.LAYOUT}
_LAYOUT_OF: dict[type, Layout[Any]] = {
    ApnsRequest: apns_layout.LAYOUT,
    FcmRequest: fcm_layout.LAYOUT,
}


class ComposeError(ValueError):
    """The push cannot fit its size limit even with every text field emptied (ids too long)."""


# --------------------------------------------------------------------------------------------
# Each kind of push


def compose_message(
    msg: Message, target: Target, *, now: float, room_name: str | None = None
) -> Request:
    """A ``chat message`` as a push for ``target``.

    Title: ``room_name`` (the caller passes it for group rooms), else the sender: the nickname,
    "Someone" without one, and for a platform message (no sender) the room name or "System".
    Body: text-like types (:data:`TEXT_TYPES`) show the text (``"<sender>: <text>"`` under a
    room title), with ``loc-args`` ``[sender, text]``; other types, and text-like ones without
    text, a sentence (``"Alice sent a photo"``), with ``loc-args`` ``[sender]``.
    """
    lang = l10n.resolve_locale(target.locale)
    mtype = msg.messageType
    text_like = mtype in TEXT_TYPES
    room = clean(room_name or "")
    room_id = clean(msg.room)
    msg_id = clean(msg.id)

    def hidden() -> _Hidden:
        ids = compact_json(sanitize({"_id": msg.id, "room": msg.room, "messageType": mtype}))
        title, body = l10n.text(lang, "new_message_title"), l10n.text(lang, "new_message_body")
        return _Hidden(title, body, f"message:{room_id}", room_id, msg_id, room, ids)

    if msg.sender is None:
        name = room or l10n.text(lang, "system")
    else:
        name = clean(msg.sender.nickname or "") or l10n.text(lang, "someone")
    text = clean(msg.text) if text_like else ""
    loc_key = loc_key_for(mtype)

    def render(v: _Vars) -> Content:
        title = v.room or v.name
        if text_like and v.text:
            body = l10n.text(lang, "with_sender", name=v.name, text=v.text) if v.room else v.text
        else:
            body = l10n.describe(lang, mtype, v.name)
        args = (v.name, v.text) if text_like else (v.name,)
        return v.content(title, body, loc_key, args, f"message:{room_id}", room_id, msg_id)

    start = _Vars(text=text, room=room, name=name)
    return _compose(
        target, now, render, start, hidden,
        full_payload=event_json(msg),
        reduced=lambda n: reduced_message_json(msg, n),
        reduced_max=len(msg.message) if isinstance(msg.message, str) else 0,
    )  # fmt: skip


def compose_invitation(inv: Invitation, target: Target, *, now: float) -> Request:
    """An ``invitation`` as a push: ``im_loc_invitation`` with ``[inviter, room name]``."""
    lang = l10n.resolve_locale(target.locale)
    room_id = clean(inv.room.id)
    room = clean(inv.room.name or "")
    collapse = f"invitation:{room_id}"

    def hidden() -> _Hidden:
        ids = compact_json(sanitize({"room": {"_id": inv.room.id}}))
        title = l10n.text(lang, "new_invitation_title")
        body = l10n.text(lang, "new_invitation_body")
        return _Hidden(title, body, f"invitation:{room_id}", room_id, collapse, room, ids)

    if inv.inviter is None:
        name = l10n.text(lang, "system")
    else:
        name = clean(inv.inviter.nickname or "") or l10n.text(lang, "someone")
    a_chat = l10n.text(lang, "a_chat")

    def render(v: _Vars) -> Content:
        title = v.room or v.name
        body = l10n.text(lang, "invitation", name=v.name, room=v.room or a_chat)
        args = (v.name, v.room or a_chat)
        loc_key = "im_loc_invitation"
        return v.content(title, body, loc_key, args, f"invitation:{room_id}", room_id, collapse)

    return _compose(
        target, now, render, _Vars(room=room, name=name), hidden,
        full_payload=event_json(inv), reduced=lambda _n: reduced_invitation_json(inv),
    )  # fmt: skip


def compose_summary(
    room_id: str, count: int, target: Target, *, now: float, room_name: str | None = None
) -> Request:
    """One "N new messages" push for a room (backfill): ``im_loc_summary`` with ``[count]``.

    Its ``type`` is ``message:<roomId>``, so a tap opens the room.
    """
    lang = l10n.resolve_locale(target.locale)
    rid = clean(room_id)
    body = l10n.summary(lang, count)
    generic = l10n.text(lang, "summary_title")
    room = clean(room_name or "")

    def hidden() -> _Hidden:
        return _Hidden(generic, body, f"message:{rid}", rid, f"summary:{rid}", room)

    def render(v: _Vars) -> Content:
        args = (str(count),)
        return v.content(
            v.room or generic, body, "im_loc_summary", args, f"message:{rid}", rid, f"summary:{rid}"
        )

    return _compose(target, now, render, _Vars(room=room), hidden, with_payload=False)


def compose_test(target: Target, *, now: float) -> Request:
    """A test notification (``im_loc_test``), for ``POST /me/devices/{id}/test-push``.

    It follows the registration's content mode, so an app can check its decryption with it.
    """
    lang = l10n.resolve_locale(target.locale)
    title = l10n.text(lang, "test_title")
    body = l10n.text(lang, "test_body")

    def hidden() -> _Hidden:
        return _Hidden(title, body, "test", None, None)

    def render(v: _Vars) -> Content:
        return v.content(title, body, "im_loc_test", (), "test", None, None)

    return _compose(target, now, render, _Vars(), hidden, with_payload=False)


def compose_badge(target: Target, badge: int, *, now: float) -> Request:
    """A silent badge update: no alert, no sound (the layouts say how: :meth:`Layout.badge`).

    An ``ios-voip`` target gets push type ``voip`` (a PushKit token takes nothing else); callers
    should not send it badge, summary or test pushes, since iOS 13+ expects every VoIP push to
    report a call.
    """
    layout: Layout[Request] = _layout_for(target)
    return layout.badge(target, badge, now)


# --------------------------------------------------------------------------------------------
# Ids and per-device copies


def push_id(device_id: str, kind: str, ident: str) -> str:
    """A stable id per (device, kind, message/room id): 32 hex chars of SHA-256."""
    raw = "\x00".join((device_id, kind, ident)).encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:32]


def loc_key_for(message_type: str) -> str:
    """``im_loc_<type>``: IMKIT's spelling for known types (``-`` turned into ``_``), and for any
    other the type lower-cased and reduced to ``[a-z0-9_]`` (at most 48 characters,
    ``im_loc_unknown`` if nothing is left)."""
    if message_type in KNOWN_TYPES:
        return "im_loc_" + message_type.replace("-", "_")
    key = re.sub(r"[^a-z0-9_]+", "_", message_type.lower()).strip("_")[:_LOC_KEY_MAX]
    return "im_loc_" + (key or "unknown")


def with_push_id(req: Request, push_id: str) -> Request:
    """A copy of ``req`` carrying ``push_id`` (a composed request is shared between tokens)."""
    layout: Layout[Request] = _LAYOUT_OF[type(req)]
    return layout.with_push_id(req, push_id)


def with_badge(req: Request, badge: int | None) -> Request:
    """A copy of ``req``, composed with ``badge=BADGE_ROOM``, carrying ``badge`` instead.

    None removes the badge. ``badge`` must be within ``0..BADGE_ROOM``: a wider number could
    push the request over its size limit (compose such a push on its own).
    """
    if badge is not None and not 0 <= badge <= BADGE_ROOM:
        raise ValueError(f"badge {badge} is outside 0..{BADGE_ROOM}")
    layout: Layout[Request] = _LAYOUT_OF[type(req)]
    return layout.with_badge(req, badge)


def fits(req: Request) -> bool:
    """Whether a request is within its platform's size limit, counting the ``pushId`` added
    after composing (see the layouts)."""
    layout: Layout[Request] = _LAYOUT_OF[type(req)]
    return layout.fits(req)


def _layout_for(target: Target) -> Layout[Any]:
    return _LAYOUTS[provider_for(target.push_type)]


# --------------------------------------------------------------------------------------------
# Rendering and privacy modes


@dataclass(frozen=True, slots=True)
class _Vars:
    """The parts that may be cut to fit; everything else in a push is fixed."""

    text: str = ""
    room: str = ""
    name: str = ""
    payload: str | None = None
    payload_trimmed: bool = False

    def content(
        self,
        title: str,
        body: str,
        loc_key: str | None,
        loc_args: tuple[str, ...],
        type_: str,
        room_id: str | None,
        collapse: str | None,
        mode: PushContent | None = None,
    ) -> Content:
        """The content rendered from these parts (they supply ``payload``)."""
        return Content(
            title, body, loc_key, loc_args, type_, room_id, collapse,
            self.payload, self.payload_trimmed, mode,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Hidden:
    """The generic alert of a ``hidden`` push (also the clear part of an ``encrypted`` one)."""

    title: str
    body: str
    type: str
    room_id: str | None
    collapse: str | None
    room: str = ""  # the room name: the title, when BRIDGE_PUSH_HIDDEN_ROOM_NAME allows it
    payload: str | None = None  # ids only, as compact JSON

    def render(self, v: _Vars) -> Content:
        title = v.room or self.title
        body, kind, rid, collapse = self.body, self.type, self.room_id, self.collapse
        return v.content(title, body, None, (), kind, rid, collapse, "hidden")


def _compose(
    target: Target,
    now: float,
    render: Callable[[_Vars], Content],
    start: _Vars,
    hidden: Callable[[], _Hidden],
    *,
    with_payload: bool = True,
    full_payload: str | None = None,
    reduced: Callable[[int], str | None] | None = None,
    reduced_max: int = 0,
) -> Request:
    """The push in the target's privacy mode, fitted to its platform's layout.

    ``hidden``: no text, no sender, no room name (unless ``Target.hidden_room_name``), no
    ``loc-key``; ids only. ``encrypted``: the hidden push, plus the full push's data block
    sealed as ``enc`` (the cuts apply to the full content until its sealed form fits).
    """
    layout = _layout_for(target)
    mode, sealer = _mode(target)
    seal = None
    if mode != "full":
        h = hidden()
        if not target.hidden_room_name:
            h = replace(h, room="")
        if sealer is None:
            start = _Vars(room=h.room)
            return _fit(
                layout, target, now, h.render, start,
                with_payload=h.payload is not None, full_payload=h.payload,
            )  # fmt: skip
        seal = _sealing(sealer, h, target)
    return _fit(
        layout, target, now, render, start,
        with_payload=with_payload, full_payload=full_payload, reduced=reduced,
        reduced_max=reduced_max, seal=seal,
    )  # fmt: skip


def _sealing(sealer: Sealer, hidden: _Hidden, target: Target) -> Callable[[Content], Content]:
    """Encrypted: the full push's data block, sealed, inside the content of the hidden push."""
    clear = hidden.render(_Vars(room=_cap(hidden.room, NAME_MAX), payload=hidden.payload))
    clear = replace(clear, content="encrypted")

    def seal(c: Content) -> Content:
        plain = compact_json(data_block(c, target.badge)).encode("utf-8")
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


# --------------------------------------------------------------------------------------------
# Size fitting


def _fit(
    layout: Layout[Any],
    target: Target,
    now: float,
    render: Callable[[_Vars], Content],
    start: _Vars,
    *,
    with_payload: bool,
    full_payload: str | None = None,
    reduced: Callable[[int], str | None] | None = None,
    reduced_max: int = 0,
    seal: Callable[[Content], Content] | None = None,
) -> Request:
    """Render, then cut parts in this order until the layout says the request fits:

    1. ``payload`` becomes the reduced object (``_id``, ``room``, ``messageType``, ``sender``
       {``_id``, ``nickname``}, the timestamps, and the longest prefix of a string ``message``
       that fits; an invitation ``{room: {_id}, inviter: {_id}}``), with ``payloadTrimmed: "1"``;
       if even that does not fit, ``payload`` is dropped (``payloadTrimmed`` stays).
    2. The text, then the room name, then the sender name, are cut to the longest prefix that
       fits, with "…" appended (between code points, so UTF-8 stays valid).
    3. If ids alone (a pathological room id) still overflow, :class:`ComposeError` is raised.

    Sender and room names are capped at :data:`NAME_MAX` characters before anything is tried.
    ``full_payload`` None with ``with_payload`` means the event could not be serialised whole.
    ``seal`` (encrypted) turns each rendering into the content actually sent.
    """
    limit = layout.limit(target)

    def attempt(v: _Vars) -> Request | None:
        c = render(v)
        req: Request = layout.request(seal(c) if seal is not None else c, target, now)
        return req if layout.fits(req) else None

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
