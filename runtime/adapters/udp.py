"""float32 frames to and from a robot controller over UDP.

Frame (little endian)::

    magic  4 bytes  b"EFX1"
    seq    u32      sender's sequence number (wraps; compared with RFC 1982 serial arithmetic)
    t_ns   u64      sender's monotonic clock, informational
    n      u16      number of float32 values that follow
    values n x f32

The controller sends observation frames to the runtime's port; the runtime answers
each tick with an action frame carrying the sequence number of the observation it
acted on, so the controller can drop late answers. Frames that are malformed, of the
wrong length or older than the newest seen are dropped and counted; when no fresh
observation arrives within `timeout_ms` the read raises `AdapterTimeout`.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time

import numpy as np
import numpy.typing as npt

from runtime.adapters import AdapterError, AdapterTimeout

__all__ = ["MAGIC", "UdpAdapter", "decode_frame", "encode_frame"]

MAGIC = b"EFX1"
_HEADER = struct.Struct("<4sIQH")
_MAX_VALUES = 4096


def encode_frame(seq: int, values: npt.ArrayLike, t_ns: int | None = None) -> bytes:
    arr = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
    if arr.size > _MAX_VALUES:
        raise ValueError(f"a frame carries at most {_MAX_VALUES} values, got {arr.size}")
    header = _HEADER.pack(
        MAGIC, seq & 0xFFFFFFFF, time.monotonic_ns() if t_ns is None else t_ns, arr.size
    )
    return header + arr.tobytes()


def decode_frame(data: bytes) -> tuple[int, npt.NDArray[np.float32]]:
    """(seq, values) of a frame; ValueError says what is wrong with it."""
    if len(data) < _HEADER.size:
        raise ValueError(
            f"frame of {len(data)} bytes is shorter than the {_HEADER.size}-byte header"
        )
    magic, seq, _t, n = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if len(data) != _HEADER.size + 4 * n:
        raise ValueError(f"frame says {n} values but carries {len(data) - _HEADER.size} bytes")
    values = np.frombuffer(data, dtype="<f4", count=n, offset=_HEADER.size).astype(np.float32)
    return int(seq), values


def _newer(seq: int, than: int | None) -> bool:
    if than is None:
        return True
    diff = (seq - than) & 0xFFFFFFFF
    return 0 < diff < 0x80000000


class UdpAdapter:
    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        listen: str = "127.0.0.1:0",
        controller: str | None = None,
        timeout_ms: float = 5.0,
    ) -> None:
        if obs_dim < 1 or action_dim < 1:
            raise AdapterError(
                f"udp adapter: obs_dim and action_dim must be >= 1 ({obs_dim}, {action_dim})"
            )
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.timeout_s = timeout_ms / 1000.0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.bind(_addr(listen))
        except OSError as exc:
            self._sock.close()
            raise AdapterError(f"udp adapter: cannot listen on {listen}: {exc}") from exc
        self._sock.setblocking(False)
        self._controller = _addr(controller) if controller else None
        self.address: tuple[str, int] = self._sock.getsockname()
        self._last_seq: int | None = None
        self.rejected_frames = 0
        self.stale_frames = 0

    def read_observation(self) -> npt.NDArray[np.float32]:
        deadline = time.monotonic() + self.timeout_s
        newest: npt.NDArray[np.float32] | None = None
        while True:
            # Drain everything queued and keep the newest valid frame: a controller
            # that got ahead of us wants us to act on its latest state.
            while True:
                try:
                    data, sender = self._sock.recvfrom(65536)
                except BlockingIOError:
                    break
                except OSError as exc:
                    raise AdapterError(f"udp adapter: receive failed: {exc}") from exc
                try:
                    seq, values = decode_frame(data)
                except ValueError:
                    self.rejected_frames += 1
                    continue
                if values.size != self.obs_dim:
                    self.rejected_frames += 1
                    continue
                if not _newer(seq, self._last_seq):
                    self.stale_frames += 1
                    continue
                self._last_seq, newest = seq, values
                if self._controller is None:
                    self._controller = sender
            if newest is not None:
                return newest
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AdapterTimeout(
                    f"udp adapter: no observation on {self.address[0]}:{self.address[1]} "
                    f"within {self.timeout_s * 1000:.1f} ms"
                )
            select.select([self._sock], [], [], remaining)

    def write_action(self, action: npt.NDArray[np.float32]) -> None:
        if self._controller is None:
            return  # nobody has spoken to us yet: nowhere to send
        if action.size != self.action_dim:
            raise AdapterError(
                f"udp adapter: action has {action.size} values, expected {self.action_dim}"
            )
        try:
            self._sock.sendto(encode_frame(self._last_seq or 0, action), self._controller)
        except OSError as exc:
            raise AdapterError(f"udp adapter: send to {self._controller} failed: {exc}") from exc

    def is_safe_to_switch(self) -> bool:
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


def _addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise AdapterError(f"udp adapter: address {text!r} is not HOST:PORT")
    return host or "127.0.0.1", int(port)
