"""Three shared-subscription ingest replicas on a real Mosquitto into a real PostgreSQL:
the broker splits the load, nothing is lost, and a message two replicas both see
(a robot re-sending after a lost acknowledgement) is stored once. And the
`cloud ingest --replicas 3` command that runs them as processes."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cloud.broker_config import BrokerConfig, write_broker_config
from cloud.home import init_home
from cloud.ingest import Ingest
from cloud.store import Store
from cloud.testing import running_plane
from fleet.mqtt import MqttSettings, MqttTransport, TlsFiles, topic
from protos import telemetry_pb2
from tests.fleet.conftest import DEVICES, INGEST_REPLICAS, Pki
from tests.fleet.test_ingest import device, running_ingest
from tests.servers import Mosquitto, Postgres, free_port, run_mosquitto, wait_until

pytestmark = pytest.mark.services
PER_DEVICE = 40


def _telemetry(dev: str, seq: int) -> bytes:
    b = telemetry_pb2.TelemetryBatch(device_id=dev, sequence=seq)
    p = b.points.add(loop_p50_ms=1.0, loop_p99_ms=2.0, ticks=10)
    p.at.FromDatetime(dt.datetime.now(dt.UTC))
    return b.SerializeToString()


def _event(dev: str, seq: int) -> bytes:
    ev = telemetry_pb2.Event(device_id=dev, sequence=seq, kind="update", state="DOWNLOADING")
    ev.at.FromDatetime(dt.datetime.now(dt.UTC))
    return ev.SerializeToString()


@pytest.fixture
def pg_store(postgres: Postgres) -> Iterator[Store]:
    s = Store.open(postgres.create_database(f"replicas_{uuid.uuid4().hex[:10]}"))
    for name in DEVICES:
        s.add_device(name, "0" * 64)
    yield s
    s.close()


def _counts(store: Store, table: str) -> list[tuple[str, int, int]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.text(f"SELECT device_id, sequence, count(*) FROM {table} GROUP BY 1, 2")
        )
        return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]


def test_three_shared_replicas_lose_nothing_and_store_each_message_once(
    pki: Pki, broker: Mosquitto, pg_store: Store
) -> None:
    with contextlib.ExitStack() as stack:
        replicas: list[Ingest] = [
            stack.enter_context(running_ingest(pg_store, pki, broker, client_id=c, shared=True))
            for c in INGEST_REPLICAS
        ]
        for r in replicas:
            wait_until(r.is_connected, 10, "replica connected")
        devs = [stack.enter_context(device(pki, broker, d)) for d in DEVICES]
        for seq in range(1, PER_DEVICE + 1):
            for name, dev in zip(DEVICES, devs, strict=True):
                for _ in range(2 if seq % 4 == 0 else 1):  # every fourth one sent twice
                    assert dev.publish(topic(name, "telemetry"), _telemetry(name, seq))
                    assert dev.publish(topic(name, "events"), _event(name, seq))
        total = 2 * len(DEVICES) * PER_DEVICE
        sent = total + 2 * len(DEVICES) * (PER_DEVICE // 4)

        def processed() -> int:
            return sum(r.counters["stored"] + r.counters["skipped"] for r in replicas)

        wait_until(lambda: processed() >= sent, 30, "every message processed")
        stored = [r.counters["stored"] for r in replicas]
        assert all(n > 0 for n in stored), stored  # the broker split the load
        assert sum(stored) == total, stored
    for table in ("telemetry", "events", "telemetry_batches"):
        counts = _counts(pg_store, table)
        assert len(counts) == len(DEVICES) * PER_DEVICE, table  # none lost
        assert {c for _, _, c in counts} == {1}, table  # none twice


def test_cloud_ingest_replicas_runs_three_shared_processes_until_sigterm(tmp_path: Path) -> None:
    """`edgeflux cloud ingest --replicas 3`: three processes with their own identities
    share the load; SIGTERM stops all three cleanly."""
    home = init_home(tmp_path / "plane")
    names = [f"edgeflux-ingest-{i}" for i in (1, 2, 3)]
    with running_plane(home.root) as plane:
        plane.device("robot-1")
    port = free_port()
    cfg = BrokerConfig(
        ca=home.ca_cert,
        cert=home.server_cert,
        key=home.server_key,
        port=port,
        bind="127.0.0.1",
        ingest_identity=names[0],
        more_ingest_identities=tuple(names[1:]),
        devices=("robot-1",),
    )
    conf, _ = write_broker_config(cfg, tmp_path / "mosq")
    store = Store.open(home.database_url(home.config()))
    cmd = [
        sys.executable,
        "-c",
        "from cloud.cli import cloud; cloud()",
        "ingest",
        "--home",
        str(home.root),
        "--broker-url",
        f"mqtts://localhost:{port}",
        "--replicas",
        "3",
    ]
    try:
        with run_mosquitto(conf.read_text(), port=port):
            proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
            lines: list[str] = []
            reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
            reader.start()
            try:
                # A shared subscription holds nothing for a group before it subscribed.
                wait_until(
                    lambda: sum(line.startswith("ingest edgeflux-ingest-") for line in lines) == 3,
                    60,
                    "three replicas subscribed",
                )
                tls = TlsFiles(
                    home.ca_cert, *(home.devices / f"robot-1.{x}" for x in ("crt", "key"))
                )
                dev = MqttTransport(MqttSettings(port=port, tls=tls), "robot-1")
                dev.start()
                assert dev.wait_connected(15), dev.last_error
                n = 60
                for seq in range(1, n + 1):
                    assert dev.publish(topic("robot-1", "telemetry"), _telemetry("robot-1", seq))
                wait_until(
                    lambda: len(store.telemetry("robot-1", limit=1000)) >= n, 60, "all stored"
                )
                dev.stop()
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
                reader.join(10)
        err = "".join(lines)
        assert proc.returncode == 0, err
        counters = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert len(counters) == 3, err
        assert sum(c.get("stored", 0) for c in counters) == n, counters
        assert all(c.get("stored", 0) > 0 for c in counters), counters  # all three took a share
        for name in names:
            assert f"ingest {name}:" in err, err
        assert len(store.telemetry("robot-1", limit=1000)) == n
    finally:
        store.close()
