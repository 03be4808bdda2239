"""A simulated APNs server: HTTP/2 over TLS, answering the way Apple's provider API does.

It checks what Apple checks (path, ``apns-topic``, ``apns-push-type``, the ES256 provider token,
the payload: :mod:`bridge.sim.apns_requests`) and answers ``200`` with ``apns-id`` in one HEADERS frame with END_STREAM, or an
error status with a JSON ``{"reason": ...}`` body. Device tokens can be scripted to answer with
any status and reason, to stall, or to drop the connection with a GOAWAY. Every request that
arrives complete is recorded in :attr:`ApnsSim.received`, with the verdict it got.

Certificate auth is supported too: with ``client_ca_file`` the server requires a client
certificate issued by that CA, and a request without a provider token is then accepted.

Like Apple, it has two environments: :meth:`ApnsSim.start` opens a production listener
(:attr:`ApnsSim.port`) and a sandbox one (:attr:`ApnsSim.sandbox_port`). A token is valid in
both unless :meth:`ApnsSim.register_token` ties it to one; the other then answers
``400 BadDeviceToken``, as Apple does for a token of the other environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from h2.errors import ErrorCodes

from bridge.sim.apns_requests import ProviderTokens, Verdict, check_request
from bridge.sim.certs import ApnsKey, generate_apns_key, issue_test_certs
from bridge.sim.h2server import H2Request, H2ServerConnection

logger = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class ApnsReceived:
    """One request the simulator answered (or dropped): what came in and what it decided."""

    token: str
    headers: dict[str, str]
    payload: dict[str, Any]
    #: ``time.monotonic()`` when the request was complete.
    arrived: float
    #: The status answered, or None when the connection was dropped instead (GOAWAY).
    status: int | None = None
    reason: str | None = None
    #: The listener it came in on: ``production`` or ``sandbox``.
    environment: str = "production"

    def __repr__(self) -> str:
        # The device token is a secret of the app; keep it out of reprs.
        return (
            f"ApnsReceived(environment={self.environment!r}, status={self.status!r}, "
            f"reason={self.reason!r}, arrived={self.arrived:.3f})"
        )


@dataclass(slots=True)
class _Script:
    status: int
    reason: str | None
    stall: float | None
    goaway: bool
    retry_after: int | None
    times: int | None
    echo_apns_id: bool


class _Connection(H2ServerConnection):
    """One client connection: each whole request judged as Apple would, answered (or stalled, or
    dropped with a GOAWAY) as judged."""

    def __init__(self, sim: ApnsSim, environment: str) -> None:
        super().__init__(sim.max_concurrent_streams)
        self._sim = sim
        self._environment = environment
        self.client_cert = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client_cert = bool(transport.get_extra_info("peercert"))
        self._sim._connections.add(self)
        self._sim.accepted += 1
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._sim._connections.discard(self)
        super().connection_lost(exc)

    def request_received(self, stream_id: int, request: H2Request) -> None:
        verdict, received = self._sim._judge(
            request.headers, bytes(request.body), self.client_cert, self._environment
        )
        self._sim._record(received)
        apns_id = request.headers.get("apns-id") or str(uuid.uuid4())
        if verdict.stall:
            self.spawn(self._answer_later(stream_id, apns_id, verdict))
        else:
            self._answer(stream_id, apns_id, verdict)

    async def _answer_later(self, stream_id: int, apns_id: str, verdict: Verdict) -> None:
        assert verdict.stall is not None
        await asyncio.sleep(verdict.stall)
        self._answer(stream_id, apns_id, verdict)

    def _answer(self, stream_id: int, apns_id: str, verdict: Verdict) -> None:
        if verdict.goaway:
            # Apple says why in the GOAWAY debug data; the in-flight stream is not processed.
            self.h2.close_connection(
                error_code=ErrorCodes.NO_ERROR,
                additional_data=json.dumps({"reason": verdict.reason or "Shutdown"}).encode(),
                last_stream_id=max(0, stream_id - 2),
            )
            self.flush()
            self.close()
            return
        headers = [(":status", str(verdict.status))]
        if verdict.echo_apns_id:
            headers.append(("apns-id", apns_id))
        if verdict.status == 200:
            self.respond(stream_id, headers)
            return
        headers.append(("content-type", "application/json"))
        if verdict.retry_after is not None:
            headers.append(("retry-after", str(verdict.retry_after)))
        body: dict[str, Any] = {"reason": verdict.reason or ""}
        if verdict.status == 410:
            body["timestamp"] = int(time.time() * 1000)
        self.respond(stream_id, headers, json.dumps(body).encode())


class ApnsSim:
    """A simulated APNs provider API on 127.0.0.1, for tests, the demo and benchmarks.

    ``topics`` are the accepted bundle ids (``<topic>.voip`` is accepted for voip pushes);
    ``keys`` the accepted token-auth keys as :class:`ApnsKey` or ``(key_id, team_id,
    public_key_pem)``; ``client_ca_file`` turns on certificate auth (client certificate required).
    ``keep_received`` bounds :attr:`received` to about the latest that many (for long benchmarks);
    :attr:`received_total` and :attr:`statuses` count everything.
    """

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        *,
        topics: Iterable[str],
        keys: Iterable[ApnsKey | tuple[str, str, str]] = (),
        client_ca_file: Path | None = None,
        max_concurrent_streams: int = 1000,
        keep_received: int | None = None,
    ) -> None:
        self.topics = frozenset(topics)
        self._tokens = ProviderTokens(keys)
        self.max_concurrent_streams = max_concurrent_streams
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ssl.load_cert_chain(cert_file, key_file)
        self._ssl.set_alpn_protocols(["h2"])
        if client_ca_file is not None:
            self._ssl.load_verify_locations(client_ca_file)
            self._ssl.verify_mode = ssl.CERT_REQUIRED
        self._server: asyncio.Server | None = None
        self._sandbox_server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        #: Tokens tied to one environment (see :meth:`register_token`).
        self._token_environments: dict[str, str] = {}
        #: Connections accepted since construction (a recycled client shows up here).
        self.accepted = 0
        self._scripts: dict[str, _Script] = {}
        self._received_changed = asyncio.Event()
        self._keep_received = keep_received
        self.received: list[ApnsReceived] = []
        self.received_total = 0
        #: Requests by the status answered (0 for a dropped connection).
        self.statuses: Counter[int] = Counter()
        #: Called with each request as it is recorded (``run`` writes them to a file).
        self.on_record: Callable[[ApnsReceived], None] | None = None

    @property
    def port(self) -> int:
        """The production listener's port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("ApnsSim is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def sandbox_port(self) -> int:
        """The sandbox listener's port (after :meth:`start` with a sandbox listener)."""
        if self._sandbox_server is None:
            raise RuntimeError("ApnsSim has no sandbox listener")
        return int(self._sandbox_server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """How many client connections are open right now."""
        return len(self._connections)

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, sandbox_port: int | None = 0
    ) -> None:
        """Listen on ``host:port`` as production and ``host:sandbox_port`` as the sandbox.

        0 picks a free port (read them back from :attr:`port` and :attr:`sandbox_port`);
        ``sandbox_port=None`` opens no sandbox listener.
        """
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self, "production"), host, port, ssl=self._ssl
        )
        if sandbox_port is not None:
            self._sandbox_server = await loop.create_server(
                lambda: _Connection(self, "sandbox"), host, sandbox_port, ssl=self._ssl
            )
            logger.info(
                "APNs sim listening on %s:%d (production) and :%d (sandbox)",
                host,
                self.port,
                self.sandbox_port,
            )
        else:
            logger.info("APNs sim listening on %s:%d", host, self.port)

    async def stop(self) -> None:
        """Close the listeners and drop every client connection (abruptly, like a dead server)."""
        servers = [s for s in (self._server, self._sandbox_server) if s is not None]
        if not servers:
            return
        for server in servers:
            server.close()
        for conn in list(self._connections):
            conn.abort()
        for server in servers:
            await server.wait_closed()
        self._server = self._sandbox_server = None

    def register_token(self, token: str, environment: str | None) -> None:
        """Tie ``token`` to ``production`` or ``sandbox`` (None: valid in both, the default).

        The other environment then answers ``400 BadDeviceToken`` for it.
        """
        if environment is None:
            self._token_environments.pop(token, None)
        elif environment in ("production", "sandbox"):
            self._token_environments[token] = environment
        else:
            raise ValueError("environment must be production, sandbox or None")

    def script(
        self,
        token: str,
        *,
        status: int = 200,
        reason: str | None = None,
        stall: float | None = None,
        goaway: bool = False,
        retry_after: int | None = None,
        times: int | None = None,
        echo_apns_id: bool = True,
    ) -> None:
        """Make requests for ``token`` (once they pass Apple's checks) answer as scripted.

        ``status``/``reason``: the answer; ``stall``: seconds to wait before answering;
        ``goaway``: drop the connection with a GOAWAY instead (``reason`` goes in its debug data);
        ``retry_after``: a ``retry-after`` header on an error; ``times``: how many requests the
        script applies to (None: until replaced); ``echo_apns_id=False`` leaves ``apns-id`` out
        of the answer, which Apple never does.
        """
        self._scripts[token] = _Script(
            status, reason, stall, goaway, retry_after, times, echo_apns_id
        )

    def unscript(self, token: str | None = None) -> None:
        """Forget the script of ``token`` (or of every token)."""
        if token is None:
            self._scripts.clear()
        else:
            self._scripts.pop(token, None)

    async def wait_received(
        self,
        n: int,
        timeout: float = 5.0,  # noqa: ASYNC109 - part of the brief's test-helper API
    ) -> list[ApnsReceived]:
        """Wait until at least ``n`` requests arrived in all; raises ``TimeoutError`` otherwise."""
        async with asyncio.timeout(timeout):
            while self.received_total < n:
                self._received_changed.clear()
                await self._received_changed.wait()
        return self.received

    def _record(self, received: ApnsReceived) -> None:
        self.received.append(received)
        self.received_total += 1
        self.statuses[received.status or 0] += 1
        if self._keep_received is not None and len(self.received) > 2 * self._keep_received:
            del self.received[: -self._keep_received]  # trimmed in chunks: amortised O(1)
        if self.on_record is not None:
            self.on_record(received)
        self._received_changed.set()

    def _judge(
        self, headers: dict[str, str], body: bytes, client_cert: bool, environment: str
    ) -> tuple[Verdict, ApnsReceived]:
        verdict, token, payload = check_request(
            headers, body, client_cert=client_cert, topics=self.topics, tokens=self._tokens
        )
        if verdict is None and self._token_environments.get(token, environment) != environment:
            verdict = Verdict(400, "BadDeviceToken")  # a token of the other environment
        if verdict is None:
            verdict = self._scripted(token)
        received = ApnsReceived(
            token=token,
            headers=headers,
            payload=payload,
            arrived=time.monotonic(),
            status=None if verdict.goaway else verdict.status,
            reason=verdict.reason,
            environment=environment,
        )
        return verdict, received

    def _scripted(self, token: str) -> Verdict:
        script = self._scripts.get(token)
        if script is None:
            return Verdict(200)
        if script.times is not None:
            script.times -= 1
            if script.times <= 0:
                del self._scripts[token]
        return Verdict(
            script.status,
            script.reason,
            script.stall,
            script.goaway,
            script.retry_after,
            script.echo_apns_id,
        )

