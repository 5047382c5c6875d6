"""`edgeflux cloud ...` as a user types it: devices, revoke, publish refusals, `up` + SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cloud.cli import cloud
from cloud.testing import ClientCredentials
from tests.cloud.conftest import make_bundle
from tests.servers import free_port, port_open, wait_until


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "plane"
    assert CliRunner().invoke(cloud, ["init", str(h)]).exit_code == 0
    return h


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cloud, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_device_add_list_and_revoke(home: Path) -> None:
    h = str(home)
    assert _run("device", "add", "r1", "--home", h, "--label", "site=lab")[0] == 0
    assert _run("device", "add", "r2", "--home", h, "--label", "site=yard")[0] == 0
    code, out = _run("device", "add", "r1", "--home", h)
    assert code == 1 and "already exists" in out
    code, out = _run("device", "add", "r3", "--home", h, "--label", "nolabel")
    assert code == 2 and "key=value" in out
    code, out = _run("devices", "--home", h, "--selector", "site=lab", "--json")
    assert code == 0
    assert [d["id"] for d in json.loads(out)["devices"]] == ["r1"]
    assert _run("device", "revoke", "r1", "--home", h)[0] == 0
    code, out = _run("devices", "--home", h, "--json")
    assert {d["id"]: d["revoked"] for d in json.loads(out)["devices"]} == {"r1": True, "r2": False}
    code, out = _run("device", "revoke", "nobody", "--home", h)
    assert code == 1 and "no device 'nobody'" in out


def test_commands_outside_a_home_say_how_to_make_one(tmp_path: Path) -> None:
    code, out = _run("devices", "--home", str(tmp_path))
    assert code == 1 and "edgeflux cloud init" in out


def test_publish_refusals_are_clear_and_change_nothing(home: Path, tmp_path: Path) -> None:
    key = home / "keys" / "model-signing.key"
    ok = make_bundle(tmp_path / "ok", key, version="1.0.0", sequence=3)
    code, out = _run("publish", str(ok), "--home", str(home), "--json")
    assert code == 0, out
    assert json.loads(out)["target"] == "bundles/pendulum-1.0.0.efb"
    old = make_bundle(tmp_path / "old", key, version="0.9.0", sequence=2)
    code, out = _run("publish", str(old), "--home", str(home))
    assert code == 1 and "does not advance" in out
    unsigned = make_bundle(tmp_path / "unsigned", None, version="1.1.0", sequence=4)
    code, out = _run("publish", str(unsigned), "--home", str(home))
    assert code == 1 and "refused to publish" in out
    code, out = _run("bundles", "--home", str(home), "--json")
    assert [b["version"] for b in json.loads(out)["bundles"]] == ["1.0.0"]


def test_up_serves_health_metrics_and_dev_broker_and_stops_on_sigterm(home: Path) -> None:
    port, metrics, mqtt_port = free_port(), free_port(), free_port()
    args = ["--port", str(port), "--metrics-port", str(metrics)]
    env = {**os.environ, "EDGEFLUX_CLOUD_EMBEDDED_BROKER_PORT": str(mqtt_port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeflux.cli", "cloud", "up", "--home", str(home), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 30, "cloud up to listen")
        assert proc.poll() is None
        op = ClientCredentials(
            "admin",
            home / "pki" / "operators" / "admin.crt",
            home / "pki" / "operators" / "admin.key",
            home / "pki" / "ca.crt",
        )
        with grpc.secure_channel(f"127.0.0.1:{port}", op.grpc_credentials()) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read()
        assert b"edgeflux_cloud_tuf_timestamp_expiry_seconds" in body
        assert port_open(mqtt_port), "the embedded dev broker listens"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "DEV MODE" in out and "MQTT ingest connected" in out
        assert "control plane stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_up_with_a_taken_port_says_so(home: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        code, out = _run("up", "--home", str(home), "--no-broker", "--metrics-port", str(taken))
        assert code == 1
        assert f"cannot serve metrics on 127.0.0.1:{taken}" in out
        code, out = _run("up", "--home", str(home), "--no-broker", "--port", str(taken))
        assert code == 1
        assert f"cannot listen on 127.0.0.1:{taken}" in out


def test_tuf_rotate_and_status(home: Path) -> None:
    code, out = _run("tuf", "status", "--home", str(home), "--json")
    assert code == 0 and json.loads(out)["root_version"] == 1
    code, out = _run("tuf", "rotate", "timestamp", "--home", str(home), "--json")
    assert code == 0, out
    code, out = _run("tuf", "status", "--home", str(home), "--json")
    status = json.loads(out)
    assert status["root_version"] == 2 and status["timestamp_version"] >= 2
    code, out = _run("tuf", "rotate", "nonsense", "--home", str(home))
    assert code == 2


def test_revocation_rewrites_the_crl_signed_by_the_fleet_ca(home: Path) -> None:
    from cryptography import x509

    ca = x509.load_pem_x509_certificate((home / "pki" / "ca.crt").read_bytes())
    crl_path = home / "pki" / "crl.pem"
    empty = x509.load_pem_x509_crl(crl_path.read_bytes())
    assert len(list(empty)) == 0 and empty.is_signature_valid(ca.public_key())
    assert _run("device", "add", "r1", "--home", str(home))[0] == 0
    assert _run("device", "add", "r2", "--home", str(home))[0] == 0
    code, out = _run("device", "revoke", "r1", "--home", str(home))
    assert code == 0 and "CRL updated" in out
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    assert crl.is_signature_valid(ca.public_key())
    r1 = x509.load_pem_x509_certificate((home / "pki" / "devices" / "r1.crt").read_bytes())
    r2 = x509.load_pem_x509_certificate((home / "pki" / "devices" / "r2.crt").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(r1.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(r2.serial_number) is None
    code, out = _run("crl", "--home", str(home), "--json")
    assert code == 0 and json.loads(out)["revoked"] == ["device:r1"]
