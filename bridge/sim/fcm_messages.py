"""What FCM's HTTP v1 API checks in a message, and how Google words an error.

:func:`check_message` finds what ``messages:send`` would reject (unknown fields, not exactly one
target, non-string ``data``, over 4096 bytes of data and notification text); :func:`google_error`
builds Google's error body, with the ``FcmError`` detail firebase-admin reads; :data:`ERROR_CODES`
maps each FCM error code to its HTTP status and message.
"""

from __future__ import annotations

import json
from typing import Any

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
MAX_DATA_BYTES = 4096

#: FCM error code -> (HTTP status, google.rpc status, the message Google sends with it).
ERROR_CODES: dict[str, tuple[int, str, str]] = {
    "UNSPECIFIED_ERROR": (500, "INTERNAL", "No more information is available about this error."),
    "INVALID_ARGUMENT": (
        400,
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
    ),
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": (
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Messages' and limit 'Messages per minute'.",
    ),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
}
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNKNOWN",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
#: Fields of a v1 ``Message`` (snake_case and the lowerCamel spelling proto JSON also accepts).
_MESSAGE_FIELDS = frozenset(
    {
        "name",
        "data",
        "notification",
        "android",
        "webpush",
        "apns",
        "fcm_options",
        "fcmOptions",
        "token",
        "fid",
        "topic",
        "condition",
    }
)


def google_error(
    status: int,
    message: str,
    *,
    error_code: str | None = None,
    field_violation: str | None = None,
) -> dict[str, Any]:
    """A Google API error body: ``{"error": {code, message, status, details}}``."""
    details: list[dict[str, Any]] = []
    if error_code is not None:
        details.append({"@type": FCM_ERROR_TYPE, "errorCode": error_code})
    if field_violation is not None:
        details.append(
            {
                "@type": BAD_REQUEST_TYPE,
                "fieldViolations": [{"field": field_violation, "description": message}],
            }
        )
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return {"error": error}


def check_message(message: Any) -> tuple[str, str] | None:
    """What Google would reject in a v1 message, as (message, field), or None if it is fine."""
    if not isinstance(message, dict):
        return "Invalid JSON payload received. 'message' must be an object.", "message"
    for name in message:
        if name not in _MESSAGE_FIELDS:
            return (
                f"Invalid JSON payload received. Unknown name \"{name}\" at 'message': Cannot find field.",
                f"message.{name}",
            )
    targets = [
        t for t in ("token", "fid", "topic", "condition") if message.get(t) not in (None, "")
    ]
    if len(targets) != 1:
        return "Exactly one of token, fid, topic or condition must be specified.", "message"
    if "token" in message and not isinstance(message["token"], str):
        return "Invalid value at 'message.token' (TYPE_STRING)", "message.token"
    data = message.get("data", {})
    if not isinstance(data, dict):
        return (
            "Invalid value at 'message.data' (type.googleapis.com/google.firebase.fcm.v1.Message.DataEntry)",
            "message.data",
        )
    size = 0
    for i, (key, value) in enumerate(data.items()):
        if not isinstance(value, str):
            return (
                f"Invalid value at 'message.data[{i}].value' (TYPE_STRING), {json.dumps(value)}",
                f"message.data[{i}].value",
            )
        size += len(key.encode()) + len(value.encode())
    for block in ("notification", "android", "apns", "webpush"):
        if block in message and not isinstance(message[block], dict):
            return f"Invalid value at 'message.{block}'", f"message.{block}"
    # FCM counts the whole message against its limit, not only ``data``: the notification's
    # title and body too, wherever they are (top level or a platform block).
    for note in (
        message.get("notification"),
        (message.get("android") or {}).get("notification"),
        (message.get("webpush") or {}).get("notification"),
    ):
        if isinstance(note, dict):
            size += sum(
                len(v.encode())
                for k, v in note.items()
                if k in ("title", "body") and isinstance(v, str)
            )
    if size > MAX_DATA_BYTES:
        return (
            f"Message is too big: {size} bytes, the limit is {MAX_DATA_BYTES}.",
            "message",
        )
    return None
