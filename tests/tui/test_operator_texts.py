"""What an operator reads: the console says mTLS is needed instead of retrying
silently; a device without a temperature sensor shows no `0.0 °C`; a hinted device
whose bundle version is not known yet shows no dangling `name@`."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from click.testing import CliRunner

from cloud.testing import running_plane
from edgeflux.cli import root
from tests.servers import free_port
from tui.client import speaks_tls
from tui.rows import COLUMN_BY_KEY, DeviceRow, bundle_label, temperature_text


def test_a_plaintext_console_against_an_mtls_plane_says_what_is_missing(tmp_path: Path) -> None:
    with running_plane(tmp_path / "plane") as plane:
        host, port = plane.address.rsplit(":", 1)
        assert speaks_tls(host, int(port)) is True
        res = CliRunner().invoke(root, ["tui", "--cloud", plane.address])
    assert res.exit_code == 1, res.output
    assert "requires mTLS" in res.output and "--cert, --key and --ca" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_tls_probe_tells_plaintext_from_nothing_listening() -> None:
    assert speaks_tls("127.0.0.1", free_port()) is None
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer_in_plaintext() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    t = threading.Thread(target=answer_in_plaintext, daemon=True)
    t.start()
    try:
        assert speaks_tls("127.0.0.1", port) is False
    finally:
        t.join(5)
        server.close()


def test_no_sensor_reads_as_a_dash_not_zero_degrees() -> None:
    assert temperature_text(0.0) == "—"
    assert temperature_text(41.25, " °C") == "41.2 °C"
    row = DeviceRow(id="r1", temperature_c=0.0)
    assert COLUMN_BY_KEY["temp"].text(row) == "—"


def test_a_bundle_without_a_version_is_just_its_name() -> None:
    assert bundle_label("pendulum", "") == "pendulum"
    assert bundle_label("pendulum", "1.0.0") == "pendulum@1.0.0"
    assert bundle_label("", "") == ""
    row = DeviceRow(id="r1", bundle_name="pendulum", bundle_version="")
    assert "@" not in COLUMN_BY_KEY["bundle"].export(row)
