"""The fleet PKI: one certificate authority that issues every identity in the fleet.

A fleet CA issues one certificate per device (CN = device id), one per
operator (CN = operator name, role ``admin`` | ``viewer``) and one per control-plane
server. gRPC and MQTT both authenticate with these over mTLS.

Who is who is written into the subject, so a verifier needs nothing but the peer
certificate (and the CA that signed it)::

    CN = <id>            the device id, operator name or server name
    OU = device | operator | server
    title = admin | viewer   (operators only: the role)

The MQTT broker knows a client by its whole subject (Mosquitto
``use_subject_as_username``), in OpenSSL's RFC 2253 form, attributes last to first:
``O=EdgeFlux fleet,OU=device,CN=robot-7``. :func:`broker_username` computes it, so
the broker's ACL names each identity with its role and an operator certificate named
like a device is a different client there.

The CA key is encrypted at rest (PKCS#8, ``BestAvailableEncryption``); every other
private key is written unencrypted with mode 0600 because the process that uses it
(server, robot agent) must start unattended.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runtime.atomicio import atomic_write_bytes

__all__ = [
    "ID_PATTERN",
    "Credentials",
    "FleetCA",
    "PKIError",
    "PeerIdentity",
    "broker_username",
    "fingerprint",
    "parse_identity",
    "subject_for",
]

Kind = Literal["device", "operator", "server"]
Role = Literal["admin", "viewer"]
ROLES: tuple[str, ...] = ("admin", "viewer")
# Ids become file names, MQTT topic levels and TLS subjects: keep them boring.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class PKIError(Exception):
    """A certificate could not be issued, loaded or parsed; the message says which and why."""


@dataclass(frozen=True)
class Credentials:
    """A PEM certificate and its private key (and the CA that issued it)."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes

    def write(self, directory: str | Path, stem: str) -> tuple[Path, Path]:
        """Write `<stem>.crt` (0644) and `<stem>.key` (0600) atomically; return their paths."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        crt, key = d / f"{stem}.crt", d / f"{stem}.key"
        atomic_write_bytes(key, self.key_pem, mode=0o600)
        atomic_write_bytes(crt, self.cert_pem)
        return crt, key


@dataclass(frozen=True)
class PeerIdentity:
    """Who a certificate names: kind, id and (operators only) role."""

    kind: str
    id: str
    role: str
    fingerprint: str


def fingerprint(cert: x509.Certificate | bytes) -> str:
    """Hex SHA-256 of the DER certificate (the stable identity the store keeps)."""
    if isinstance(cert, bytes):
        cert = x509.load_pem_x509_certificate(cert)
    return cert.fingerprint(hashes.SHA256()).hex()


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


def parse_identity(cert_pem: bytes) -> PeerIdentity:
    """Read kind/id/role from a certificate this CA issued (the TLS layer already verified it)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise PKIError(f"peer certificate is not valid PEM: {exc}") from exc
    subject = cert.subject
    kind = _attr(subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    ident = _attr(subject, NameOID.COMMON_NAME)
    role = _attr(subject, NameOID.TITLE)
    if kind not in ("device", "operator", "server") or not ID_PATTERN.match(ident):
        raise PKIError(f"certificate subject {subject.rfc4514_string()!r} is not a fleet identity")
    if kind == "operator" and role not in ROLES:
        raise PKIError(f"operator certificate {ident!r} has no valid role (title={role!r})")
    return PeerIdentity(kind, ident, role, fingerprint(cert))


RESERVED_PREFIX = "edgeflux"
"""Names starting with this (any case) belong to the control plane's own identities
(its server certificate ``edgeflux-cloud``, ingest, push): never a device or operator."""


FLEET_ORG = "EdgeFlux fleet"
_SHORT_NAMES = {
    NameOID.COMMON_NAME: "CN",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.TITLE: "title",
}
_RFC2253_SPECIAL = set(',+"\\<>;')


def subject_for(kind: str, ident: str, role: str = "") -> x509.Name:
    """The subject this CA gives `kind` (``device``, ``operator``, ``service``,
    ``server``) named `ident`; `role` for operators. Not validated: callers check."""
    attrs = [
        x509.NameAttribute(NameOID.COMMON_NAME, ident),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
    ]
    if kind == "operator":
        attrs.append(x509.NameAttribute(NameOID.TITLE, role))
    attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, FLEET_ORG))
    return x509.Name(attrs)