def _load_or_create(state_dir: Path) -> tuple[Path, Path, Path, ApnsKey]:
    """Reuse the certificates and key of an earlier run, so a configured bridge keeps working."""
    state_dir.mkdir(parents=True, exist_ok=True)
    state_file = state_dir / "apns-sim.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(state_file.read_text())
        key = ApnsKey(
            Path(saved["key_file"]),
            saved["key_id"],
            saved["team_id"],
            Path(saved["public_key_file"]).read_text(),
        )
        paths = (Path(saved["ca_file"]), Path(saved["cert_file"]), Path(saved["server_key_file"]))
        if all(p.is_file() for p in (*paths, key.key_file)):
            return (*paths, key)
    certs = issue_test_certs(state_dir / "certs")
    key = generate_apns_key(state_dir / "keys")
    (state_dir / "keys" / "apns-public.pem").write_text(key.public_key_pem)
    return certs.ca_file, certs.cert_file, certs.key_file, key


async def run(host: str, port: int, state_dir: Path, topic: str) -> None:
    """Serve a simulated APNs until cancelled, with certificates and a key kept in ``state_dir``.

    Writes ``state_dir/apns-sim.json`` with the files made and the ``BRIDGE_APNS_*`` settings
    (``env``) that point a bridge at this simulator, and appends every request it answers to
    ``state_dir/apns-received.jsonl`` (emptied at start): what arrived is otherwise visible only
    inside this process, and a bridge in another process or container is checked against it.
    """
    from bridge.sim.stack import apns_settings, as_env  # stack.py imports this module

    ca_file, cert_file, server_key_file, key = await asyncio.to_thread(_load_or_create, state_dir)
    sim = ApnsSim(cert_file, server_key_file, topics=[topic], keys=[key])
    received_file = state_dir / "apns-received.jsonl"
    out = await asyncio.to_thread(received_file.open, "w", encoding="utf-8")

    def write(r: ApnsReceived) -> None:
        fields = {
            "token": r.token,
            "status": r.status,
            "reason": r.reason,
            "environment": r.environment,
        }
        out.write(json.dumps({**fields, "headers": r.headers, "payload": r.payload}) + "\n")
        out.flush()  # a reader polls the file while this process runs

    sim.on_record = write
    try:
        # One listener, as before: a bridge given only BRIDGE_APNS_HOST sends both environments here.
        await sim.start(host, port, sandbox_port=None)
        env = as_env(
            apns_settings(host=host, port=sim.port, ca_file=ca_file, key=key, topic=topic)
        )
        state = {
            "host": host,
            "port": sim.port,
            "topic": topic,
            "ca_file": str(ca_file),
            "cert_file": str(cert_file),
            "server_key_file": str(server_key_file),
            "key_file": str(key.key_file),
            "key_id": key.key_id,
            "team_id": key.team_id,
            "public_key_file": str(state_dir / "keys" / "apns-public.pem"),
            "received_file": str(received_file),
            "env": env,
        }
        await asyncio.to_thread(
            (state_dir / "apns-sim.json").write_text, json.dumps(state, indent=2)
        )
        logger.info("APNs sim ready; settings in %s", state_dir / "apns-sim.json")
        await asyncio.Event().wait()
    finally:
        await sim.stop()  # a no-op when it never started
        out.close()
