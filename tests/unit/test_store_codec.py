"""The device codec both stores share: what is encrypted, and how older records read back."""

from __future__ import annotations

import json

from bridge.models import AppState, Device, Registration
from bridge.store.codec import KEY_CHECK, DeviceCodec
from bridge.store.crypto import TokenCipher

CIPHER = TokenCipher.generate()
CODEC = DeviceCodec(CIPHER)


def full_device() -> Device:
    return Device(
        "d1",
        "alice",
        "client-secret",
        registrations={
            "ios": Registration("ios", "apns-secret", apns_environment="sandbox", content="encrypted", content_key=b"k" * 32),
            "fcm": Registration("fcm", "fcm-secret", disabled_reason="UNREGISTERED", updated_at=5.0),
        },
        locale="zh-TW",
        state=AppState.FOREGROUND,
        foreground_until=123.5,
        created_at=1.0,
        updated_at=2.0,
        token_version=3,
        checkpoint_id="m9",
        checkpoint_ms=99,
    )


def test_round_trip_with_the_checkpoint_kept_apart() -> None:
    device = full_device()
    record = CODEC.encode(device)
    assert "checkpoint_id" not in record and "checkpoint_ms" not in record
    assert CODEC.decode(json.loads(json.dumps(record)), "m9", 99) == device


def test_secrets_are_encrypted_and_push_tokens_indexed() -> None:
    record = CODEC.encode(full_device())
    text = json.dumps(record)
    for secret in ("client-secret", "apns-secret", "fcm-secret"):
        assert secret not in text
    ios = record["registrations"]["ios"]
    assert CIPHER.decrypt(ios["token"]) == "apns-secret" and CODEC.is_token(ios["token"], "apns-secret")
    assert not CODEC.is_token(ios["token"], "other")
    assert ios["token_hash"] == CIPHER.lookup_hash("apns-secret") == CODEC.token_hash(ios)
    assert ios["content_key"] != (b"k" * 32).decode()


def test_a_record_from_before_the_newer_fields_reads_back() -> None:
    record = CODEC.encode(full_device())
    for reg in record["registrations"].values():
        for name in ("token_hash", "apns_environment", "content", "content_key"):
            del reg[name]
    device = CODEC.decode(record, None, None)
    ios = device.registrations["ios"]
    assert (ios.token, ios.apns_environment, ios.content, ios.content_key) == ("apns-secret", None, None, None)
    assert CODEC.token_hash(record["registrations"]["fcm"]) == CIPHER.lookup_hash("fcm-secret")


def test_the_key_check_opens_only_with_its_key() -> None:
    stored = CODEC.key_check()
    assert KEY_CHECK not in stored and CODEC.key_matches(stored)
    assert not DeviceCodec(TokenCipher.generate()).key_matches(stored)
    assert not CODEC.key_matches(None)
