"""The runtime speaks systemd's notify protocol: READY, a watchdog tied to loop progress,
STOPPING — checked against a real datagram socket standing in for systemd."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from runtime.sdnotify import SystemdNotifier
from tests.servers import wait_until


def test_notifier_is_a_no_op_outside_systemd() -> None:
    n = SystemdNotifier({})
    assert not n.enabled and n.watchdog_interval_s is None
    assert n.ready() is False


def test_watchdog_interval_is_half_the_timeout_and_only_for_this_pid() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "10000000"}
    assert SystemdNotifier(env).watchdog_interval_s == 5.0
    assert SystemdNotifier({**env, "WATCHDOG_PID": "1"}).watchdog_interval_s is None


def test_runtime_reports_ready_pets_the_watchdog_and_says_stopping(
    layout: object, make_bundle: object
) -> None:
    from runtime.layout import RobotLayout

    lay: RobotLayout = layout  # type: ignore[assignment]
    bundle = make_bundle()  # type: ignore[operator]
    sock_dir = Path(tempfile.mkdtemp(prefix="sdn-"))
    address = str(sock_dir / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(0.2)
    got: list[str] = []

    def receive() -> None:
        try:
            while True:
                got.extend(server.recv(4096).decode().split("\n"))
        except TimeoutError:
            pass

    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeflux.cli",
            "runtime",
            "run",
            "--root",
            str(lay.root),
            "--bundle",
            str(bundle),
            "--adapter",
            "null",
            "--adapter-option",
            "obs_dim=3",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(
            lambda: (receive(), "READY=1" in got)[1] or proc.poll() is not None, 60, "READY=1"
        )
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        wait_until(lambda: (receive(), got.count("WATCHDOG=1") >= 3)[1], 30, "three watchdog pets")
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        receive()
        assert "STOPPING=1" in got
        assert got.index("READY=1") < got.index("WATCHDOG=1") < got.index("STOPPING=1")
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()
