"""The three simulators together, and the settings that point a bridge at them.

Used by ``push-bridge demo``, the end-to-end tests and the benchmarks, so the wiring of
certificates, APNs key, FCM service account and endpoints lives in one place.
"""

from __future__ import annotations

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
            "imkit_url": self.imkit.url,
            "apns_key_file": str(self.key.key_file),
            "apns_key_id": self.key.key_id,
            "apns_team_id": self.key.team_id,
            "apns_topic": self.topic,
            "apns_host": "127.0.0.1",
            "apns_port": self.apns.port,
            # The simulator's second listener plays Apple's sandbox.
            "apns_sandbox_host": "127.0.0.1",
            "apns_sandbox_port": self.apns.sandbox_port,
            "apns_ca_file": str(self.certs.ca_file),
            "fcm_credentials_file": str(self.service_account),
            "fcm_url": self.fcm.url,
        }

    def env(self) -> dict[str, str]:
        """The same as ``BRIDGE_*`` environment variables, for a bridge in another process."""
        return {f"BRIDGE_{k.upper()}": str(v) for k, v in self.settings().items()}