def _escape_2253(value: str) -> str:
    if any(not (0x20 <= ord(ch) < 0x7F) for ch in value):
        raise PKIError(f"subject value {value!r} is not printable ASCII")
    out = "".join(f"\\{ch}" if ch in _RFC2253_SPECIAL else ch for ch in value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def broker_username(subject: x509.Name) -> str:
    """The MQTT username Mosquitto gives a client with this certificate subject
    (``use_subject_as_username``: OpenSSL's ``XN_FLAG_RFC2253`` form, attributes
    last to first, short names, ``,`` between them)."""
    rdns = []
    for rdn in reversed(list(subject.rdns)):
        parts = []
        for attr in rdn:
            short = _SHORT_NAMES.get(attr.oid)
            if short is None:
                raise PKIError(f"subject attribute {attr.oid.dotted_string} is not a fleet one")
            parts.append(f"{short}={_escape_2253(str(attr.value))}")
        rdns.append("+".join(parts))
    return ",".join(rdns)


def _check_id(ident: str, what: str) -> None:
    if not ID_PATTERN.match(ident):
        raise PKIError(
            f"{what} id {ident!r} is invalid: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if what in ("device", "operator") and ident.lower().startswith(RESERVED_PREFIX):
        raise PKIError(
            f"{what} id {ident!r} is reserved: names starting with {RESERVED_PREFIX!r} "
            "belong to the control plane's own identities"
        )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class FleetCA:
    """The fleet certificate authority (ECDSA P-256)."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self._key = key

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, name: str = "EdgeFlux fleet CA", valid_days: int = 3650) -> FleetCA:
        key = _new_key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "EdgeFlux fleet"),
            ]
        )
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def save(self, cert_path: Path, key_path: Path, passphrase: bytes) -> None:
        """Write the certificate and the key, encrypted with `passphrase` (mode 0600)."""
        if len(passphrase) < 12:
            raise PKIError("the CA passphrase must be at least 12 bytes long")
        enc = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
        atomic_write_bytes(key_path, enc, mode=0o600)
        atomic_write_bytes(cert_path, self.cert_pem)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path, passphrase: bytes) -> FleetCA:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            raw = key_path.read_bytes()
        except FileNotFoundError as exc:
            raise PKIError(f"fleet CA file {exc.filename} does not exist") from exc
        try:
            key = serialization.load_pem_private_key(raw, password=passphrase)
        except (ValueError, TypeError) as exc:
            raise PKIError(
                f"cannot decrypt the fleet CA key {key_path}: wrong passphrase "
                "(set EDGEFLUX_CA_PASSPHRASE or keep the home's private/ca-passphrase)"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PKIError(f"{key_path} is not an EC private key")
        return cls(cert, key)

    def _issue(
        self,
        subject: x509.Name,
        usage: list[x509.ObjectIdentifier],
        valid_days: float,
        sans: list[x509.GeneralName] | None = None,
        not_before: dt.datetime | None = None,
    ) -> Credentials:
        key = _new_key()
        now = dt.datetime.now(dt.UTC)
        start = not_before or (now - dt.timedelta(minutes=5))
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Credentials(
            cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), self.cert_pem
        )

    def make_crl(self, revoked: list[tuple[int, dt.datetime]], valid_days: float = 365) -> bytes:
        """A PEM CRL of (serial, revoked at), for brokers that check it (Mosquitto crlfile).

        `valid_days` is long on purpose: OpenSSL refuses every client once a CRL's
        next update has passed, so a stale CRL must not lock the fleet out.
        """
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=valid_days))
        )
        for serial, at in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at).build()
            )
        crl = builder.sign(self._key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)

    def issue_device(
        self, device_id: str, valid_days: float = 825, not_before: dt.datetime | None = None
    ) -> Credentials:
        """A client certificate for a robot: CN = device id (also its MQTT client id)."""
        _check_id(device_id, "device")
        subject = subject_for("device", device_id)
        return self._issue(subject, [ExtendedKeyUsageOID.CLIENT_AUTH], valid_days, None, not_before)

    def issue_operator(self, name: str, role: str, valid_days: float = 365) -> Credentials:
        """A client certificate for a person or tool; `role` is ``admin`` or ``viewer``."""
        _check_id(name, "operator")
        if role not in ROLES:
            raise PKIError(f"operator role must be one of {', '.join(ROLES)}, not {role!r}")
        subject = subject_for("operator", name, role)
        return self._issue(subject, [ExtendedKeyUsageOID.CLIENT_AUTH], valid_days)

    def issue_service(self, name: str, valid_days: float = 825) -> Credentials:
        """A client certificate for one of the plane's own MQTT clients (ingest, push).

        Its name must start with ``edgeflux-`` (reserved: no device or operator can
        have it), and with ``use_username_as_clientid`` the broker makes it the MQTT
        client id, so no device can connect as ingest and take its session over.
        """
        _check_id(name, "service")
        if not name.startswith(f"{RESERVED_PREFIX}-"):
            raise PKIError(f"service id {name!r} must start with {RESERVED_PREFIX + '-'!r}")
        subject = subject_for("service", name)
        return self._issue(subject, [ExtendedKeyUsageOID.CLIENT_AUTH], valid_days)

    def issue_session_closer(self, device_id: str, valid_minutes: float = 10) -> Credentials:
        """A short-lived client certificate with device `device_id`'s subject, for one
        MQTT connection.

        The broker gives a client its certificate's subject as client id, so connecting
        with this closes the connection of a just-revoked device (cloud.broker_reload).
        The plane's gRPC refuses it: its fingerprint is not the one the device was
        registered with.
        """
        _check_id(device_id, "session")
        subject = subject_for("device", device_id)
        return self._issue(subject, [ExtendedKeyUsageOID.CLIENT_AUTH], valid_minutes / 1440)

    def issue_server(
        self, name: str = "edgeflux-cloud", hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
    ) -> Credentials:
        """A server certificate (also usable by the MQTT broker) for the given DNS names / IPs."""
        _check_id(name, "server")
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        subject = subject_for("server", name)
        return self._issue(
            subject,
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            825,
            sans,
        )
