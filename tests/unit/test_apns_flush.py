"""The APNs protocol writes a burst of requests in one write (bridge.push.apns_connection)."""

from __future__ import annotations

import asyncio
from typing import Any

from aioapns.common import NotificationRequest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RequestReceived

from bridge.push.apns_connection import protocol_class


class RecordingTransport(asyncio.Transport):
    """The socket side of the protocol: keeps each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


async def test_a_burst_of_requests_is_one_write_and_a_server_reads_them_all() -> None:
    proto = protocol_class("api.example.test", 443, 10.0, {}, None)("com.example.app")
    transport = RecordingTransport()
    proto.connection_made(transport)
    await asyncio.sleep(0)
    assert len(transport.writes) == 1  # the connection preface
    sends = [
        asyncio.ensure_future(
            proto.send_notification(
                NotificationRequest(device_token=f"{i:064x}", message={"aps": {"alert": str(i)}})
            )
        )
        for i in range(20)
    ]
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(transport.writes) == 2  # 20 requests, one write
    # What was written is 20 complete requests to a real h2 server connection.
    server = H2Connection(config=H2Configuration(client_side=False))
    server.initiate_connection()
    events = server.receive_data(b"".join(transport.writes))
    paths = [dict(e.headers)[b":path"] for e in events if isinstance(e, RequestReceived)]
    assert paths == [f"/3/device/{i:064x}".encode() for i in range(20)]
    for send in sends:
        send.cancel()
    await asyncio.gather(*sends, return_exceptions=True)
    proto.close()


async def test_no_write_after_the_transport_closes() -> None:
    proto = protocol_class("api.example.test", 443, 10.0, {}, None)("com.example.app")
    transport = RecordingTransport()
    proto.connection_made(transport)
    transport.closing = True  # closed before the end of this loop iteration
    await asyncio.sleep(0)
    assert transport.writes == []
    proto.close()
