"""IMKIT's socket payloads: decoding and tolerant event models.

IMKIT sends plain JSON objects, or (after ``conf {encoding: base64}``) base64 strings of UTF-8
JSON. The models accept what the server really sends: ``sender`` may be null, ``message`` may be
any JSON type, ``extra`` may be an object or a JSON string, unknown ``messageType`` values pass.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

#: Events a device session listens to (everything IMKIT documents, plus ``cancelInvitation``).
EVENTS: tuple[str, ...] = (
    "chat message",
    "invitation",
    "cancelInvitation",
    "room",
    "lastRead",
    "roomPref",
    "typing",
    "ai_streaming",
    "myPrefChange",
    "myPrefDelete",
    "userDeleteMessages",
    "messageDeleted",
)


class DecodeError(ValueError):
    """A payload that is neither a JSON object/value nor base64 of UTF-8 JSON."""


def decode_payload(raw: Any, *, allow_bare_string: bool = False) -> Any:
    """Decode one event payload or ack: string → base64 → UTF-8 → JSON; anything else as is.

    ``allow_bare_string`` is for ``myPrefDelete``, whose payload is base64 of a bare key.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise DecodeError("binary payload is not base64 text") from exc
    if not isinstance(raw, str):
        return raw
    try:
        text = base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        # A plain (not base64) string: only a bare key is legal as is.
        if allow_bare_string:
            return raw
        raise DecodeError("payload is a string but not base64 of UTF-8") from exc
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise DecodeError("payload nests too deeply") from exc
    except ValueError as exc:
        if allow_bare_string:
            return text
        raise DecodeError("payload is not JSON after base64 decoding") from exc


def encode_payload(obj: Any) -> str:
    """The inverse of :func:`decode_payload` for base64 mode (used by the simulator)."""
    return base64.b64encode(json.dumps(obj, separators=(",", ":")).encode("utf-8")).decode("ascii")


