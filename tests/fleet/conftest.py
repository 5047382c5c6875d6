"""Fleet fixtures: a fleet PKI (cloud.pki), and a real Mosquitto configured by
`cloud.broker_config` (mTLS, identity from the certificate, per-device ACLs, a CRL)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from cloud.broker_config import BrokerConfig, write_broker_config
from cloud.pki import FleetCA
from tests.servers import Mosquitto, free_port, run_mosquitto

DEVICES = ("robot-1", "robot-2", "robot-3")
REVOKED = "robot-revoked"
INGEST = "edgeflux-ingest"
INGEST_REPLICAS = ("edgeflux-ingest-a", "edgeflux-ingest-b", "edgeflux-ingest-c")
PUBLISHER = "edgeflux-control-plane"


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    crl: Path

    def identity(self, name: str) -> tuple[Path, Path, Path]:
        """(ca, cert, key) of a device or service identity."""
        return self.ca, self.dir / f"{name}.crt", self.dir / f"{name}.key"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = FleetCA.create()
    (d / "ca.crt").write_bytes(ca.cert_pem)
    ca.save(d / "ca-copy.crt", d / "ca.key", b"test-passphrase")
    server = ca.issue_server("broker", ("localhost", "127.0.0.1"))
    server_crt, server_key = server.write(d, "server")
    for name in (*DEVICES, REVOKED):
        ca.issue_device(name).write(d, name)
    for service in (INGEST, *INGEST_REPLICAS, PUBLISHER):
        ca.issue_service(service).write(d, service)
    # A CRL revoking one device, signed by the CA key (the PKI API has no CRL yet).
    ca_key = serialization.load_pem_private_key(
        (d / "ca.key").read_bytes(), password=b"test-passphrase"
    )
    revoked = x509.load_pem_x509_certificate((d / f"{REVOKED}.crt").read_bytes())
    now = dt.datetime.now(dt.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(revoked.serial_number)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    (d / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return Pki(d, d / "ca.crt", server_crt, server_key, d / "crl.pem")


@contextlib.contextmanager
def tls_broker(pki: Pki, tmp: Path, **overrides: object) -> Iterator[Mosquitto]:
    """A real Mosquitto with the configuration `edgeflux cloud broker-config` writes."""
    port = free_port()
    cfg = BrokerConfig(
        ca=pki.ca,
        cert=pki.server_cert,
        key=pki.server_key,
        crl=pki.crl,
        port=port,
        bind="127.0.0.1",
        ingest_identity=INGEST,
        more_ingest_identities=INGEST_REPLICAS,
        publisher_identity=PUBLISHER,
        devices=(*DEVICES, REVOKED),
        **overrides,  # type: ignore[arg-type]
    )
    conf, _ = write_broker_config(cfg, tmp)
    with run_mosquitto(conf.read_text(), port=port) as broker:
        yield broker


@pytest.fixture
def broker(pki: Pki, tmp_path: Path) -> Iterator[Mosquitto]:
    with tls_broker(pki, tmp_path / "broker") as b:
        yield b
