"""``push-bridge check``: validate configuration and credential files, saying exactly what is wrong."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Literal

from bridge.config import Settings


def _file(path: str | None, what: str) -> tuple[bool, str, str | None]:
    if not path:
        return False, f"{what}: not set", None
    p = Path(path)
    if not p.is_file():
        return False, f"{what}: {path} does not exist or is not a file", None
    try:
        return True, f"{what}: {path} readable", p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return False, f"{what}: {path} cannot be read ({type(exc).__name__})", None


def _check_apns(settings: Settings) -> list[tuple[bool, str]]:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    out: list[tuple[bool, str]] = []
    if settings.apns_key_file:
        ok, msg, text = _file(settings.apns_key_file, "BRIDGE_APNS_KEY_FILE")
        out.append((ok, msg))
        if text is not None:
            try:
                key = load_pem_private_key(text.encode(), password=None)
                good = isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
                out.append((good, "APNs key is a P-256 (ES256) private key" if good else "BRIDGE_APNS_KEY_FILE is not a P-256 key (download the .p8 from Apple)"))
            except ValueError:
                out.append((False, "BRIDGE_APNS_KEY_FILE is not a PEM private key (.p8)"))
        out.append((bool(settings.apns_key_id and len(settings.apns_key_id) == 10), "BRIDGE_APNS_KEY_ID is 10 characters"))
        out.append((bool(settings.apns_team_id and len(settings.apns_team_id) == 10), "BRIDGE_APNS_TEAM_ID is 10 characters"))
    if settings.apns_cert_file:
        ok, msg, text = _file(settings.apns_cert_file, "BRIDGE_APNS_CERT_FILE")
        out.append((ok, msg))
        if text is not None:
            out.append(("BEGIN CERTIFICATE" in text and "PRIVATE KEY" in text, "BRIDGE_APNS_CERT_FILE holds a PEM certificate and its private key"))
    if settings.apns_ca_file:
        ok, msg, _ = _file(settings.apns_ca_file, "BRIDGE_APNS_CA_FILE")
        out.append((ok, msg))
    return out


def _check_fcm(settings: Settings) -> list[tuple[bool, str]]:
    out: list[tuple[bool, str]] = []
    ok, msg, text = _file(settings.fcm_credentials_file, "BRIDGE_FCM_CREDENTIALS_FILE")
    out.append((ok, msg))
    if text is None:
        return out
    try:
        info = json.loads(text)
    except ValueError:
        out.append((False, "BRIDGE_FCM_CREDENTIALS_FILE is not JSON"))
        return out
    missing = [k for k in ("type", "project_id", "private_key", "client_email", "token_uri") if not info.get(k)]
    out.append((not missing, "FCM service account has type, project_id, private_key, client_email, token_uri" if not missing else f"FCM service account lacks: {', '.join(missing)}"))
    out.append((info.get("type") == "service_account", "FCM credentials are of type service_account"))
    if settings.fcm_ca_file:
        ok, msg, _ = _file(settings.fcm_ca_file, "BRIDGE_FCM_CA_FILE")
        out.append((ok, msg))
    return out


Status = Literal["ok", "warn", "fail"]


def _missing_provider(settings: Settings, name: str, other_configured: bool) -> tuple[Status, str]:
    if settings.push_provider_fallback == "log":
        return "warn", f"{name}: no credentials; notifications are written to the log, message text included"
    if other_configured:
        return "warn", f"{name}: no credentials; its registrations get no pushes"
    return "fail", f"{name}: no credentials and BRIDGE_PUSH_PROVIDER_FALLBACK=none: no provider can deliver"


def _status(ok: bool) -> Status:
    return "ok" if ok else "fail"


def _check_apns_certificate_expiry(settings: Settings, now: float) -> list[tuple[Status, str]]:
    """Certificate mode: warn two weeks before the certificate expires, fail once it has."""
    if not settings.apns_cert_file:
        return []
    from bridge.push.apns import CERTIFICATE_WARNING_DAYS, certificate_not_after

    try:
        expiry = certificate_not_after(Path(settings.apns_cert_file).read_bytes())
    except (OSError, ValueError):
        return [("fail", "BRIDGE_APNS_CERT_FILE: no readable certificate, so no expiry date")]
    when = datetime.datetime.fromtimestamp(expiry, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    days = (expiry - now) / 86400
    if days <= 0:
        return [("fail", f"APNs certificate expired on {when}: APNs refuses it; renew it and update BRIDGE_APNS_CERT_FILE")]
    if days < CERTIFICATE_WARNING_DAYS:
        return [("warn", f"APNs certificate expires on {when} (in {days:.1f} days): renew it")]
    return [("ok", f"APNs certificate valid until {when}")]


def run_checks(settings: Settings) -> list[tuple[Status, str]]:
    """Every check as (ok, warn or fail; what was checked). Only ``fail`` makes ``check`` fail."""
    from bridge.store.crypto import cipher_from_settings

    out: list[tuple[Status, str]] = [("ok", "BRIDGE_* variables parse")]
    if not settings.imkit_url:
        out.append(("fail", "BRIDGE_IMKIT_URL is not set (required)"))
    elif settings.imkit_url_in_clear:
        out.append(("warn", f"BRIDGE_IMKIT_URL is plain http:// to a remote host ({settings.imkit_url}): client tokens travel unencrypted; use https://"))
    else:
        out.append(("ok", f"BRIDGE_IMKIT_URL is set ({settings.imkit_url})"))
    try:
        cipher_from_settings(settings)
        out.append(("ok", "token encryption key usable"))
    except (ValueError, OSError) as exc:
        out.append(("fail", f"token encryption key: {exc}"))
    if settings.apns_configured:
        out.extend((_status(ok), what) for ok, what in _check_apns(settings))
        out.extend(_check_apns_certificate_expiry(settings, time.time()))
    else:
        out.append(_missing_provider(settings, "APNs", settings.fcm_configured))
    if settings.fcm_configured:
        out.extend((_status(ok), what) for ok, what in _check_fcm(settings))
    else:
        out.append(_missing_provider(settings, "FCM", settings.apns_configured))
    return out
