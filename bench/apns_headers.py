"""What one APNs request's HTTP/2 header block costs: h2's defaults against ``cheap_headers``.

Builds the header list aioapns 4.0 sends (a unique ``:path`` and ``apns-id`` per request, the
provider token in ``authorization``) on one h2 client connection, ``--requests`` times over
``--devices`` device tokens, and prints the mean µs and bytes per request for h2's defaults (every
request normalised and validated, Huffman coding, ``authorization`` never indexed) and for
:func:`bridge.push.apns.cheap_headers`. The fastest of ``--repeat`` runs (the machine is shared).

    .venv/bin/python -m bench.apns_headers
"""

from __future__ import annotations

import argparse
import secrets
import time
import uuid

from h2.connection import H2Connection

from bridge.push.apns import cheap_headers


def _headers(token: str, jwt: str) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", f"/3/device/{token}"),
        ("host", "api.push.apple.com"),
        ("apns-id", str(uuid.uuid4())),
        ("apns-topic", "com.example.chat"),
        ("apns-expiration", str(int(time.time()) + 86_400)),
        ("apns-priority", "10"),
        ("apns-collapse-id", "room-1234567890abcdef"),
        ("apns-push-type", "alert"),
        ("authorization", jwt),
    ]


def run(cheap: bool, requests: int, tokens: list[str], jwt: str) -> tuple[float, float]:
    """Mean µs and bytes per request on a fresh connection."""
    conn = H2Connection()
    conn.initiate_connection()
    conn.data_to_send()
    if cheap:
        cheap_headers(conn)
    lists = [_headers(tokens[i % len(tokens)], jwt) for i in range(requests)]
    sent = 0
    stream_id = 1
    start = time.perf_counter()
    for headers in lists:
        conn.send_headers(stream_id, headers, end_stream=True)
        sent += len(conn.data_to_send())
        del conn.streams[stream_id]  # as if answered: h2 walks its open streams on every send
        stream_id += 2
    elapsed = time.perf_counter() - start
    return elapsed / requests * 1e6, sent / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tokens = [secrets.token_hex(32) for _ in range(args.devices)]
    jwt = "bearer " + secrets.token_urlsafe(180)  # an ES256 provider token's length
    for name, cheap in (("h2 defaults", False), ("cheap_headers", True)):
        runs = [run(cheap, args.requests, tokens, jwt) for _ in range(args.repeat)]
        micros, size = min(runs)
        print(f"{name:14s} {micros:6.1f} µs/request  {size:5.0f} bytes/request")


if __name__ == "__main__":
    main()
