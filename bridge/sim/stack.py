"""The three simulators together, and the settings that point a bridge at them.

The one place that turns simulators into bridge settings: :class:`SimStack` (``push-bridge
demo``, the end-to-end tests), the ``push-bridge sim`` servers and the bench's simulator process
all use :func:`imkit_settings`, :func:`apns_settings`, :func:`fcm_settings` and :func:`as_env`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.sim.apns import ApnsSim
from bridge.sim.certs import ApnsKey, TestCerts, generate_apns_key, issue_test_certs
from bridge.sim.fcm import FcmSim
from bridge.sim.imkit import ImkitSim

TOPIC = "com.example.chat"


@dataclass
class SimStack:
    """Simulated IMKIT, APNs (HTTP/2 + TLS, token auth) and FCM, started on 127.0.0.1."""

    imkit: ImkitSim
    apns: ApnsSim
    fcm: FcmSim
    certs: TestCerts
    key: ApnsKey
    service_account: Path
    topic: str = TOPIC

    @classmethod
    async def start(cls, directory: Path, *, topic: str = TOPIC, apns_keep: int | None = None) -> SimStack:
        """Issue certificates and keys into ``directory`` and start all three on free ports."""
        certs = issue_test_certs(directory)
        key = generate_apns_key(directory)
        imkit = ImkitSim()
        apns = ApnsSim(certs.cert_file, certs.key_file, topics=[topic], keys=[key], keep_received=apns_keep)
        fcm = FcmSim()
        await imkit.start()
        await apns.start()
        await fcm.start()
        service_account = fcm.write_service_account(directory / "fcm-service-account.json")
        return cls(imkit, apns, fcm, certs, key, service_account, topic)

    async def stop(self) -> None:
        await self.fcm.stop()
        await self.apns.stop()
        await self.imkit.stop()

    def settings(self) -> dict[str, Any]:
        """``Settings`` keyword arguments that point a bridge at these simulators."""
        return {
            **imkit_settings(self.imkit.url),
            # The simulator's second listener plays Apple's sandbox.
            **apns_settings(
                host="127.0.0.1",
                port=self.apns.port,
                ca_file=self.certs.ca_file,
                key=self.key,
                topic=self.topic,
                sandbox_port=self.apns.sandbox_port,
            ),
            **fcm_settings(url=self.fcm.url, service_account=self.service_account),
        }

    def env(self) -> dict[str, str]:
        """The same as ``BRIDGE_*`` environment variables, for a bridge in another process."""
        return as_env(self.settings())


def imkit_settings(url: str) -> dict[str, Any]:
    """``Settings`` keyword arguments for a simulated IMKIT at ``url``."""
    return {"imkit_url": url}


def apns_settings(
    *,
    host: str,
    port: int,
    ca_file: Path,
    key: ApnsKey,
    topic: str,
    sandbox_port: int | None = None,
) -> dict[str, Any]:
    """``Settings`` keyword arguments for a simulated APNs on ``host:port`` (token auth with
    ``key``, its certificate issued by ``ca_file``); with ``sandbox_port``, its sandbox listener."""
    settings: dict[str, Any] = {
        "apns_key_file": str(key.key_file),
        "apns_key_id": key.key_id,
        "apns_team_id": key.team_id,
        "apns_topic": topic,
        "apns_host": host,
        "apns_port": port,
    }
    if sandbox_port is not None:
        settings |= {"apns_sandbox_host": host, "apns_sandbox_port": sandbox_port}
    settings["apns_ca_file"] = str(ca_file)
    return settings


def fcm_settings(*, url: str, service_account: Path, ca_file: Path | None = None) -> dict[str, Any]:
    """``Settings`` keyword arguments for a simulated FCM at ``url`` (``ca_file``: its TLS CA)."""
    settings: dict[str, Any] = {"fcm_credentials_file": str(service_account), "fcm_url": url}
    if ca_file is not None:
        settings["fcm_ca_file"] = str(ca_file)
    return settings


def as_env(settings: Mapping[str, Any]) -> dict[str, str]:
    """``Settings`` keyword arguments as ``BRIDGE_*`` environment variables."""
    return {f"BRIDGE_{k.upper()}": str(v) for k, v in settings.items()}
