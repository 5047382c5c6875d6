"""Fixtures for the router's plane tests: a real AgentService and a database per test."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from protos import router_pb2, router_pb2_grpc
from tests.servers import Postgres, free_port


class _Agent(router_pb2_grpc.AgentServiceServicer):
    """An AgentService that answers after `delay_s`, counting the calls it served."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.calls = 0
        self._lock = threading.Lock()

    def Execute(self, request: router_pb2.ExecuteRequest, context: object) -> object:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay_s)
        return router_pb2.ExecuteResponse(action=[0.5])


@pytest.fixture
def agent() -> Iterator[tuple[_Agent, int]]:
    servicer = _Agent(0.0)
    server = grpc.server(futures.ThreadPoolExecutor(8))
    router_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(0)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.create_database(f"plane_{request.node.name[:40].lower()}".replace("[", "_"))
