"""A local test CA for the simulators: TLS certificates for 127.0.0.1/localhost and an APNs key.

Nothing here is meant for production: keys are generated on the spot and written unencrypted
(mode 0600) into the directory the caller gives.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import string
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=365)
#: Backdate certificates a little so a peer whose clock is slightly behind still accepts them.
_BACKDATE = datetime.timedelta(hours=1)
_ID_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True, slots=True)
class TestCerts:
    """Files of a local test CA: trust ``ca_file``, serve with ``cert_file`` + ``key_file``.

    ``client_file`` is a client certificate issued by the same CA, certificate and key in one PEM
    (the form APNs certificate auth expects), for simulators that check client certificates.
    """

    __test__ = False  # not a pytest test class, despite the name

    ca_file: Path
    cert_file: Path
    key_file: Path
    client_file: Path


@dataclass(frozen=True, slots=True)
class ApnsKey:
    """An APNs token-auth signing key (.p8, P-256) with its key id and team id."""

    key_file: Path
    key_id: str
    team_id: str
    public_key_pem: str

    def __repr__(self) -> str:
        return f"ApnsKey(key_file={str(self.key_file)!r}, key_id={self.key_id!r}, team_id={self.team_id!r})"


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, *, private: bool = False) -> Path:
    # Create private files 0600 from the start rather than chmod after writing.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    valid_for: datetime.timedelta = _VALIDITY,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    not_after = now + valid_for
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, not_after) - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=True,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def issue_test_certs(directory: Path, *, client_valid_for: datetime.timedelta = _VALIDITY) -> TestCerts:
    """Create a test CA, a server certificate for 127.0.0.1/localhost and a client certificate.

    Writes ``ca.pem``, ``server.pem``, ``server-key.pem`` and ``client.pem`` (certificate and key)
    into ``directory`` (created if missing); all valid for one year, except the client certificate,
    valid for ``client_valid_for`` from now (negative: already expired; for expiry checks).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imkit-push-bridge test CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    server_key = _new_key()
    server_cert = (
        _builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
            ca_name,
            server_key.public_key(),
            ca_key,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    client_key = _new_key()
    client_cert = (
        _builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imkit-push-bridge test client")]),
            ca_name,
            client_key.public_key(),
            ca_key,
            client_valid_for,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    return TestCerts(
        ca_file=_write(directory / "ca.pem", _cert_pem(ca_cert)),
        cert_file=_write(directory / "server.pem", _cert_pem(server_cert)),
        key_file=_write(directory / "server-key.pem", _key_pem(server_key), private=True),
        client_file=_write(
            directory / "client.pem", _cert_pem(client_cert) + _key_pem(client_key), private=True
        ),
    )


def _random_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))


def generate_apns_key(directory: Path) -> ApnsKey:
    """Create an APNs-style signing key: ``AuthKey_<key id>.p8`` (PKCS#8 PEM, P-256) in ``directory``.

    Returns the file with a random 10-character key id and team id, and the public key (PEM) a
    simulator needs to verify provider tokens signed with it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = _new_key()
    key_id = _random_id()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ApnsKey(
        key_file=_write(directory / f"AuthKey_{key_id}.p8", _key_pem(key), private=True),
        key_id=key_id,
        team_id=_random_id(),
        public_key_pem=public_pem.decode("ascii"),
    )
