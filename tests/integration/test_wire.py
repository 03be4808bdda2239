"""What the providers put on the wire, for every kind of push, platform, privacy mode and locale.

Each case is composed the way the worker composes it (messages through the compose cache, each
push with its push id) and sent through the real providers (aioapns, firebase-admin) to the
simulated APNs and FCM, which record what arrived:

- APNs headers are checked against the rules they follow (push type, priority, topic with the
  ``.voip`` suffix, collapse id, expiration, apns-id), computed here from the case;
- APNs payloads and FCM v1 messages are compared with ``wire_expected.json``: that file was
  generated from commit c294ef3 (before the providers took over their layouts), so any change
  to a byte the providers send shows up here. Strings longer than :data:`LONG` characters are
  kept there as length, digest and both ends (:func:`_short`), and a sealed ``enc`` as the
  length and its decrypted content (the nonce is random).

``BRIDGE_WIRE_WRITE=1`` rewrites the file from the code as it is; do that only for an
intended change of the wire format, and say so in the commit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge import compose
from bridge.compose import Target
from bridge.models import Notification, PushContent, Registration
from bridge.push.apns import ApnsProvider
from bridge.push.fcm import FcmProvider
from bridge.push.provider import Delivered
from bridge.seal import open_sealed
from bridge.sim.apns import ApnsSim
from bridge.sim.certs import ApnsKey, TestCerts, generate_apns_key, issue_test_certs
from bridge.sim.fcm import FcmSim
from bridge.upstream.protocol import Invitation, Message
from bridge.worker.compose_cache import ComposeCache
from bridge.worker.fanout import notification_for

EXPECTED = Path(__file__).with_name("wire_expected.json")
TOPIC = "com.example.chat"
KEY = bytes(range(32))
DEVICE = "dev-wire"
PUSH_TYPES = ("ios", "ios-voip", "fcm", "android", "web")
LOCALES = ("zh-TW", "zh-CN", "ja", "ko-KR")
#: The namespace of the apns-id UUIDs (v5 of the push id), as the app-facing docs promise.
APNS_ID_NAMESPACE = uuid.UUID("6f1c2b0e-8a51-4d8e-9a57-3f0a1c6e2b11")
#: Strings longer than this are recorded by length, digest and ends.
LONG = 160
#: Sends in flight at once, and the providers' push timeout (seconds).
SENDING = 20
PUSH_TIMEOUT = 30.0
COMMENT = "_comment"
GENERATED = (
    "What the providers sent for each case of tests/integration/test_wire.py, generated from "
    "commit c294ef3 (compose laid out both platforms' requests then); the test compares against it."
)


#: The message every message case starts from.
MESSAGE: dict[str, Any] = {
    "_id": "m1",
    "room": "r1",
    "messageType": "text",
    "message": "Hello there",
    "sender": {"_id": "u1", "nickname": "Alice"},
    "messageTimeMS": 1_700_000_000_000,
}


def _message(**kw: Any) -> Message:
    return Message.model_validate({**MESSAGE, **kw})


def _lone_surrogates() -> Message:
    return Message.model_validate(
        json.loads(
            '{"_id":"m1","room":"r1","message":"a\\ud800b","sender":{"_id":"u","nickname":"\\udfff"}}'
        )
    )


#: name -> (kind, event or summary count, room name passed by the worker)
EVENTS: dict[str, tuple[str, Any, str | None]] = {
    "text": ("message", _message(), None),
    "text-group": ("message", _message(), "Team 🚀"),
    "image": ("message", _message(messageType="image", message={"url": "https://x/y.jpg"}), None),
    "unknown-type": ("message", _message(messageType="holo-gram", message={"x": 1}), None),
    "call": ("message", _message(messageType="waitingCall", message={"call": 1}), None),
    "system": ("message", _message(sender=None), "Ops"),
    "no-nickname": ("message", _message(sender="u7"), None),
    "encrypted-type": ("message", _message(messageType="encrypted", message="c2VjcmV0"), None),
    "long-latin": ("message", _message(message="é" * 5000), None),
    "long-cjk": (
        "message",
        _message(message="訊息" * 3000, sender={"_id": "u", "nickname": "N" * 80}),
        "R" * 80,
    ),
    "long-emoji": ("message", _message(message="😀" * 3000), "Lunch"),
    "big-extras": (
        "message",
        _message(message="short text", extra={"blob": "y" * 10000}, bulk=["z" * 100] * 100),
        None,
    ),
    "medium-text-big-extra": (
        "message",
        _message(message="abc" * 200, extra={"blob": "y" * 3000}),
        None,
    ),
    "lone-surrogates": ("message", _lone_surrogates(), None),
    "long-id": ("message", _message(_id="訊" * 22), None),
    "invitation": (
        "invitation",
        Invitation.model_validate(
            {"room": {"_id": "r9", "name": "Party"}, "inviter": {"_id": "u3", "nickname": "Carol"}}
        ),
        None,
    ),
    "invitation-bare": (
        "invitation",
        Invitation.model_validate({"room": "r5", "inviter": None}),
        None,
    ),
    "summary": ("summary", 3, "Family"),
    "summary-one": ("summary", 1, None),
    "test": ("test", None, None),
    "badge": ("badge", 7, None),
}


@dataclass(frozen=True)
class Case:
    event: str
    push_type: str
    content: PushContent = "full"
    hidden_room_name: bool = False
    locale: str = "en-US"
    ttl: int = 3600
    badge: int | None = 4

    @property
    def name(self) -> str:
        mode = self.content + ("+room" if self.hidden_room_name else "")
        return f"{self.event}/{self.push_type}/{mode}/{self.locale}/ttl{self.ttl}/badge{self.badge}"


def _cases() -> list[Case]:
    out: list[Case] = []
    for push_type in PUSH_TYPES:
        for event in EVENTS:
            modes: list[tuple[PushContent, bool]] = [
                ("full", False),
                ("hidden", False),
                ("encrypted", False),
            ]
            if event in ("text-group", "long-cjk", "invitation", "summary", "system"):
                modes.append(("hidden", True))
                modes.append(("encrypted", True))
            for content, room in modes:
                out.append(Case(event, push_type, content, room))
        for event in ("text-group", "image", "invitation", "summary", "test", "long-cjk", "system"):
            for locale in LOCALES:
                out.append(Case(event, push_type, locale=locale))
                if event in ("text-group", "summary"):
                    out.append(Case(event, push_type, "hidden", locale=locale))
        for ttl in (0, 600, -5):
            out.append(Case("text", push_type, ttl=ttl))
        out.append(Case("text", push_type, badge=None))
        out.append(Case("summary", push_type, badge=None))
        out.append(Case("long-latin", push_type, badge=123_456))
    return out


CASES = _cases()


@dataclass
class Sent:
    case: Case
    notification: Notification
    now: float


def _target(case: Case) -> Target:
    return Target(
        push_type=case.push_type,
        locale=case.locale,
        badge=case.badge,
        content=case.content,
        content_key=KEY if case.content == "encrypted" else None,
        hidden_room_name=case.hidden_room_name,
        ttl=case.ttl,
    )


def _compose(case: Case, token: str, now: float, cache: ComposeCache) -> Notification:
    """The notification the worker (or the API, for ``test``) makes for this case."""
    kind, event, room_name = EVENTS[case.event]
    target = _target(case)
    reg = Registration(type=case.push_type, token=token)
    req: Any
    if kind == "message":
        req = cache.message(event, target, now=now, room_name=room_name)
        ident = event.id
    elif kind == "invitation":
        req = compose.compose_invitation(event, target, now=now)
        ident = event.room.id
    elif kind == "summary":
        req = compose.compose_summary("r1", event, target, now=now, room_name=room_name)
        ident = "r1:m1"
    elif kind == "test":
        req = compose.compose_test(target, now=now)
        ident = "t0"
    else:
        req = compose.compose_badge(target, event, now=now)
        ident = f"{event}:0"
    # A device per case: aioapns tells concurrent requests apart by apns-id (from the push id).
    return notification_for(f"{DEVICE}/{case.name}", reg, kind, ident, req, 0.0)


# ---------------------------------------------------------------------- the rules for headers


def _collapse_id(case: Case) -> str | None:
    kind, event, _ = EVENTS[case.event]
    if kind == "message":
        ident = event.id
    elif kind == "invitation":
        ident = f"invitation:{event.room.id}"
    elif kind == "summary":
        ident = "summary:r1"
    else:
        return None
    raw = ident.encode()
    return ident if len(raw) <= 64 else hashlib.sha256(raw).hexdigest()[:64]


def _expected_headers(case: Case, push_id: str) -> dict[str, str | None]:
    voip = case.push_type == "ios-voip"
    badge = EVENTS[case.event][0] == "badge"
    return {
        "apns-push-type": "voip" if voip else "background" if badge else "alert",
        "apns-priority": "5" if badge and not voip else "10",
        "apns-topic": TOPIC + ".voip" if voip else TOPIC,
        "apns-collapse-id": _collapse_id(case),
        "apns-id": str(uuid.uuid5(APNS_ID_NAMESPACE, push_id)),
    }


# ---------------------------------------------------------------------- recording


def _short(value: Any) -> Any:
    """``value`` with long strings as length, digest and ends; sealed ``enc`` opened."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "enc" and isinstance(v, str):
                out[k] = {"length": len(v), "opened": _short(json.loads(open_sealed(KEY, v)))}
            else:
                out[k] = _short(v)
        return out
    if isinstance(value, list):
        return [_short(v) for v in value]
    if isinstance(value, str) and len(value) > LONG:
        digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]
        return f"<{len(value)} chars {digest}: {value[:24]!r}…{value[-24:]!r}>"
    return value


