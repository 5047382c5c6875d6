"""`edgeflux flash` over SSH against a real OpenSSH server on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeflux.cli import root
from runtime.bundle import verify_bundle
from runtime.layout import RobotLayout
from runtime.trust import TrustStore
from tests.flash.conftest import Plane, flash_args
from tests.servers import run_sshd

pytestmark = pytest.mark.services


def test_flash_over_ssh_equals_a_dir_flash(plane: Plane, bundle: Path, tmp_path: Path) -> None:
    local = tmp_path / "local"
    remote = tmp_path / "remote"
    assert CliRunner().invoke(root, flash_args(plane, bundle, f"dir:{local}")).exit_code == 0
    with run_sshd() as sshd:
        target = f"ssh://{sshd.user}@{sshd.host}:{sshd.port}{remote}"
        ssh = ["--ssh-key", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts)]
        result = CliRunner().invoke(root, [*flash_args(plane, bundle, target), *ssh, "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["files_written"] == report["files_total"]
        assert report["target"].startswith("ssh://")

        again = CliRunner().invoke(root, [*flash_args(plane, bundle, target), *ssh, "--json"])
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout)["files_written"] == 0  # idempotent over SSH too

        other = CliRunner().invoke(
            root, [*flash_args(plane, bundle, target, device="robot-2"), *ssh]
        )
        assert other.exit_code != 0 and "already holds the identity" in other.output

    def files(d: Path) -> dict[str, bytes]:
        return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}

    a, b = files(local), files(remote)
    a.pop("etc/edgeflux/flash.json"), b.pop("etc/edgeflux/flash.json")
    assert a == b
    key = remote / "etc/edgeflux/identity/device.key"
    assert key.stat().st_mode & 0o777 == 0o600
    layout = RobotLayout.at(remote)
    verify_bundle(layout.slot("a"), TrustStore(layout.trust))


def test_unreachable_ssh_host_is_a_clear_error(plane: Plane, bundle: Path) -> None:
    from tests.servers import free_port

    port = free_port()  # nothing listens here
    result = CliRunner().invoke(
        root, flash_args(plane, bundle, f"ssh://root@127.0.0.1:{port}/robot")
    )
    assert result.exit_code != 0
    assert "ssh failed" in result.output
