"""`edgeflux tui` refuses bad arguments with a clear message and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeflux.cli import root


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cloud", "nohost"], "--cloud must be HOST:PORT, got 'nohost'"),
        (["--cloud", "h:port"], "--cloud must be HOST:PORT"),
    ],
)
def test_bad_address_is_refused(args: list[str], message: str) -> None:
    result = CliRunner().invoke(root, ["tui", *args])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_mtls_needs_all_three_files(tmp_path: Path) -> None:
    cert = tmp_path / "op.crt"
    cert.write_text("x")
    result = CliRunner().invoke(root, ["tui", "--cloud", "h:1", "--cert", str(cert)])
    assert result.exit_code == 1
    assert "mTLS needs --cert, --key and --ca together; missing --ca, --key" in result.output


def test_a_non_certificate_is_named(tmp_path: Path) -> None:
    files = {}
    for name in ("cert", "key", "ca"):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text("not pem")
    args = ["tui", "--cloud", "h:1"] + [x for n, p in files.items() for x in (f"--{n}", str(p))]
    result = CliRunner().invoke(root, args)
    assert result.exit_code == 1
    assert "the --cert file is not a PEM certificate" in result.output


def test_bad_attestation_key_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "att.pem"
    bad.write_text("nope")
    result = CliRunner().invoke(root, ["tui", "--cloud", "h:1", "--attestation-keys", str(bad)])
    assert result.exit_code == 1
    assert "att.pem: not a PEM public key" in result.output