async def _send_all(cases: list[Case], apns: ApnsProvider, fcm: FcmProvider) -> list[Sent]:
    cache = ComposeCache()
    sent: list[Sent] = []
    for i, case in enumerate(cases):
        ios = case.push_type in ("ios", "ios-voip")
        token = f"{i:064x}" if ios else f"fcm-token-{i:05d}"
        now = time.time()
        sent.append(Sent(case, _compose(case, token, now, cache), now))
    # A few at a time: on a busy machine hundreds at once would hit the push timeout.
    slots = asyncio.Semaphore(SENDING)

    async def send(n: Notification) -> Any:
        async with slots:
            return await (apns if n.provider == "apns" else fcm).send(n)

    results = await asyncio.gather(*(send(s.notification) for s in sent))
    failed = [
        (s.case.name, r) for s, r in zip(sent, results, strict=True) if not isinstance(r, Delivered)
    ]
    assert not failed, failed[:5]
    return sent


@dataclass(frozen=True)
class _Pki:
    certs: TestCerts
    key: ApnsKey


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> _Pki:
    d = tmp_path_factory.mktemp("wire-pki")
    return _Pki(issue_test_certs(d / "certs"), generate_apns_key(d / "key"))


@pytest.fixture
async def sims(
    pki: _Pki, tmp_path: Path
) -> AsyncIterator[tuple[ApnsSim, FcmSim, ApnsProvider, FcmProvider]]:
    apns_sim = ApnsSim(pki.certs.cert_file, pki.certs.key_file, topics=[TOPIC], keys=[pki.key])
    fcm_sim = FcmSim()
    await apns_sim.start()
    await fcm_sim.start()
    apns = ApnsProvider(
        topic=TOPIC,
        key=pki.key.key_file.read_text(),
        key_id=pki.key.key_id,
        team_id=pki.key.team_id,
        host="127.0.0.1",
        port=apns_sim.port,
        ca_file=str(pki.certs.ca_file),
        timeout=PUSH_TIMEOUT,
    )
    fcm = FcmProvider(
        fcm_sim.write_service_account(tmp_path / "sa.json"),
        fcm_url=fcm_sim.url,
        timeout=PUSH_TIMEOUT,
    )
    try:
        yield apns_sim, fcm_sim, apns, fcm
    finally:
        await apns.close()
        await fcm.close()
        await apns_sim.stop()
        await fcm_sim.stop()


