"""The command line as a newcomer runs it: demo, check, sim."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from bridge.config import Settings
from bridge.demo import PRIVATE_TEXT
from bridge.models import ApnsRequest, Notification
from bridge.push.apns import ApnsProvider
from bridge.push.provider import Delivered
from tests._poll import wait_for
from tests.e2e._bridge import free_port_run


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    return subprocess.run([sys.executable, "-m", "bridge", *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def test_demo_narrates_the_whole_flow() -> None:
    p = run("demo")
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    for expected in (
        "both upstream sessions are live",
        "chat message room=general: pushed → APNS delivered",
        "chat message room=general: pushed → FCM delivered",
        "suppressed (foreground)",
        "suppressed (muted)",
        "suppressed (duplicate)",
        "invitation   room=party: pushed",
        "APNs got for alice-iphone: status=200 push-type=background silent badge=",
        # Privacy modes (issue 14): what the providers got for the private devices, and the iPad's decryption.
        'APNs got for alice-ipad:   status=200 push-type=alert alert={"title": "New message", "body": "You have a new message"}',
        "FCM  got for alice-tablet: status=200 title='New message' body='You have a new message'",
        f"opens enc with its key (AES-256-GCM, docs/privacy.md): title='Bob' body={PRIVATE_TEXT!r}",
        "Apple and Google got neither the text nor the sender for the iPad and the tablet",
        'GET /metrics: bridge_push_acks_total{provider="apns"} 1.0',
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    lines = out.splitlines()
    ipad = next(line for line in lines if "APNs got for alice-ipad:" in line)
    tablet = next(line for line in lines if "FCM  got for alice-tablet:" in line)
    assert "content=encrypted enc=" in ipad and "content=hidden" in tablet
    assert PRIVATE_TEXT not in ipad + tablet
    assert f"APNs got for alice-iphone: status=200 push-type=alert alert={{\"title\": \"Bob\", \"body\": \"{PRIVATE_TEXT}\"" in out

    # The ack: the pushId the iPad got, answered 200, then ``shown`` on that push (and not on the tablet's).
    push_id = re.search(r"the push carries pushId=([0-9a-f]{32}) in clear", out)
    assert push_id, out
    acked = re.search(r"POST /me/devices/alice-ipad/ack → (\d+) (\{.*\})", out)
    assert acked and acked[1] == "200", out
    answer = json.loads(acked[2])
    assert answer["deviceId"] == "alice-ipad" and answer["pushId"] == push_id[1]
    shown = re.search(rf"GET /me/devices/alice-ipad +chat message room=general pushId={push_id[1][:8]}… shown=([\d.]+) ", out)
    assert shown and abs(float(shown[1]) - answer["ackedAt"]) < 0.01, out
    assert re.search(r"GET /me/devices/alice-tablet +chat message room=general pushId=[0-9a-f]{8}… shown=null ", out), out


def test_check_names_what_is_wrong(tmp_path: Path) -> None:
    p = run("check", env={"BRIDGE_PORT": "nope"})
    assert p.returncode == 2 and "BRIDGE_PORT" in p.stderr
    bad_sa = tmp_path / "sa.json"
    bad_sa.write_text(json.dumps({"type": "service_account", "project_id": "p"}))
    p = run("check", env={"BRIDGE_IMKIT_URL": "http://127.0.0.1:1", "BRIDGE_STORE": f"sqlite:///{tmp_path}/b.db", "BRIDGE_FCM_CREDENTIALS_FILE": str(bad_sa)})
    assert p.returncode == 1
    assert "FCM service account lacks: private_key, client_email, token_uri" in p.stdout
    env = {"BRIDGE_IMKIT_URL": "http://127.0.0.1:1", "BRIDGE_STORE": f"sqlite:///{tmp_path}/b.db"}
    p = run("check", env=env)  # no credentials, and no log fallback unless asked for: nothing can deliver
    assert p.returncode == 1 and "no provider can deliver" in p.stdout, p.stdout
    p = run("check", env={**env, "BRIDGE_PUSH_PROVIDER_FALLBACK": "log"})
    assert p.returncode == 0 and "configuration OK" in p.stdout, p.stdout
    assert "WARN  APNs: no credentials; notifications are written to the log" in p.stdout


def test_serve_refuses_to_start_without_imkit_url(tmp_path: Path) -> None:
    p = run("serve", env={"BRIDGE_STORE": f"sqlite:///{tmp_path}/b.db"}, timeout=30)
    assert p.returncode == 2 and "BRIDGE_IMKIT_URL is required" in p.stderr


def test_worker_role_needs_redis(tmp_path: Path) -> None:
    p = run("worker", env={"BRIDGE_IMKIT_URL": "http://127.0.0.1:1", "BRIDGE_STORE": f"sqlite:///{tmp_path}/b.db"}, timeout=30)
    assert p.returncode == 2 and "BRIDGE_STORE=redis://" in p.stderr


async def test_sim_all_serves_the_three_simulators(tmp_path: Path) -> None:
    port = free_port_run(3)
    base = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "sim", "all", "--port", str(port), "--state-dir", str(tmp_path)],
        env=base,
        stdout=(tmp_path / "sim.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        async def imkit_up() -> bool:
            try:
                async with httpx.AsyncClient(timeout=1) as c:
                    return (await c.get(f"http://127.0.0.1:{port}/sim/stats")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(imkit_up, 20, interval=0.1, message="simulated IMKIT up")
        await wait_for(lambda: (tmp_path / "apns-sim.json").exists() and (tmp_path / "fcm-service-account.json").exists(), 20, message="credentials written")
        apns = json.loads((tmp_path / "apns-sim.json").read_text())
        assert "BRIDGE_APNS_KEY_FILE" in json.dumps(apns)
        # The simulated APNs answers a push (TLS on uvloop, as `push-bridge sim` runs it) and
        # records it where another process (or container) can see what arrived.
        env = {k.removeprefix("BRIDGE_").lower(): v for k, v in apns["env"].items()}
        provider = ApnsProvider.from_settings(Settings(_env_file=None, **env, push_timeout=5))  # type: ignore[call-arg]
        token = "ab" * 32
        push = Notification(device_id="d1", push_type="ios", token=token, push_id="push-1", kind="message",
                            apns=ApnsRequest({"aps": {"alert": {"body": "hello"}}}))
        try:
            result = await provider.send(push)
        finally:
            await provider.close()
        assert isinstance(result, Delivered), result
        received = [json.loads(line) for line in (tmp_path / "apns-received.jsonl").read_text().splitlines()]
        assert [(r["token"], r["status"], r["payload"]["aps"]["alert"]["body"]) for r in received] == [(token, 200, "hello")]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    assert proc.returncode == 0
