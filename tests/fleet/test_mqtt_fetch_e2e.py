"""Updates over MQTT alone, with every real component: Mosquitto configured by
`edgeflux cloud broker-config --home`, a control plane started as `cloud up` starts it
with a broker (ingest and the MQTT file responder), and robots whose gRPC target is a
closed port.

- a robot (`edgeflux runtime run` + `edgeflux agent run`) that cannot reach the
  plane's gRPC port updates to COMMITTED over MQTT, and says so in its events;
- a block with wrong bytes from the transport is refused and fetched again; when
  every answer is garbled the download fails and nothing is kept;
- a robot that requires parity attestation fetches it over MQTT too: an attested
  bundle commits, a bundle without one is refused with the reason gRPC gives
  (``missing``), and an attestation forged or garbled in transit is refused;
- an agent restarted before activation asks gRPC for the attestation first, MQTT
  only when the plane's gRPC port is unreachable;
- a device can neither ask through nor read another device's file topics (ACL);
- hostile requests over the broker get specific refusals and the responder keeps
  serving.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ed25519

from cloud.cli import cloud
from cloud.home import init_home
from cloud.server.file_responder import FileResponder
from cloud.store import EventRecord
from cloud.testing import RunningPlane, running_plane
from fleet import attestation as fa
from fleet.mqtt import MqttSettings, MqttTransport, TlsFiles
from fleet.mqtt_fetch import MqttBlockClient, MqttFetcher, MqttFetchError, attestation_fetcher
from fleet.tuf_client import TufClient, TufClientError
from protos.file_blocks import FileBlock, FileRequest, request_topic, response_topic
from runtime.bundle import verify_bundle
from runtime.layout import RobotLayout
from runtime.trust import TrustStore
from tests.attest.test_service import _attest, _store
from tests.fleet.test_agent_e2e import Robot, _bundle, _make_root, _spawn
from tests.servers import Mosquitto, free_port, run_mosquitto, wait_until

pytestmark = pytest.mark.services


@dataclass
class Env:
    plane: RunningPlane
    broker: Mosquitto
    tmp: Path

    @property
    def responder(self) -> FileResponder:
        assert self.plane.control.files is not None, "the plane started no file responder"
        return self.plane.control.files

    @contextlib.contextmanager
    def device(self, name: str) -> Iterator[MqttTransport]:
        """A registered device's own MQTT connection (its certificate, its CN)."""
        creds = self.plane.device(name)
        t = MqttTransport(
            MqttSettings(
                port=self.broker.port,
                tls=TlsFiles(creds.ca, creds.cert, creds.key),
                reconnect_base_s=0.05,
                reconnect_cap_s=0.5,
                max_payload_bytes=64 * 1024,  # the agent's default cap
            ),
            name,
            clean_session=True,
        )
        t.start()
        try:
            assert t.wait_connected(10), f"{name}: {t.last_error}"
            yield t
        finally:
            t.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("mqttfetch")
    home = init_home(tmp / "plane")
    port = free_port()
    out = tmp / "broker"
    res = CliRunner().invoke(
        cloud,
        [
            "broker-config",
            *("--home", str(home.root), "--out", str(out), "--port", str(port)),
            *("--run-as", "root" if os.geteuid() == 0 else "mosquitto"),
            *("--reload-hook", "pid-file"),  # devices added later: the ACL is rewritten
        ],
    )
    assert res.exit_code == 0, res.output
    conf = (out / "mosquitto.conf").read_text().replace("0.0.0.0", "127.0.0.1")
    with (
        run_mosquitto(conf, port=port) as broker,
        running_plane(
            home.root,
            overrides={"broker_url": f"mqtts://127.0.0.1:{port}"},
            ingest=True,
            files_over_mqtt=True,
        ) as plane,
    ):
        yield Env(plane, broker, tmp)


def _publish(env: Env, version: str, seq: int) -> tuple[str, bytes]:
    rec = env.plane.publish(_bundle(env.tmp, env.plane, version, seq))
    stored = next((env.plane.home.tuf / "targets").rglob(f"*.{Path(rec.target_path).name}"))
    return rec.target_path, stored.read_bytes()


