"""A small MQTT 3.1.1 / 5 client for simulated robots: one mTLS connection, driven by
an asyncio loop the caller owns, as cheap per message as Python allows.

It speaks the part of MQTT a robot uses: CONNECT (with a will), SUBSCRIBE, PUBLISH at
QoS 0 and 1 (outgoing: the broker's PUBACK settles it; incoming: answered with PUBACK),
PINGREQ and DISCONNECT. The TLS socket is a non-blocking `ssl.SSLSocket` watched with
`loop.add_reader`, so a read is one C call and a write is one `send`: no transport or
protocol objects per message, no timer per connection (the owner calls `ping_if_idle`
from its own timer). A PUBLISH packet is the topic's pre-encoded bytes, a packet id and
the payload behind a two- to four-byte fixed header.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["MqttError", "MqttLink", "Refused", "client_context"]

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0
PING = bytes((PINGREQ, 0))


class MqttError(RuntimeError):
    """The connection failed or the broker broke the protocol."""


class Refused(MqttError):
    """The broker answered CONNECT with a failure code (MQTT 3.1.1 return code or
    MQTT 5 reason code)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"CONNECT refused by the broker: code 0x{code:02x}")
        self.code = code


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS client context that verifies the broker against `ca` and presents `cert`."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _string(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def _packet(kind: int, body: bytes) -> bytes:
    return bytes((kind,)) + _varint(len(body)) + body


