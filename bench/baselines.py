"""The bare-library baselines: aioapns and firebase-admin alone, sending the payload the bridge
composes, with no bridge logic around them.

``python -m bench.baselines SPEC OUT`` is the bare loop of ``throughput``; the floor of ``rooms``
(``bench/floor.py``) and ``bench/dispatcher_vs_bare.py`` use the clients.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.options import SENDER
from bench.processes import child_main


def sample_message(i: int, room: str = "bench-room") -> Any:
    """A chat message like the simulated IMKIT's (same fields, similar size)."""
    from bridge.upstream.protocol import Message

    ms = int(time.time() * 1000)
    mid = f"bare-{i:07d}"
    sender = {"_id": SENDER, "id": SENDER, "nickname": SENDER, "avatarUrl": "", "isRobot": False}
    return Message.model_validate(
        {"_id": mid, "id": mid, "room": room, "messageType": "text", "message": f"bench message {i}",
         "sender": sender, "appID": "SimApp", "messageTimeMS": ms, "createdAtMS": ms, "updatedAtMS": ms,
         "mentions": []}
    )  # fmt: skip


def sample_requests() -> tuple[Any, Any]:
    """``(ApnsRequest, FcmRequest)`` as the bridge composes them for :func:`sample_message`."""
    from bridge import compose

    msg = sample_message(0)
    apns = compose.compose_message(msg, compose.Target(push_type="ios", badge=1), now=time.time())
    fcm = compose.compose_message(msg, compose.Target(push_type="fcm", badge=1), now=time.time())
    return apns, fcm


#: The message ``_id`` of :func:`sample_message(0) <sample_message>`, replaced per message by the floor.
SAMPLE_ID = "bare-0000000"


#: HTTP/2's initial send window. A server returns credit once about half of it is used (h2 does),
#: so only half is sure to be free when a request is written.
H2_SURE_WINDOW = 65_535 // 2


