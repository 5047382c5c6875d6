"""Fleet PKI: identities in certificates, encrypted CA key, refusals with clear reasons."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.pki import FleetCA, PKIError, fingerprint, parse_identity


@pytest.fixture(scope="module")
def ca() -> FleetCA:
    return FleetCA.create()


def test_device_certificate_names_the_device_and_chains_to_the_ca(ca: FleetCA) -> None:
    creds = ca.issue_device("robot-7")
    cert = x509.load_pem_x509_certificate(creds.cert_pem)
    cert.verify_directly_issued_by(ca.cert)
    ident = parse_identity(creds.cert_pem)
    assert (ident.kind, ident.id, ident.role) == ("device", "robot-7", "")
    assert ident.fingerprint == fingerprint(creds.cert_pem)


def test_operator_certificate_carries_its_role(ca: FleetCA) -> None:
    ident = parse_identity(ca.issue_operator("alice", "viewer").cert_pem)
    assert (ident.kind, ident.id, ident.role) == ("operator", "alice", "viewer")


def test_operator_role_must_be_admin_or_viewer(ca: FleetCA) -> None:
    with pytest.raises(PKIError, match="admin, viewer"):
        ca.issue_operator("mallory", "root")


@pytest.mark.parametrize("bad", ["", "../etc", "a b", "x" * 80, "-lead"])
def test_bad_ids_are_refused(ca: FleetCA, bad: str) -> None:
    with pytest.raises(PKIError, match="invalid"):
        ca.issue_device(bad)


def test_ca_key_is_encrypted_at_rest_and_needs_the_passphrase(ca: FleetCA, tmp_path: Path) -> None:
    crt, key = tmp_path / "ca.crt", tmp_path / "ca.key"
    ca.save(crt, key, b"correct horse battery")
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    assert key.stat().st_mode & 0o777 == 0o600
    loaded = FleetCA.load(crt, key, b"correct horse battery")
    x509.load_pem_x509_certificate(loaded.issue_device("d1").cert_pem).verify_directly_issued_by(
        ca.cert
    )
    with pytest.raises(PKIError, match="wrong passphrase"):
        FleetCA.load(crt, key, b"not the passphrase")


def test_expired_certificates_can_be_issued_for_tests(ca: FleetCA) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    cert = x509.load_pem_x509_certificate(
        ca.issue_device("old", valid_days=-1, not_before=past).cert_pem
    )
    assert cert.not_valid_after_utc < dt.datetime.now(dt.UTC)


def test_foreign_subject_is_not_a_fleet_identity() -> None:
    other = FleetCA.create("other")
    with pytest.raises(PKIError, match="not a fleet identity"):
        parse_identity(other.cert_pem)


def test_broker_username_is_the_subject_openssl_prints_for_mosquitto(tmp_path: Path) -> None:
    """Differential: Mosquitto's use_subject_as_username is OpenSSL's RFC 2253 form."""
    import subprocess

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from cloud.pki import broker_username

    ca = FleetCA.create()
    odd = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, 'a,b+c;d<e>f"g\\h'),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "#lead"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, " both "),
        ]
    )
    certs = [
        ca.issue_device("robot-7").cert_pem,
        ca.issue_operator("robot-7", "viewer").cert_pem,
        ca.issue_service("edgeflux-ingest").cert_pem,
        ca._issue(odd, [], 1).cert_pem,
    ]
    for pem in certs:
        path = tmp_path / "c.pem"
        path.write_bytes(pem)
        out = subprocess.run(
            ["openssl", "x509", "-in", str(path), "-noout", "-subject", "-nameopt", "RFC2253"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        subject = x509.load_pem_x509_certificate(pem).subject
        assert out == f"subject={broker_username(subject)}"


@settings(max_examples=40, deadline=None)
@given(
    cn=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1),
    ou=st.sampled_from(["device", "operator", "service", " x", "a#", "b "]),
)
def test_broker_username_agrees_with_openssl_on_any_printable_subject(cn: str, ou: str) -> None:
    """Differential, property-based: every printable-ASCII value, escapes included."""
    import subprocess
    import tempfile

    from cryptography.x509.oid import NameOID

    from cloud.pki import broker_username

    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn[:64]),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "EdgeFlux fleet"),
        ]
    )
    pem = _PROPERTY_CA._issue(name, [], 1).cert_pem
    with tempfile.NamedTemporaryFile(suffix=".pem") as f:
        f.write(pem)
        f.flush()
        out = subprocess.run(
            ["openssl", "x509", "-in", f.name, "-noout", "-subject", "-nameopt", "RFC2253"],
            capture_output=True, text=True, check=True,
        ).stdout.rstrip("\n")  # fmt: skip
    assert out == f"subject={broker_username(name)}"


_PROPERTY_CA = FleetCA.create()
