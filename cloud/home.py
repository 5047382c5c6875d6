"""The control-plane home: one directory holding every key, certificate, config and file.

Layout (``edgeflux cloud init DIR`` creates it; nothing else writes outside it)::

    DIR/cloud.toml                 [cloud] config (CloudConfig), loaded with runtime.config
    DIR/pki/ca.crt                 fleet CA certificate (ships to every robot)
    DIR/pki/ca.key                 fleet CA key, encrypted with the CA passphrase
    DIR/private/ca-passphrase      the passphrase, 0600 (move it offline and set
                                   EDGEFLUX_CA_PASSPHRASE in production)
    DIR/pki/server.crt|key         the control plane's server certificate
    DIR/pki/operators/<name>.crt|key   operator certificates (the first one: admin)
    DIR/pki/devices/<id>.crt|key   device certificates issued by `cloud device add`
    DIR/pki/services/<name>.crt|key   the plane's MQTT clients (edgeflux-ingest,
                                   edgeflux-push; CN = MQTT client id)
    DIR/keys/model-signing.pub|key ECDSA P-256 key that signs bundles (OMS)
    DIR/keys/attestation.pub|key   Ed25519 key that signs parity attestations
    DIR/keys/director.pub|key      Ed25519 key that signs desired-state documents
    DIR/tuf/keys/<role>.key        TUF role keys (Ed25519), 0600
    DIR/tuf/metadata/              TUF metadata (1.root.json, N.targets.json, ...)
    DIR/tuf/targets/               TUF targets, content addressed (<sha256>.<name>)
    DIR/trust/models|attestation/  runtime.trust.TrustStore used to verify published bundles
    DIR/state/plane.db             SQLite store (unless database_url points elsewhere)

A home is created in a temporary sibling directory and renamed into place, so a
failed init leaves nothing behind, and an existing non-empty home is never touched.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloud.pki import Credentials, FleetCA, PKIError
from runtime.atomicio import atomic_write_bytes, atomic_write_text
from runtime.config import load_config
from runtime.trust import TrustStore, TrustStoreError

__all__ = [
    "FILES_IDENTITY",
    "INGEST_IDENTITY",
    "PUBLISHER_IDENTITY",
    "CloudConfig",
    "CloudHome",
    "HomeError",
    "init_home",
]

CONFIG_NAME = "cloud.toml"
PASSPHRASE_ENV = "EDGEFLUX_CA_PASSPHRASE"
INGEST_IDENTITY = "edgeflux-ingest"
"""The plane's MQTT ingest client (certificate CN, and so its MQTT client id)."""
PUBLISHER_IDENTITY = "edgeflux-push"
"""The plane's MQTT client that publishes update hints (push, rollouts)."""
FILES_IDENTITY = "edgeflux-files"
"""The plane's MQTT client that serves files in blocks (cloud.server.file_responder)."""
SERVICE_IDENTITIES = (INGEST_IDENTITY, PUBLISHER_IDENTITY, FILES_IDENTITY)


class HomeError(Exception):
    """The control-plane home is missing, incomplete or would be clobbered."""


class CloudConfig(BaseModel):
    """`[cloud]` settings of a control plane (env: ``EDGEFLUX_CLOUD_<FIELD>``)."""

    model_config = ConfigDict(extra="forbid")

    listen_host: str = Field("127.0.0.1", description="address the gRPC server binds")
    grpc_port: int = Field(7443, ge=0, le=65535, description="gRPC port (0 = pick a free one)")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus /metrics port; 0 = off, unless --metrics-port"
    )
    server_hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1"],
        description="DNS names / IPs written into the server certificate",
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; None = SQLite (WAL) at state/plane.db in the home"
    )
    broker_url: str | None = Field(
        None,
        description="mqtt(s)://host:port of the fleet broker; None = embedded dev broker",
    )
    embedded_broker_port: int = Field(1883, ge=0, le=65535)
    timestamp_expiry_s: int = Field(86_400, gt=60, description="TUF timestamp lifetime")
    timestamp_refresh_s: int = Field(
        3_600, gt=0, description="how often a running plane re-signs the TUF timestamp"
    )
    metadata_expiry_days: int = Field(365, gt=0, description="targets/snapshot lifetime")
    desired_state_ttl_s: int = Field(3_600, gt=0, description="desired-state document lifetime")
    max_message_bytes: int = Field(
        64 * 1024 * 1024, gt=1024, description="largest gRPC request accepted (bytes)"
    )
    telemetry_retention_days: float = Field(
        30.0,
        gt=0,
        description="telemetry older than this is removed, by whole UTC days (checked hourly; "
        "PostgreSQL drops day partitions)",
    )
    watch_poll_s: float = Field(
        0.5, gt=0, le=60, description="how often WatchFleet polls the store for changes"
    )
    max_concurrent_rpcs: int = Field(
        10_000, gt=0, description="calls in flight before new ones get RESOURCE_EXHAUSTED"
    )
    fetch_chunk_bytes: int = Field(256 * 1024, gt=0, description="default FetchFile chunk size")
    max_fetch_chunk_bytes: int = Field(1024 * 1024, gt=0, description="largest chunk served")
    max_concurrent_downloads: int = Field(
        64, gt=0, description="target (bundle) streams served at once; more wait for a slot"
    )
    campaign_executor: str = Field(
        "local",
        min_length=1,
        description="where RunParityCampaign runs a campaign's units: 'local' (a process pool "
        "on this replica) or 'ray://HOST:PORT' (a Ray cluster's client server); checked at start",
    )

    @model_validator(mode="after")
    def _check_timestamp_schedule(self) -> CloudConfig:
        if self.timestamp_refresh_s * 2 > self.timestamp_expiry_s:
            raise ValueError(
                f"timestamp_refresh_s ({self.timestamp_refresh_s}) must be at most half of "
                f"timestamp_expiry_s ({self.timestamp_expiry_s}) so the timestamp never expires"
            )
        return self


