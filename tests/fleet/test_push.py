"""`edgeflux cloud push`: publish + desired state + MQTT hints, through a real Mosquitto
configured by `edgeflux cloud broker-config --home` (the plane's own certificates)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.cli import cloud
from cloud.home import CloudHome, init_home
from cloud.pki import fingerprint
from cloud.store import Store
from fleet.mqtt import MqttSettings, MqttTransport, TlsFiles, topic
from protos import telemetry_pb2
from tests.cloud.conftest import make_bundle
from tests.servers import Mosquitto, free_port, run_mosquitto, wait_until

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> CloudHome:
    h = init_home(tmp_path_factory.mktemp("push") / "plane")
    store = Store.open(h.database_url(h.config()))
    ca = h.load_ca()
    for device, site in (("robot-1", "lab"), ("robot-2", "lab"), ("robot-3", "field")):
        creds = ca.issue_device(device)
        creds.write(h.devices, device)
        store.add_device(device, fingerprint(creds.cert_pem), {"site": site})
    store.close()
    return h


@pytest.fixture(scope="module")
def broker(home: CloudHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    out = tmp_path_factory.mktemp("broker")
    port = free_port()
    res = CliRunner().invoke(
        cloud,
        [
            "broker-config",
            "--home",
            str(home.root),
            "--out",
            str(out),
            "--port",
            str(port),
            "--run-as",
            "root" if os.geteuid() == 0 else "mosquitto",
        ],  # tmp_path is 0700
    )
    assert res.exit_code == 0, res.output
    text = (out / "mosquitto.conf").read_text().replace("0.0.0.0", "127.0.0.1")
    with run_mosquitto(text, port=port) as b:
        yield b


class Hints:
    def __init__(self) -> None:
        self.got: list[telemetry_pb2.UpdateHint] = []
        self.lock = threading.Lock()

    def __call__(self, _topic: str, payload: bytes) -> None:
        with self.lock:
            self.got.append(telemetry_pb2.UpdateHint.FromString(payload))


@contextlib.contextmanager
def listening(home: CloudHome, broker: Mosquitto, device: str) -> Iterator[Hints]:
    crt, key = home.device_paths(device)
    t = MqttTransport(MqttSettings(port=broker.port, tls=TlsFiles(home.ca_cert, crt, key)), device)
    hints = Hints()
    t.subscribe(topic(device, "updates"), hints)
    t.start()
    try:
        # SUBSCRIBE goes out in on_connect, before the push CLI even starts.
        assert t.wait_connected(10), t.last_error
        yield hints
    finally:
        t.stop()


def _push(home: CloudHome, broker: Mosquitto, *args: str) -> dict:  # type: ignore[type-arg]
    res = CliRunner().invoke(
        cloud,
        [
            "push",
            *args,
            "--home",
            str(home.root),
            "--broker-url",
            f"mqtts://127.0.0.1:{broker.port}",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    return json.loads(res.output.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_push_by_label_sets_desired_state_and_hints_only_matching_devices(
    home: CloudHome, broker: Mosquitto, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path / "b", home.key_path("model-signing", private=True))
    with (
        listening(home, broker, "robot-1") as h1,
        listening(home, broker, "robot-2") as h2,
        listening(home, broker, "robot-3") as h3,
    ):
        out = _push(home, broker, str(bundle), "--label", "site=lab")
        assert sorted(out["hinted"]) == ["robot-1", "robot-2"] and out["hint_failed"] == {}
        wait_until(lambda: len(h1.got) == 1 and len(h2.got) == 1, 10, "hints delivered")
        assert h1.got[0].bundle_name == "pendulum" and h1.got[0].sequence == 1
        assert h1.got[0].generation == out["devices"]["robot-1"]
        # pushing the same bundle again reuses the published record and bumps generations
        again = _push(home, broker, "pendulum@1.0.0", "--device", "robot-1")
        assert again["devices"]["robot-1"] == out["devices"]["robot-1"] + 1
        wait_until(lambda: len(h1.got) == 2, 10, "second hint")
        assert h3.got == []
    store = Store.open(home.database_url(home.config()))
    try:
        desired = store.require_device("robot-2").desired_bundle
        assert desired is not None and desired["name"] == "pendulum" and desired["target"]
        assert store.require_device("robot-3").desired_bundle is None
    finally:
        store.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pendulum@1.0.0", "--device", "ghost"], "no device 'ghost'"),
        (["pendulum@9.9.9", "--device", "robot-1"], "is not published"),
        (["pendulum@1.0.0"], "give either --device"),
        (["pendulum@1.0.0", "--label", "site=moon"], "no devices match"),
    ],
)
def test_push_refuses_bad_targets_without_changing_anything(
    home: CloudHome, args: list[str], message: str
) -> None:
    res = CliRunner().invoke(cloud, ["push", *args, "--home", str(home.root), "--no-hint"])
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output
