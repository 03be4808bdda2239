"""BRIDGE_FCM_URL: a base URL or the whole send URL."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000/v1/projects/p1/messages:send"),
        ("http://127.0.0.1:9000/", "http://127.0.0.1:9000/v1/projects/p1/messages:send"),
        ("http://127.0.0.1:9000/v1", "http://127.0.0.1:9000/v1/projects/p1/messages:send"),
        ("https://fcm.example/v1/projects/p1/messages:send", "https://fcm.example/v1/projects/p1/messages:send"),
        ("https://fcm.example/v1/projects/{project}/messages:send", "https://fcm.example/v1/projects/p1/messages:send"),
    ],
)
def test_fcm_send_url_accepts_a_base_or_a_whole_url(given: str, expected: str) -> None:
    from bridge.push.fcm import send_url

    assert send_url(given, "p1") == expected