async def test_what_the_providers_send_is_unchanged(
    sims: tuple[ApnsSim, FcmSim, ApnsProvider, FcmProvider],
) -> None:
    apns_sim, fcm_sim, apns, fcm = sims
    sent = await _send_all(CASES, apns, fcm)
    sent_at = time.time()

    by_token_apns = {r.token: r for r in apns_sim.received}
    by_token_fcm = {r.token: r for r in fcm_sim.received}
    recorded: dict[str, Any] = {}
    header_problems: list[str] = []
    for s in sent:
        n = s.notification
        if n.provider == "apns":
            got = by_token_apns[n.token]
            assert got.status == 200, (s.case.name, got.reason)
            headers = {k: got.headers.get(k) for k in _expected_headers(s.case, n.push_id)}
            if headers != _expected_headers(s.case, n.push_id):
                header_problems.append(
                    f"{s.case.name}: {headers} != {_expected_headers(s.case, n.push_id)}"
                )
            # aioapns takes a time to live, counted from when the request goes out: under this
            # burst that can be seconds after composing.
            expires = int(got.headers["apns-expiration"]) - int(s.now)
            ttl = max(s.case.ttl, 0)
            if not ttl - 1 <= expires <= ttl + (sent_at - s.now) + 1:
                header_problems.append(f"{s.case.name}: expires in {expires} s, ttl {s.case.ttl}")
            recorded[s.case.name] = {"apns": _short(got.payload)}
        else:
            got_fcm = by_token_fcm[n.token]
            assert got_fcm.status == 200, s.case.name
            message = dict(got_fcm.message)
            assert message.pop("token") == n.token
            recorded[s.case.name] = {"fcm": _short(message)}
    assert not header_problems, "\n".join(header_problems[:20])
    assert len(recorded) == len(CASES)

    if os.environ.get("BRIDGE_WIRE_WRITE") == "1":
        lines = ",\n".join(
            f"{json.dumps(name, ensure_ascii=False)}: {json.dumps(rec, ensure_ascii=False, sort_keys=True)}"
            for name, rec in sorted(recorded.items())
        )
        EXPECTED.write_text(
            "{\n" + json.dumps(COMMENT) + ": " + json.dumps(GENERATED) + ",\n" + lines + "\n}\n",
            encoding="utf-8",
        )
    expected = json.loads(EXPECTED.read_text(encoding="utf-8"))
    expected.pop(COMMENT)
    changed = [
        name
        for name in sorted(set(expected) | set(recorded))
        if expected.get(name) != recorded.get(name)
    ]
    assert not changed, f"{len(changed)} case(s) changed, e.g. {changed[:5]}: " + json.dumps(
        {
            name: {"expected": expected.get(name), "sent": recorded.get(name)}
            for name in changed[:2]
        },
        ensure_ascii=False,
    )


def test_the_matrix_is_broad() -> None:
    """Every kind of push, platform, privacy mode and locale is in :data:`CASES`."""
    seen: dict[str, set[Any]] = {
        "event": set(),
        "push_type": set(),
        "content": set(),
        "locale": set(),
    }
    for case in CASES:
        for key, values in seen.items():
            values.add(getattr(case, key))
    assert seen["event"] == set(EVENTS)
    assert seen["push_type"] == set(PUSH_TYPES)
    assert seen["content"] == {"full", "hidden", "encrypted"}
    assert seen["locale"] == {"en-US", *LOCALES}
    assert {EVENTS[c.event][0] for c in CASES} == {
        "message",
        "invitation",
        "summary",
        "test",
        "badge",
    }
