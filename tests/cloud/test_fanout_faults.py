"""Faults while an update fans out to several real robots.

Three robots (``edgeflux runtime run`` + ``edgeflux agent run`` each) poll two plane
replicas on one PostgreSQL through one address list; downloads are paced so that each
fault lands while the robots are fetching. In turn: PostgreSQL restarts, the MQTT
broker restarts, one plane replica is killed (``kill -9``). After each, every robot
either committed the pushed bundle or failed cleanly (reason DOWNLOAD_FAILED, its old
bundle still running); pushed again, those commit too.

A robot whose disk fills up during a download (a real size-limited tmpfs, filled once
the download has begun: the kernel answers ENOSPC) fails with reason DISK_FULL, keeps
running its old bundle, and takes the next push once there is room.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.home import CloudHome, init_home
from cloud.publish import publish_bundle
from cloud.push import push
from cloud.store import Store
from cloud.testing import running_plane
from runtime.layout import RobotLayout
from tests.cloud._robots import make_root, running_robot
from tests.cloud.test_lease import _Lines, _replica, _stop
from tests.cloud.test_outage import _pg_ctl
from tests.fleet.test_agent_e2e import Robot, _bundle
from tests.servers import Postgres, port_open, run_mosquitto, run_postgres, wait_until

pytestmark = [pytest.mark.services]
ROBOTS = ("robot-f1", "robot-f2", "robot-f3")
PACE = 2048  # bytes/s: a 10 kB bundle downloads in about five seconds


class _Plane:  # what tests.fleet's bundle helper needs of a plane
    def __init__(self, home: CloudHome) -> None:
        self.home = home


def _counter(r: Robot) -> int:
    try:
        return r.counter()
    except Exception:  # the runtime is busy switching: ask again
        return -1


def _update_record(r: Robot) -> dict[str, object]:
    """The agent's persisted update (state, reason, detail, generation)."""
    path = RobotLayout.at(r.root).agent_state / "update.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _pg_restart(pg: Postgres) -> None:
    _pg_ctl(pg, "stop", "-m", "immediate")
    wait_until(lambda: not port_open(pg.port), 15, "PostgreSQL to stop")
    sock = pg.datadir.parent / "sock"
    _pg_ctl(
        pg,
        "start",
        "-l",
        str(pg.datadir.parent / "restart.log"),
        "-o",
        f"-p {pg.port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off",
    )


@pytest.mark.timeout(600)
def test_a_fan_out_survives_database_restart_broker_restart_and_a_replica_kill(
    tmp_path: Path,
) -> None:
    home = init_home(tmp_path / "home")
    bundles = [_bundle(tmp_path, _Plane(home), f"1.{i}.0", i + 1) for i in range(4)]  # type: ignore[arg-type]
    log = tmp_path / "replicas.log"
    restarted = False
    with run_postgres() as pg, run_mosquitto() as broker, contextlib.ExitStack() as stack:
        url = pg.create_database("fanout")
        store = Store.open(url)
        a = b = None
        try:
            publish_bundle(home, store, bundles[0], actor="test")
            a, b = _replica(home.root, url, log), _replica(home.root, url, log)
            addresses = [_Lines(p).wait_for("ready", 60, log).split()[1] for p in (a, b)]
            robots = []
            for device in ROBOTS:
                root = tmp_path / device
                make_root(
                    home,
                    store,
                    root,
                    device,
                    ",".join(addresses),
                    broker.port,
                    download_max_bytes_per_s=PACE,
                )
                robot_log = tmp_path / f"{device}.log"
                robots.append(
                    stack.enter_context(running_robot(root, device, bundles[0], robot_log))
                )

            def logs() -> str:
                text = "".join(f"--- {r.id}\n{r.log.read_text()[-2000:]}" for r in robots)
                return text + f"--- planes\n{log.read_text()[-3000:]}"

            def fan_out(seq: int, fault: str) -> None:
                version = f"1.{seq - 1}.0"
                publish_bundle(home, store, bundles[seq - 1], actor="test")
                sent = push(home, store, f"pendulum@{version}", device_ids=list(ROBOTS))
                # the robots start fetching within a poll or two (a download in progress
                # is a *.chunked file); then the fault
                wait_until(
                    lambda: any(
                        any((RobotLayout.at(r.root).agent_state / "downloads").glob("*.chunked"))
                        for r in robots
                    ),
                    30,
                    "a download to begin",
                )
                assert sum(_counter(r) == seq for r in robots) < len(robots), "too late"
                if fault == "database":
                    _pg_restart(pg)
                elif fault == "broker":
                    broker.restart()
                else:
                    a.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
                    a.wait(10)  # type: ignore[union-attr]

                def outcome(r: Robot) -> str | None:
                    if _counter(r) == seq:
                        return "COMMITTED"
                    rec = _update_record(r)
                    if rec.get("generation") == sent.generations[r.id] and rec["state"] == "FAILED":
                        return f"FAILED {rec['reason']}: {rec['detail']}"
                    return None

                try:
                    wait_until(lambda: all(outcome(r) for r in robots), 180, "every outcome")
                except TimeoutError:
                    pytest.fail(logs())
                failed = {r.id: outcome(r) for r in robots if outcome(r) != "COMMITTED"}
                print(f"{fault} fault during the fan-out of {version}: failed cleanly {failed}")
                for r in robots:
                    if r.id in failed:  # a clean failure: a reason, and the old bundle runs
                        # the fault hit the download, or the refresh (plane unreachable
                        # over gRPC and MQTT while its database restarts): both transient
                        assert str(failed[r.id]).startswith(
                            ("FAILED DOWNLOAD_FAILED", "FAILED PLANE_UNREACHABLE")
                        ), failed
                        assert r.active_version() == f"1.{seq - 2}.0" and r.counter() == seq - 1
                if failed:  # the operator pushes again: a new generation for those robots
                    push(home, store, f"pendulum@{version}", device_ids=sorted(failed))
                try:
                    wait_until(
                        lambda: all(_counter(r) == seq for r in robots),
                        180,
                        f"every robot to commit {version} after the {fault} fault",
                    )
                except TimeoutError:
                    pytest.fail(logs())
                for r in robots:
                    assert r.active_version() == version

            fan_out(2, "database")
            restarted = True
            fan_out(3, "broker")
            fan_out(4, "replica")
            assert all(r.agent.poll() is None for r in robots)  # same agents throughout
        finally:
            stack.close()
            _stop(a, b)
            store.close()
            if restarted:
                _pg_ctl(pg, "stop", "-m", "fast")


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> Path:
    """Take every free byte of `directory`'s filesystem; the file that holds them."""
    filler = directory / "zz-filler"
    with filler.open("wb", buffering=0) as fh:  # unbuffered: nothing left to flush
        try:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.mark.timeout(300)
