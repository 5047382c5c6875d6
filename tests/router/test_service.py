"""RouterService end to end: a robot's agent (fleet.router_client) routes a planning
task through the real control plane (mTLS) to a real planner worker started with
`edgeflux cloud agent --kind planner`, with budgets in the store and the audit log on."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from cloud.home import init_home
from cloud.router import Answer, Budget, MemoryLedger, Outcome, Qos, Registry, Router, Scope, Task
from cloud.router.service import RouterRunner
from cloud.testing import running_plane
from edgeflux.cli import root
from fleet.router_client import RouterClient
from protos import router_pb2, router_pb2_grpc
from tests.router._fixtures import spec
from tests.servers import free_port, port_open, wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def planner_port() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeflux.cli",
            "cloud",
            "agent",
            "--kind",
            "planner",
            "--port",
            str(port),
            "--max-concurrency",
            "2",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 90, "the planner worker")
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        yield port
    finally:
        proc.terminate()
        proc.wait(20)


def _home(tmp_path: Path, planner_port: int) -> Path:
    home = init_home(tmp_path / "plane")
    with home.config_file.open("a") as fh:
        fh.write(
            "\n[router]\n"
            'budgets = [{scope = "acme", limit_usd = 1.0}]\n'
            "audit_every_n = 2\n"
            "[[router.backends]]\n"
            'name = "planner-1"\n'
            f'address = "127.0.0.1:{planner_port}"\n'
            "tier = 2\n"
            'task_types = ["plan"]\n'
            "quality = {plan = 0.95}\n"
            "capacity = 2\n"
            "per_call_usd = 0.001\n"
            "latency_s_per_work_unit = 0.2\n"
        )
    return home.root


def _plan(deadline_ms: int = 20_000) -> router_pb2.Task:
    return router_pb2.Task(
        task_type="plan",
        qos=router_pb2.QOS_CLASS_INTERACTIVE,
        deadline_ms=deadline_ms,
        observation=[math.cos(2.5), math.sin(2.5), 0.0],
        action_low=[-2.0],
        action_high=[2.0],
        work_units=1.0,
    )


def test_a_robot_routes_a_planning_task_to_a_real_planner_with_budget_and_audit(
    tmp_path: Path, planner_port: int
) -> None:
    root_dir = _home(tmp_path, planner_port)
    with running_plane(root_dir) as plane:
        dev = plane.device("robot-1", labels={"tenant": "acme", "site": "lab"})
        with plane.channel(dev) as ch:
            client = RouterClient(ch)
            ticket = client.ask(_plan(), timeout_s=30.0)
            assert ticket is not None
            assert ticket.wait(60), "no answer from the router"
            resp = ticket.response()
            assert resp is not None, ticket.error
            assert resp.outcome == router_pb2.ROUTE_OUTCOME_OK, resp
            assert resp.backend == "planner-1"
            assert len(resp.action) == 1 and -2.0 <= resp.action[0] <= 2.0
            assert resp.cost_usd == pytest.approx(0.001)

            # A malformed request is refused with the field named; nothing is spent.
            stub = router_pb2_grpc.RouterServiceStub(ch)
            bad = _plan()
            bad.observation[0] = float("nan")
            with pytest.raises(grpc.RpcError) as err:
                stub.Route(router_pb2.RouteRequest(task=bad), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "observation" in (err.value.details() or "")

        ghost = plane.device("robot-2", labels={"tenant": "ghost"})
        with plane.channel(ghost) as ch:
            resp = router_pb2_grpc.RouterServiceStub(ch).Route(
                router_pb2.RouteRequest(task=_plan()), timeout=30
            )
            assert resp.outcome == router_pb2.ROUTE_OUTCOME_BUDGET_EXHAUSTED
            assert resp.reason == "budget:no_budget"

        admin = plane.operator()
        with plane.channel(admin) as ch:
            stats_stub = router_pb2_grpc.RouterServiceStub(ch)

            def audited() -> bool:
                s = stats_stub.RouterStats(router_pb2.RouterStatsRequest(), timeout=10)
                return s.audit_records >= 2

            wait_until(audited, 10, "decisions to reach the audit log")
            stats = stats_stub.RouterStats(router_pb2.RouterStatsRequest(), timeout=10)
        assert [b.name for b in stats.backends] == ["planner-1"]
        (budget,) = stats.budgets
        assert budget.scope == "acme" and budget.used_usd == pytest.approx(0.001)
        assert budget.reserved_usd == pytest.approx(0.0)
        assert stats.audit_verification.ok, stats.audit_verification.detail
        assert {d.outcome for d in stats.recent_decisions} == {
            router_pb2.ROUTE_OUTCOME_OK,
            router_pb2.ROUTE_OUTCOME_BUDGET_EXHAUSTED,
        }
        # The operator CLI reads the same statistics.
        res = CliRunner().invoke(
            root,
            [
                "cloud",
                "router",
                "stats",
                "--home",
                str(root_dir),
                "--address",
                plane.address,
                "--json",
            ],
        )
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["backends"][0]["name"] == "planner-1"
        # A device may not read operator statistics.
        with plane.channel(dev) as ch, pytest.raises(grpc.RpcError) as err:
            router_pb2_grpc.RouterServiceStub(ch).RouterStats(
                router_pb2.RouterStatsRequest(), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # After the plane stopped: the CLI checks the log end to end...
    res = CliRunner().invoke(
        root, ["cloud", "router", "audit", "verify", "--home", str(root_dir), "--json"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["ok"] and report["records"] >= 2
    # ... and catches an edited record.
    log = root_dir / "state" / "router-audit.jsonl"
    log.write_bytes(log.read_bytes().replace(b'"planner-1"', b'"planner-9"', 1))
    res = CliRunner().invoke(root, ["cloud", "router", "audit", "verify", "--home", str(root_dir)])
    assert res.exit_code == 1 and "FAILED verification" in res.output


class _Hung:
    def __init__(self) -> None:
        self.cancelled = 0

    async def execute(self, task: Task, timeout_s: float) -> Answer:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return Answer()


class _Echo:
    async def execute(self, task: Task, timeout_s: float) -> Answer:
        await asyncio.sleep(0.01)
        return Answer(action=(0.25,))


def test_runner_times_out_a_hung_backend_and_serves_from_a_working_one() -> None:
    async def main() -> None:
        ledger = MemoryLedger()
        ledger.set_budget(Budget("acme", 10.0))
        registry = Registry([spec("hung", 0), spec("echo", 1)])
        router = Router(registry, ledger, clock=time.monotonic)
        hung = _Hung()
        runner = RouterRunner(router, {"hung": hung, "echo": _Echo()})
        scope = Scope("acme", "lab", "r1")
        now = time.monotonic()
        res = await runner.route(Task("a", "plan", Qos.INTERACTIVE, now + 0.3, scope))
        assert (res.outcome, res.reason) == (Outcome.FAILED, "deadline_exceeded")
        for _ in range(100):  # the cancellation lands on a later loop iteration
            if hung.cancelled:
                break
            await asyncio.sleep(0.01)
        assert hung.cancelled == 1
        # The hung backend's limit backed off; the next task goes there only if admitted,
        # and a task with time to escalate is answered by the working tier.
        router.backends["hung"].health.on_failure(time.monotonic(), pushback=True)
        res = await runner.route(Task("b", "plan", Qos.INTERACTIVE, now + 5.0, scope))
        assert (res.outcome, res.backend) == (Outcome.OK, "echo")
        await runner.close()

    asyncio.run(main())


def test_bad_router_settings_name_the_backend_and_field() -> None:
    from cloud.router.errors import RouterConfigError
    from cloud.router.service import BackendSettings

    bad = BackendSettings(
        name="gpu", address="127.0.0.1:1", task_types=["plan"], per_gpu_second_usd=-1.0
    )
    with pytest.raises(RouterConfigError, match=r"'gpu'.*per_gpu_second_usd"):
        bad.spec()


def test_a_second_request_with_the_same_key_in_flight_is_refused_not_lost() -> None:
    async def main() -> None:
        ledger = MemoryLedger()
        ledger.set_budget(Budget("acme", 10.0))
        router = Router(Registry([spec("echo", 0)]), ledger, clock=time.monotonic)
        runner = RouterRunner(router, {"echo": _Echo()})
        task = Task("k", "plan", Qos.INTERACTIVE, time.monotonic() + 5, Scope("acme"))
        first, second = await asyncio.gather(runner.route(task), runner.route(task))
        assert first.outcome is Outcome.OK
        assert (second.outcome, second.reason) == (Outcome.FAILED, "duplicate_task_id")
        await runner.close()

    asyncio.run(main())


def test_qos_settings_name_unknown_classes() -> None:
    from cloud.router.errors import RouterConfigError
    from cloud.router.settings import by_qos as _by_qos

    assert _by_qos({"safety": 0.4}, "qos_shares") == {Qos.SAFETY: 0.4}
    with pytest.raises(RouterConfigError, match="qos_shares: unknown class 'urgent'"):
        _by_qos({"urgent": 0.4}, "qos_shares")
