"""``push-bridge demo``: simulated IMKIT, APNs and FCM, a real bridge, and a narrated scenario."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bridge._poll import wait_until
from bridge.seal import open_sealed

PrintLine = Callable[[str], Any]

IPHONE, IPAD = "a1" * 32, "c3" * 32
PIXEL, TABLET = "fcm-token-alice-pixel", "fcm-token-alice-tablet"
#: Push token → device, to say which device each provider request was for.
DEVICE_OF_TOKEN = {IPHONE: "alice-iphone", IPAD: "alice-ipad", PIXEL: "alice-pixel", TABLET: "alice-tablet"}
#: What Bob writes once Alice has private devices: no request for them may carry it.
PRIVATE_TEXT = "The door code is 4711"



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Narrator:
    def __init__(self, print_line: PrintLine, verbose: bool) -> None:
        self.t0 = time.monotonic()
        self.print_line = print_line
        self.verbose = verbose

    def __call__(self, text: str) -> None:
        self.print_line(f"[{time.monotonic() - self.t0:6.2f}s] {text}")

    def step(self, title: str) -> None:
        self.print_line("")
        self.print_line(f"== {title}")


async def run_demo(print_line: PrintLine = print, verbose: bool = False) -> int:
    """Run the whole flow on 127.0.0.1 and narrate it; returns an exit code."""
    import uvicorn

    from bridge.api.app import create_app
    from bridge.config import Settings
    from bridge.sim.stack import SimStack

    say = _Narrator(print_line, verbose)
    with tempfile.TemporaryDirectory(prefix="push-bridge-demo-") as tmp:
        d = Path(tmp)
        sims = await SimStack.start(d)
        imkit, apns, fcm = sims.imkit, sims.apns, sims.fcm
        say(f"simulated IMKIT at {imkit.url}, APNs at https://127.0.0.1:{apns.port}, FCM at {fcm.url}")

        for cid, nick in (("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")):
            imkit.create_user(cid, nick)
        imkit.create_room("general", ["alice", "bob", "carol"], name="General")
        imkit.create_room("random", ["alice", "bob"], name="Random")
        imkit.create_room("party", ["carol"], name="Party planning")
        alice = imkit.issue_token("alice")

        port = _free_port()
        settings = Settings(
            host="127.0.0.1",
            port=port,
            store=f"sqlite:///{d / 'bridge.db'}",
            foreground_ttl=120,
            log_level="WARNING",
            push_provider_fallback="log",  # the demo keeps the log fallback (serve defaults to none)
            rate_limit_per_minute=10_000,  # the narrator polls GET /me/devices far more often than an app
            **sims.settings(),
        )
        app = create_app(settings)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"))
        serve_task = asyncio.create_task(server.serve())
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=base, headers={"IM-Authorization": alice}, timeout=10) as http:
                await wait_until(lambda: _ready(http), 15, "the bridge to start")
                say(f"bridge serving on {base} (SQLite store, real aioapns and firebase-admin clients)")
                return await _scenario(say, http, imkit, apns, fcm)
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(serve_task, 20)
            await sims.stop()


async def _ready(http: httpx.AsyncClient) -> bool:
    try:
        return (await http.get("/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def _scenario(say: _Narrator, http: httpx.AsyncClient, imkit: Any, apns: Any, fcm: Any) -> int:
    devices = {"alice-iphone": "ios", "alice-pixel": "fcm"}
    seen: dict[str, int] = dict.fromkeys(devices, 0)

    say.step("Alice registers an iPhone (APNs) and a Pixel (FCM)")
    r = await http.post("/me/subscribe", json={"type": "ios", "token": IPHONE, "deviceId": "alice-iphone", "locale": "en-US"})
    say(f"POST /me/subscribe iPhone → {r.status_code} {r.json()['RM']}")
    r = await http.post("/me/subscribe", json={"type": "fcm", "token": PIXEL, "deviceId": "alice-pixel", "locale": "zh-TW"})
    say(f"POST /me/subscribe Pixel  → {r.status_code} {r.json()['RM']}")

    async def live() -> bool:
        views = [(await http.get(f"/me/devices/{d}")).json()["result"] for d in devices]
        return all(v["session"] == "live" for v in views)

    await wait_until(live, 20, "both sessions to go live")
    say("both upstream sessions are live (conf + auth2 acknowledged)")

    async def show(expect: int, pushes: int = 0) -> None:
        """Wait for `expect` new events on each device and `pushes` more provider answers, then print them."""
        async def arrived() -> bool:
            for d in devices:
                v = (await http.get(f"/me/devices/{d}")).json()["result"]
                events = v["events"]
                if len(events) < seen[d] + expect:
                    return False
                pending = [e for e in events[: len(events) - seen[d]] if e["decision"] == "pushed" and not e["results"]]
                if pending:
                    return False
            return True

        await wait_until(arrived, 15, "the events to be decided")
        for d in devices:
            v = (await http.get(f"/me/devices/{d}")).json()["result"]
            new = list(reversed(v["events"][: len(v["events"]) - seen[d]]))
            seen[d] = len(v["events"])
            for e in new:
                line = f"{d:13} {e['event']:12} room={e['room']}: {e['decision']}"
                if e["decision"] != "pushed":
                    line += f" ({e['reason']})"
                for res in e["results"]:
                    line += f" → {res['provider'].upper()} {res['outcome']}"
                    if "latency" in res:
                        line += f" in {res['latency'] * 1000:.0f} ms"
                say(line)

    printed = {"apns": 0, "fcm": 0}

    def private(data: dict[str, Any]) -> str:
        """The privacy fields of a data block, ``enc`` abbreviated (it is some hundred characters)."""
        text = f" content={data['content']}" if "content" in data else ""
        if "enc" in data:
            text += f" enc={data['enc'][:12]}…({len(data['enc'])} chars)"
        return text

    def new_payloads() -> None:
        """Print what the simulated providers received since the last call."""
        for a in apns.received[printed["apns"] :]:
            aps = a.payload.get("aps", {})
            what = f"alert={json.dumps(aps.get('alert'), ensure_ascii=False)}" if "alert" in aps else "silent"
            to = DEVICE_OF_TOKEN.get(a.token, "?") + ":"
            say(f"  APNs got for {to:13} status={a.status} push-type={a.headers.get('apns-push-type')} {what} badge={aps.get('badge')}{private(a.payload)}")
            if say.verbose:
                say("    " + json.dumps(a.payload, ensure_ascii=False))
        for f in fcm.received[printed["fcm"] :]:
            data = f.message.get("data", {})
            to = DEVICE_OF_TOKEN.get(f.token, "?") + ":"
            if data.get("type") == "badge":
                say(f"  FCM  got for {to:13} status={f.status} silent badge={data.get('badge')}")
            else:
                loc = f" loc-key={data['loc-key']!r}" if "loc-key" in data else ""
                say(f"  FCM  got for {to:13} status={f.status} title={data.get('title')!r} body={data.get('body')!r} type={data.get('type')!r}{loc} badge={data.get('badge')}{private(data)}")
            if say.verbose:
                say("    " + json.dumps(f.message, ensure_ascii=False))
        printed["apns"], printed["fcm"] = len(apns.received), len(fcm.received)

    async def providers_got(n_apns: int, n_fcm: int) -> None:
        want = (printed["apns"] + n_apns, printed["fcm"] + n_fcm)

        async def done() -> bool:
            return (len(apns.received), len(fcm.received)) >= want

        await wait_until(done, 10, "the simulated providers")
        new_payloads()

    say.step("Both apps are in the background; Bob writes in #general")
    for d in devices:
        await http.post("/me/state", json={"deviceId": d, "state": "background"})
    first = await imkit.send_message("general", "bob", "Hi Alice! Lunch at noon?")
    await show(1)
    await providers_got(1, 1)

    say.step("Alice opens the app on her iPhone (foreground); Bob writes again")
    r = await http.post("/me/state", json={"deviceId": "alice-iphone", "state": "foreground", "ttl": 120})
    say(f"POST /me/state iPhone foreground (ttl 120 s) → {r.status_code}")
    await imkit.send_message("general", "bob", "Are you there?")
    await show(1)
    await providers_got(0, 1)

    say.step("Alice mutes #random; Bob writes there")
    await imkit.mute("alice", "random", True)
    await show(1)
    await imkit.send_message("random", "bob", "cat pictures!", message_type="image")
    await show(1)

    say.step("Bob edits his first message (same _id): never alerted twice")
    await imkit.edit_message(first["_id"], "Hi Alice! Lunch at 12:30?")
    await show(1)

    say.step("Alice leaves the app; Carol invites her to 'Party planning'")
    r = await http.post("/me/state", json={"deviceId": "alice-iphone", "state": "background"})
    say(f"POST /me/state iPhone background → {r.status_code}")
    await imkit.invite("party", "carol", "alice")
    await show(1)
    await providers_got(1, 1)

    say.step("Alice reads #general on her laptop: the badge is updated silently")
    await imkit.read("alice", "general")
    await show(1)
    await providers_got(1, 1)

    say.step("Alice adds an iPad (encrypted pushes) and a tablet (hidden pushes); Bob writes in #general")
    ipad_key = secrets.token_bytes(32)  # an app makes it with SecRandomCopyBytes and keeps it in its keychain
    r = await http.post("/me/subscribe", json={"type": "ios", "token": IPAD, "deviceId": "alice-ipad", "locale": "en-US", "content": "encrypted", "contentKey": base64.b64encode(ipad_key).decode()})
    say(f"POST /me/subscribe iPad   content=encrypted contentKey=<32 random bytes, base64> → {r.status_code} {r.json()['RM']}")
    r = await http.post("/me/subscribe", json={"type": "fcm", "token": TABLET, "deviceId": "alice-tablet", "locale": "en-US", "content": "hidden"})
    say(f"POST /me/subscribe tablet content=hidden → {r.status_code} {r.json()['RM']}")
    for d in ("alice-ipad", "alice-tablet"):
        devices[d], seen[d] = "new", 0
    await wait_until(live, 20, "the new sessions to go live")
    say("their upstream sessions are live too; the same message now goes to four devices")
    await imkit.send_message("general", "bob", PRIVATE_TEXT)
    await show(1)
    await providers_got(2, 2)

    ipad_push = next(a for a in reversed(apns.received) if a.token == IPAD)
    opened = json.loads(open_sealed(ipad_key, ipad_push.payload["enc"]))
    say(f"the iPad's notification service extension opens enc with its key (AES-256-GCM, docs/privacy.md): title={opened['title']!r} body={opened['body']!r}")
    # Everything the providers got for the private devices but ``enc`` (random base64 could spell "Bob").
    requests = [json.dumps({k: v for k, v in a.payload.items() if k != "enc"}, ensure_ascii=False) for a in apns.received if a.token == IPAD]
    requests += [json.dumps(f.message, ensure_ascii=False) for f in fcm.received if f.token == TABLET]
    if any(PRIVATE_TEXT in text or "Bob" in text for text in requests):
        say("LEAK: Apple or Google got the text or the sender of a private device's push")
        return 1
    say("Apple and Google got neither the text nor the sender for the iPad and the tablet: only ids, a generic alert and (iPad) the sealed enc")

    say.step("The iPad acknowledges the push it showed (a delivery receipt)")
    push_id = ipad_push.payload["pushId"]
    say(f"the push carries pushId={push_id} in clear, next to enc")
    r = await http.post("/me/devices/alice-ipad/ack", json={"pushId": push_id})
    say(f"POST /me/devices/alice-ipad/ack → {r.status_code} {json.dumps(r.json().get('result', r.json()))}")
    if r.status_code != 200:
        return 1
    for d in ("alice-ipad", "alice-tablet"):
        event = (await http.get(f"/me/devices/{d}")).json()["result"]["events"][0]
        answers = {res["pushId"]: res for res in event["results"]}
        for p in event["pushes"]:
            res = answers[p["pushId"]]
            if p["shown"] is None:
                when = f"null (never acknowledged: {res['provider'].upper()} accepted it, the app did not confirm it)"
            else:
                when = f"{p['shown']:.2f} ({p['shown'] - res['at']:.2f} s after {res['provider'].upper()} accepted it)"
            say(f"GET /me/devices/{d:12} {event['event']} room={event['room']} pushId={p['pushId'][:8]}… shown={when}")
    metrics = (await http.get("/metrics")).text
    for line in metrics.splitlines():
        if line.startswith(("bridge_push_acks_total", "bridge_push_ack_latency_seconds_count")):
            say(f"GET /metrics: {line}")

    say.step("Done")
    say(f"APNs received {len(apns.received)} request(s), FCM received {len(fcm.received)} request(s)")
    return 0
