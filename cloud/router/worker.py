"""AgentService workers: the real backends the router sends tasks to.

Usage::

    edgeflux cloud agent --kind planner --port 7601            # MPPI planner (Pendulum)
    edgeflux cloud agent --kind policy --model ./bundles/pendulum-1.0.0/policy.onnx --port 7602

- ``planner``: the MPPI planner of `distill` over Pendulum-v1's dynamics (the oracle
  teacher, `distill.teachers.OracleMPPITeacher`): observation (cos θ, sin θ, θ̇) →
  torque. It reports its compute as GPU-seconds (its wall time), priced per GPU-second.
- ``policy``: a bundle's ONNX policy run through `runtime.kernel` (envelope and
  normalisation of the bundle's manifest, which must lie beside policy.onnx).

A worker serves at most ``--max-concurrency`` calls at once; beyond that it answers
``overloaded`` at once (explicit pushback, which the router's windows react to). Work
runs in a thread pool so the gRPC loop stays responsive. It listens on loopback
without TLS by default (the control plane calls it on a private network); pass
``--tls-cert/--tls-key/--ca`` to require mTLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import grpc

from protos import router_pb2, router_pb2_grpc

__all__ = ["AgentServicer", "agent_cmd", "planner_model", "policy_model", "serve_agent"]

log = logging.getLogger(__name__)

# model: observation batch (list of vectors) -> action batch
Model = Callable[[Sequence[float]], list[float]]


def planner_model(seed: int = 0) -> Model:
    """MPPI over Pendulum's dynamics (torch; imported here, only in planner workers)."""
    import numpy as np

    from distill.teachers import OracleMPPITeacher

    teacher = OracleMPPITeacher(seed=seed)
    lock = threading.Lock()  # the teacher keeps warm-start state

    def act(obs: Sequence[float]) -> list[float]:
        if len(obs) != 3:
            raise ValueError(f"the Pendulum planner needs 3 observation values, got {len(obs)}")
        with lock:
            teacher.reset(1)
            out = teacher.act(np.asarray([obs], dtype=np.float32))
        return [float(x) for x in out[0]]

    return act


def policy_model(path: Path) -> Model:
    """A bundle's policy.onnx with the edgeflux.json beside it, through the policy kernel.

    Each call is a one-tick episode: the observation is checked, normalised and the
    action filtered exactly as on the robot, starting from the initial action.
    """
    import numpy as np

    from runtime.kernel import load_kernel
    from runtime.manifest import load_manifest

    kernel = load_kernel(path, load_manifest(Path(path).parent))
    lock = threading.Lock()

    def act(obs: Sequence[float]) -> list[float]:
        if len(obs) != kernel.obs_dim:
            n = kernel.obs_dim
            raise ValueError(f"the policy needs {n} observation values, got {len(obs)}")
        with lock:
            kernel.reset()
            out = kernel.step(np.asarray(obs, dtype=np.float32))
            return [float(x) for x in out]

    return act


class AgentServicer(router_pb2_grpc.AgentServiceServicer):
    def __init__(self, kind: str, model: Model, max_concurrency: int = 4) -> None:
        self.kind = kind
        self.model = model
        self.max_concurrency = max_concurrency
        self.in_flight = 0
        self.calls = 0
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix=f"agent-{kind}")

    async def Execute(
        self, request: router_pb2.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ExecuteResponse:
        self.calls += 1
        if self.in_flight >= self.max_concurrency:
            return router_pb2.ExecuteResponse(overloaded=True)
        obs = list(request.task.observation)
        if not all(math.isfinite(x) for x in obs):
            return router_pb2.ExecuteResponse(error="observation has a NaN or infinite value")
        self.in_flight += 1
        t0 = time.perf_counter()
        try:
            action = await asyncio.get_running_loop().run_in_executor(self._pool, self.model, obs)
        except Exception as exc:  # the model's own errors become an answer, not a crash
            return router_pb2.ExecuteResponse(error=f"{type(exc).__name__}: {exc}")
        finally:
            self.in_flight -= 1
        took = time.perf_counter() - t0
        return router_pb2.ExecuteResponse(
            action=action, work_units=request.task.work_units or 1.0, gpu_seconds=took
        )


async def serve_agent(
    servicer: AgentServicer,
    host: str = "127.0.0.1",
    port: int = 0,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start a worker server; returns it and its bound port."""
    server = grpc.aio.server()
    router_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    addr = f"{host}:{port}"
    bound = (
        server.add_secure_port(addr, credentials)
        if credentials is not None
        else server.add_insecure_port(addr)
    )
    await server.start()
    return server, bound


def _credentials(cert: Path | None, key: Path | None, ca: Path | None) -> Any:
    if cert is None and key is None and ca is None:
        return None
    if not (cert and key and ca):
        raise click.UsageError("--tls-cert, --tls-key and --ca go together")
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=ca.read_bytes(),
        require_client_auth=True,
    )


@click.command("agent")
@click.option("--kind", type=click.Choice(["planner", "policy"]), required=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=7601, show_default=True, help="0 = pick a free port")
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="policy.onnx for --kind policy",
)
@click.option("--max-concurrency", type=click.IntRange(1, 256), default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ca", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def agent_cmd(
    kind: str,
    host: str,
    port: int,
    model_path: Path | None,
    max_concurrency: int,
    seed: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    ca: Path | None,
) -> None:
    """Serve an AgentService backend (planner or policy) for the ATP router."""
    if kind == "policy" and model_path is None:
        raise click.UsageError("--kind policy needs --model PATH/TO/policy.onnx")
    creds = _credentials(tls_cert, tls_key, ca)
    try:
        model = planner_model(seed) if kind == "planner" else policy_model(model_path)  # type: ignore[arg-type]
    except Exception as exc:
        raise click.ClickException(f"cannot load the {kind} model: {exc}") from exc

    async def main() -> None:
        servicer = AgentServicer(kind, model, max_concurrency)
        try:
            server, bound = await serve_agent(servicer, host, port, creds)
        except RuntimeError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
        click.echo(f"agent {kind} serving AgentService on {host}:{bound}", err=True)
        await server.wait_for_termination()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: a clean stop
        asyncio.run(main())
