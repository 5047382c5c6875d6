"""What naming every identity in the broker's ACL costs Mosquitto, at fleet size.

``cloud broker-config`` writes an ACL with one ``user`` block per identity, named by
its certificate's whole subject (``use_subject_as_username``), so the broker refuses
a certificate of the wrong role. The baseline is the configuration it wrote before:
the username is the certificate's CN (``use_identity_as_username``) and four
``pattern`` lines serve every device. Both run in one process against the same
Mosquitto binary, with the same certificates:

- start: from spawning Mosquitto to its listener accepting (reads the ACL);
- connect: ``--clients`` robots connect over mTLS (each its own certificate);
- publish: ``--publishers`` robots send ``--messages`` QoS 1 telemetry messages in
  all while an ingest client reads ``+/telemetry``; messages/s until every PUBACK
  and every delivery is in;
- device add: what ``cloud device add`` does with ``--clients`` connected — for the
  ACL variants rewrite the ACL and SIGHUP (a reload), for ``dynsec`` (the
  dynamic-security plugin, ``broker-config --authz dynsec``) a createRole and
  createClient on its control topic. Two numbers: the longest time another robot's
  QoS 1 publish waits for its PUBACK meanwhile (the broker is one thread; it serves
  nobody while it reads the ACL and applies it to every client, or while the plugin
  saves its document), and the time until the new device's telemetry reaches ingest.

The clients speak MQTT 3.1.1 from hand-encoded packets over TLS sockets, so the
broker, not a Python MQTT library, is what is measured. Usage::

    python bench/broker_acl.py                          # 10,000 identities
    python bench/broker_acl.py --identities 2000 --clients 100 --messages 20000 --rounds 1
    python bench/broker_acl.py --variants subject,dynsec

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud.broker_config import BrokerConfig, render_acl, write_broker_config
from cloud.broker_dynsec import ADMIN_IDENTITY, DEFAULT_PLUGIN, add_device_commands, send_commands
from cloud.broker_grants import device_grantee
from cloud.pki import FleetCA
from tests.servers import Mosquitto, free_port, run_mosquitto

PREFIX = "edgeflux/v1/devices"
INGEST = "edgeflux-ingest"
PUBLISHER = "edgeflux-push"

# The ACL `broker-config` wrote before identities were named by subject.
PATTERN_ACL = f"""pattern write {PREFIX}/%u/telemetry
pattern write {PREFIX}/%u/events
pattern write {PREFIX}/%u/state
pattern read {PREFIX}/%u/updates

user {INGEST}
topic read {PREFIX}/+/telemetry
topic read {PREFIX}/+/events
topic read {PREFIX}/+/state

