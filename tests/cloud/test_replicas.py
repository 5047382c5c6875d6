"""Several plane replicas behind one client-side address list, with a real robot.

Two plane processes share one home and one PostgreSQL. The robot (``edgeflux runtime
run`` and ``edgeflux agent run``, separate processes) is configured with both
addresses (``grpc_target = "127.0.0.1:A,127.0.0.1:B"``): its calls are spread over
both replicas (round-robin, mTLS verified against the shared server certificate), and
after one replica is killed it takes the next update from the other one, with no
change to its configuration and no restart.
"""

from __future__ import annotations

import contextlib
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.home import init_home
from cloud.publish import publish_bundle
from cloud.push import push
from cloud.store import Store
from tests.cloud._robots import make_root, running_robot
from tests.cloud.test_lease import _Lines, _replica, _stop
from tests.fleet.test_agent_e2e import _bundle
from tests.servers import Postgres, run_mosquitto, run_postgres, wait_until

pytestmark = [pytest.mark.services]
DEVICE = "robot-rr"


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with run_postgres() as p:
        yield p


def _calls(metrics_port: int, method: str) -> float:
    """How many `method` calls this replica answered OK (its Prometheus counter)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        mine = line.startswith("edgeflux_cloud_rpc_total{") and f'method="{method}"' in line
        if mine and 'code="OK"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.timeout(300)
def test_a_robot_with_two_replica_addresses_keeps_updating_after_one_is_killed(
    pg: Postgres, tmp_path: Path
) -> None:
    url = pg.create_database("replicas")
    home_dir = tmp_path / "home"
    home = init_home(home_dir)  # server certificate names: localhost, 127.0.0.1
    store = Store.open(url)

    class _Plane:  # what tests.fleet's bundle helper needs of a plane
        def __init__(self) -> None:
            self.home = home

    bundles = [_bundle(tmp_path, _Plane(), f"1.{i}.0", i + 1) for i in range(3)]  # type: ignore[arg-type]
    for b in bundles[:2]:
        publish_bundle(home, store, b, actor="test")
    log = tmp_path / "replicas.log"
    robot_log = tmp_path / "robot.log"
    a = b = None
    with run_mosquitto() as broker, contextlib.ExitStack() as stack:
        try:
            a = _replica(home_dir, url, log)
            b = _replica(home_dir, url, log)
            a_ready = _Lines(a).wait_for("ready", 60, log).split()
            b_ready = _Lines(b).wait_for("ready", 60, log).split()
            (a_addr, a_metrics), (b_addr, b_metrics) = (
                (x[1], int(x[2])) for x in (a_ready, b_ready)
            )
            target = f"{a_addr},{b_addr}"
            root = tmp_path / DEVICE
            make_root(home, store, root, DEVICE, target, broker.port)
            robot = stack.enter_context(running_robot(root, DEVICE, bundles[0], robot_log))
            agent = robot.agent

            def committed(counter: int) -> bool:
                try:
                    return robot.counter() == counter
                except Exception:
                    return False

            push(home, store, "pendulum@1.1.0", device_ids=[DEVICE], actor="test")
            try:
                wait_until(lambda: committed(2), 120, "1.1.0 committed through two replicas")
            except TimeoutError:
                pytest.fail(robot_log.read_text()[-4000:] + log.read_text()[-2000:])
            # the agent's polls went to both replicas
            wait_until(
                lambda: (
                    min(_calls(a_metrics, "GetDesiredState"), _calls(b_metrics, "GetDesiredState"))
                    >= 2
                ),
                30,
                "polls on both replicas",
            )

            a.send_signal(signal.SIGKILL)
            a.wait(10)
            b_before = _calls(b_metrics, "GetDesiredState")
            publish_bundle(home, store, bundles[2], actor="test")  # the replicas read TUF files
            push(home, store, "pendulum@1.2.0", device_ids=[DEVICE], actor="test")
            try:
                wait_until(lambda: committed(3), 120, "1.2.0 committed with one replica down")
            except TimeoutError:
                pytest.fail(robot_log.read_text()[-4000:] + log.read_text()[-2000:])
            assert robot.active_version() == "1.2.0"
            assert agent.poll() is None  # the same agent process, never reconfigured
            assert _calls(b_metrics, "GetDesiredState") > b_before
            assert _calls(b_metrics, "FetchFile") > 0
        finally:
            stack.close()
            _stop(a, b)
            store.close()