@dataclass(frozen=True)
class CloudHome:
    """Paths inside a control-plane home (see the module docstring)."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> CloudHome:
        return cls(Path(root).expanduser().resolve())

    # ---------------------------------------------------------------- paths
    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def ca_cert(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.pki / "ca.key"

    @property
    def ca_passphrase_file(self) -> Path:
        return self.root / "private" / "ca-passphrase"

    @property
    def crl(self) -> Path:
        """The fleet CRL (PEM) for brokers: rewritten on every revocation."""
        return self.pki / "crl.pem"

    @property
    def server_cert(self) -> Path:
        return self.pki / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.pki / "server.key"

    @property
    def operators(self) -> Path:
        return self.pki / "operators"

    @property
    def devices(self) -> Path:
        return self.pki / "devices"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def tuf(self) -> Path:
        return self.root / "tuf"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def trust(self) -> Path:
        """A `runtime.trust.TrustStore` of the keys bundles and attestations must carry."""
        return self.root / "trust"

    def operator_paths(self, name: str) -> tuple[Path, Path]:
        return self.operators / f"{name}.crt", self.operators / f"{name}.key"

    def device_paths(self, device_id: str) -> tuple[Path, Path]:
        return self.devices / f"{device_id}.crt", self.devices / f"{device_id}.key"

    def key_path(self, name: str, private: bool = False) -> Path:
        """`name` is ``model-signing``, ``attestation`` or ``director``."""
        return self.keys / f"{name}.{'key' if private else 'pub'}"

    # ---------------------------------------------------------------- loading
    def check(self) -> None:
        """Raise HomeError unless this looks like a complete home."""
        if not self.config_file.is_file():
            raise HomeError(
                f"{self.root} is not a control-plane home ({CONFIG_NAME} missing); "
                "create one with `edgeflux cloud init DIR`"
            )
        for p in (self.ca_cert, self.server_cert, self.server_key, self.tuf / "metadata"):
            if not p.exists():
                raise HomeError(f"control-plane home {self.root} is incomplete: {p} is missing")

    def config(self, overrides: dict[str, object] | None = None) -> CloudConfig:
        self.check()
        return load_config(CloudConfig, "cloud", toml_path=self.config_file, overrides=overrides)

    def database_url(self, config: CloudConfig | None = None) -> str:
        cfg = config or self.config()
        return cfg.database_url or f"sqlite:///{self.state / 'plane.db'}"

    def ca_passphrase(self) -> bytes:
        env = os.environ.get(PASSPHRASE_ENV)
        if env:
            return env.encode()
        try:
            return self.ca_passphrase_file.read_bytes().strip()
        except FileNotFoundError:
            raise HomeError(
                f"the fleet CA key is encrypted and no passphrase is available: set "
                f"{PASSPHRASE_ENV} or restore {self.ca_passphrase_file}"
            ) from None

    @property
    def services(self) -> Path:
        return self.pki / "services"

    def service_identity(self, name: str) -> tuple[Path, Path]:
        """(cert, key) of the plane's MQTT client `name` (``edgeflux-ingest``, …).

        Issued from the fleet CA on first use and kept under ``pki/services/``.
        """
        crt, key = self.services / f"{name}.crt", self.services / f"{name}.key"
        if not crt.exists() or not key.exists():
            self.load_ca().issue_service(name).write(self.services, name)
        return crt, key

    def identity_taken(self, name: str, kind: str) -> str | None:
        """Why `name` cannot be issued as a `kind` ("device" | "operator"), or None.

        Devices and operators share one name space: the broker knows a client only by
        its certificate's name, so an operator named like a device could speak as it.
        """
        crt, _ = self.operator_paths(name)
        if kind == "device" and crt.exists():
            return f"{name!r} is already an operator ({crt}); pick another device id"
        dev = self.devices / f"{name}.crt"
        if kind == "operator" and dev.exists():
            return f"{name!r} is already a device ({dev}); pick another operator name"
        return None

    def shared_names(self) -> list[str]:
        """Names that are both an operator and a device here (issued before names were
        checked across roles): on the broker such an operator could speak as the device."""
        operators = {p.stem for p in self.operators.glob("*.crt")}
        devices = {p.stem for p in self.devices.glob("*.crt")}
        return sorted(operators & devices)

    def load_ca(self) -> FleetCA:
        return FleetCA.load(self.ca_cert, self.ca_key, self.ca_passphrase())

    def ca_pem(self) -> bytes:
        return self.ca_cert.read_bytes()

    def write_crl(self, revoked_fingerprints: set[str]) -> list[str]:
        """Rewrite `pki/crl.pem` listing every issued certificate whose fingerprint is
        revoked (certificates are found under pki/devices and pki/operators); returns
        the subjects listed."""
        import datetime as dt

        from cryptography import x509

        from cloud.pki import fingerprint

        entries: list[tuple[int, dt.datetime]] = []
        names: list[str] = []
        for path in sorted([*self.devices.glob("*.crt"), *self.operators.glob("*.crt")]):
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            if fingerprint(cert) in revoked_fingerprints:
                entries.append((cert.serial_number, dt.datetime.now(dt.UTC)))
                names.append(f"{path.parent.name[:-1]}:{path.stem}")
        atomic_write_bytes(self.crl, self.load_ca().make_crl(entries))
        return names


def _write_ed25519(home: CloudHome, name: str) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    _write_keypair(home, name, key)


def _write_keypair(
    home: CloudHome, name: str, key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
) -> None:
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write_bytes(home.key_path(name, private=True), priv, mode=0o600)
    atomic_write_bytes(home.key_path(name), pub)


def _import_public(home: CloudHome, name: str, source: Path) -> None:
    data = source.read_bytes()
    try:
        serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise HomeError(f"{source} is not a PEM public key (for {name}): {exc}") from exc
    atomic_write_bytes(home.key_path(name), data)


def _default_config_text(hosts: list[str]) -> str:
    host_list = ", ".join(f'"{h}"' for h in hosts)
    return (
        "# EdgeFlux control plane. Every key may also be set as EDGEFLUX_CLOUD_<KEY>.\n"
        "[cloud]\n"
        'listen_host = "127.0.0.1"\n'
        "grpc_port = 7443\n"
        "metrics_port = 0\n"
        f"server_hosts = [{host_list}]\n"
        '# database_url = "postgresql+psycopg://user@host/edgeflux"   # default: SQLite\n'
        '# broker_url = "mqtts://broker.example:8883"                # default: embedded\n'
        "timestamp_expiry_s = 86400\n"
        "timestamp_refresh_s = 3600\n"
        "desired_state_ttl_s = 3600\n"
        "# Where campaigns asked of the plane (RunParityCampaign) run: a process pool on\n"
        "# this replica, or a Ray cluster shared by every replica (pip install 'edgeflux[ray]').\n"
        '# campaign_executor = "ray://ray-head.example:10001"         # default: "local"\n'
    )


def init_home(
    directory: str | os.PathLike[str],
    *,
    operator: str = "admin",
    server_hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
    ca_passphrase: bytes | None = None,
    model_signing_pub: Path | None = None,
    attestation_pub: Path | None = None,
) -> CloudHome:
    """Create a complete home at `directory`; refuse if it exists and is not empty.

    Returns the home. Everything is written into a temporary sibling first and renamed
    into place at the end, so a failure leaves no partial home.
    """
    from cloud.tuf_repo import TufRepository  # python-tuf is only needed here and on publish

    target = Path(directory).expanduser().resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise HomeError(
            f"{target} already exists and is not empty; refusing to overwrite a home "
            "(choose a new directory or remove it yourself)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.init-", dir=target.parent))
    try:
        home = CloudHome(tmp)
        for d in (home.pki, home.operators, home.devices, home.keys, home.tuf, home.state):
            d.mkdir(parents=True)
        home.ca_passphrase_file.parent.mkdir(mode=0o700)
        passphrase = ca_passphrase or secrets.token_urlsafe(32).encode()
        ca = FleetCA.create()
        ca.save(home.ca_cert, home.ca_key, passphrase)
        atomic_write_bytes(home.crl, ca.make_crl([]))
        if ca_passphrase is None:
            atomic_write_bytes(home.ca_passphrase_file, passphrase + b"\n", mode=0o600)
        server: Credentials = ca.issue_server(hosts=server_hosts)
        server.write(home.pki, "server")
        ca.issue_operator(operator, "admin").write(home.operators, operator)
        for service in SERVICE_IDENTITIES:
            ca.issue_service(service).write(home.services, service)

        if model_signing_pub is not None:
            _import_public(home, "model-signing", model_signing_pub)
        else:
            _write_keypair(home, "model-signing", ec.generate_private_key(ec.SECP256R1()))
        if attestation_pub is not None:
            _import_public(home, "attestation", attestation_pub)
        else:
            _write_ed25519(home, "attestation")
        _write_ed25519(home, "director")
        trust = TrustStore(home.trust)
        trust.add("models", home.key_path("model-signing").read_bytes())
        trust.add("attestation", home.key_path("attestation").read_bytes())

        TufRepository.create(home.tuf)
        atomic_write_text(home.config_file, _default_config_text(list(server_hosts)))
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.rename(tmp, target)
    except (PKIError, TrustStoreError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise HomeError(str(exc)) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CloudHome(target)
