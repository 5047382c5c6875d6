"""Database outages: a clear error at start; UNAVAILABLE mid-run, then recovery."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from cloud.cli import cloud
from cloud.home import init_home
from cloud.server.app import PlaneStartError
from cloud.testing import running_plane
from protos import admin_pb2, admin_pb2_grpc, device_pb2, device_pb2_grpc
from tests.servers import Postgres, _pg_bindir, free_port, port_open, run_postgres, wait_until


def test_database_down_at_start_is_a_clear_error(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://edgeflux@127.0.0.1:{free_port()}/plane"
    with (
        pytest.raises(PlaneStartError, match="unavailable"),
        running_plane(tmp_path / "plane", overrides={"database_url": url}),
    ):
        pass
    env = {"EDGEFLUX_CLOUD_DATABASE_URL": url}
    result = CliRunner().invoke(
        cloud, ["up", "--home", str(tmp_path / "plane"), "--no-broker", "--port", "0"], env=env
    )
    assert result.exit_code == 1
    assert "database" in result.output and "unavailable" in result.output
    assert "Traceback" not in result.output


def _pg_ctl(pg: Postgres, *args: str) -> None:
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        [*run_as, f"{_pg_bindir()}/pg_ctl", "-D", str(pg.datadir), "-w", "-t", "30", *args],
        check=True,
        capture_output=True,
    )


@pytest.mark.services
def test_database_down_mid_run_gives_unavailable_then_recovers(tmp_path: Path) -> None:
    with run_postgres() as pg:
        url = pg.create_database("outage")
        home = init_home(tmp_path / "plane")
        (home.config_file).write_text(home.config_file.read_text() + f'database_url = "{url}"\n')
        restarted = False
        try:
            with running_plane(home.root) as plane:
                dev = plane.device("robot-1")
                device = device_pb2_grpc.DeviceServiceStub(plane.channel(dev))
                admin = admin_pb2_grpc.FleetAdminServiceStub(plane.channel(plane.operator()))
                device.GetDesiredState(device_pb2.GetDesiredStateRequest())

                _pg_ctl(pg, "stop", "-m", "immediate")
                wait_until(lambda: not port_open(pg.port), 15, "PostgreSQL to stop")
                for call in (
                    lambda: device.GetDesiredState(device_pb2.GetDesiredStateRequest()),
                    lambda: admin.ListDevices(admin_pb2.ListDevicesRequest()),
                ):
                    with pytest.raises(grpc.RpcError) as err:
                        call()
                    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert "database" in (err.value.details() or "")

                sock = pg.datadir.parent / "sock"
                _pg_ctl(
                    pg,
                    "start",
                    "-l",
                    str(pg.datadir.parent / "restart.log"),
                    "-o",
                    f"-p {pg.port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off",
                )
                restarted = True

                def answers() -> bool:
                    try:
                        admin.ListDevices(admin_pb2.ListDevicesRequest())
                        return True
                    except grpc.RpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE
                        return False

                wait_until(answers, 30, "the plane to recover")
                device.GetDesiredState(device_pb2.GetDesiredStateRequest())
        finally:
            if restarted:
                _pg_ctl(pg, "stop", "-m", "fast")
