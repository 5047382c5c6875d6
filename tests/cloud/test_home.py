"""`edgeflux cloud init`: a complete home, created atomically, never clobbered."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from cryptography import x509
from tuf.api.metadata import Metadata

from cloud.cli import cloud
from cloud.home import CloudHome
from cloud.pki import parse_identity


def test_init_creates_ca_certs_tuf_keys_and_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(cloud, ["init", str(tmp_path / "plane"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    home = CloudHome.at(info["home"])
    home.check()
    ca = x509.load_pem_x509_certificate(home.ca_cert.read_bytes())
    op = x509.load_pem_x509_certificate(Path(info["operator_cert"]).read_bytes())
    op.verify_directly_issued_by(ca)
    assert parse_identity(Path(info["operator_cert"]).read_bytes()).role == "admin"
    assert b"ENCRYPTED" in home.ca_key.read_bytes()
    assert home.load_ca().cert == ca
    root = Metadata.from_bytes(Path(info["tuf_root"]).read_bytes())
    assert root.signed.consistent_snapshot
    assert set(root.signed.roles) == {"root", "targets", "snapshot", "timestamp"}
    for name in ("model-signing", "attestation", "director"):
        assert home.key_path(name).is_file()
        assert home.key_path(name, private=True).stat().st_mode & 0o777 == 0o600
    assert home.config().grpc_port == 7443


def test_init_refuses_to_overwrite_an_existing_home(tmp_path: Path) -> None:
    target = tmp_path / "plane"
    assert CliRunner().invoke(cloud, ["init", str(target)]).exit_code == 0
    before = sorted(p.relative_to(target) for p in target.rglob("*"))
    ca_before = (target / "pki" / "ca.crt").read_bytes()
    result = CliRunner().invoke(cloud, ["init", str(target)])
    assert result.exit_code == 1
    assert "refusing to overwrite" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before
    assert (target / "pki" / "ca.crt").read_bytes() == ca_before


def test_init_with_a_bad_imported_key_leaves_nothing_behind(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    result = CliRunner().invoke(
        cloud, ["init", str(tmp_path / "plane"), "--model-signing-pub", str(bad)]
    )
    assert result.exit_code == 1
    assert "not a PEM public key" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pub"]
