"""Settings: every variable documented, clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge.config import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = DOC.read_text()
    missing = [name for name in Settings.model_fields if f"BRIDGE_{name.upper()}" not in text]
    assert not missing, f"undocumented BRIDGE_* variables: {missing}"


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"BRIDGE_{name.upper()}", raising=False)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.host, s.port, s.store, s.foreground_ttl, s.metrics_port) == ("127.0.0.1", 8080, "sqlite:///./bridge.db", 120, 9108)
    assert s.push_provider_fallback == "none"  # message text never goes to the log unless asked


def test_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_PORT", "9999")
    monkeypatch.setenv("BRIDGE_IMKIT_URL", "http://imkit.local:3100/")
    monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "s3cret")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.port == 9999 and s.imkit_url == "http://imkit.local:3100"
    assert s.admin_token is not None and "s3cret" not in repr(s)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"BRIDGE_PORT": "not-a-port"}, "port"),
        ({"BRIDGE_STORE": "mysql://x"}, "sqlite:///"),
        ({"BRIDGE_IMKIT_URL": "imkit.local"}, "http://"),
        ({"BRIDGE_APNS_KEY_FILE": "k.p8"}, "BRIDGE_APNS_KEY_ID"),
        ({"BRIDGE_FOREGROUND_TTL": "0"}, "foreground_ttl"),
        ({"BRIDGE_BACKOFF_BASE": "10", "BRIDGE_BACKOFF_CAP": "5"}, "BRIDGE_BACKOFF_CAP"),
    ],
)
def test_invalid_values_are_named(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], fragment: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", "2197", ("127.0.0.1", 2197)),
        ("https://127.0.0.1/", "2197", ("127.0.0.1", 2197)),
        ("127.0.0.1:8443", None, ("127.0.0.1", 8443)),
        ("https://apns.local:8443", None, ("apns.local", 8443)),
    ],
)
def test_apns_host_forms(monkeypatch: pytest.MonkeyPatch, host: str, port: str | None, expected: tuple[str, int]) -> None:
    monkeypatch.setenv("BRIDGE_APNS_HOST", host)
    if port:
        monkeypatch.setenv("BRIDGE_APNS_PORT", port)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.apns_host, s.apns_port) == expected