user {PUBLISHER}
topic write {PREFIX}/+/updates
topic read {PREFIX}/+/state
"""


# --------------------------------------------------------------------------- MQTT bytes


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _connect_packet(client_id: str) -> bytes:
    body = _str("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60) + _str(client_id)
    return b"\x10" + _varint(len(body)) + body


def _publish_packet(topic: str, mid: int, payload: bytes) -> bytes:
    body = _str(topic) + struct.pack("!H", mid) + payload
    return b"\x32" + _varint(len(body)) + body


def _subscribe_packet(topic: str) -> bytes:
    body = struct.pack("!H", 1) + _str(topic) + b"\x00"
    return b"\x82" + _varint(len(body)) + body


class _Reader:
    """Reads MQTT packets (type, body) off a socket."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("broker closed the connection")
        self.buf += chunk

    def packet(self) -> tuple[int, bytes]:
        while True:
            if len(self.buf) >= 2:
                n, mult, i = 0, 1, 1
                while i < len(self.buf):
                    b = self.buf[i]
                    n += (b & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not b & 0x80:
                        break
                else:
                    self._fill()
                    continue
                if len(self.buf) >= i + n:
                    kind = self.buf[0] >> 4
                    body = bytes(self.buf[i : i + n])
                    del self.buf[: i + n]
                    return kind, body
            self._fill()


def _tls_context(ca: Path, crt: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.load_cert_chain(str(crt), str(key))
    ctx.check_hostname = False
    return ctx


def _open(port: int, ctx: ssl.SSLContext, client_id: str) -> tuple[ssl.SSLSocket, _Reader]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = ctx.wrap_socket(raw)
    sock.sendall(_connect_packet(client_id))
    reader = _Reader(sock)
    kind, body = reader.packet()
    if kind != 2 or body[1] != 0:
        raise ConnectionError(f"CONNACK refused: {body!r}")
    return sock, reader


# --------------------------------------------------------------------------- fleet


class Fleet:
    def __init__(
        self, d: Path, identities: int, clients: int, publishers: int, newcomers: int
    ) -> None:
        ca = FleetCA.create()
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        self.ca = d / "ca.crt"
        self.ca.write_bytes(ca.cert_pem)
        ca.issue_server("broker", ("localhost", "127.0.0.1")).write(d, "server")
        for name in (INGEST, PUBLISHER, ADMIN_IDENTITY):
            ca.issue_service(name).write(d, name)
        self.names = [f"sim-{i:05d}" for i in range(identities)]
        self.clients = self.names[:clients]
        self.publishers = self.names[clients : clients + publishers]
        self.newcomers = [f"new-{i:03d}" for i in range(newcomers)]
        """Devices not in the broker's rights at start: one per device-add try."""
        for name in (*self.clients, *self.publishers, *self.newcomers):
            ca.issue_device(name).write(d, name)

    def ctx(self, name: str) -> ssl.SSLContext:
        return _tls_context(self.ca, self.dir / f"{name}.crt", self.dir / f"{name}.key")


def _config(fleet: Fleet, out: Path, variant: str, port: int) -> str:
    cfg = BrokerConfig(
        ca=fleet.ca,
        cert=fleet.dir / "server.crt",
        key=fleet.dir / "server.key",
        port=port,
        bind="127.0.0.1",
        ingest_identity=INGEST,
        publisher_identity=PUBLISHER,
        devices=tuple(fleet.names),
        max_queued_messages=1_000_000,
        authz="dynsec" if variant == "dynsec" else "acl-file",
        dynsec_plugin=DEFAULT_PLUGIN,
    )
    conf, acl = write_broker_config(cfg, out)
    text = conf.read_text()
    if variant == "subtree":  # one line per device: its own subtree, both directions
        lines: list[str] = []
        device_block = False
        for ln in acl.read_text().splitlines():
            if ln.startswith("user "):
                device_block = "OU=device,CN=" in ln
                lines.append(ln)
                if device_block:
                    lines.append(f"topic readwrite {PREFIX}/{ln.rsplit('CN=', 1)[1]}/#")
            elif not (device_block and ln.startswith("topic ")):
                lines.append(ln)
        acl.write_text("\n".join(lines) + "\n")
    if variant == "pattern":
        acl.write_text(PATTERN_ACL)
        text = text.replace("use_subject_as_username true", "use_identity_as_username true")
    return text


@contextlib.contextmanager
def _broker(fleet: Fleet, out: Path, variant: str) -> Iterator[tuple[Mosquitto, float]]:
    port = free_port()
    text = _config(fleet, out, variant, port)
    t0 = time.perf_counter()
    with run_mosquitto(text, port=port) as broker:
        yield broker, time.perf_counter() - t0


def _connect_all(port: int, fleet: Fleet) -> tuple[list[ssl.SSLSocket], float]:
    t0 = time.perf_counter()
    socks = [_open(port, fleet.ctx(n), n)[0] for n in fleet.clients]
    return socks, time.perf_counter() - t0


def _publish(port: int, fleet: Fleet, messages: int) -> float:
    """Messages/s through the broker: publishers' PUBACKs and ingest's deliveries."""
    sub, sub_reader = _open(port, fleet.ctx(INGEST), INGEST)
    sub.sendall(_subscribe_packet(f"{PREFIX}/+/telemetry"))
    assert sub_reader.packet()[0] == 9  # SUBACK
    per = messages // len(fleet.publishers)
    total = per * len(fleet.publishers)
    conns = [(n, *_open(port, fleet.ctx(n), n)) for n in fleet.publishers]
    delivered = 0

    def ingest() -> None:
        nonlocal delivered
        while delivered < total:
            kind, _ = sub_reader.packet()
            if kind == 3:
                delivered += 1

    def publisher(name: str, sock: ssl.SSLSocket, reader: _Reader) -> None:
        topic = f"{PREFIX}/{name}/telemetry"
        payload = b"x" * 200
        window, sent, acked = 500, 0, 0
        while acked < per:
            batch = []
            while sent < per and sent - acked < window:
                batch.append(_publish_packet(topic, sent % 65535 + 1, payload))
                sent += 1
            if batch:
                sock.sendall(b"".join(batch))
            kind, _ = reader.packet()
            if kind == 4:
                acked += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=ingest)]
    threads += [threading.Thread(target=publisher, args=c) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    elapsed = time.perf_counter() - t0
    for s in [sub, *(c[1] for c in conns)]:
        s.close()
    if delivered != total:
        raise RuntimeError(f"ingest got {delivered} of {total} messages")
    return total / elapsed


def _add_device(broker: Mosquitto, fleet: Fleet, out: Path, variant: str, added: list[str]) -> None:
    """What ``cloud device add`` does for the newest of `added`."""
    if variant == "dynsec":
        tls = (fleet.ca, fleet.dir / f"{ADMIN_IDENTITY}.crt", fleet.dir / f"{ADMIN_IDENTITY}.key")
        send_commands("127.0.0.1", broker.port, tls, add_device_commands(added[-1]))
        return
    new = added[-1]
    if variant == "subject":
        text = render_acl((INGEST,), PUBLISHER, (*fleet.names, *added))
        (out / "acl").write_text(text)
    elif variant == "subtree":
        with (out / "acl").open("a") as f:
            f.write(f"\nuser {device_grantee(new).username}\ntopic readwrite {PREFIX}/{new}/#\n")
    os.kill(broker.proc.pid, signal.SIGHUP)  # "pattern": the reload alone


def _keep_publishing(
    sock: ssl.SSLSocket, reader: _Reader, name: str, stop: threading.Event, worst: list[float]
) -> None:
    """Publish QoS 1 one at a time until `stop`; the longest PUBACK wait in `worst[0]`."""
    mid = 1
    while not stop.is_set():
        t1 = time.perf_counter()
        sock.sendall(_publish_packet(f"{PREFIX}/{name}/telemetry", mid, b"r"))
        while reader.packet()[0] != 4:
            pass
        worst[0] = max(worst[0], time.perf_counter() - t1)
        mid = mid % 65535 + 1


def _device_add(
    broker: Mosquitto, fleet: Fleet, out: Path, variant: str, tries: int
) -> tuple[float, float]:
    """(longest PUBACK wait of a running robot, time until the new device's telemetry
    reaches ingest) around a device add; medians over `tries`."""
    port = broker.port
    name = fleet.publishers[0]
    sock, reader = _open(port, fleet.ctx(name), name)
    sub, sub_reader = _open(port, fleet.ctx(INGEST), INGEST)
    sub.sendall(_subscribe_packet(f"{PREFIX}/+/telemetry"))
    assert sub_reader.packet()[0] == 9  # SUBACK
    seen: set[str] = set()
    arrived = threading.Condition()

    def ingest() -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                kind, body = sub_reader.packet()
                if kind == 3:
                    (n,) = struct.unpack("!H", body[:2])
                    with arrived:
                        seen.add(body[2 : 2 + n].decode())
                        arrived.notify_all()

    threading.Thread(target=ingest, daemon=True).start()
    pauses, effects, added = [], [], []
    for newcomer in fleet.newcomers[:tries]:
        new_sock, new_reader = _open(port, fleet.ctx(newcomer), newcomer)
        worst = [0.0]
        stop = threading.Event()
        pub = threading.Thread(target=_keep_publishing, args=(sock, reader, name, stop, worst))
        pub.start()
        topic = f"{PREFIX}/{newcomer}/telemetry"
        t0 = time.perf_counter()
        added.append(newcomer)
        _add_device(broker, fleet, out, variant, added)
        mid = 1
        while True:  # publish until ingest gets one: the add has taken effect
            new_sock.sendall(_publish_packet(topic, mid, b"n"))
            while new_reader.packet()[0] != 4:
                pass
            with arrived:
                if arrived.wait_for(lambda t=topic: t in seen, 0.02):  # type: ignore[misc]
                    break
            mid = mid % 65535 + 1
            if time.perf_counter() - t0 > 60:
                raise RuntimeError(f"{variant}: {newcomer} not delivered 60 s after its add")
        effects.append(time.perf_counter() - t0)
        time.sleep(max(0.0, t0 + 2.0 - time.perf_counter()))  # the pause is surely over
        stop.set()
        pub.join(30)
        pauses.append(worst[0])
        new_sock.close()
    sock.close()
    sub.close()
    return statistics.median(pauses), statistics.median(effects)


VARIANTS = {
    "pattern": "pattern ACL (before)",
    "subject": "subject ACL (ours)",
    "subtree": "subject, 1 line/device",
    "dynsec": "dynamic-security plugin",
}
METRICS = (
    ("start_s", "broker start (s)"),
    ("connect_per_s", "mTLS connects/s"),
    ("publish_per_s", "QoS 1 publishes/s"),
    ("reload_pause_ms", "device add: pause (ms)"),
    ("add_effect_ms", "device add: effect (ms)"),
    ("acl_bytes", "ACL/document (bytes)"),
)


def _measure(fleet: Fleet, out: Path, variant: str, args: argparse.Namespace) -> dict[str, float]:
    with _broker(fleet, out, variant) as (broker, start_s):
        socks, connect_s = _connect_all(broker.port, fleet)
        rate = _publish(broker.port, fleet, args.messages)
        pause, effect = _device_add(broker, fleet, out, variant, args.reloads)
        for s in socks:
            s.close()
    doc = out / ("dynsec/dynsec.json" if variant == "dynsec" else "acl")
    return {
        "start_s": start_s,
        "connect_per_s": args.clients / connect_s,
        "publish_per_s": rate,
        "reload_pause_ms": pause * 1000,
        "add_effect_ms": effect * 1000,
        "acl_bytes": doc.stat().st_size,
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fleet = Fleet(
            Path(tmp) / "pki", args.identities, args.clients, args.publishers, args.reloads
        )
        print(
            f"{args.clients + args.publishers} certificates in {time.perf_counter() - t0:.1f} s;"
            f" ACL with {args.identities} devices",
            flush=True,
        )
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        for r in range(args.rounds):  # interleaved, so a busy moment hits every variant
            for variant in variants:
                m = _measure(fleet, Path(tmp) / f"{variant}-{r}", variant, args)
                runs[variant].append(m)
                print(f"  round {r + 1} {variant}: {m}", flush=True)
    results = {
        v: {k: statistics.median(m[k] for m in ms) for k, _ in METRICS} for v, ms in runs.items()
    }
    return {"identities": args.identities, "clients": args.clients, "results": results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--identities", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=300)
    p.add_argument("--publishers", type=int, default=4)
    p.add_argument("--messages", type=int, default=40_000)
    p.add_argument("--reloads", type=int, default=3, help="device adds per variant and round")
    p.add_argument("--rounds", type=int, default=2, help="medians over this many rounds")
    p.add_argument("--variants", default="pattern,subject,subtree,dynsec")
    args = p.parse_args()
    out = run(args)
    res = out["results"]
    assert isinstance(res, dict)
    names = list(res)
    print()
    header = "".join(f"{VARIANTS[v]:>24}" for v in names)
    print(f"{'(medians)':24}{header}{'dynsec/subject':>16}")
    for key, label in METRICS:
        row = "".join(f"{res[v][key]:>24.2f}" for v in names)
        ratio = ""
        if "dynsec" in res and "subject" in res and res["subject"][key]:
            ratio = f"{res['dynsec'][key] / res['subject'][key]:>16.2f}"
        print(f"{label:24}{row}{ratio}")
    print(json.dumps({"bench": "broker_acl", **out}))


if __name__ == "__main__":
    main()
