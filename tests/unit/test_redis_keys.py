"""The Redis key names are stored data: a running deployment finds its devices, leases and claims
under exactly these strings, so a change here must be a deliberate migration."""

from __future__ import annotations

from bridge import redis_keys


def test_every_key_is_what_deployments_have_stored() -> None:
    keys = {name: value for name, value in vars(redis_keys).items() if name.isupper()}
    assert keys == {
        "DEVICE_PREFIX": "pb:dev:",
        "CLIENT_PREFIX": "pb:client:",
        "DEVICES_KEY": "pb:devices",
        "CHANGES_KEY": "pb:changes",
        "KEY_CHECK_KEY": "pb:meta:keycheck",
        "PING_KEY": "pb:meta:ping",
        "STATUS_PREFIX": "pb:status:",
        "ACKS_PREFIX": "pb:acks:",
        "PUSH_TOKEN_PREFIX": "pb:ptok:",
        "PUSH_TOKEN_INDEXED_KEY": "pb:meta:ptok",
        "WORKER_PREFIX": "pb:worker:",
        "WORKERS_KEY": "pb:workers",
        "LEASE_PREFIX": "pb:lease:",
        "CLAIM_PREFIX": "pb:claim:",
    }
