"""The fleet CRL works where it matters: a real Mosquitto configured by
`cloud broker-config --crl` refuses a revoked device at the TLS handshake."""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.cli import cloud
from tests.servers import free_port, run_mosquitto


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
    )  # fmt: skip
    conf = Path(json.loads(out)["config"]).read_text()
    with run_mosquitto(config_text=conf, port=port) as broker:
        assert _connects(port, home, "r1") and _connects(port, home, "r2")
        run("device", "revoke", "r1", "--home", str(home))
        broker.restart()  # Mosquitto reads its crlfile when the listener starts
        assert not _connects(port, home, "r1")
        assert _connects(port, home, "r2")