class MqttLink:
    """One MQTT connection over mTLS. Not thread-safe: use it from its loop only.

    `on_message(topic, payload)` is called for every PUBLISH the broker delivers;
    `on_close(reason)` once when the connection ends (not after `close()`).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client_id: str,
        context: ssl.SSLContext,
        host: str,
        port: int,
        *,
        mqtt5: bool = True,
        keepalive_s: int = 60,
        clean: bool = True,
        will: tuple[str, bytes] | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
        on_close: Callable[[str], None] | None = None,
    ) -> None:
        self.loop = loop
        self.client_id = client_id
        self.context = context
        self.host, self.port = host, port
        self.mqtt5 = mqtt5
        self.keepalive_s = keepalive_s
        self.clean = clean
        self.will = will
        self.on_message = on_message
        self.on_close = on_close
        self.sock: ssl.SSLSocket | None = None
        self.connected = False
        self.closed_reason = ""
        self.inflight: set[int] = set()
        self.acked = 0
        self.refused_publishes = 0  # MQTT 5 PUBACK reason codes >= 0x80
        self.pongs = 0
        self.last_write = 0.0
        self._pid = 0
        self._rx = bytearray()
        self._tx = bytearray()
        self._topics: dict[tuple[str, int, bool], bytes] = {}
        self._connack: asyncio.Future[int] | None = None
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._props = b"\x00" if mqtt5 else b""

    # ------------------------------------------------------------------ connecting

    async def connect(self, timeout_s: float = 30.0) -> None:
        """TCP, the TLS handshake (client certificate), CONNECT; returns on CONNACK.
        Raises `Refused` for a failure code, `MqttError`/`OSError`/`ssl.SSLError` else."""
        await asyncio.wait_for(self._connect(), timeout_s)

    async def _connect(self) -> None:
        self._rx.clear()
        self._tx.clear()
        self.inflight.clear()
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setblocking(False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self.loop.sock_connect(raw, (self.host, self.port))
            sock = self.context.wrap_socket(
                raw, server_hostname=self.host, do_handshake_on_connect=False
            )
        except BaseException:
            raw.close()
            raise
        self.sock = sock
        try:
            while True:
                try:
                    sock.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await self._ready(self.loop.add_reader, self.loop.remove_reader)
                except ssl.SSLWantWriteError:
                    await self._ready(self.loop.add_writer, self.loop.remove_writer)
            self._connack = self.loop.create_future()
            self.loop.add_reader(sock.fileno(), self._on_readable)
            self._write(self._connect_packet())
            code = await self._connack
        except BaseException:
            self._teardown()
            raise
        if code != 0:
            self._teardown()
            raise Refused(code)
        self.connected = True

    async def _ready(self, add: Callable[..., None], remove: Callable[[int], object]) -> None:
        assert self.sock is not None
        fd = self.sock.fileno()
        fut: asyncio.Future[None] = self.loop.create_future()
        add(fd, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            remove(fd)

    def _connect_packet(self) -> bytes:
        flags = 0x02 if self.clean else 0
        body = _string(b"MQTT") + bytes((5 if self.mqtt5 else 4,))
        tail = _string(self.client_id.encode())
        if self.will is not None:
            flags |= 0x04 | 0x08 | 0x20  # will, QoS 1, retained
            tail += self._props + _string(self.will[0].encode()) + _string(self.will[1])
        body += bytes((flags,)) + struct.pack("!H", self.keepalive_s) + self._props + tail
        return _packet(CONNECT, body)

    # ------------------------------------------------------------------ sending

    def _next_pid(self) -> int:
        self._pid = self._pid % 0xFFFF + 1
        return self._pid

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Queue one PUBLISH; returns its packet id (0 at QoS 0). At QoS 1 it stays in
        `inflight` until the broker's PUBACK."""
        key = (topic, qos, retain)
        head = self._topics.get(key)
        if head is None:
            head = self._topics[key] = _string(topic.encode())
        if qos:
            pid = self._next_pid()
            self.inflight.add(pid)
            rest = head + pid.to_bytes(2, "big") + self._props
        else:
            pid = 0
            rest = head + self._props
        n = len(rest) + len(payload)
        first = PUBLISH | qos << 1 | retain
        if n < 128:
            fixed = bytes((first, n))
        elif n < 16384:
            fixed = bytes((first, n & 0x7F | 0x80, n >> 7))
        else:
            fixed = bytes((first,)) + _varint(n)
        self._write(fixed + rest + payload)
        return pid

    async def subscribe(self, topic_filter: str, qos: int = 1, timeout_s: float = 30.0) -> int:
        """SUBSCRIBE one filter; returns the broker's SUBACK code (the granted QoS, or
        0x80 and up: refused)."""
        pid = self._next_pid()
        fut: asyncio.Future[list[int]] = self.loop.create_future()
        self._subacks[pid] = fut
        body = pid.to_bytes(2, "big") + self._props + _string(topic_filter.encode()) + bytes((qos,))
        self._write(_packet(SUBSCRIBE, body))
        try:
            codes = await asyncio.wait_for(fut, timeout_s)
        finally:
            self._subacks.pop(pid, None)
        return codes[0]

    def ping_if_idle(self, now: float) -> bool:
        """PINGREQ when nothing was written for half the keep-alive; True if sent."""
        if self.connected and now - self.last_write >= self.keepalive_s / 2:
            self._write(PING)
            return True
        return False

    def _write(self, data: bytes) -> None:
        sock = self.sock
        if sock is None:
            return
        self.last_write = time.monotonic()
        if self._tx:  # already waiting for the socket: keep the order
            self._tx += data
            return
        try:
            sent = sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            sent = 0
        except (OSError, ssl.SSLError) as exc:
            self._lost(f"write failed: {exc}")
            return
        if sent < len(data):
            self._tx += data[sent:]
            self.loop.add_writer(sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            sent = sock.send(self._tx)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            return
        except (OSError, ssl.SSLError) as exc:
            self._lost(f"write failed: {exc}")
            return
        del self._tx[:sent]
        if not self._tx:
            self.loop.remove_writer(sock.fileno())

    # ------------------------------------------------------------------ receiving

    def _on_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            data = sock.recv(65536)
            while sock.pending():
                data += sock.recv(65536)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return
        except (OSError, ssl.SSLError) as exc:
            self._lost(f"read failed: {exc}")
            return
        if not data:
            self._lost("closed by the broker")
            return
        # The common case: one PUBACK of a QoS 1 publish, alone in the read.
        if not self._rx and len(data) == 4 and data[0] == PUBACK and data[1] == 2:
            self._puback(data[2] << 8 | data[3], 0)
            return
        self._rx += data
        try:
            self._parse()
        except MqttError as exc:
            self._lost(str(exc))

    def _parse(self) -> None:
        buf = self._rx
        while len(buf) >= 2:
            n, shift, i = 0, 0, 1
            while True:
                if i >= len(buf):
                    return
                b = buf[i]
                n |= (b & 0x7F) << shift
                i += 1
                if not b & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise MqttError("malformed remaining length from the broker")
            if len(buf) < i + n:
                return
            kind, body = buf[0], bytes(buf[i : i + n])
            del buf[: i + n]
            self._packet_in(kind, body)

    def _skip_props(self, body: bytes, at: int) -> int:
        if not self.mqtt5:
            return at
        n, shift = 0, 0
        while True:
            b = body[at]
            at += 1
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return at + n
            shift += 7

    def _packet_in(self, kind: int, body: bytes) -> None:
        t = kind & 0xF0
        if t == PUBACK:
            self._puback(body[0] << 8 | body[1], body[2] if len(body) > 2 else 0)
        elif t == PUBLISH:
            qos = kind >> 1 & 3
            tlen = body[0] << 8 | body[1]
            topic = body[2 : 2 + tlen].decode()
            at = 2 + tlen
            pid = 0
            if qos:
                pid = body[at] << 8 | body[at + 1]
                at += 2
            at = self._skip_props(body, at)
            if qos == 1:
                self._write(bytes((PUBACK, 2)) + pid.to_bytes(2, "big"))
            elif qos == 2:
                raise MqttError("the broker sent QoS 2, which this client never asked for")
            if self.on_message is not None:
                self.on_message(topic, body[at:])
        elif t == CONNACK:
            code = body[1] if len(body) > 1 else 0xFF
            if self._connack is not None and not self._connack.done():
                self._connack.set_result(code)
        elif t == SUBACK:
            pid = body[0] << 8 | body[1]
            at = self._skip_props(body, 2)
            fut = self._subacks.get(pid)
            if fut is not None and not fut.done():
                fut.set_result(list(body[at:]))
        elif t == PINGRESP:
            self.pongs += 1
        elif t == DISCONNECT:
            code = body[0] if body else 0
            raise MqttError(f"DISCONNECT from the broker: reason 0x{code:02x}")
        else:
            raise MqttError(f"unexpected packet type 0x{kind:02x} from the broker")

    def _puback(self, pid: int, code: int) -> None:
        self.inflight.discard(pid)
        self.acked += 1
        if code >= 0x80:
            self.refused_publishes += 1

    # ------------------------------------------------------------------ closing

    def _lost(self, reason: str) -> None:
        was = self.sock is not None
        self.closed_reason = reason
        self._teardown()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(MqttError(reason))
        for fut in self._subacks.values():
            if not fut.done():
                fut.set_exception(MqttError(reason))
        if was and self.on_close is not None:
            self.on_close(reason)

    def _teardown(self) -> None:
        self.connected = False
        sock, self.sock = self.sock, None
        if sock is None:
            return
        fd = sock.fileno()
        if fd >= 0:
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
        sock.close()

    def close(self) -> None:
        """DISCONNECT (the broker drops the will) and close the socket."""
        if self.sock is not None and self.connected:
            self._write(bytes((DISCONNECT, 0)))
        self.on_close = None
        self._teardown()