class Garbling(MqttBlockClient):
    """What a faulty link does: flips a byte in the next `garble` target blocks."""

    garble = 0

    def request(self, kind: str, path: str, offset: int, length: int) -> FileBlock:
        block = super().request(kind, path, offset, length)
        if kind == "target" and self.garble and block.data:
            self.garble -= 1
            data = bytearray(block.data)
            data[len(data) // 2] ^= 0x5A
            return FileBlock(block.id, block.status, block.offset, block.total, bytes(data))
        return block


def test_a_block_with_wrong_bytes_is_refused_and_fetched_again(env: Env, tmp_path: Path) -> None:
    target_path, efb = _publish(env, "1.0.0", 1)
    with env.device("robot-garble") as t:
        blocks = Garbling(t, "robot-garble", block_bytes=4096, timeout_s=5)
        root = env.plane.home.tuf / "metadata" / "1.root.json"
        view = TufClient(tmp_path / "agent", root, MqttFetcher(blocks)).refresh()
        target = view.target(target_path)
        assert target is not None and "chunks" in target.custom
        blocks.garble = 1
        path = view.download(target)
        assert path.read_bytes() == efb  # only verified bytes were assembled
        stats = view.last_chunk_stats
        assert stats is not None and stats.refused_chunks == 1
        assert stats.fetched_bytes == len(efb)
        assert blocks.counters["bytes"] > len(efb)  # the refused chunk crossed twice

        # Garbled every time: the download fails, and nothing of it is kept as the target.
        target2_path, _ = _publish(env, "1.0.1", 2)
        view = TufClient(tmp_path / "agent2", root, MqttFetcher(blocks)).refresh()
        target2 = view.target(target2_path)
        assert target2 is not None
        blocks.garble = 10**6
        with pytest.raises(TufClientError, match="do not match its signed sha256"):
            view.download(target2)
        assert not (tmp_path / "agent2" / "downloads" / f"{target2.sha256}.efb").exists()


class Tampering(MqttBlockClient):
    """A link that hands the robot `replace(bytes)` instead of each attestation block."""

    def __init__(self, *args: Any, replace: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.replace = replace

    def request(self, kind: str, path: str, offset: int, length: int) -> FileBlock:
        block = super().request(kind, path, offset, length)
        if kind != "attestation":
            return block
        data = self.replace(block.data)
        return FileBlock(block.id, block.status, block.offset, len(data), data)


def _flip_payload(data: bytes) -> bytes:
    """The envelope with one character of its signed payload's base64 changed."""
    doc = json.loads(data)
    p = doc["payload"]
    doc["payload"] = p[:40] + ("A" if p[40] != "A" else "B") + p[41:]
    return json.dumps(doc).encode()


def _resigned(data: bytes) -> bytes:
    """The same statement signed by a key the robot does not trust (a forgery)."""
    from cloud.attest import statement

    stmt = json.loads(base64.b64decode(json.loads(data)["payload"]))
    forger = statement.AttestationKey(ed25519.Ed25519PrivateKey.generate())
    return statement.envelope_bytes(statement.sign_statement(stmt, forger))


def test_the_attestation_over_mqtt_gets_the_verdict_grpc_gets(env: Env, tmp_path: Path) -> None:
    from tests.attest.test_service import _bundle as attest_bundle

    home = env.plane.home
    trust = TrustStore(home.trust)
    signed = verify_bundle(attest_bundle(tmp_path, home, "mqtt-att", 1.3), trust)
    envelope = _attest(home, tmp_path / "mqtt-att")
    _store(env.plane, envelope)
    bare = verify_bundle(attest_bundle(tmp_path, home, "mqtt-bare", 0.4), trust)
    required = fa.AttestationPolicy(require_parity_attestation=True)

    def decide(fetch: Any, vb: Any) -> fa.ActivationDecision:
        return fa.check_activation(
            required,
            policy_sha256=vb.policy_sha256,
            root_digest=vb.root_digest,
            fetch=fetch,
            trusted_keys=trust.public_keys("attestation"),
        )

    creds = env.plane.device("robot-att-grpc")
    with env.device("robot-att-mqtt") as t, env.plane.channel(creds) as ch:
        over_mqtt = attestation_fetcher(MqttBlockClient(t, "robot-att-mqtt", timeout_s=5))
        over_grpc = fa.grpc_fetcher(ch)
        assert over_mqtt(signed.policy_sha256) == over_grpc(signed.policy_sha256) == envelope
        for vb, reason in ((signed, "attested"), (bare, "missing")):
            got, want = decide(over_mqtt, vb), decide(over_grpc, vb)
            assert (got.allowed, got.reason) == (want.allowed, want.reason), (got, want)
            assert got.reason == reason, got.message

        # Nothing the transport says is believed: the verifier refuses what it altered.
        for replace, reason in (
            (_resigned, "untrusted_key"),
            (_flip_payload, "bad_signature"),
            (lambda d: d[: len(d) // 2], "malformed"),
            (lambda d: b"\x00" * len(d), "malformed"),
        ):
            tampered = Tampering(t, "robot-att-mqtt", timeout_s=5, replace=replace)
            got = decide(attestation_fetcher(tampered), signed)
            assert (got.allowed, got.reason) == (False, reason), got.message


def test_a_restarted_agent_asks_grpc_first_and_mqtt_only_when_grpc_is_unreachable(
    env: Env, tmp_path: Path
) -> None:
    import grpc

    from tests.attest.test_service import _bundle as attest_bundle

    home = env.plane.home
    vb = verify_bundle(attest_bundle(tmp_path, home, "fallback", 1.7), TrustStore(home.trust))
    envelope = _attest(home, tmp_path / "fallback")
    _store(env.plane, envelope)
    creds = env.plane.device("robot-fallback-grpc")
    asked: list[str] = []

    def never(digest: str) -> bytes | None:
        asked.append(digest)
        raise AssertionError("gRPC answered: the fallback is not asked")

    with env.device("robot-fallback") as t, env.plane.channel(creds) as live:
        over_mqtt = attestation_fetcher(MqttBlockClient(t, "robot-fallback", timeout_s=5))
        up = fa.grpc_fetcher_with_fallback(live, never, 5.0)
        assert up(vb.policy_sha256) == envelope
        assert up("0" * 64) is None  # NOT_FOUND is the plane's answer, not a dead link
        with pytest.raises(grpc.RpcError) as bad:
            up("xyz")
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and not asked
        closed = grpc.secure_channel(f"127.0.0.1:{free_port()}", creds.grpc_credentials())
        with closed:
            served = env.responder.counters["ok"]
            down = fa.grpc_fetcher_with_fallback(closed, over_mqtt, 2.0)
            assert down(vb.policy_sha256) == envelope
            assert env.responder.counters["ok"] > served  # it came over MQTT
            assert down("0" * 64) is None  # and "none" over MQTT is None too


def test_a_device_cannot_fetch_through_another_devices_topics(env: Env) -> None:
    seen: list[tuple[str, FileBlock]] = []
    env.responder.on_answer = lambda device, block: seen.append((device, block))
    stolen: list[bytes] = []
    try:
        with env.device("robot-a") as a, env.device("robot-b") as b:
            a.subscribe(response_topic("robot-b"), lambda _t, p: stolen.append(p))
            a_blocks = MqttBlockClient(a, "robot-a", timeout_s=5)
            b_blocks = MqttBlockClient(b, "robot-b", timeout_s=5)
            a_blocks.request("metadata", "1.root.json", 0, 1024)  # a's subscriptions are live
            forged = FileRequest("00000000000000f1", "metadata", "1.root.json", 0, 100)
            assert a.publish(request_topic("robot-b"), forged.encode())  # the broker drops it
            got = b_blocks.request("metadata", "1.root.json", 0, 1024)  # b's own, answered
            assert got.status == "ok"
            a_blocks.request("metadata", "1.root.json", 0, 10)  # after b's answer went out
    finally:
        env.responder.on_answer = None
    assert not stolen, "robot-a read robot-b's answers"
    assert all(block.id != "00000000000000f1" for _, block in seen), seen
    assert {device for device, _ in seen} == {"robot-a", "robot-b"}


def test_hostile_requests_over_the_broker_are_refused_and_the_responder_keeps_serving(
    env: Env,
) -> None:
    answers: list[FileBlock] = []

    def on_answer(device: str, block: FileBlock) -> None:
        if device == "robot-hostile":
            answers.append(block)

    env.responder.on_answer = on_answer
    with env.device("robot-hostile") as t:
        blocks = MqttBlockClient(t, "robot-hostile", timeout_s=5)
        blocks.request("metadata", "1.root.json", 0, 10)  # subscribed and answered
        hostile = [
            b"\x00\x01garbage",
            b'{"id": "00000000000000a1", "kind": "target", "path": "../../keys/director.key",'
            b' "offset": 0, "length": 10}',
            b'{"id": "00000000000000a2", "kind": "metadata", "path": "1.root.json",'
            b' "offset": 0, "length": 1073741824}',
            b"x" * 100_000,
        ]
        for raw in hostile:
            n = len(answers)
            assert t.publish(request_topic("robot-hostile"), raw)
            wait_until(lambda n=n: len(answers) > n, 20, "a refusal")  # type: ignore[misc]
        # The robot got each refusal too (none matched a request it was waiting on).
        wait_until(lambda: blocks.counters["stale_responses"] >= len(hostile), 20, "refusals")
        refusals = [a for a in answers if a.status == "invalid"]
        reasons = [a.reason for a in refusals]
        assert any("not UTF-8 JSON" in r for r in reasons), reasons
        assert any("'..'" in r for r in reasons), reasons
        assert any("'length' is '1073741824'" in r for r in reasons), reasons
        assert any("at most 2048" in r for r in reasons), reasons
        with pytest.raises(MqttFetchError, match="no such file"):
            blocks.request("metadata", "nope.json", 0, 10)
        assert blocks.request("metadata", "1.root.json", 0, 10).status == "ok"  # still serving
        # Whole blocks pass the robot's 64 KiB cap: it is raised on files/resp alone.
        big = env.plane.home.tuf / "targets" / "big.bin"
        big.write_bytes(os.urandom(300_000))
        block = blocks.request("target", "big.bin", 0, 256 * 1024)
        assert block.data == big.read_bytes()[: 256 * 1024] and block.total == 300_000
        assert t.counters["dropped_oversize"] == 0
    env.responder.on_answer = None


def _port_outside_ephemeral_range() -> int:
    """A free port no outgoing connection can take as its source port (a port in the
    ephemeral range may be, by the agent's own connect attempts: TCP self-connect)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.Random().sample(range(max(1024, low - 12_000), low), 200):
        with contextlib.suppress(OSError), socket.create_server(("127.0.0.1", port)):
            return port
    raise RuntimeError("no free port below the ephemeral range")


class Forwarder:
    """A TCP relay from `port` to the plane's gRPC port: "the link to the plane is back"."""

    def __init__(self, port: int, target: int) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", port))
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(1 << 16):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_a_robot_whose_grpc_port_is_closed_updates_over_mqtt_alone(env: Env) -> None:
    plane, tmp = env.plane, env.tmp
    device = "robot-mqtt"
    root = tmp / device
    _make_root(plane, root, device, env.broker.port)
    layout = RobotLayout.at(root)
    # Activation waits on a verified parity attestation, fetched over MQTT too.
    TrustStore(layout.trust).add("attestation", plane.home.key_path("attestation").read_bytes())
    closed_port = _port_outside_ephemeral_range()
    closed = f"127.0.0.1:{closed_port}"  # nothing listens: gRPC is UNAVAILABLE
    text = layout.agent_config.read_text().replace(f'"{plane.address}"', f'"{closed}"')
    layout.agent_config.write_text(
        text + "grpc_probe_timeout_s = 2.0\nmqtt_fetch_timeout_s = 5.0\nupload_recordings = false\n"
        # A hint sent before the agent's first connection has no session to wait in.
        "desired_state_poll_s = 2.0\nrequire_parity_attestation = true\n"
    )
    (tmp / device).mkdir(exist_ok=True)
    first = _bundle(tmp / device, plane, "1.0.0", 1)  # installed at flash, never published
    log = tmp / f"{device}.log"
    rt = _spawn(["runtime", "run", "--root", str(root), "--bundle", str(first)], log)
    robot = Robot(device, root, rt, None, log)  # type: ignore[arg-type]
    try:
        wait_until(layout.runtime_socket.exists, 60, "runtime socket")
        robot.agent = _spawn(["--log-level", "info", "agent", "run", "--root", str(root)], log)
        good = _bundle(tmp, plane, "2.0.0", 10)
        _store(plane, _attest(plane.home, good))

        def push(bundle: Path) -> None:
            args = ["push", str(bundle), "--home", str(plane.home.root), "--device", device]
            res = CliRunner().invoke(
                cloud, [*args, "--broker-url", f"mqtts://127.0.0.1:{env.broker.port}"]
            )
            assert res.exit_code == 0, res.output

        push(good)

        def events() -> list[EventRecord]:
            return plane.store.events(device, kind="update")

        try:
            wait_until(lambda: robot.counter() == 10, 150, "the commit")
            wait_until(lambda: any(e.state == "COMMITTED" for e in events()), 30, "COMMITTED")
        except TimeoutError:
            pytest.fail(
                f"{[(e.state, e.reason_code) for e in events()]}\n{log.read_text()[-4000:]}"
            )
        assert robot.active_version() == "2.0.0"
        details = {e.state: e.detail for e in events()}
        assert "fetched over MQTT" in details["DOWNLOADING"], details
        assert closed in details["DOWNLOADING"] and "UNAVAILABLE" in details["DOWNLOADING"]
        assert "blocks" in details["STAGING"], details
        assert "fetching updates over MQTT" in log.read_text()
        assert env.responder.counters["ok"] > 0
        # The update's own transport, not the fallback for a restarted agent:
        assert "parity attestation: the plane's gRPC" not in log.read_text()

        # No attestation for the next bundle: refused before activation, with the
        # reason gRPC gives (`missing`), and the attested one keeps running.
        push(_bundle(tmp, plane, "2.0.5", 11, seed=3))  # its own policy.onnx

        def refused() -> list[EventRecord]:
            return [e for e in events() if e.reason_code == "ATTESTATION_INVALID"]

        try:
            wait_until(lambda: bool(refused()), 150, "the attestation refusal")
        except TimeoutError:
            pytest.fail(
                f"{[(e.state, e.reason_code) for e in events()]}\n{log.read_text()[-4000:]}"
            )
        assert refused()[0].state == "FAILED" and refused()[0].detail.startswith("missing:")
        assert robot.active_version() == "2.0.0" and robot.counter() == 10

        # The link to the plane's gRPC port comes back: the next update uses it.
        relay = Forwarder(closed_port, plane.port)
        try:
            wait_until(lambda: "answers again: back to gRPC" in log.read_text(), 60, "gRPC")
            served = env.responder.counters["ok"]
            newer = _bundle(tmp, plane, "2.1.0", 12, seed=5)
            _store(plane, _attest(plane.home, newer))
            push(newer)
            try:
                wait_until(lambda: robot.counter() == 12, 150, "the commit over gRPC")
            except TimeoutError:
                pytest.fail(f"{[(e.state, e.detail) for e in events()]}\n{log.read_text()[-4000:]}")
            wait_until(lambda: events()[-1].state == "COMMITTED", 30, "COMMITTED")
            last = events()
            start = max(i for i, e in enumerate(last) if e.state == "REFRESHING")
            assert not any("MQTT" in e.detail for e in last[start:]), last[start:]
            assert env.responder.counters["ok"] == served  # not one block over MQTT
        finally:
            relay.close()
    finally:
        for p in (robot.agent, robot.runtime):
            if p is not None and p.poll() is None:
                p.terminate()
        for p in (robot.agent, robot.runtime):
            if p is not None:
                try:
                    p.wait(15)
                except Exception:
                    p.kill()


class Lossy:
    """A link that loses the robot's `drop`-th request (1-based)."""

    def __init__(self, transport: MqttTransport, drop: int) -> None:
        self.transport, self.drop, self.sent = transport, drop, 0

    def publish(self, topic_name: str, payload: bytes) -> bool:
        self.sent += 1
        return True if self.sent == self.drop else self.transport.publish(topic_name, payload)

    def subscribe(self, topic_filter: str, handler: Any, **kw: Any) -> None:
        self.transport.subscribe(topic_filter, handler, **kw)


def test_blocks_in_flight_survive_a_lost_request_and_a_plane_serving_smaller_blocks(
    env: Env,
) -> None:
    content = os.urandom(1_000_000)
    (env.plane.home.tuf / "targets" / "stream.bin").write_bytes(content)
    with env.device("robot-window") as t:
        # The robot asks for 512 KiB; the plane serves 256 KiB (fetch_chunk_bytes).
        wide = MqttBlockClient(t, "robot-window", block_bytes=512 * 1024, timeout_s=5)
        assert b"".join(wide.blocks("target", "stream.bin")) == content
        assert (
            b"".join(wide.blocks("target", "stream.bin", 100_000, 700_000))
            == content[100_000:800_000]
        )
    with env.device("robot-lossy") as t:
        link = Lossy(t, drop=3)  # the second block in flight never reaches the plane
        lossy = MqttBlockClient(link, "robot-lossy", block_bytes=64 * 1024, timeout_s=1)
        assert b"".join(lossy.blocks("target", "stream.bin")) == content
        assert lossy.counters["requests"] == lossy.counters["blocks"] + 1  # asked once more
