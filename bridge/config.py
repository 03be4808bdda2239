"""Settings: the one list of options, read from ``BRIDGE_*`` environment variables (or ``.env``)."""

from __future__ import annotations

import ipaddress
import logging
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.models import PushContent

#: The longest foreground state an app may ask for (``ttl``) or configure: an app that dies in the
#: foreground must not silence its pushes for longer than this.
MAX_FOREGROUND_TTL = 3600


class Settings(BaseSettings):
    """Every ``BRIDGE_*`` variable (docs/configuration.md), with defaults and validation."""

    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- HTTP
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    metrics_port: int = Field(9108, ge=0, le=65535)
    admin_token: SecretStr | None = None

    # --- IMKIT upstream
    imkit_url: str | None = None
    imkit_client_key: SecretStr | None = None
    #: ``base64`` sends ``conf {encoding: base64}`` on connect; ``none`` skips ``conf``.
    imkit_encoding: Literal["base64", "none"] = "base64"
    imkit_auth_timeout: float = Field(10.0, gt=0)
    imkit_connect_timeout: float = Field(10.0, gt=0)
    imkit_request_timeout: float = Field(10.0, gt=0)
    connect_rate: float = Field(100.0, gt=0, description="upstream connects per second, per process")
    connect_burst: int = Field(100, ge=1)
    connect_concurrency: int = Field(500, ge=1, description="upstream handshakes in progress, per process")
    backoff_base: float = Field(1.0, gt=0)
    backoff_cap: float = Field(60.0, gt=0)
    mute_refresh_interval: float = Field(300.0, gt=0)

    # --- store
    store: str = "sqlite:///./bridge.db"
    secret_key: SecretStr | None = None

    # --- app behaviour
    foreground_ttl: int = Field(120, ge=1, le=MAX_FOREGROUND_TTL)
    max_devices_per_user: int = Field(20, ge=1)
    rate_limit_per_minute: int = Field(120, ge=1)
    #: Client tokens IMKIT refused, per caller address and minute, before the address gets 429
    #: without IMKIT being asked: each unknown token costs one IMKIT ``GET /me``.
    auth_failures_per_minute: int = Field(20, ge=1)
    #: Seconds a token IMKIT refused is answered 401 from memory.
    auth_negative_ttl: float = Field(30.0, ge=0)
    #: A header set by a trusted reverse proxy with the caller's address (e.g. ``X-Forwarded-For``;
    #: its last address is used). Unset: the TCP peer's address, and no header is believed.
    trusted_proxy_header: str | None = None
    system_messages: bool = False
    #: What pushes carry unless a registration says otherwise (docs/privacy.md).
    push_content: PushContent = "full"
    #: ``hidden``/``encrypted``: the generic alert's title is the room name (when known).
    push_hidden_room_name: bool = False
    push_max_age: float = Field(3600.0, gt=0)
    backfill_max_age: float = Field(6 * 3600.0, gt=0)
    backfill_room_cap: int = Field(5, ge=1)
    queue_size: int = Field(10000, ge=1)
    push_concurrency: int = Field(100, ge=1)
    push_timeout: float = Field(10.0, gt=0)
    drain_timeout: float = Field(10.0, ge=0)
    worker_id: str | None = None
    lease_ttl: float = Field(15.0, gt=0)
    #: Raise the collector's thresholds and freeze the long-lived heap in ``serve``/``worker``.
    gc_freeze: bool = True

    # --- APNs
    apns_key_file: str | None = None
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    apns_topic: str | None = None
    apns_sandbox: bool = False
    apns_cert_file: str | None = None
    apns_host: str | None = None
    apns_port: int | None = Field(None, ge=1, le=65535)
    #: The sandbox endpoint's override; unset: Apple's sandbox host, or BRIDGE_APNS_HOST/PORT when
    #: only those are set (one endpoint, e.g. a proxy or the simulator, serves both environments).
    apns_sandbox_host: str | None = None
    apns_sandbox_port: int | None = Field(None, ge=1, le=65535)
    apns_ca_file: str | None = None

    # --- FCM
    fcm_credentials_file: str | None = None
    fcm_url: str | None = None
    fcm_ca_file: str | None = None

    #: ``log`` writes notifications (message text included) to the log when a provider has no
    #: credentials; ``none`` fails them. ``none`` unless set: only ``demo`` uses ``log``.
    push_provider_fallback: Literal["log", "none"] = "none"

    # --- logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("push_content", mode="before")
    @classmethod
    def _content_alias(cls, v: object) -> object:
        # Earlier releases' ``minimal`` (no text, but the sender's name): ``hidden`` replaces it.
        if isinstance(v, str) and v.strip().lower() == "minimal":
            logging.getLogger(__name__).warning(
                "BRIDGE_PUSH_CONTENT=minimal is deprecated: use hidden (minimal now means hidden)"
            )
            return "hidden"
        return v

    @field_validator("store")
    @classmethod
    def _check_store(cls, v: str) -> str:
        if not (v.startswith("sqlite:///") or v.startswith("redis://") or v.startswith("rediss://")):
            raise ValueError("must be sqlite:///path.db or redis://host:port/db")
        return v

    @field_validator("imkit_url", "fcm_url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("http://") or v.startswith("https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/") if v else v

    @field_validator("trusted_proxy_header")
    @classmethod
    def _check_header(cls, v: str | None) -> str | None:
        v = (v or "").strip()
        if v and not all(c.isalnum() or c == "-" for c in v):
            raise ValueError("must be an HTTP header name such as X-Forwarded-For")
        return v or None

    @field_validator("apns_host", "apns_sandbox_host")
    @classmethod
    def _bare_host(cls, v: str | None) -> str | None:
        # Accept "https://host/" as well as "host": aioapns wants the bare name.
        if v is None:
            return v
        v = v.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
        return v or None

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        for host_field, port_field in (("apns_host", "apns_port"), ("apns_sandbox_host", "apns_sandbox_port")):
            value = getattr(self, host_field)
            if value and ":" in value and not value.startswith("["):
                host, _, port = value.rpartition(":")
                if port.isdigit():
                    setattr(self, host_field, host)
                    setattr(self, port_field, getattr(self, port_field) or int(port))
        if self.backoff_cap < self.backoff_base:
            raise ValueError("BRIDGE_BACKOFF_CAP must be >= BRIDGE_BACKOFF_BASE")
        apns_token_fields = [self.apns_key_file, self.apns_key_id, self.apns_team_id]
        if any(apns_token_fields) and not all(apns_token_fields):
            raise ValueError(
                "APNs token auth needs BRIDGE_APNS_KEY_FILE, BRIDGE_APNS_KEY_ID and BRIDGE_APNS_TEAM_ID together"
            )
        if (any(apns_token_fields) or self.apns_cert_file) and not self.apns_topic:
            raise ValueError("BRIDGE_APNS_TOPIC (the app bundle id) is required with APNs credentials")
        return self

    @property
    def store_is_redis(self) -> bool:
        return self.store.startswith("redis")

    @property
    def sqlite_path(self) -> str:
        """The SQLite file path of a ``sqlite:///`` store URL."""
        return self.store.removeprefix("sqlite:///")

    @property
    def apns_configured(self) -> bool:
        return bool(self.apns_cert_file or self.apns_key_file)

    @property
    def fcm_configured(self) -> bool:
        return bool(self.fcm_credentials_file)

    @property
    def imkit_url_in_clear(self) -> bool:
        """True when client tokens would travel unencrypted: ``http://`` to a non-loopback host."""
        return bool(self.imkit_url) and is_cleartext_remote(self.imkit_url or "")


def is_cleartext_remote(url: str) -> bool:
    """``http://`` to a host other than localhost / a loopback address."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = (parts.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name: it may resolve anywhere
