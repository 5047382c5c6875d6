"""The robot-side client: never blocks the control loop, throttles itself, retries within
a budget. Against a real gRPC server on a free port."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from fleet.router_client import AdaptiveThrottle, RetryBudget, RouterClient
from protos import router_pb2, router_pb2_grpc
from tests.servers import wait_until


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _Servicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self) -> None:
        self.script: list[router_pb2.RouteResponse] = []
        self.delay_s = 0.0
        self.calls = 0
        self.release = threading.Event()

    def Route(self, request: router_pb2.RouteRequest, context: object) -> router_pb2.RouteResponse:
        self.calls += 1
        if self.delay_s:
            self.release.wait(self.delay_s)
        if self.script:
            return self.script.pop(0)
        return router_pb2.RouteResponse(outcome=router_pb2.ROUTE_OUTCOME_OK, action=[0.5])


@pytest.fixture
def server() -> Iterator[tuple[_Servicer, grpc.Channel]]:
    servicer = _Servicer()
    srv = grpc.server(futures.ThreadPoolExecutor(4))
    router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, ch
    finally:
        servicer.release.set()
        ch.close()
        srv.stop(0)


def _task() -> router_pb2.Task:
    return router_pb2.Task(task_type="plan", qos=router_pb2.QOS_CLASS_INTERACTIVE)


def test_ask_returns_at_once_even_when_the_cloud_is_slow(
    server: tuple[_Servicer, grpc.Channel],
) -> None:
    servicer, ch = server
    servicer.delay_s = 5.0
    client = RouterClient(ch)
    t0 = time.perf_counter()
    ticket = client.ask(_task(), timeout_s=0.3)
    took = time.perf_counter() - t0
    assert ticket is not None
    assert took < 0.25, f"ask blocked for {took:.3f}s"  # the server holds it for 5 s
    assert not ticket.done() and ticket.response() is None
    wait_until(ticket.done, 5, "the deadline to pass")
    assert ticket.response() is None  # too late: the loop uses its fallback


def test_an_answer_arrives_on_the_ticket(server: tuple[_Servicer, grpc.Channel]) -> None:
    _, ch = server
    task = _task()
    ticket = RouterClient(ch).ask(task, timeout_s=5.0)
    assert ticket is not None and ticket.wait(5)
    resp = ticket.response()
    assert resp is not None and list(resp.action) == [0.5]
    assert task.deadline_ms == 0  # the caller's message is left as it was


def test_a_rejection_with_retry_after_is_retried_once_within_the_deadline(
    server: tuple[_Servicer, grpc.Channel],
) -> None:
    servicer, ch = server
    servicer.script = [
        router_pb2.RouteResponse(outcome=router_pb2.ROUTE_OUTCOME_REJECTED, retry_after_ms=50)
    ]
    ticket = RouterClient(ch).ask(_task(), timeout_s=5.0)
    assert ticket is not None and ticket.wait(5)
    resp = ticket.response()
    assert resp is not None and resp.outcome == router_pb2.ROUTE_OUTCOME_OK
    assert ticket.attempts == 2 and servicer.calls == 2


def test_a_retry_that_cannot_fit_the_deadline_is_not_sent(
    server: tuple[_Servicer, grpc.Channel],
) -> None:
    servicer, ch = server
    servicer.script = [
        router_pb2.RouteResponse(outcome=router_pb2.ROUTE_OUTCOME_REJECTED, retry_after_ms=5000)
    ]
    ticket = RouterClient(ch).ask(_task(), timeout_s=1.0)
    assert ticket is not None and ticket.wait(5)
    resp = ticket.response()
    assert resp is not None and resp.outcome == router_pb2.ROUTE_OUTCOME_REJECTED
    assert servicer.calls == 1


def test_throttle_refuses_most_requests_when_nothing_is_accepted() -> None:
    clock = _Clock()
    th = AdaptiveThrottle(k=2.0, window_s=60, clock=clock, rng=random.Random(0))
    allowed = sum(th.allow() for _ in range(1000))
    assert allowed < 100  # p = (req - 2·0) / (req + 1) → 1
    clock.t = 61.0  # the window forgets
    assert th.reject_probability() == 0.0


def test_throttle_never_refuses_while_the_server_accepts() -> None:
    th = AdaptiveThrottle(k=2.0, clock=_Clock(), rng=random.Random(0))
    for _ in range(1000):
        assert th.allow()
        th.accepted()


def test_retry_budget_allows_a_floor_plus_a_share_of_requests() -> None:
    rb = RetryBudget(ratio=0.1, min_retries=3, clock=_Clock())
    for _ in range(100):
        rb.note_request()
    spent = sum(rb.try_spend() for _ in range(100))
    assert spent == 13
