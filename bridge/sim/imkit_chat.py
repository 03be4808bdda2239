"""The chat model of the simulated IMKIT: users, rooms, messages, invitations, read marks.

Plain data and what changes it; nothing here talks to a client. :class:`~bridge.sim.imkit.ImkitSim`
changes the model and then emits the events, and its REST side renders the views
(:meth:`ChatModel.client_obj`, :meth:`ChatModel.room_for`) in IMKIT's shapes.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class User:
    client_id: str
    nickname: str
    avatar_url: str = ""
    is_robot: bool = False
    mute: set[str] = field(default_factory=set)
    notification_enabled: bool = True


@dataclass
class Room:
    room_id: str
    name: str
    members: list[str]
    created_ms: int
    #: message ids in the order they were sent
    messages: list[str] = field(default_factory=list)
    #: client id -> how many of ``messages`` that member has read
    read_upto: dict[str, int] = field(default_factory=dict)


def iso(ms: int) -> str:
    """Milliseconds since the epoch as IMKIT writes times (``2024-05-01T12:00:00.000Z``)."""
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class ChatModel:
    """Users, rooms, messages and invitations of one simulated IMKIT; ``app_id`` goes into messages.

    Unknown users, rooms and messages raise ``KeyError`` with a readable message; a clash (a
    message id already taken) raises ``ValueError``.
    """

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id
        self.users: dict[str, User] = {}
        self.rooms: dict[str, Room] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        #: (room, invitee) -> invitation
        self.invitations: dict[tuple[str, str], dict[str, Any]] = {}
        self._last_ms = 0
        self._seq = 0

    # ------------------------------------------------------------------ changes

    def create_user(
        self,
        client_id: str,
        nickname: str | None = None,
        *,
        avatar_url: str = "",
        is_robot: bool = False,
    ) -> None:
        """Create a user, or update the nickname/avatar of an existing one (its state is kept)."""
        user = self.users.get(client_id)
        if user is None:
            self.users[client_id] = User(client_id, nickname or client_id, avatar_url, is_robot)
            return
        if nickname is not None:
            user.nickname = nickname
        user.avatar_url = avatar_url or user.avatar_url
        user.is_robot = is_robot

    def create_room(self, room_id: str, members: list[str], name: str | None = None) -> None:
        """Create a room (or replace its members/name); unknown members become users."""
        for m in members:
            if m not in self.users:
                self.create_user(m)
        room = self.rooms.get(room_id)
        if room is None:
            self.rooms[room_id] = Room(room_id, name or room_id, list(members), self.now_ms())
        else:
            room.members = list(members)
            room.name = name or room.name

    def add_message(
        self,
        room_id: str,
        sender_id: str | None,
        message: object,
        message_type: str,
        message_id: str | None,
        fields: dict[str, object],
    ) -> dict[str, Any]:
        """Store a new message in ``room_id`` and return it (the stored object, not a copy).

        ``sender_id`` None makes a platform message (``sender: null``); an unknown sender becomes a
        user. ``fields`` are copied into the message last, so they may override generated ones.
        """
        room = self.room(room_id)
        if message_id is not None and message_id in self.messages:
            raise ValueError(f"message {message_id} already exists")
        if sender_id is not None and sender_id not in self.users:
            self.create_user(sender_id)
        ms = self.now_ms()
        mid = message_id or self.new_id()
        msg: dict[str, Any] = {
            "_id": mid,
            "id": mid,
            "room": room_id,
            "messageType": message_type,
            "message": message,
            "sender": self.client_obj(sender_id) if sender_id is not None else None,
            "appID": self.app_id,
            "messageTime": iso(ms),
            "messageTimeMS": ms,
            "createdAtMS": ms,
            "updatedAtMS": ms,
            "mentions": [],
        }
        msg.update(fields)
        self.messages[mid] = msg
        room.messages.append(mid)
        return msg

    def edit_message(self, message_id: str, message: object) -> dict[str, Any]:
        """Change a message's content: same ``_id``, new ``updatedAtMS``, ``editedAt`` set."""
        msg = self.message(message_id)
        ms = self.now_ms()
        msg["message"] = message
        msg["updatedAtMS"] = ms
        msg["editedAt"] = iso(ms)
        return msg

    def recall_message(self, message_id: str) -> dict[str, Any]:
        """Recall a message: same ``_id``, ``messageType: recall``, new ``updatedAtMS``."""
        msg = self.message(message_id)
        msg["messageType"] = "recall"
        msg["updatedAtMS"] = self.now_ms()
        return msg

    def finish_stream(self, message_id: str, message_type: str, text: str) -> dict[str, Any]:
        """A streamed reply's placeholder becomes the finished message (``message_type``, ``text``)."""
        msg = self.message(message_id)
        msg["messageType"] = message_type
        msg["message"] = text
        msg["updatedAtMS"] = self.now_ms()
        return msg

    def add_invitation(self, room_id: str, inviter_id: str, invitee_id: str) -> dict[str, Any]:
        """Record a pending invitation (unknown inviter/invitee become users) and return it."""
        room = self.room(room_id)
        for cid in (inviter_id, invitee_id):
            if cid not in self.users:
                self.create_user(cid)
        ms = self.now_ms()
        inv: dict[str, Any] = {
            "room": self.room_public(room),
            "inviter": self.client_obj(inviter_id),
            "invitee": self.client_obj(invitee_id),
            "createdTimeMS": ms,
            "updatedTimeMS": ms,
        }
        self.invitations[(room_id, invitee_id)] = inv
        return inv

    def set_mute(self, client_id: str, room_id: str, muted: bool) -> None:
        """Add the room to the user's mute list (``GET /me`` ``mute``) or take it off."""
        user = self.user(client_id)
        if muted:
            user.mute.add(room_id)
        else:
            user.mute.discard(room_id)

    def mark_read(self, client_id: str, room_id: str, message_id: str | None) -> dict[str, Any]:
        """Mark the room read up to ``message_id`` (default: the last message); returns the
        ``lastRead`` event's payload."""
        room = self.room(room_id)
        if message_id is None:
            upto = len(room.messages)
            message_id = room.messages[-1] if room.messages else None
        else:
            try:
                upto = room.messages.index(message_id) + 1
            except ValueError:
                raise KeyError(f"message {message_id} is not in room {room_id}") from None
        room.read_upto[client_id] = max(upto, room.read_upto.get(client_id, 0))
        return {"roomID": room_id, "memberID": client_id, "messageID": message_id}

    # ------------------------------------------------------------------ reads

    def unread(self, client_id: str, room_id: str) -> int:
        """Messages from others after the user's last read (recalled ones excluded)."""
        room = self.room(room_id)
        count = 0
        for mid in room.messages[room.read_upto.get(client_id, 0) :]:
            msg = self.messages[mid]
            sender = msg.get("sender")
            if isinstance(sender, dict) and sender.get("_id") == client_id:
                continue
            if msg.get("messageType") == "recall":
                continue
            count += 1
        return count

    def badge(self, client_id: str) -> int:
        """Total unread over the user's rooms (what ``GET /me/badge`` answers)."""
        return sum(
            self.unread(client_id, r.room_id) for r in self.rooms.values() if client_id in r.members
        )

    def user(self, client_id: str) -> User:
        try:
            return self.users[client_id]
        except KeyError:
            raise KeyError(f"no user {client_id}") from None

    def room(self, room_id: str) -> Room:
        try:
            return self.rooms[room_id]
        except KeyError:
            raise KeyError(f"no room {room_id}") from None

    def message(self, message_id: str) -> dict[str, Any]:
        try:
            return self.messages[message_id]
        except KeyError:
            raise KeyError(f"no message {message_id}") from None

    # ------------------------------------------------------------------ views in IMKIT's shapes

    def client_obj(self, client_id: str) -> dict[str, Any]:
        user = self.users.get(client_id)
        return {
            "_id": client_id,
            "id": client_id,
            "nickname": user.nickname if user else client_id,
            "avatarUrl": user.avatar_url if user else "",
            "isRobot": user.is_robot if user else False,
        }

    def room_updated_ms(self, room: Room) -> int:
        return max(
            [room.created_ms] + [int(self.messages[m]["updatedAtMS"]) for m in room.messages]
        )

    def room_public(self, room: Room) -> dict[str, Any]:
        return {
            "_id": room.room_id,
            "id": room.room_id,
            "name": room.name,
            "roomType": "group",
            "members": [self.client_obj(m) for m in room.members],
            "createdAtMS": room.created_ms,
            "updatedAtMS": self.room_updated_ms(room),
        }

    def room_for(self, room: Room, client_id: str) -> dict[str, Any]:
        """The room as ``GET /rooms`` shows it to ``client_id`` (muted, unread, last message)."""
        out = self.room_public(room)
        user = self.users.get(client_id)
        out["muted"] = bool(user and room.room_id in user.mute)
        out["unread"] = self.unread(client_id, room.room_id)
        out["lastMessage"] = (
            copy.deepcopy(self.messages[room.messages[-1]]) if room.messages else None
        )
        return out

    # ------------------------------------------------------------------ clock and ids

    def now_ms(self) -> int:
        # Strictly increasing, so edits always move updatedAtMS and orderings are total.
        ms = max(int(time.time() * 1000), self._last_ms + 1)
        self._last_ms = ms
        return ms

    def new_id(self) -> str:
        self._seq += 1
        return f"{int(time.time()) & 0xFFFFFFFF:08x}{self._seq:016x}"
