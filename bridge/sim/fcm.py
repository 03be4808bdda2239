"""A simulated FCM HTTP v1 server with its own OAuth token endpoint, scriptable per push token.

``POST /v1/projects/{project}/messages:send`` checks what Google checks (a bearer token it issued,
the project id, the message shape: one target, string-only ``data``, at most 4096 bytes of data
keys and values plus notification titles and bodies, no unknown fields; the message checks are in
:mod:`bridge.sim.fcm_messages`) and answers in Google's error body shape, including the
``FcmError`` detail that firebase-admin reads. ``POST /token`` answers a service-account
JWT-bearer grant after verifying the assertion's RS256 signature against the key this simulator
generated. Per-token scripts give errors, ``429`` with ``Retry-After``, stalls and dropped
connections.

Plain mode speaks HTTP/1.1; with ``tls=True`` the same port negotiates HTTP/2 or HTTP/1.1 by ALPN
(firebase-admin's httpx client takes ``h2``, google-auth's token fetch through ``requests`` takes
``http/1.1``). HTTP/1.1 is served by aiohttp, HTTP/2 by a small ``h2`` protocol; both call the same
request handler (HTTP/2 through :mod:`bridge.sim.h2server`, as the simulated APNs). Everything it
answered is in :attr:`FcmSim.received`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import secrets
import ssl
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.sim.fcm_messages import ERROR_CODES, check_message, google_error
from bridge.sim.h2server import H2Request, H2ServerConnection

logger = logging.getLogger(__name__)

GOOGLE_TOKEN_ENDPOINT = "https://oauth2.googleapis.com/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Either scope lets a service account send FCM messages.
FCM_SCOPES = frozenset(
    {
        "https://www.googleapis.com/auth/firebase.messaging",
        "https://www.googleapis.com/auth/cloud-platform",
    }
)
_SEND_PATH = re.compile(r"^/v1/projects/(?P<project>[^/]+)/messages:send$")


@dataclass(frozen=True, slots=True)
class FcmReceived:
    """One request to ``messages:send`` and how the simulator answered it."""

    token: str
    message: dict[str, Any]
    headers: dict[str, str]
    #: ``time.monotonic()`` when the request arrived.
    at: float
    #: HTTP status answered, or None when the connection was dropped instead.
    status: int | None
    http_version: str
    #: Sequence number of the TCP connection it came on (1, 2, ...).
    connection: int


@dataclass(slots=True)
class _Script:
    status: int | None
    error_code: str | None
    retry_after: int | None
    stall: float | None
    drop: bool
    times: int | None


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    http_version: str
    connection: int


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        return json.dumps(self.body).encode()


class FcmSim:
    """A simulated FCM v1 endpoint and OAuth token endpoint on one port.

    ``tls=True`` without ``cert_file``/``key_file`` issues a throwaway CA and server certificate
    (see :attr:`ca_file`). Access tokens live ``token_ttl`` seconds; an expired or unknown one gets
    ``401 UNAUTHENTICATED``.
    """

    def __init__(
        self,
        *,
        project_id: str = "sim-project",
        tls: bool = False,
        cert_file: str | None = None,
        key_file: str | None = None,
        token_ttl: int = 3600,
        max_concurrent_streams: int = 100,
    ) -> None:
        self.project_id = project_id
        self.tls = tls
        self.cert_file = cert_file
        self.key_file = key_file
        self.token_ttl = token_ttl
        self.max_concurrent_streams = max_concurrent_streams
        #: CA to trust when this simulator issued its own certificate (``tls=True``, no cert given).
        self.ca_file: Path | None = None
        self.received: list[FcmReceived] = []
        #: ``time.monotonic()`` of every successful token grant.
        self.token_requests: list[float] = []
        #: TCP connections accepted so far.
        self.connections = 0
        self.client_email = f"firebase-adminsdk-sim@{project_id}.iam.gserviceaccount.com"
        self._private_key: rsa.RSAPrivateKey | None = None
        self._key_id = secrets.token_hex(20)
        self._scripts: dict[str, list[_Script]] = {}
        self._issued: dict[str, float] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._h1: web.Server | None = None
        self._h2: set[_H2Protocol] = set()
        self._conn_ids: weakref.WeakKeyDictionary[asyncio.BaseTransport, int] = (
            weakref.WeakKeyDictionary()
        )
        self._stopping = asyncio.Event()
        self._changed: asyncio.Condition | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._host = "127.0.0.1"
        self._port = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 picks a free port; see :attr:`port`)."""
        if self._private_key is None:
            # 2048-bit generation takes ~0.1 s of CPU: keep it off the loop.
            self._private_key = await asyncio.to_thread(
                rsa.generate_private_key, public_exponent=65537, key_size=2048
            )
        ssl_ctx = self._ssl_context() if self.tls else None
        self._stopping = asyncio.Event()
        self._changed = asyncio.Condition()
        self._h1 = web.Server(self._handle_h1, handler_cancellation=True)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Switch(self), host, port, ssl=ssl_ctx)
        self._host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        self._port = self._server.sockets[0].getsockname()[1]
        logger.info("simulated FCM listening on %s (project %s)", self.url, self.project_id)

    async def stop(self) -> None:
        """Stop listening, end stalls, close every connection. Idempotent."""
        self._stopping.set()
        if self._server is not None:
            self._server.close()
        for proto in list(self._h2):
            proto.abort()
        if self._h1 is not None:
            await self._h1.shutdown(0.5)
            self._h1 = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _ssl_context(self) -> ssl.SSLContext:
        if self.cert_file is None or self.key_file is None:
            from bridge.sim.certs import issue_test_certs

            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="fcm-sim-")
            certs = issue_test_certs(Path(self._tmp.name))
            self.ca_file = Path(certs.ca_file)
            self.cert_file, self.key_file = str(certs.cert_file), str(certs.key_file)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        return ctx

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (``BRIDGE_FCM_URL``)."""
        return f"{'https' if self.tls else 'http'}://{self._host}:{self._port}"

    @property
    def token_uri(self) -> str:
        """The OAuth token endpoint written into the service account."""
        return f"{self.url}/token"

    # ------------------------------------------------------------------ credentials

    def service_account_info(self) -> dict[str, str]:
        """A service-account JSON object whose key and ``token_uri`` belong to this simulator."""
        if self._private_key is None or not self._port:
            raise RuntimeError("start() the simulator first: the token_uri needs its port")
        pem = self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self._key_id,
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": f"{self.url}/x509/{self.client_email}",
            "universe_domain": "googleapis.com",
        }

    def write_service_account(self, path: str | Path) -> Path:
        """Write :meth:`service_account_info` to ``path`` (mode 0600) and return the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch(mode=0o600, exist_ok=True)
        p.chmod(0o600)
        p.write_text(json.dumps(self.service_account_info(), indent=2))
        return p

    # ------------------------------------------------------------------ scripting and records

    def script(
        self,
        token: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        retry_after: int | None = None,
        stall: float | None = None,
        drop: bool = False,
        times: int | None = None,
    ) -> None:
        """Script the answer for ``token`` (``times`` requests, or all when None).

        ``error_code`` (``UNREGISTERED``, ``INVALID_ARGUMENT``, ``SENDER_ID_MISMATCH``,
        ``QUOTA_EXCEEDED``, ``UNAVAILABLE``, ``INTERNAL``...) gives Google's status and body;
        ``status`` alone answers that status with no ``FcmError`` detail (200: success).
        ``stall`` waits that many seconds first; ``drop`` closes the connection without an answer.
        Scripts for one token apply in the order given.
        """
        if error_code is not None and error_code not in ERROR_CODES:
            raise ValueError(f"unknown FCM error code {error_code!r}")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for every request)")
        self._scripts.setdefault(token, []).append(
            _Script(status, error_code, retry_after, stall, drop, times)
        )

    def revoke_tokens(self) -> None:
        """Invalidate every access token issued so far (the next send gets 401 UNAUTHENTICATED)."""
        self._issued.clear()

    def clear(self) -> None:
        """Forget scripts and records (issued access tokens stay valid)."""
        self._scripts.clear()
        self.received.clear()
        self.token_requests.clear()

    async def wait_received(self, n: int, timeout: float = 5.0) -> list[FcmReceived]:  # noqa: ASYNC109 - a deadline is the point
        """Wait until at least ``n`` requests were received; ``TimeoutError`` after ``timeout``."""
        assert self._changed is not None, "start() the simulator first"
        cond = self._changed
        async with asyncio.timeout(timeout), cond:
            await cond.wait_for(lambda: len(self.received) >= n)
        return list(self.received)

    async def _record(self, rec: FcmReceived) -> None:
        self.received.append(rec)
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    def _next_script(self, token: str) -> _Script | None:
        scripts = self._scripts.get(token)
        if not scripts:
            return None
        s = scripts[0]
        if s.times is not None:
            s.times -= 1
            if s.times <= 0:
                scripts.pop(0)
        return s

    # ------------------------------------------------------------------ request handling

    async def handle(self, req: _Request) -> _Reply | None:
        """Answer one request; None means drop the connection without answering."""
        if req.method == "POST" and req.path == "/token":
            return self._grant(req)
        m = _SEND_PATH.match(req.path.split("?", 1)[0])
        if req.method == "POST" and m:
            return await self._send(req, m.group("project"))
        return _Reply(
            404, google_error(404, f"The requested URL {req.path} was not found on this server.")
        )

    def _grant(self, req: _Request) -> _Reply:
        form = {k: v[0] for k, v in parse_qs(req.body.decode(errors="replace")).items()}
        if form.get("grant_type") != JWT_BEARER_GRANT:
            return _Reply(
                400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."}
            )
        assert self._private_key is not None
        try:
            header = jwt.get_unverified_header(form.get("assertion", ""))
            claims = jwt.decode(
                form.get("assertion", ""),
                self._private_key.public_key(),
                algorithms=["RS256"],
                audience=[self.token_uri, GOOGLE_TOKEN_ENDPOINT],
                issuer=self.client_email,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            return _Reply(
                400, {"error": "invalid_grant", "error_description": f"Invalid JWT: {exc}"}
            )
        if header.get("kid") not in (None, self._key_id):
            return _Reply(
                400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            )
        if not FCM_SCOPES & set(str(claims.get("scope", "")).split()):
            return _Reply(
                400, {"error": "invalid_scope", "error_description": "Missing FCM scope."}
            )
        access_token = "ya29.sim-" + secrets.token_urlsafe(24)
        self._issued[access_token] = time.monotonic() + self.token_ttl
        self.token_requests.append(time.monotonic())
        return _Reply(
            200,
            {"access_token": access_token, "expires_in": self.token_ttl, "token_type": "Bearer"},
            {"cache-control": "no-store"},
        )

    async def _send(self, req: _Request, project: str) -> _Reply | None:
        arrived = time.monotonic()
        try:
            body = json.loads(req.body or b"null")
        except ValueError:
            body = None
        message = body.get("message") if isinstance(body, dict) else None
        token = (
            (message.get("token") or message.get("fid") or "") if isinstance(message, dict) else ""
        )
        token = token if isinstance(token, str) else ""
        reply, script = self._answer(req, project, body, message, token, arrived)
        status = None if reply is None else reply.status
        await self._record(
            FcmReceived(
                token=token,
                message=message if isinstance(message, dict) else {},
                headers=dict(req.headers),
                at=arrived,
                status=status,
                http_version=req.http_version,
                connection=req.connection,
            )
        )
        if script is not None and script.stall:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), script.stall)
            if self._stopping.is_set():
                return None
        return reply

    def _answer(
        self, req: _Request, project: str, body: Any, message: Any, token: str, now: float
    ) -> tuple[_Reply | None, _Script | None]:
        auth = req.headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else ""
        if self._issued.get(bearer, 0.0) <= now:
            return _Reply(
                401,
                google_error(
                    401,
                    "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                    "login cookie or other valid authentication credential.",
                ),
            ), None
        if project != self.project_id:
            return _Reply(
                403,
                google_error(
                    403,
                    f"Permission 'cloudmessaging.messages.create' denied on resource "
                    f"'//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist).",
                ),
            ), None
        if not isinstance(body, dict):
            return _Reply(400, google_error(400, "Invalid JSON payload received.")), None
        problem = check_message(message)
        if problem is not None:
            text, where = problem
            return _Reply(
                400, google_error(400, text, error_code="INVALID_ARGUMENT", field_violation=where)
            ), None
        script = self._next_script(token)
        if script is None:
            return self._ok(project), None
        if script.drop:
            return None, script
        headers = {"retry-after": str(script.retry_after)} if script.retry_after is not None else {}
        if script.error_code is not None:
            status, _, text = ERROR_CODES[script.error_code]
            status = script.status or status
            return _Reply(
                status, google_error(status, text, error_code=script.error_code), headers
            ), script
        if script.status is None or script.status == 200:
            reply = self._ok(project)
            return _Reply(reply.status, reply.body, headers), script
        return _Reply(
            script.status, google_error(script.status, "Scripted error."), headers
        ), script

    def _ok(self, project: str) -> _Reply:
        return _Reply(200, {"name": f"projects/{project}/messages/0:{next(self._ids)}%sim"})

    # ------------------------------------------------------------------ HTTP/1.1 (aiohttp)

    async def _handle_h1(self, request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        req = _Request(
            method=request.method,
            path=request.path_qs,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.read(),
            http_version=f"{request.version.major}.{request.version.minor}",
            connection=self._conn_ids.get(transport, 0) if transport is not None else 0,
        )
        reply = await self.handle(req)
        if reply is None:
            if transport is not None:
                transport.abort()
            # handler_cancellation=True: losing the connection cancels this wait.
            await asyncio.get_running_loop().create_future()
        assert reply is not None
        return web.Response(
            status=reply.status,
            body=reply.encoded(),
            content_type="application/json",
            charset="utf-8",
            headers=reply.headers,
        )

    def _connection_made(self, transport: asyncio.BaseTransport) -> int:
        self.connections += 1
        self._conn_ids[transport] = self.connections
        return self.connections


class _Switch(asyncio.Protocol):
    """Hands a new connection to HTTP/2 or aiohttp's HTTP/1.1 by the ALPN protocol chosen."""

    def __init__(self, sim: FcmSim) -> None:
        self._sim = sim

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        conn = self._sim._connection_made(transport)
        ssl_obj = transport.get_extra_info("ssl_object")
        alpn = ssl_obj.selected_alpn_protocol() if ssl_obj is not None else None
        proto: asyncio.BaseProtocol
        if alpn == "h2":
            proto = _H2Protocol(self._sim, conn)
        elif self._sim._h1 is not None:
            proto = self._sim._h1()
        else:
            transport.close()
            return
        transport.set_protocol(proto)
        proto.connection_made(transport)


class _H2Protocol(H2ServerConnection):
    """An HTTP/2 connection: whole requests in, whole JSON replies out, each from a task."""

    def __init__(self, sim: FcmSim, connection: int) -> None:
        super().__init__(sim.max_concurrent_streams)
        self._sim = sim
        self._connection = connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sim._h2.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._sim._h2.discard(self)
        super().connection_lost(exc)

    def request_received(self, stream_id: int, request: H2Request) -> None:
        headers = request.headers
        req = _Request(
            method=headers.get(":method", ""),
            path=headers.get(":path", ""),
            headers={k: v for k, v in headers.items() if not k.startswith(":")},
            body=bytes(request.body),
            http_version="2",
            connection=self._connection,
        )
        self.spawn(self._respond(stream_id, req), stream_id)

    async def _respond(self, stream_id: int, req: _Request) -> None:
        try:
            reply = await self._sim.handle(req)
        except Exception:
            logger.exception("simulated FCM failed to answer %s %s", req.method, req.path)
            reply = _Reply(500, google_error(500, "Internal error encountered."))
        if reply is None:
            self.abort()
            return
        data = reply.encoded()
        headers = [
            (":status", str(reply.status)),
            ("content-type", "application/json; charset=UTF-8"),
            ("content-length", str(len(data))),
            *reply.headers.items(),
        ]
        self.respond(stream_id, headers, data)


async def run(host: str, port: int, state_dir: Path, *, tls: bool = False) -> None:
    """Serve a simulated FCM until cancelled; its service account goes to ``state_dir``.

    Writes ``state_dir/fcm-service-account.json`` (``BRIDGE_FCM_CREDENTIALS_FILE``); with ``tls``
    also a CA in ``state_dir/fcm-ca.pem`` (``BRIDGE_FCM_CA_FILE``).
    """
    sim = FcmSim(tls=tls)
    if tls:
        from bridge.sim.certs import issue_test_certs

        certs = issue_test_certs(state_dir / "fcm-tls")
        sim.cert_file, sim.key_file = str(certs.cert_file), str(certs.key_file)
        sim.ca_file = Path(certs.ca_file)
    await sim.start(host, port)
    try:
        sa = sim.write_service_account(state_dir / "fcm-service-account.json")
        logger.info(
            "simulated FCM: BRIDGE_FCM_URL=%s BRIDGE_FCM_CREDENTIALS_FILE=%s%s",
            sim.url,
            sa,
            f" BRIDGE_FCM_CA_FILE={sim.ca_file}" if sim.ca_file else "",
        )
        await asyncio.Event().wait()
    finally:
        await sim.stop()
