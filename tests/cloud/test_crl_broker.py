"""The fleet CRL works where it matters: a real Mosquitto configured by
`cloud broker-config --crl` refuses a revoked device at the TLS handshake."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.cli import cloud
from tests.servers import free_port, missing_service, run_mosquitto

# tmp_path is 0700: a broker started as root keeps root to read the test's files.
RUN_AS = ("--run-as", "root" if os.geteuid() == 0 else "mosquitto")


def _connects(port: int, home: Path, device: str) -> bool:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    ok = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device)
    client.tls_set(
        ca_certs=str(home / "pki" / "ca.crt"),
        certfile=str(home / "pki" / "devices" / f"{device}.crt"),
        keyfile=str(home / "pki" / "devices" / f"{device}.key"),
    )
    client.on_connect = lambda c, u, f, rc, p: ok.set() if not rc.is_failure else None
    try:
        client.connect("localhost", port, keepalive=10)
    except (OSError, ssl.SSLError):
        return False
    client.loop_start()
    try:
        return ok.wait(5)
    finally:
        client.loop_stop()
        with contextlib.suppress(Exception):
            client.disconnect()


@pytest.mark.services
def test_broker_refuses_a_revoked_device_after_the_crl_is_rewritten(tmp_path: Path) -> None:
    home = tmp_path / "plane"

    def run(*args: str) -> str:
        result = CliRunner().invoke(cloud, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    run("init", str(home))
    run("device", "add", "r1", "--home", str(home))
    run("device", "add", "r2", "--home", str(home))
    port = free_port()
    out = run(
        "broker-config", "--home", str(home), "--crl", str(home / "pki" / "crl.pem"),
        "--out", str(tmp_path / "mosq"), "--port", str(port), "--bind", "127.0.0.1", "--json",
        *RUN_AS,
    )  # fmt: skip
    conf = Path(json.loads(out)["config"]).read_text()
    with run_mosquitto(config_text=conf, port=port) as broker:
        assert _connects(port, home, "r1") and _connects(port, home, "r2")
        run("device", "revoke", "r1", "--home", str(home))
        broker.restart()  # Mosquitto reads its crlfile when the listener starts
        assert not _connects(port, home, "r1")
        assert _connects(port, home, "r2")


@pytest.mark.services
def test_a_revoked_robot_is_refused_within_5_s_without_a_manual_step(tmp_path: Path) -> None:
    """`device revoke` reloads the broker (hook from `broker-config --reload-hook`) and
    closes the robot's open connection; its reconnects fail, the others stay."""
    import time

    from fleet.mqtt import MqttSettings, MqttTransport, TlsFiles

    home = tmp_path / "plane"

    def run(*args: str) -> str:
        result = CliRunner().invoke(cloud, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    run("init", str(home))
    run("device", "add", "r1", "--home", str(home))
    run("device", "add", "r2", "--home", str(home))
    port = free_port()
    toml = home / "cloud.toml"
    toml.write_text(toml.read_text() + f'broker_url = "mqtts://localhost:{port}"\n')
    out = run(
        "broker-config", "--home", str(home), "--crl", str(home / "pki" / "crl.pem"),
        "--out", str(tmp_path / "mosq"), "--port", str(port), "--bind", "127.0.0.1",
        "--reload-hook", "pid-file", "--json", *RUN_AS,
    )  # fmt: skip
    conf = Path(json.loads(out)["config"]).read_text()

    def robot(name: str) -> MqttTransport:
        d = home / "pki" / "devices"
        tls = TlsFiles(home / "pki" / "ca.crt", d / f"{name}.crt", d / f"{name}.key")
        settings = MqttSettings(
            host="localhost", port=port, tls=tls, reconnect_base_s=0.05, reconnect_cap_s=0.2
        )
        t = MqttTransport(settings, name)
        t.start()
        assert t.wait_connected(10), t.last_error
        return t

    with run_mosquitto(config_text=conf, port=port):
        r1, r2 = robot("r1"), robot("r2")
        try:
            t0 = time.monotonic()
            lines = run("device", "revoke", "r1", "--home", str(home))
            assert "broker reloaded" in lines and "closed r1's MQTT connection" in lines
            deadline = t0 + 5
            while r1.is_connected() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not r1.is_connected(), "r1 still connected 5 s after revoke"
            assert time.monotonic() - t0 < 5
            connects = r1.counters["connects"]
            time.sleep(1.0)  # it keeps retrying every 0.2 s: every attempt is refused
            assert r1.counters["connects"] == connects and not r1.is_connected()
            assert not _connects(port, home, "r1")
            assert r2.is_connected() and _connects(port, home, "r2")
        finally:
            r1.stop()
            r2.stop()


@pytest.mark.services
@pytest.mark.skipif(os.geteuid() != 0, reason="starting Mosquitto as root needs root")
def test_the_generated_config_starts_as_root_and_drops_to_its_user(tmp_path: Path) -> None:
    """Mosquitto started as root drops to `mosquitto` before reading its TLS files; the
    plane's home is 0700, so broker-config gives the broker copies it can read."""
    import pwd
    import shutil
    import tempfile

    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        missing_service("no mosquitto user on this machine (Debian's mosquitto package makes it)")
    home = tmp_path / "plane"
    assert CliRunner().invoke(cloud, ["init", str(home)]).exit_code == 0
    assert CliRunner().invoke(cloud, ["device", "add", "r1", "--home", str(home)]).exit_code == 0
    os.chmod(home, 0o700)
    base = Path(tempfile.mkdtemp(prefix="edgeflux-broker-"))  # like /etc/mosquitto/conf.d
    os.chmod(base, 0o755)
    try:
        port = free_port()
        result = CliRunner().invoke(
            cloud,
            [
                "broker-config", "--home", str(home), "--crl", str(home / "pki" / "crl.pem"),
                "--out", str(base / "edgeflux"), "--port", str(port), "--bind", "127.0.0.1",
                "--json",
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        conf = Path(json.loads(result.stdout)["config"]).read_text()
        assert "user mosquitto" in conf and str(home) not in conf
        key = base / "edgeflux" / "tls" / "key.pem"
        assert oct(key.stat().st_mode & 0o777) == "0o640"
        with run_mosquitto(config_text=conf, port=port):
            assert _connects(port, home, "r1")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.services
def test_device_add_and_revoke_rewrite_the_acl_and_reload_the_broker(tmp_path: Path) -> None:
    """A robot added after `broker-config` may publish at once (MQTT 5 PUBACK 0); a
    revoked one leaves the ACL; a home configured by an older broker-config is told
    to re-run it."""
    import time

    from fleet.mqtt import MqttSettings, MqttTransport, TlsFiles, topic

    home = tmp_path / "plane"

    def run(*args: str) -> str:
        result = CliRunner().invoke(cloud, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    run("init", str(home))
    run("device", "add", "r1", "--home", str(home))
    port = free_port()
    out = run(
        "broker-config", "--home", str(home), "--crl", str(home / "pki" / "crl.pem"),
        "--out", str(tmp_path / "mosq"), "--port", str(port), "--bind", "127.0.0.1",
        "--reload-hook", "pid-file", "--json", "--authz", "acl-file", *RUN_AS,
    )  # fmt: skip
    paths = json.loads(out)
    acl = Path(paths["acl"])
    assert "CN=r2" not in acl.read_text()
    with run_mosquitto(config_text=Path(paths["config"]).read_text(), port=port):
        wait_pid = tmp_path / "mosq" / "mosquitto.pid"
        deadline = time.monotonic() + 10
        while not wait_pid.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = run("device", "add", "r2", "--home", str(home))
        assert "broker reloaded" in lines
        assert "user O=EdgeFlux fleet,OU=device,CN=r2" in acl.read_text()
        d = home / "pki" / "devices"
        tls = TlsFiles(home / "pki" / "ca.crt", d / "r2.crt", d / "r2.key")
        r2 = MqttTransport(MqttSettings(host="localhost", port=port, tls=tls), "r2")
        r2.start()
        try:
            assert r2.wait_connected(10), r2.last_error
            acked = threading.Event()
            assert r2.publish(topic("r2", "telemetry"), b"x", on_ack=acked.set)
            assert acked.wait(10) and r2.counters["publishes_refused"] == 0
        finally:
            r2.stop()
        run("device", "revoke", "r2", "--home", str(home))
        text = acl.read_text()
        assert "CN=r2" not in text and "CN=r1" in text
    # A hook recorded by an older broker-config names no ACL: the operator is told.
    hook = home / "broker-reload.json"
    hook.write_text(json.dumps({"kind": "none", "target": "", "crl_copy": ""}))
    result = CliRunner().invoke(cloud, ["device", "add", "r3", "--home", str(home)])
    assert result.exit_code == 0
    assert "re-run `edgeflux cloud broker-config --home" in result.output
