"""Through real control planes (mTLS gRPC, store on SQLite or a real PostgreSQL): who may
claim SAFETY, payload limits per class, callers that give up, and a slow backend seen
from two planes sharing one database."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import grpc
import pytest

from cloud.home import init_home
from cloud.testing import running_plane
from protos import router_pb2, router_pb2_grpc
from tests.router.conftest import _Agent
from tests.servers import wait_until


def _home(tmp_path: Path, port: int, extra: str = "", per_call: float = 0.001) -> Path:
    home = init_home(tmp_path / "plane")
    with home.config_file.open("a") as fh:
        fh.write(
            "\n[router]\n"
            'budgets = [{scope = "acme", limit_usd = 1.0}]\n'
            "audit_every_n = 1\n"
            "reservation_grace_s = 1.0\n"
            f"{extra}"
            "[[router.backends]]\n"
            'name = "gpu"\n'
            f'address = "127.0.0.1:{port}"\n'
            'task_types = ["plan"]\n'
            "quality = {plan = 0.95}\n"
            "capacity = 8\n"
            f"per_call_usd = {per_call}\n"
            "latency_s_per_work_unit = 0.01\n"
            "timeout_s = 5.0\n"
        )
    return home.root


def _task(qos: int, key: str = "", payload: bytes = b"", deadline_ms: int = 10_000) -> object:
    return router_pb2.RouteRequest(
        task=router_pb2.Task(
            task_type="plan",
            qos=qos,  # type: ignore[arg-type]
            deadline_ms=deadline_ms,
            observation=[0.0],
            payload=payload,
            idempotency_key=key,
        )
    )


def _audit(root: Path) -> list[dict[str, object]]:
    lines = (root / "state" / "router-audit.jsonl").read_bytes().splitlines()
    return [json.loads(x)["body"] for x in lines if b'"kind":"record"' in x]


def _used(plane: object) -> float:
    admin = plane.operator()  # type: ignore[attr-defined]
    with plane.channel(admin) as ch:  # type: ignore[attr-defined]
        s = router_pb2_grpc.RouterServiceStub(ch).RouterStats(
            router_pb2.RouterStatsRequest(), timeout=10
        )
    (b,) = s.budgets
    return float(b.used_usd)


def test_only_granted_devices_may_claim_safety_and_claims_are_audited(
    tmp_path: Path, agent: tuple[_Agent, int], database_url: str
) -> None:
    servicer, port = agent
    root = _home(tmp_path, port, 'class_grants = {SAFETY = ["label:role=arm"]}\n')
    with running_plane(root, overrides={"database_url": database_url}) as plane:
        arm = plane.device("arm-1", labels={"tenant": "acme", "role": "arm"})
        cart = plane.device("cart-1", labels={"tenant": "acme"})
        with plane.channel(cart) as ch:
            stub = router_pb2_grpc.RouterServiceStub(ch)
            with pytest.raises(grpc.RpcError) as err:
                stub.Route(_task(router_pb2.QOS_CLASS_SAFETY), timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "'cart-1' is not granted class SAFETY" in (err.value.details() or "")
            # Other classes stay open to it.
            ok = stub.Route(_task(router_pb2.QOS_CLASS_BATCH), timeout=10)
            assert ok.outcome == router_pb2.ROUTE_OUTCOME_OK
        assert servicer.calls == 1  # the refused claim never reached a backend
        with plane.channel(arm) as ch:
            ok = router_pb2_grpc.RouterServiceStub(ch).Route(
                _task(router_pb2.QOS_CLASS_SAFETY), timeout=10
            )
            assert ok.outcome == router_pb2.ROUTE_OUTCOME_OK, ok
    records = _audit(root)
    denied = [r for r in records if r.get("event") == "class_denied"]
    assert [(r["device"], r["qos"]) for r in denied] == [("cart-1", 1)]
    granted = [r for r in records if r.get("qos") == 1 and "outcome" in r]
    assert [(r["outcome"], r["grant"]) for r in granted] == [("ok", "label:role=arm")]


def test_safety_is_granted_to_nobody_unless_listed(
    tmp_path: Path, agent: tuple[_Agent, int]
) -> None:
    _, port = agent
    root = _home(tmp_path, port, 'class_grants = {BATCH = ["*"]}\n')
    with running_plane(root) as plane:
        dev = plane.device("r1", labels={"tenant": "acme"})
        with plane.channel(dev) as ch, pytest.raises(grpc.RpcError) as err:
            router_pb2_grpc.RouterServiceStub(ch).Route(
                _task(router_pb2.QOS_CLASS_SAFETY), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_payloads_over_their_class_limit_are_refused_before_any_backend(
    tmp_path: Path, agent: tuple[_Agent, int]
) -> None:
    servicer, port = agent
    root = _home(tmp_path, port, "max_payload_bytes = {BATCH = 1000}\n")
    with running_plane(root) as plane:
        dev = plane.device("r1", labels={"tenant": "acme"})
        with plane.channel(dev) as ch:
            stub = router_pb2_grpc.RouterServiceStub(ch)
            for qos, size in ((router_pb2.QOS_CLASS_BATCH, 1001), (2, 256 * 1024 + 1)):
                with pytest.raises(grpc.RpcError) as err:
                    stub.Route(_task(qos, payload=b"x" * size), timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert f"task.payload has {size} bytes" in (err.value.details() or "")
            ok = stub.Route(_task(router_pb2.QOS_CLASS_BATCH, payload=b"x" * 1000), timeout=10)
            assert ok.outcome == router_pb2.ROUTE_OUTCOME_OK
        assert servicer.calls == 1


def test_deadline_exceeded_callers_are_not_charged_and_their_keys_stay_retryable(
    tmp_path: Path, agent: tuple[_Agent, int], database_url: str
) -> None:
    servicer, port = agent
    servicer.delay_s = 0.5
    root = _home(tmp_path, port)
    with running_plane(root, overrides={"database_url": database_url}) as plane:
        dev = plane.device("r1", labels={"tenant": "acme"})
        with plane.channel(dev) as ch:
            stub = router_pb2_grpc.RouterServiceStub(ch)
            keys = [f"k{i}" for i in range(11)]
            for i, k in enumerate(keys):
                with pytest.raises(grpc.RpcError) as err:
                    stub.Route(_task(2, key=k), timeout=0.01 + 0.03 * i)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert _used(plane) == 0.0  # gave up: refunded, whatever the backend did
            servicer.delay_s = 0.0
            for k in keys:
                resp = stub.Route(_task(2, key=k), timeout=10)
                assert (resp.outcome, resp.reason) == (router_pb2.ROUTE_OUTCOME_OK, "accepted")
        assert _used(plane) == pytest.approx(0.001 * len(keys))
        runner = plane.control.plane.extensions["router"]  # type: ignore[union-attr]
        wait_until(lambda: not runner.router.open_dispatches(), 10, "calls to settle")
        assert runner.waiting == 0


def test_two_planes_sharing_a_database_never_overrun_a_slow_backends_budget(
    tmp_path: Path, agent: tuple[_Agent, int], database_url: str
) -> None:
    servicer, port = agent
    servicer.delay_s = 3.0
    root_a = _home(tmp_path, port, per_call=0.6)
    root_b = tmp_path / "plane-b"
    shutil.copytree(root_a, root_b)  # same CA and keys, its own state (audit log)
    over = {"database_url": database_url}
    with running_plane(root_a, overrides=over) as a, running_plane(root_b, overrides=over) as b:
        dev = a.device("r1", labels={"tenant": "acme"})
        with a.channel(dev) as ch_a, b.channel(dev) as ch_b:
            slow = router_pb2_grpc.RouterServiceStub(ch_a).Route.future(_task(3), timeout=20)
            wait_until(lambda: servicer.calls == 1, 10, "the slow call to start")
            time.sleep(0.2)
            # While plane A's call runs its $0.60 stays reserved: plane B cannot spend it.
            denied = router_pb2_grpc.RouterServiceStub(ch_b).Route(_task(3), timeout=10)
            assert denied.outcome == router_pb2.ROUTE_OUTCOME_BUDGET_EXHAUSTED
            done = slow.result()
            assert done.outcome == router_pb2.ROUTE_OUTCOME_OK
            assert done.cost_usd == pytest.approx(0.6)
        assert _used(a) == pytest.approx(0.6) and _used(b) == pytest.approx(0.6)


def test_a_plane_whose_backend_outlives_the_reservation_hold_refuses_to_start(
    tmp_path: Path, agent: tuple[_Agent, int]
) -> None:
    from cloud.router.errors import RouterConfigError

    _, port = agent
    root = _home(tmp_path, port, "reservation_ttl_s = 3.0\n")  # the backend may take 5 s
    with pytest.raises(RouterConfigError, match=r"backend 'gpu': timeout_s = 5.0"):  # noqa: SIM117
        with running_plane(root):
            pass