def iso_ms(value: Any) -> int | None:
    """Epoch milliseconds of an ISO 8601 timestamp (``2018-12-22T06:52:29.380Z``); None if it is not one.

    IMKIT sends ISO strings next to (and sometimes instead of) its ``*MS`` numbers; a time without
    an offset is read as UTC, as IMKIT writes them.
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    except (ValueError, OverflowError, OSError):
        return None


def _epoch_ms(v: Any) -> int | None:
    """A ``*MS`` field: a number, a numeric string, or (tolerated) an ISO string."""
    if v is None or isinstance(v, bool):
        return None
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError):
        return iso_ms(v)


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Client(_Tolerant):
    """An IMKIT client (user) as embedded in events."""

    id: str = Field("", alias="_id")
    nickname: str | None = None
    avatarUrl: str | None = None
    isRobot: bool | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_to_str(cls, v: Any) -> str:
        return "" if v is None else str(v)

    @field_validator("nickname", "avatarUrl", mode="before")
    @classmethod
    def _opt_str(cls, v: Any) -> str | None:
        return None if v is None else str(v)


def _client_or_none(v: Any) -> Any:
    # IMKIT sometimes sends a bare client id instead of an object.
    if isinstance(v, str):
        return {"_id": v}
    if isinstance(v, dict):
        return v
    return None


def _room_id(v: Any) -> str:
    if isinstance(v, dict):
        return str(v.get("_id") or v.get("id") or "")
    return "" if v is None else str(v)


def _required_room(v: Any, event: str) -> str:
    rid = _room_id(v)
    if not rid:
        raise ValueError(f"{event} has no room")
    return rid


class Message(_Tolerant):
    """A ``chat message`` payload. Unknown fields are kept (``model_extra``) for the push payload."""

    id: str = Field(alias="_id")
    room: str
    messageType: str = "text"
    message: Any = None
    sender: Client | None = None
    appID: str | None = None
    messageTimeMS: int | None = None
    createdAtMS: int | None = None
    updatedAtMS: int | None = None
    editedAt: Any = None
    mentions: list[str] = Field(default_factory=list)
    extra: dict[str, Any] | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _message_id(cls, v: Any) -> str:
        if v is None or v == "":
            raise ValueError("message has no _id")
        return str(v)

    @field_validator("room", mode="before")
    @classmethod
    def _room(cls, v: Any) -> str:
        return _required_room(v, "message")

    @field_validator("messageType", mode="before")
    @classmethod
    def _type(cls, v: Any) -> str:
        return "text" if v is None else str(v)

    @field_validator("sender", mode="before")
    @classmethod
    def _sender(cls, v: Any) -> Any:
        return _client_or_none(v)

    @field_validator("messageTimeMS", "createdAtMS", "updatedAtMS", mode="before")
    @classmethod
    def _ms(cls, v: Any) -> int | None:
        return _epoch_ms(v)

    @model_validator(mode="after")
    def _iso_times(self) -> Message:
        # Payloads with only the ISO fields (``updatedAt``, ``createdAt``, ``messageTime``) would
        # otherwise have version 0: never past a checkpoint, always "too old" for the backfill.
        # Assign only what parses: an assignment marks the field as set, and the push payload
        # (dumped with exclude_unset) would then carry "...MS": null for every absent field.
        extra = self.model_extra or {}
        for field, iso in (("updatedAtMS", "updatedAt"), ("createdAtMS", "createdAt"), ("messageTimeMS", "messageTime")):
            if getattr(self, field) is None and (ms := iso_ms(extra.get(iso))) is not None:
                setattr(self, field, ms)
        return self

    @field_validator("mentions", mode="before")
    @classmethod
    def _mentions(cls, v: Any) -> list[str]:
        if not isinstance(v, list):
            return []
        return [str(x.get("_id", "")) if isinstance(x, dict) else str(x) for x in v]

    @field_validator("extra", mode="before")
    @classmethod
    def _extra(cls, v: Any) -> dict[str, Any] | None:
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                return {"raw": v}
        return v if isinstance(v, dict) else None

    @property
    def sender_id(self) -> str | None:
        return self.sender.id if self.sender and self.sender.id else None

    @property
    def version_ms(self) -> int:
        """The newest timestamp of the message (edits bump ``updatedAtMS``)."""
        return self.updatedAtMS or self.createdAtMS or self.messageTimeMS or 0

    @property
    def text(self) -> str:
        """The message as display text ('' for non-text content)."""
        m = self.message
        if isinstance(m, str):
            return m
        if m is None:
            return ""
        if isinstance(m, dict):
            for key in ("text", "title", "body", "message"):
                if isinstance(m.get(key), str):
                    return str(m[key])
            return ""
        return ""


class Room(_Tolerant):
    """A (possibly partial) room. ``muted`` None means unknown, not false."""

    id: str = Field(alias="_id")
    name: str | None = None
    muted: bool | None = None
    members: list[Any] | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _rid(cls, v: Any) -> str:
        if v is None or v == "":
            raise ValueError("room has no _id")
        return str(v)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> str | None:
        return None if v is None else str(v)


class Invitation(_Tolerant):
    """An ``invitation`` payload; it has no id of its own, so ``room._id`` identifies it."""

    room: Room
    inviter: Client | None = None
    invitee: Client | None = None
    createdTimeMS: int | None = None
    updatedTimeMS: int | None = None

    @field_validator("room", mode="before")
    @classmethod
    def _room(cls, v: Any) -> Any:
        return {"_id": v} if isinstance(v, str) else v

    @field_validator("inviter", "invitee", mode="before")
    @classmethod
    def _client(cls, v: Any) -> Any:
        return _client_or_none(v)


class LastRead(_Tolerant):
    roomID: str
    memberID: str
    messageID: str | None = None

    @field_validator("roomID", "memberID", mode="before")
    @classmethod
    def _s(cls, v: Any) -> str:
        if v is None or v == "":
            raise ValueError("missing id")
        return str(v)


class RoomPref(_Tolerant):
    room: str
    muted: bool | None = None

    @field_validator("room", mode="before")
    @classmethod
    def _room(cls, v: Any) -> str:
        return _required_room(v, "roomPref")


class CancelInvitation(_Tolerant):
    room: str

    @field_validator("room", mode="before")
    @classmethod
    def _room(cls, v: Any) -> str:
        return _required_room(v, "cancelInvitation")


class RoomEvent(_Tolerant):
    """A ``room`` event, either a Room or the legacy ``{room, memberProperty}`` shape, whose
    ``room`` is a Room object or only its id (then nothing else about the room is known)."""

    room: Room

    @classmethod
    def parse(cls, obj: Any) -> RoomEvent:
        if isinstance(obj, dict) and "_id" not in obj:
            inner = obj.get("room")
            if isinstance(inner, dict):
                return cls(room=Room.model_validate(inner))
            if isinstance(inner, str | int) and not isinstance(inner, bool) and inner != "":
                return cls(room=Room.model_validate({"_id": inner}))
        return cls(room=Room.model_validate(obj))


#: A decoded event: the name and its typed payload (or the raw object for events not modelled).
Event = tuple[str, Any]


def parse_event(name: str, raw: Any) -> Any:
    """Decode and type one event payload; raises :class:`DecodeError` or ``ValueError``."""
    obj = decode_payload(raw, allow_bare_string=(name == "myPrefDelete"))
    try:
        if name == "chat message":
            return Message.model_validate(obj)
        if name == "invitation":
            return Invitation.model_validate(obj)
        if name == "cancelInvitation":
            return CancelInvitation.model_validate(obj)
        if name == "lastRead":
            return LastRead.model_validate(obj)
        if name == "roomPref":
            return RoomPref.model_validate(obj)
        if name == "room":
            return RoomEvent.parse(obj)
    except ValidationError as exc:
        raise DecodeError(f"{name}: {exc.error_count()} invalid field(s)") from exc
    except RecursionError as exc:
        raise DecodeError(f"{name}: payload nests too deeply") from exc
    return obj
