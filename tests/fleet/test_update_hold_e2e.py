"""Update locks and maintenance windows end to end, with every real component.

A real plane (gRPC, mTLS, TUF, signed desired state), Mosquitto configured by
`edgeflux cloud broker-config`, ingest into the plane's store, and two robots, each
`edgeflux runtime run` + `edgeflux agent run` as separate processes:

- a locked robot downloads, stages and shadows the pushed bundle, waits (HELD,
  UPDATE_LOCKED, with the lock's reason, on the plane and in `cloud devices`), keeps
  waiting while a corrupt lock file is left (it holds, reported with its file) and
  across a kill -9 of its agent, and switches and commits once the last lock is gone;
- a robot whose label has a maintenance window closed now waits (HELD,
  OUTSIDE_WINDOW, with the opening time) and switches only after the window opens;
- a robot held by a window switches once the operator removes the window (the held
  agent asks the plane again).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from cloud.cli import cloud
from cloud.home import INGEST_IDENTITY
from cloud.ingest import Ingest, IngestSettings
from cloud.mqtt import CloudMqttSettings
from cloud.testing import running_plane
from edgeflux.cli import root as cli_root
from runtime.layout import RobotLayout
from tests.fleet.test_agent_e2e import (
    Fleet,
    Robot,
    _bundle,
    _make_root,
    _restart_agent,
    _spawn,
)
from tests.servers import free_port, run_mosquitto, wait_until

pytestmark = [pytest.mark.services, pytest.mark.slow]
ROBOTS = ("robot-lock", "robot-window")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("hold")
    with running_plane(tmp / "plane") as plane:
        port = free_port()
        out = tmp / "broker"
        run_as = "root" if os.geteuid() == 0 else "mosquitto"
        res = CliRunner().invoke(
            cloud,
            [
                *("broker-config", "--home", str(plane.home.root), "--out", str(out)),
                *("--port", str(port), "--run-as", run_as),
                # Devices are added after the broker starts: the plane reloads its ACL.
                *("--reload-hook", "pid-file"),
            ],
        )
        assert res.exit_code == 0, res.output
        conf = (out / "mosquitto.conf").read_text().replace("0.0.0.0", "127.0.0.1")
        with run_mosquitto(conf, port=port) as broker:
            crt, key = plane.home.service_identity(INGEST_IDENTITY)
            ingest = Ingest(
                plane.store,
                CloudMqttSettings(
                    port=port, ca=plane.home.ca_cert, cert=crt, key=key, client_id=INGEST_IDENTITY
                ),
                IngestSettings(flush_ms=5),
            )
            ingest.start()
            first = _bundle(tmp, plane, "1.0.0", 1)
            robots: list[Robot] = []
            try:
                for device in ROBOTS:
                    root = tmp / device
                    _make_root(plane, root, device, port)
                    # Lock polls at the default pace; desired state polled so a robot
                    # that missed its hint still converges.
                    with RobotLayout.at(root).agent_config.open("a") as fh:
                        fh.write("desired_state_poll_s = 2.0\n")
                    log = tmp / f"{device}.log"
                    rt = _spawn(
                        ["runtime", "run", "--root", str(root), "--bundle", str(first)], log
                    )
                    robots.append(Robot(device, root, rt, None, log))  # type: ignore[arg-type]
                for r in robots:
                    sock = RobotLayout.at(r.root).runtime_socket
                    wait_until(lambda s=sock: s.exists(), 60, f"{r.id} runtime socket")  # type: ignore[misc]
                    r.agent = _spawn(["agent", "run", "--root", str(r.root)], r.log)
                yield Fleet(plane, broker, robots, tmp)
            finally:
                for r in robots:
                    for p in (r.agent, r.runtime):
                        if p is not None and p.poll() is None:
                            p.terminate()
                for r in robots:
                    for p in (r.agent, r.runtime):
                        if p is not None:
                            try:
                                p.wait(15)
                            except subprocess.TimeoutExpired:
                                p.kill()
                                p.wait(5)
                ingest.stop()


def _row(fleet: Fleet, device: str) -> dict[str, Any]:
    res = CliRunner().invoke(cloud, ["devices", "--home", str(fleet.plane.home.root), "--json"])
    assert res.exit_code == 0, res.output
    return next(d for d in json.loads(res.stdout)["devices"] if d["id"] == device)


def _agent(*args: str) -> str:
    res = CliRunner().invoke(cli_root, ["agent", *args])
    assert res.exit_code == 0, res.output
    return res.output


def _wait(fleet: Fleet, cond: Any, timeout: float, what: str, device: str) -> None:
    try:
        wait_until(cond, timeout, what)
    except TimeoutError:
        pytest.fail(f"{what}: {_row(fleet, device)}\n{fleet.update_events(device)}\n{fleet.logs()}")


def test_a_locked_robot_stages_and_switches_only_after_release(fleet: Fleet) -> None:
    r = fleet.robots[0]
    root = str(r.root)
    _agent("lock", "--root", root, "--reason", "mid-task", "--ttl", "10m", "--who", "nav")
    fleet.push(_bundle(fleet.tmp, fleet.plane, "1.1.0", 2), r.id)

    def held_by_lock() -> bool:
        row = _row(fleet, r.id)
        return bool(row["update_state"] == "HELD" and row["update_reason"] == "UPDATE_LOCKED")

    _wait(fleet, held_by_lock, 120, "the locked robot to report HELD", r.id)
    row = _row(fleet, r.id)
    assert "locked by nav: mid-task" in row["update_detail"]
    states = [s for s, _ in fleet.update_events(r.id)]
    assert states.index("DOWNLOADING") < states.index("STAGING") < states.index("SHADOWING")
    assert "SWITCHING" not in states
    st = r.status()
    assert st.state == "staged" and r.active_version() == "1.0.0"  # type: ignore[attr-defined]
    out = CliRunner().invoke(cloud, ["devices", "--home", str(fleet.plane.home.root)])
    assert f"{r.id}  HELD  UPDATE_LOCKED: locked by nav: mid-task" in out.output

    # An integrator's half-written lock: it holds, and says which file is wrong.
    bad = RobotLayout.at(r.root).agent_state / "locks" / "dock.json"
    bad.write_text('{"reason": "undocked", "expires_at": ')
    _agent("unlock", "--root", root, "--who", "nav")
    _wait(
        fleet,
        lambda: "dock.json is invalid (document" in _row(fleet, r.id)["update_detail"],
        60,
        "the corrupt lock to be reported",
        r.id,
    )
    assert _row(fleet, r.id)["update_state"] == "HELD" and r.active_version() == "1.0.0"

    # kill -9 while held: the restarted agent starts the update afresh and holds again.
    held_before = [s for s, _ in fleet.update_events(r.id)].count("HELD")
    r.agent.kill()
    r.agent.wait(20)
    _restart_agent(fleet, r)
    _wait(
        fleet,
        lambda: [s for s, _ in fleet.update_events(r.id)].count("HELD") > held_before,
        120,
        "HELD again after the restart",
        r.id,
    )
    assert r.active_version() == "1.0.0"

    bad.unlink()
    _wait(fleet, lambda: r.counter() == 2, 120, "the commit after release", r.id)
    assert r.active_version() == "1.1.0"
    _wait(
        fleet,
        lambda: ("COMMITTED", "OK") in fleet.update_events(r.id),
        30,
        "COMMITTED on the plane",
        r.id,
    )
    states = [s for s, _ in fleet.update_events(r.id)]
    assert states.index("HELD") < states.index("SWITCHING") < states.index("COMMITTED")


def test_a_closed_window_holds_the_switch_until_it_opens(fleet: Fleet) -> None:
    r = fleet.robots[1]
    if fleet.plane.store.get_bundle("pendulum", "1.1.0") is None:
        fleet.plane.publish(_bundle(fleet.tmp, fleet.plane, "1.1.0", 2))
    fleet.plane.store.set_labels(r.id, {"site": "lab", "dock": "east"})
    opens = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=45)).replace(microsecond=0)
    closes = opens + dt.timedelta(minutes=30)
    res = CliRunner().invoke(
        cloud,
        [
            *("window", "set", "east", "--home", str(fleet.plane.home.root)),
            *("--label", "dock=east", "--days", "daily", "--tz", "UTC"),
            *("--start", opens.strftime("%H:%M:%S"), "--end", closes.strftime("%H:%M:%S")),
        ],
    )
    assert res.exit_code == 0, res.output
    # The plane re-reads its windows every few seconds: push once it serves this one.
    book = fleet.plane.control.plane.windows  # type: ignore[union-attr]
    assert book is not None
    wait_until(lambda: bool(book.for_labels({"dock": "east"})), 10, "the plane to see the window")
    fleet.push("pendulum@1.1.0", r.id)  # published by the lock test, or now
    assert fleet.plane.store.get_bundle("pendulum", "1.1.0") is not None

    def outside() -> bool:
        row = _row(fleet, r.id)
        return bool(row["update_state"] == "HELD" and row["update_reason"] == "OUTSIDE_WINDOW")

    _wait(fleet, outside, 45, "the robot to wait for its window", r.id)
    when = opens.isoformat().replace("+00:00", "Z")
    assert (
        f"outside maintenance window east; next opening {when}"
        in _row(fleet, r.id)["update_detail"]
    )
    assert r.active_version() == "1.0.0"
    _wait(fleet, lambda: r.counter() == 2, 120, "the commit inside the window", r.id)
    _wait(
        fleet,
        lambda: ("COMMITTED", "OK") in fleet.update_events(r.id),
        30,
        "COMMITTED on the plane",
        r.id,
    )
    events = fleet.plane.store.events(r.id, kind="update")
    switched = next(e for e in events if e.state == "SWITCHING")
    assert switched.at >= opens, (switched.at, opens)


def test_removing_the_window_on_the_plane_releases_a_held_robot(fleet: Fleet) -> None:
    r = fleet.robots[1]
    home = ["--home", str(fleet.plane.home.root)]
    fleet.plane.store.set_labels(r.id, {"site": "lab", "dock": "west"})
    opens = dt.datetime.now(dt.UTC) + dt.timedelta(hours=6)
    res = CliRunner().invoke(
        cloud,
        [
            *("window", "set", "west", *home, "--label", "dock=west", "--days", "daily"),
            *(
                "--start",
                opens.strftime("%H:%M"),
                "--end",
                (opens + dt.timedelta(hours=1)).strftime("%H:%M"),
            ),
            *("--tz", "UTC"),
        ],
    )
    assert res.exit_code == 0, res.output
    book = fleet.plane.control.plane.windows  # type: ignore[union-attr]
    assert book is not None
    wait_until(lambda: bool(book.for_labels({"dock": "west"})), 10, "the plane to see the window")
    fleet.push(_bundle(fleet.tmp, fleet.plane, "1.2.0", 3), r.id)

    def outside() -> bool:
        row = _row(fleet, r.id)
        return bool(row["update_state"] == "HELD" and "window west" in row["update_detail"])

    _wait(fleet, outside, 90, "the robot to wait for the west window", r.id)
    res = CliRunner().invoke(cloud, ["window", "remove", "west", *home])
    assert res.exit_code == 0, res.output
    # The held agent asks the plane again every desired_state_poll_s (2 s here).
    _wait(fleet, lambda: r.counter() == 3, 90, "the switch once the window is gone", r.id)
    assert r.active_version() == "1.2.0"
