"""`cloud broker-config --authz dynsec` against a real Mosquitto: refused subscriptions
are answered 0x87 under MQTT 5, device add takes effect without a reload, a revoked
device is refused, a certificate of the wrong role gets nothing, and nobody logs in
with a password."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cloud.broker_config import render_acl
from cloud.broker_dynsec import DEFAULT_PLUGIN, dynsec_document
from cloud.cli import cloud
from cloud.home import CloudHome
from tests.servers import Mosquitto, free_port, missing_service, run_mosquitto, wait_until

RUN_AS = ("--run-as", "root" if os.geteuid() == 0 else "mosquitto")
NOT_AUTHORIZED = 0x87


def _run(*args: str) -> str:
    result = CliRunner().invoke(cloud, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@dataclass
class Plane:
    home: Path
    port: int
    broker: Mosquitto
    dynsec: Path

    def files(self, name: str, kind: str = "devices") -> tuple[str, str, str]:
        d = self.home / "pki" / kind
        return str(self.home / "pki" / "ca.crt"), str(d / f"{name}.crt"), str(d / f"{name}.key")


@pytest.fixture(name="p")
def plane(tmp_path: Path) -> Iterator[Plane]:
    if not DEFAULT_PLUGIN.is_file():
        missing_service(f"{DEFAULT_PLUGIN} is not installed (Debian package mosquitto)")
    home = tmp_path / "plane"
    _run("init", str(home))
    _run("device", "add", "r1", "--home", str(home))
    _run("device", "add", "r2", "--home", str(home))
    port = free_port()
    toml = home / "cloud.toml"
    toml.write_text(toml.read_text() + f'broker_url = "mqtts://localhost:{port}"\n')
    out = _run(
        "broker-config", "--home", str(home), "--crl", str(home / "pki" / "crl.pem"),
        "--out", str(tmp_path / "mosq"), "--port", str(port), "--bind", "127.0.0.1",
        "--reload-hook", "pid-file", "--authz", "dynsec", "--json", *RUN_AS,
    )  # fmt: skip
    paths = json.loads(out)
    conf = Path(paths["config"]).read_text()
    assert "acl_file" not in conf and f"plugin {DEFAULT_PLUGIN}" in conf
    with run_mosquitto(config_text=conf, port=port) as broker:
        yield Plane(home, port, broker, Path(paths["dynsec"]))


class Client:
    """A paho MQTT 5 client that records SUBACK reason codes and received topics."""

    def __init__(self, port: int, files: tuple[str, ...], client_id: str, **login: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.connected = threading.Event()
        self.gone = threading.Event()
        self.subacks: dict[int, list[int]] = {}
        self.received: list[str] = []
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        ca, *cert = files
        c.tls_set(
            ca_certs=ca, certfile=cert[0] if cert else None, keyfile=cert[1] if cert else None
        )
        if login:
            c.username_pw_set(login["username"], login["password"])
        c.on_connect = lambda cl, u, f, rc, p: None if rc.is_failure else self.connected.set()
        c.on_disconnect = lambda cl, u, f, rc, p: self.gone.set()
        c.on_subscribe = lambda cl, u, mid, codes, p: self.subacks.__setitem__(
            mid, [int(x.value) for x in codes]
        )
        c.on_message = lambda cl, u, m: self.received.append(m.topic)
        self.c = c
        self.c.connect("localhost", port, keepalive=10)
        self.c.loop_start()

    def wait(self) -> Client:
        assert self.connected.wait(10), "no CONNACK"
        return self

    def subscribe(self, topic_filter: str) -> int:
        _rc, mid = self.c.subscribe(topic_filter, qos=1)
        wait_until(lambda: mid in self.subacks, 10, f"SUBACK for {topic_filter}")
        return self.subacks[mid][0]

    def publish(self, topic: str) -> None:
        self.c.publish(topic, b"{}", qos=1).wait_for_publish(10)

    def stop(self) -> None:
        self.c.loop_stop()
        with contextlib.suppress(Exception):
            self.c.disconnect()


@contextlib.contextmanager
def client(port: int, files: tuple[str, ...], client_id: str, **login: str) -> Iterator[Client]:
    c = Client(port, files, client_id, **login)
    try:
        yield c.wait()
    finally:
        c.stop()


def _topic(dev: str, kind: str) -> str:
    return f"edgeflux/v1/devices/{dev}/{kind}"


def _refused(port: int, files: tuple[str, ...], **login: str) -> bool:
    try:
        c = Client(port, files, "edgeflux-broker-admin", **login)
    except (ssl.SSLError, OSError):
        return True
    try:
        return not c.connected.wait(3)
    finally:
        c.stop()


def _reloads(p: Plane) -> int:
    return p.broker.log.read_text(errors="replace").count("Reloading config")


@pytest.mark.services
def test_a_device_subscribing_to_another_devices_topic_is_refused_with_0x87(p: Plane) -> None:
    with client(p.port, p.files("r1"), "r1") as r1:
        assert r1.subscribe(_topic("r1", "updates")) == 1
        assert r1.subscribe(_topic("r1", "files/resp")) == 1
        assert r1.subscribe(_topic("r2", "updates")) == NOT_AUTHORIZED
        assert r1.subscribe(_topic("+", "updates")) == NOT_AUTHORIZED
        assert r1.subscribe(_topic("r2", "telemetry")) == NOT_AUTHORIZED
        assert r1.subscribe("#") == NOT_AUTHORIZED
        assert r1.subscribe("$CONTROL/dynamic-security/v1/response") == NOT_AUTHORIZED


@pytest.mark.services
def test_ingest_reads_every_device_directly_and_shared_but_not_a_devices_name(p: Plane) -> None:
    home = CloudHome.at(p.home)
    crt, key = home.service_identity("edgeflux-ingest")
    files = (str(home.ca_cert), str(crt), str(key))
    with client(p.port, files, "edgeflux-ingest") as ing, client(p.port, p.files("r2"), "r2") as r2:
        assert ing.subscribe(_topic("+", "telemetry")) == 1
        assert ing.subscribe(f"$share/edgeflux-ingest/{_topic('+', 'events')}") == 1
        assert ing.subscribe(_topic("+", "updates")) == NOT_AUTHORIZED
        r2.publish(_topic("r2", "telemetry"))
        r2.publish(_topic("r2", "events"))
        r2.publish(_topic("r1", "telemetry"))  # not r2's: the broker drops it
        wait_until(lambda: len(ing.received) >= 2, 10, "ingest to receive r2's messages")
        time.sleep(0.3)  # give a wrongly delivered message the time to show up
        assert sorted(ing.received) == [_topic("r2", "events"), _topic("r2", "telemetry")]


@pytest.mark.services
def test_device_add_takes_effect_without_a_reload(p: Plane) -> None:
    reloads = _reloads(p)
    out = _run("device", "add", "r3", "--home", str(p.home))
    assert "dynamic-security control topic, no reload" in out, out
    with client(p.port, p.files("r3"), "r3") as r3:
        assert r3.subscribe(_topic("r3", "updates")) == 1
        assert r3.subscribe(_topic("r1", "updates")) == NOT_AUTHORIZED
    assert _reloads(p) == reloads
    saved = json.loads(p.dynsec.read_text())  # the plugin keeps its document current
    assert any("CN=r3" in c["username"] for c in saved["clients"])


@pytest.mark.services
def test_a_revoked_device_is_disconnected_and_refused(p: Plane) -> None:
    r1 = Client(p.port, p.files("r1"), "r1").wait()
    try:
        out = _run("device", "revoke", "r1", "--home", str(p.home))
        assert "no reload" in out and "broker reloaded" in out, out
        assert "closed r1's MQTT connection" in out, out
        assert r1.gone.wait(5), "r1 still connected after revoke"
    finally:
        r1.stop()
    again = Client(p.port, p.files("r1"), "r1")  # the reloaded CRL refuses the handshake
    try:
        assert not again.connected.wait(2)
    finally:
        again.stop()
    with client(p.port, p.files("r2"), "r2") as r2:
        assert r2.subscribe(_topic("r2", "updates")) == 1


@pytest.mark.services
def test_an_operator_certificate_with_a_devices_name_gets_nothing(p: Plane, tmp_path: Path) -> None:
    home = CloudHome.at(p.home)
    crt, key = home.load_ca().issue_operator("r2", "admin").write(tmp_path, "op")
    files = (str(home.ca_cert), str(crt), str(key))
    ingest_crt, ingest_key = home.service_identity("edgeflux-ingest")
    ingest = (str(home.ca_cert), str(ingest_crt), str(ingest_key))
    with client(p.port, ingest, "edgeflux-ingest") as ing, client(p.port, files, "r2") as op:
        assert ing.subscribe(_topic("+", "telemetry")) == 1
        assert op.subscribe(_topic("r2", "updates")) == NOT_AUTHORIZED
        op.publish(_topic("r2", "telemetry"))
        with client(p.port, p.files("r2"), "r2") as r2:  # the real r2, as a control
            r2.publish(_topic("r2", "telemetry"))
            wait_until(lambda: len(ing.received) >= 1, 10, "ingest to receive r2's message")
        time.sleep(0.3)
        assert ing.received == [_topic("r2", "telemetry")]


@pytest.mark.services
def test_no_password_login(p: Plane) -> None:
    doc = json.loads(p.dynsec.read_text())
    assert not any(k.startswith(("password", "salt")) for c in doc["clients"] for k in c)
    ca = str(p.home / "pki" / "ca.crt")
    admin = "O=EdgeFlux fleet,OU=service,CN=edgeflux-broker-admin"
    # Without a certificate: refused at the TLS handshake, whatever the password.
    assert _refused(p.port, (ca,), username=admin, password="x")
    # With a device certificate, a username claimed in CONNECT is ignored: the broker
    # names the client by its certificate, so it gets r1's rights, not the admin's.
    with client(p.port, p.files("r1"), "r1", username=admin, password="x") as r1:
        assert r1.subscribe("$CONTROL/dynamic-security/v1/response") == NOT_AUTHORIZED
        assert r1.subscribe(_topic("r1", "updates")) == 1


def test_the_plugin_document_grants_what_the_acl_file_grants() -> None:
    """Differential: each identity's topics in the ACL file and in the plugin's roles."""
    ingest, push, devices = ("edgeflux-ingest", "edgeflux-ingest-2"), "edgeflux-push", ("a", "b")
    acl: dict[str, set[tuple[str, str]]] = {}
    user = ""
    for ln in render_acl(ingest, push, devices).splitlines():
        if ln.startswith("user "):
            user = ln[5:]
            acl[user] = set()
        elif ln.startswith("topic "):
            _, access, topic = ln.split(" ", 2)
            acl[user].add((access, topic))
    doc: dict[str, Any] = dynsec_document(ingest, push, devices, ("g",))
    roles = {r["rolename"]: r["acls"] for r in doc["roles"]}
    ours: dict[str, set[tuple[str, str]]] = {}
    for c in doc["clients"]:
        if c["username"].endswith("CN=edgeflux-broker-admin"):
            continue
        got: set[tuple[str, str]] = set()
        for role in c["roles"]:
            for a in roles[role["rolename"]]:
                if a["acltype"] == "publishClientSend":
                    got.add(("write", a["topic"]))
                elif a["acltype"] == "publishClientReceive":
                    got.add(("read", a["topic"]))
        ours[c["username"]] = got
    assert ours == acl
    assert all(a["allow"] for r in doc["roles"] for a in r["acls"])
    assert not any(doc["defaultACLAccess"][k] for k in ("publishClientSend", "subscribe"))
    assert doc["defaultACLAccess"]["publishClientReceive"] is False


@pytest.mark.services
def test_device_add_with_the_broker_down_rewrites_the_document_and_says_restart(
    p: Plane,
) -> None:
    p.broker.stop()
    result = CliRunner().invoke(cloud, ["device", "add", "r4", "--home", str(p.home)])
    assert result.exit_code == 0, result.output
    assert "did not apply it" in result.output and "restart the broker" in result.output
    assert "Traceback" not in result.output
    p.broker.restart()  # reads the rewritten document
    with client(p.port, p.files("r4"), "r4") as r4:
        assert r4.subscribe(_topic("r4", "updates")) == 1
        assert r4.subscribe(_topic("r1", "updates")) == NOT_AUTHORIZED


@pytest.mark.services
def test_device_add_reaches_the_listener_broker_config_wrote_without_a_broker_url(
    p: Plane,
) -> None:
    toml = p.home / "cloud.toml"
    toml.write_text(
        "".join(ln for ln in toml.read_text().splitlines(True) if "broker_url" not in ln)
    )
    out = _run("device", "add", "r5", "--home", str(p.home))
    assert "no reload" in out, out
    with client(p.port, p.files("r5"), "r5") as r5:
        assert r5.subscribe(_topic("r5", "updates")) == 1
