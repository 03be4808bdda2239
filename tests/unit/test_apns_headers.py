"""``cheap_headers``: a server decodes exactly the headers aioapns built, and the provider token
is sent once per connection, not once per request."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events

from bridge.push.apns import cheap_headers

JWT = "bearer " + "eyJhbGciOiJFUzI1NiIsImtpZCI6IkFCQyJ9." + "x" * 200


def _request(token: str, apns_id: str) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", f"/3/device/{token}"),
        ("host", "api.push.apple.com"),
        ("apns-id", apns_id),
        ("apns-topic", "com.example.chat"),
        ("apns-push-type", "alert"),
        ("authorization", JWT),
    ]


def test_the_server_reads_the_same_headers_and_the_token_is_indexed() -> None:
    client = h2.connection.H2Connection()
    cheap_headers(client)
    client.initiate_connection()
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())

    sizes = []
    for i, stream_id in enumerate((1, 3, 5)):
        sent = _request(f"{i:064x}", f"00000000-0000-0000-0000-00000000000{i}")
        client.send_headers(stream_id, sent, end_stream=True)
        block = client.data_to_send()
        sizes.append(len(block))
        events = server.receive_data(block)
        received = [e for e in events if isinstance(e, h2.events.RequestReceived)]
        assert len(received) == 1
        assert [(str(k), str(v)) for k, v in received[0].headers] == sent

    # The first request carries the ~250-byte token; later ones refer to it by index.
    assert sizes[1] < sizes[0] - len(JWT) // 2
    assert sizes[2] == sizes[1]
