"""The one aiohttp session shared by every upstream socket of a process.

Each setting avoids a pitfall measured with python-socketio 5.18 / python-engineio 4.15:

- ``TCPConnector(limit=0)``: the default limit of 100 connections silently stalls the 101st
  websocket (the sockets are long-lived, so the pool never frees a slot).
- ``DummyCookieJar``: a shared jar would replay one device's cookies (sticky-session cookies of a
  load balancer, for instance) on another device's connection.
- ``ClientTimeout(total=None, sock_read=None)``: a ``total`` timeout also applies to the websocket,
  so every socket would be killed after that many seconds; reads are bounded by Engine.IO's
  ping timeout instead. Only connecting is bounded here (``sock_connect``).
"""

from __future__ import annotations

import aiohttp


def make_http_session(*, connect_timeout: float = 10.0) -> aiohttp.ClientSession:
    """A ClientSession for all upstream sockets: unlimited connector, no cookies, socket-level timeouts.

    Call it inside the running event loop; the owner closes it after the last session closed.
    """
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=connect_timeout, sock_read=None)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=timeout,
    )