class BareApns:
    """aioapns alone, sending the payload the bridge composes for :func:`sample_message`.

    Only what aioapns needs to reach a simulator is set: its protocol class's host and port
    (aioapns has no endpoint option) and an SSL context trusting the simulator's CA.

    ``window_guard`` caps the requests in flight at what fits :data:`H2_SURE_WINDOW`: past it,
    aioapns' ``send_data`` raises ``FlowControlError`` and aioapns sleeps 1 s before it tries
    again, so a burst of 50 pushes would measure that sleep, not the library (the bridge's
    provider waits for the window instead). The ``throughput`` baseline runs without it.
    """

    def __init__(self, client: Any, *, window_guard: bool = False) -> None:
        self.client = client
        self.template, _ = sample_requests()
        size = len(json.dumps(self.template.payload, ensure_ascii=False).encode())
        self._in_flight = (
            asyncio.Semaphore(max(1, H2_SURE_WINDOW // size)) if window_guard else None
        )

    @classmethod
    async def open(cls, env: dict[str, str], *, window_guard: bool = False) -> BareApns:
        import ssl

        from aioapns import APNs
        from aioapns.connection import APNsProductionClientProtocol

        ctx = ssl.create_default_context(cafile=env["BRIDGE_APNS_CA_FILE"])
        ctx.set_alpn_protocols(["h2"])
        key = await asyncio.to_thread(Path(env["BRIDGE_APNS_KEY_FILE"]).read_text)
        client = APNs(
            key=key, key_id=env["BRIDGE_APNS_KEY_ID"],
            team_id=env["BRIDGE_APNS_TEAM_ID"], topic=env["BRIDGE_APNS_TOPIC"], ssl_context=ctx,
        )  # fmt: skip
        client.pool.protocol_class = type(
            "BenchProtocol", (APNsProductionClientProtocol,),
            {"APNS_SERVER": env["BRIDGE_APNS_HOST"], "APNS_PORT": int(env["BRIDGE_APNS_PORT"])},
        )  # fmt: skip
        return cls(client, window_guard=window_guard)

    def body(self, message_id: str = SAMPLE_ID) -> dict[str, Any]:
        """The APNs JSON body, its ``payload`` naming ``message_id`` (same size as the sample's)."""
        body = dict(self.template.payload)
        body["payload"] = str(body["payload"]).replace(SAMPLE_ID, message_id)
        return body

    async def send(self, token: str, body: dict[str, Any], collapse_id: str = SAMPLE_ID) -> str:
        """One push; returns the HTTP status as text."""
        from aioapns import NotificationRequest, PushType

        request = NotificationRequest(
            device_token=token, message=body, push_type=PushType.ALERT,
            collapse_key=collapse_id, priority=10, time_to_live=3600,
        )  # fmt: skip
        if self._in_flight is None:
            result = await self.client.send_notification(request)
        else:
            async with self._in_flight:
                result = await self.client.send_notification(request)
        return str(result.status)

    def close(self) -> None:
        self.client.pool.close()


class BareFcm:
    """firebase-admin alone (``send_each_async``), sending what the bridge composes for
    :func:`sample_message`.

    Only the messaging service's URL is pointed at the simulator (firebase-admin has no option for
    it); the CA comes from ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE`` as the library reads them.
    """

    def __init__(self, env: dict[str, str]) -> None:
        import uuid

        import firebase_admin
        from firebase_admin import credentials, messaging

        _, self.template = sample_requests()
        cert = credentials.Certificate(env["BRIDGE_FCM_CREDENTIALS_FILE"])
        self.app = firebase_admin.initialize_app(
            cert, {"projectId": cert.project_id}, name=f"bench-bare-{uuid.uuid4().hex[:8]}"
        )
        service = messaging._get_messaging_service(self.app)
        service._fcm_url = f"{env['BRIDGE_FCM_URL']}/v1/projects/{cert.project_id}/messages:send"

    def data(self, message_id: str = SAMPLE_ID) -> dict[str, str]:
        """The FCM ``data`` map, its ``payload`` naming ``message_id``."""
        data = dict(self.template.data)
        data["payload"] = data["payload"].replace(SAMPLE_ID, message_id)
        return data

    async def send(self, tokens: list[str], data: dict[str, str]) -> list[str]:
        """One ``send_each_async`` call with a message per token; returns each outcome."""
        from firebase_admin import messaging

        note = self.template.notification or {}
        collapse = str((self.template.android or {}).get("collapse_key", "")) or None
        msgs = [
            messaging.Message(
                data=data,
                notification=messaging.Notification(title=note.get("title"), body=note.get("body")),
                android=messaging.AndroidConfig(collapse_key=collapse, priority="high"),
                token=token,
            )
            for token in tokens
        ]
        response = await messaging.send_each_async(msgs, app=self.app)
        return ["200" if r.success else type(r.exception).__name__ for r in response.responses]

    async def close(self) -> None:
        import firebase_admin

        await asyncio.to_thread(firebase_admin.delete_app, self.app)


async def bare_apns_loop(
    env: dict[str, str],
    count: int,
    concurrency: int,
    *,
    token_of: Callable[[int], str] | None = None,
) -> dict[str, Any]:
    """``count`` sends with aioapns alone, ``concurrency`` at a time, to ``env``'s APNs endpoint."""
    apns = await BareApns.open(env)
    body = apns.body()
    token = token_of or (lambda i: f"{i:064x}")

    async def send(i: int) -> str:
        return await apns.send(token(i), body)

    try:
        return await _run_loop(send, count, concurrency)
    finally:
        apns.close()


async def bare_fcm_loop(
    env: dict[str, str],
    count: int,
    concurrency: int,
    *,
    token_of: Callable[[int], str] | None = None,
) -> dict[str, Any]:
    """``count`` sends with firebase-admin alone (``send_each_async`` of one message), ``concurrency`` at a time."""
    fcm = BareFcm(env)
    data = fcm.data()
    token = token_of or (lambda i: f"fcm-token-{i:06d}")

    async def send(i: int) -> str:
        return (await fcm.send([token(i)], data))[0]

    try:
        return await _run_loop(send, count, concurrency)
    finally:
        await fcm.close()


async def _run_loop(
    send: Callable[[int], Awaitable[str]], count: int, concurrency: int
) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    nxt = 0

    async def worker() -> None:
        nonlocal nxt
        while nxt < count:
            i = nxt
            nxt += 1
            try:
                outcomes[await send(i)] += 1
            except Exception as exc:  # noqa: BLE001 - a benchmark counts failures, it does not stop
                outcomes[type(exc).__name__] += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.monotonic() - t0
    return {
        "sent": count,
        "seconds": round(seconds, 3),
        "per_second": round(count / seconds, 1),
        "outcomes": dict(outcomes),
    }


async def _bare_main(spec: dict[str, Any]) -> dict[str, Any]:
    env, provider = spec["env"], spec["provider"]
    loop = bare_apns_loop if provider == "apns" else bare_fcm_loop
    # Warm-up (connection, TLS, provider token), then the simulator forgets it.
    warm = await loop(env, min(200, int(spec["count"])), int(spec["concurrency"]))
    async with aiohttp.ClientSession() as http, http.post(f"{spec['control']}/bench/reset") as r:
        r.raise_for_status()
    result = await loop(env, int(spec["count"]), int(spec["concurrency"]))
    result["warmup"] = warm
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.baselines SPEC OUT``."""
    return child_main("python -m bench.baselines", _bare_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