def test_a_disk_that_fills_up_mid_download_fails_cleanly_and_the_next_push_succeeds(
    tmp_path: Path,
) -> None:
    with running_plane(tmp_path / "plane", broker=True, ingest=True) as plane:
        bundles = [_bundle(tmp_path, plane, f"1.{i}.0", i + 1) for i in range(3)]
        plane.publish(bundles[0])
        device = "robot-full"
        root = tmp_path / device
        layout = make_root(
            plane.home,
            plane.store,
            root,
            device,
            plane.address,
            plane.broker_port,
            download_max_bytes_per_s=1024,  # about ten seconds for the 10 kB bundle
            download_free_margin_bytes=0,
        )
        downloads = layout.agent_state / "downloads"
        log = tmp_path / "robot.log"
        with _tmpfs(downloads, "1m"), running_robot(root, device, bundles[0], log) as robot:
            plane.publish(bundles[1])
            push(plane.home, plane.store, "pendulum@1.1.0", device_ids=[device], actor="test")
            # the download has opened its file; its bytes arrive paced, over seconds
            wait_until(lambda: any(downloads.rglob("*.chunked")), 60, "the download to begin")
            filler = _fill(downloads)

            def last_update() -> tuple[str, str, str] | None:
                events = plane.store.events(device, kind="update")
                done = [e for e in events if e.state in ("COMMITTED", "FAILED", "ROLLED_BACK")]
                return (done[-1].state, done[-1].reason_code, done[-1].detail) if done else None

            try:
                wait_until(lambda: last_update() is not None, 90, "the update's outcome")
            except TimeoutError:
                pytest.fail(log.read_text()[-4000:])
            state, reason, detail = last_update()  # type: ignore[misc]
            assert (state, reason) == ("FAILED", "DISK_FULL"), (state, reason, detail)
            assert "disk full" in detail
            assert robot.active_version() == "1.0.0" and robot.counter() == 1  # old state
            assert robot.runtime.poll() is None and robot.agent.poll() is None

            os.unlink(filler)  # room again: the next push goes through
            plane.publish(bundles[2])
            push(plane.home, plane.store, "pendulum@1.2.0", device_ids=[device], actor="test")
            try:
                wait_until(lambda: _counter(robot) == 3, 120, "1.2.0 committed")
            except TimeoutError:
                pytest.fail(log.read_text()[-4000:])
            assert robot.active_version() == "1.2.0"
