"""What Apple's provider API checks in a request, in the order its answers suggest: method and
path, device token, provider token (an ES256 JWT, or a client certificate instead), push type,
topic, ``apns-*`` headers, payload size and shape. A failed check is the :class:`Verdict` Apple
would answer with.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from bridge.sim.certs import ApnsKey

PAYLOAD_LIMIT = 4096
VOIP_PAYLOAD_LIMIT = 5120
PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "location",
        "pushtotalk",
        "widgets",
    }
)
#: Apple refuses provider tokens older than an hour.
TOKEN_MAX_AGE = 3600.0
_PATH = re.compile(r"/3/device/([^/]+)")
_HEX = re.compile(r"[0-9a-fA-F]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(slots=True)
class Verdict:
    """An answer: status and reason, or a stall before it, or a GOAWAY instead."""

    status: int
    reason: str | None = None
    stall: float | None = None
    goaway: bool = False
    retry_after: int | None = None
    echo_apns_id: bool = True


def check_request(
    headers: dict[str, str],
    body: bytes,
    *,
    client_cert: bool,
    topics: frozenset[str],
    tokens: ProviderTokens,
) -> tuple[Verdict | None, str, dict[str, Any]]:
    """Apple's verdict on a request if it fails a check (None if it passes), its device token and
    its payload (``{}`` unless it passed). ``client_cert``: the connection showed one."""
    path = _PATH.fullmatch(headers.get(":path", ""))
    token = path.group(1) if path else ""
    if headers.get(":method") != "POST":
        return Verdict(405, "MethodNotAllowed"), token, {}
    if path is None:
        return Verdict(404, "BadPath"), token, {}
    if not _HEX.fullmatch(token):
        return Verdict(400, "BadDeviceToken"), token, {}
    auth_error = tokens.check(headers.get("authorization"), client_cert)
    if auth_error is not None:
        return Verdict(403, auth_error), token, {}
    push_type = headers.get("apns-push-type", "alert")
    if push_type not in PUSH_TYPES:
        return Verdict(400, "InvalidPushType"), token, {}
    topic = headers.get("apns-topic")
    if not topic:
        return Verdict(400, "MissingTopic"), token, {}
    base_topic = topic.removesuffix(".voip")
    if base_topic not in topics:
        return Verdict(400, "TopicDisallowed"), token, {}
    if (push_type == "voip") != topic.endswith(".voip"):
        return Verdict(400, "InvalidPushType"), token, {}
    header_error = check_headers(headers)
    if header_error is not None:
        return Verdict(400, header_error), token, {}
    limit = VOIP_PAYLOAD_LIMIT if push_type == "voip" else PAYLOAD_LIMIT
    if len(body) > limit:
        return Verdict(413, "PayloadTooLarge"), token, {}
    if not body:
        return Verdict(400, "PayloadEmpty"), token, {}
    try:
        payload = json.loads(body)
    except ValueError:
        return Verdict(400, "BadPayload"), token, {}
    if not isinstance(payload, dict):
        return Verdict(400, "BadPayload"), token, {}
    return None, token, payload


def check_headers(headers: dict[str, str]) -> str | None:
    """The reason Apple gives for a bad ``apns-*`` header, or None."""
    if headers.get("apns-priority", "10") not in ("1", "5", "10"):
        return "BadPriority"
    apns_id = headers.get("apns-id")
    if apns_id is not None and not _UUID.fullmatch(apns_id):
        return "BadMessageId"
    if len(headers.get("apns-collapse-id", "").encode()) > 64:
        return "BadCollapseId"
    expiration = headers.get("apns-expiration")
    if expiration is not None and not expiration.isdigit():
        return "BadExpirationDate"
    return None


class ProviderTokens:
    """The token-auth keys APNs accepts, and the provider tokens it already verified."""

    def __init__(self, keys: Iterable[ApnsKey | tuple[str, str, str]]) -> None:
        self._keys: dict[str, tuple[str, str]] = {}
        for k in keys:
            key_id, team_id, pem = (
                (k.key_id, k.team_id, k.public_key_pem) if isinstance(k, ApnsKey) else k
            )
            self._keys[key_id] = (team_id, pem)
        #: Provider tokens already verified, with their ``iat``, so each JWT is checked once.
        self._verified: dict[str, float] = {}

    def check(self, authorization: str | None, client_cert: bool) -> str | None:
        """Why Apple would refuse the ``authorization`` header (None: accepted; without one, only a
        client certificate lets a request through)."""
        if authorization is None:
            return None if client_cert else "MissingProviderToken"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "InvalidProviderToken"
        iat = self._verified.get(token)
        if iat is None:
            try:
                kid = jwt.get_unverified_header(token).get("kid")
                team_id, pem = self._keys[str(kid)]
                claims = jwt.decode(
                    token,
                    pem,
                    algorithms=["ES256"],
                    issuer=team_id,
                    options={"require": ["iss", "iat"], "verify_iat": False},
                )
                iat = float(claims["iat"])
            except (jwt.PyJWTError, KeyError, TypeError, ValueError):
                return "InvalidProviderToken"
            if len(self._verified) > 1000:
                self._verified.clear()
            self._verified[token] = iat
        if time.time() - iat > TOKEN_MAX_AGE:
            return "ExpiredProviderToken"
        return None
