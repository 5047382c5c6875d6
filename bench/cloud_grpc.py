"""Control-plane benchmark: GetDesiredState vs a bare grpc.aio echo, and device listing.

Usage::

    python bench/cloud_grpc.py                 # 64 callers, 5 s per server
    python bench/cloud_grpc.py --callers 64 --seconds 10 --devices 10000

Part 1 runs, in one process, a bare grpc.aio echo server and the real control plane,
both with the same mTLS credentials on loopback, measured in interleaved short rounds
so the machine's other load hits both alike. `--callers` concurrent unary callers
share `--channels` client channels (one device certificate each). The plane answers
GetDesiredState: identity and revocation check plus the device row in one query, and
the DSSE document (cached per device generation).
Targets: throughput >= 0.5x the echo's, p99 <= 3x the echo's.

Part 2 inserts `--devices` devices into a SQLite store and times a label-filtered
listing of all of them (target < 100 ms) and of one 100-device page.

Prints a table, the ratios, and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud.home import CloudHome
from cloud.store import Store
from cloud.testing import ClientCredentials, running_plane
from protos import device_pb2, device_pb2_grpc

ECHO_METHOD = "/edgeflux.bench.Echo/Echo"


def _echo_handler() -> grpc.GenericRpcHandler:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    return grpc.method_handlers_generic_handler(
        "edgeflux.bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo, request_deserializer=None, response_serializer=None
            )
        },
    )


class EchoServer:
    """A bare grpc.aio server (same TLS as the plane) in its own thread and loop."""

    def __init__(self, home: CloudHome) -> None:
        self.home = home
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((_echo_handler(),))
            creds = grpc.ssl_server_credentials(
                [(self.home.server_key.read_bytes(), self.home.server_cert.read_bytes())],
                root_certificates=self.home.ca_pem(),
                require_client_auth=True,
            )
            self.port = server.add_secure_port("127.0.0.1:0", creds)
            await server.start()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            await server.stop(1)

        self.loop.run_until_complete(main())

    def __enter__(self) -> EchoServer:
        self.thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)


async def _drive(
    calls: list[Callable[[], Awaitable[Any]]], seconds: float, latencies: list[float]
) -> float:
    """Run every caller in a closed loop for `seconds`; append latencies; return elapsed."""
    deadline = time.perf_counter() + seconds

    async def worker(call: Callable[[], Awaitable[Any]]) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    t_start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in calls))
    return time.perf_counter() - t_start


def _summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1e3,
        "calls": float(len(latencies)),
    }


def _channels(address: str, creds: list[ClientCredentials], n: int) -> list[grpc.aio.Channel]:
    return [
        grpc.aio.secure_channel(
            address,
            creds[i % len(creds)].grpc_credentials(),
            options=[("grpc.use_local_subchannel_pool", 1)],
        )
        for i in range(n)
    ]


def bench_grpc(
    tmp: Path, callers: int, seconds: float, n_channels: int, rounds: int
) -> dict[str, Any]:
    with running_plane(tmp / "plane") as plane:
        devices = [plane.device(f"bench-{i:03d}", {"fleet": "bench"}) for i in range(n_channels)]
        plane.store.set_desired(
            [d.id for d in devices], {"name": "pendulum", "version": "1.0.0", "sequence": 1}
        )

        async def run(echo_port: int) -> tuple[dict[str, float], dict[str, float]]:
            echo_chans = _channels(f"127.0.0.1:{echo_port}", devices, n_channels)
            plane_chans = _channels(plane.address, devices, n_channels)
            echo_stubs = [ch.unary_unary(ECHO_METHOD) for ch in echo_chans]
            plane_stubs = [device_pb2_grpc.DeviceServiceStub(ch) for ch in plane_chans]
            payload = b"x" * 64
            req = device_pb2.GetDesiredStateRequest()

            def echo_call(i: int) -> Callable[[], Awaitable[Any]]:
                stub = echo_stubs[i % n_channels]
                return lambda: stub(payload)

            def plane_call(i: int) -> Callable[[], Awaitable[Any]]:
                stub = plane_stubs[i % n_channels]
                return lambda: stub.GetDesiredState(req)

            echo_calls = [echo_call(i) for i in range(callers)]
            plane_calls = [plane_call(i) for i in range(callers)]
            for c in echo_calls[:n_channels] + plane_calls[:n_channels]:  # connect + warm
                await c()
            # Interleave short rounds so load from other processes hits both alike.
            lat: dict[str, list[float]] = {"echo": [], "plane": []}
            took = {"echo": 0.0, "plane": 0.0}
            for _ in range(rounds):
                took["echo"] += await _drive(echo_calls, seconds / rounds, lat["echo"])
                took["plane"] += await _drive(plane_calls, seconds / rounds, lat["plane"])
            for ch in echo_chans + plane_chans:
                await ch.close()
            return _summary(lat["echo"], took["echo"]), _summary(lat["plane"], took["plane"])

        with EchoServer(plane.home) as echo:
            echo_res, plane_res = asyncio.run(run(echo.port))
    return {"echo": echo_res, "plane": plane_res}


def bench_listing(tmp: Path, n: int, repeats: int = 5) -> dict[str, float]:
    store = Store.open(f"sqlite:///{tmp / 'list.db'}")
    try:
        rows = [
            (f"dev-{i:05d}", "0" * 64, {"fleet": "bench", "site": f"site-{i % 10}"})
            for i in range(n)
        ]
        store.add_devices_bulk(rows)
        store.list_devices({"fleet": "bench"}, limit=n)  # warm

        def best(fn: Callable[[], Any], clock: Callable[[], float] = time.perf_counter) -> float:
            times = []
            for _ in range(repeats):
                t0 = clock()
                fn()
                times.append(clock() - t0)
            return min(times) * 1e3

        all_ms = best(lambda: store.list_devices({"fleet": "bench"}, limit=n))
        # CPU time of this process: what the listing costs when the machine is shared.
        all_cpu_ms = best(
            lambda: store.list_devices({"fleet": "bench"}, limit=n), time.process_time
        )
        got = store.list_devices({"fleet": "bench"}, limit=n)
        assert len(got.devices) == n and got.total == n
        page_ms = best(lambda: store.list_devices({"site": "site-3"}, limit=100))
        return {
            "list_all_ms": all_ms,
            "list_all_cpu_ms": all_cpu_ms,
            "page_100_ms": page_ms,
            "devices": float(n),
        }
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--callers", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--channels", type=int, default=8, help="client channels (= device certs)")
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved echo/plane rounds")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeflux-bench-") as d:
        tmp = Path(d)
        g = bench_grpc(tmp, args.callers, args.seconds, args.channels, args.rounds)
        listing = bench_listing(tmp, args.devices)
    e, p = g["echo"], g["plane"]
    load = os.getloadavg()[0]
    thr_ratio = p["rps"] / e["rps"]
    p99_ratio = p["p99_ms"] / e["p99_ms"]
    print(f"machine: {os.cpu_count()} CPUs, 1-min load average {load:.1f} (shared: ratios only)")
    print(f"{'server':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for label, r in (("bare grpc.aio echo (mTLS)", e), ("GetDesiredState (plane)", p)):
        print(f"{label:<28}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}")
    print(
        f"throughput ratio {thr_ratio:.2f}x (target >= 0.5x), p99 ratio {p99_ratio:.2f}x "
        f"(target <= 3x), {args.callers} callers, {args.seconds:.0f} s each in "
        f"{args.rounds} interleaved rounds"
    )
    print(
        f"list {int(listing['devices'])} devices by label (SQLite): {listing['list_all_ms']:.1f} ms"
        f" wall, {listing['list_all_cpu_ms']:.1f} ms CPU (target < 100 ms); one 100-device "
        f"page: {listing['page_100_ms']:.2f} ms"
    )
    print(
        json.dumps(
            {
                "bench": "cloud_grpc",
                "callers": args.callers,
                "echo": e,
                "get_desired_state": p,
                "throughput_ratio": round(thr_ratio, 3),
                "p99_ratio": round(p99_ratio, 3),
                "listing": listing,
                "loadavg_1m": round(load, 2),
                "cpus": os.cpu_count(),
                "pass": thr_ratio >= 0.5 and p99_ratio <= 3 and listing["list_all_ms"] < 100,
            }
        )
    )


if __name__ == "__main__":
    main()
