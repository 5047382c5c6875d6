"""Control-plane benchmark: GetDesiredState vs a bare grpc.aio echo, and device listing.

Usage::

    python bench/cloud_grpc.py                 # 64 callers, 5 s per server
    python bench/cloud_grpc.py --callers 64 --seconds 10 --devices 10000

Part 1 runs, in one process, a bare grpc.aio echo server and the real control plane,
both with the same mTLS credentials on loopback, measured in interleaved short rounds
so the machine's other load hits both alike. `--callers` concurrent unary callers
share `--channels` client channels (one device certificate each). The plane answers
GetDesiredState: identity and revocation check plus the device row in one query (read
for every call, so a revocation by any process holds from the next call), and the
DSSE document (cached per device generation).
Targets: throughput >= 0.7x the echo's, p99 <= 1.5x the echo's.

With `--client-process` part 1 runs a second time with the callers in a child process,
as robots are: the servers then have their process (and its interpreter lock) to
themselves, while the in-process run also charges the callers' work to the servers.

Part 1b: `--fleet` robots polling every `--poll-s` seconds (open loop, Poisson
arrivals at fleet/poll_s calls/s, from the `--channels` certificates) against the
shipped plane with `--fleet` devices registered; target p99 <= 100 ms.

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
import subprocess
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


async def _rounds(
    addresses: dict[str, str],
    devices: list[ClientCredentials],
    callers: int,
    seconds: float,
    n_channels: int,
    rounds: int,
) -> dict[str, dict[str, float]]:
    """The closed-loop callers against each server in turn, in interleaved rounds."""
    chans = {k: _channels(a, devices, n_channels) for k, a in addresses.items()}
    payload = b"x" * 64
    req = device_pb2.GetDesiredStateRequest()

    def call(kind: str, i: int) -> Callable[[], Awaitable[Any]]:
        ch = chans[kind][i % n_channels]
        if kind == "echo":
            echo = ch.unary_unary(ECHO_METHOD)
            return lambda: echo(payload)
        stub = device_pb2_grpc.DeviceServiceStub(ch)  # type: ignore[no-untyped-call]
        return lambda: stub.GetDesiredState(req)

    calls = {k: [call(k, i) for i in range(callers)] for k in chans}
    for k in calls:  # connect + warm
        for c in calls[k][:n_channels]:
            await c()
    # Interleave short rounds so load from other processes hits both alike.
    lat: dict[str, list[float]] = {k: [] for k in calls}
    took = dict.fromkeys(calls, 0.0)
    for _ in range(rounds):
        for k in calls:
            took[k] += await _drive(calls[k], seconds / rounds, lat[k])
    for cs in chans.values():
        for ch in cs:
            await ch.close()
    return {k: _summary(lat[k], took[k]) for k in calls}


def bench_grpc(
    tmp: Path,
    callers: int,
    seconds: float,
    n_channels: int,
    rounds: int,
    client_process: bool = False,
) -> dict[str, Any]:
    """Echo vs GetDesiredState; with `client_process` the callers run in a child process
    (as robots do: the servers then have this process to themselves)."""
    with running_plane(tmp / "plane") as plane:
        devices = [plane.device(f"bench-{i:03d}", {"fleet": "bench"}) for i in range(n_channels)]
        plane.store.set_desired(
            [d.id for d in devices], {"name": "pendulum", "version": "1.0.0", "sequence": 1}
        )
        with EchoServer(plane.home) as echo:
            addresses = {"echo": f"127.0.0.1:{echo.port}", "plane": plane.address}
            if not client_process:
                return asyncio.run(
                    _rounds(addresses, devices, callers, seconds, n_channels, rounds)
                )
            job = {
                "addresses": addresses,
                "devices": [[d.id, str(d.cert), str(d.key), str(d.ca)] for d in devices],
                "callers": callers,
                "seconds": seconds,
                "channels": n_channels,
                "rounds": rounds,
            }
            out = subprocess.run(
                [sys.executable, __file__, "--client-job", json.dumps(job)],
                capture_output=True,
                text=True,
                check=True,
                timeout=seconds * 4 + 120,
            )
            return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _client_job(text: str) -> None:
    job = json.loads(text)
    devices = [ClientCredentials(i, Path(c), Path(k), Path(a)) for i, c, k, a in job["devices"]]
    res = asyncio.run(
        _rounds(
            job["addresses"],
            devices,
            job["callers"],
            job["seconds"],
            job["channels"],
            job["rounds"],
        )
    )
    print(json.dumps(res))


def bench_fleet(
    tmp: Path, fleet: int, poll_s: float, seconds: float, n_channels: int
) -> dict[str, float]:
    """`fleet` robots polling every `poll_s` s: open-loop Poisson calls at fleet/poll_s."""
    import random

    with running_plane(tmp / "fleet") as plane:
        devices = [plane.device(f"poll-{i:03d}") for i in range(n_channels)]
        plane.store.add_devices_bulk(
            [(f"robot-{i:05d}", "0" * 64, {"fleet": "sim"}) for i in range(fleet - n_channels)]
        )
        plane.store.set_desired(
            [d.id for d in devices], {"name": "pendulum", "version": "1.0.0", "sequence": 1}
        )
        rate = fleet / poll_s

        async def run() -> dict[str, float]:
            chans = _channels(plane.address, devices, n_channels)
            stubs = [device_pb2_grpc.DeviceServiceStub(ch) for ch in chans]  # type: ignore[no-untyped-call]
            req = device_pb2.GetDesiredStateRequest()
            for stub in stubs:
                await stub.GetDesiredState(req)
            lat: list[float] = []
            rng = random.Random(7)
            tasks = []

            async def one(i: int) -> None:
                t0 = time.perf_counter()
                await stubs[i % n_channels].GetDesiredState(req)
                lat.append(time.perf_counter() - t0)

            start = time.perf_counter()
            due = start
            i = 0
            while due - start < seconds:
                due += rng.expovariate(rate)
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tasks.append(asyncio.ensure_future(one(i)))
                i += 1
            await asyncio.gather(*tasks)
            for ch in chans:
                await ch.close()
            res = _summary(lat, time.perf_counter() - start)
            res["offered_rps"] = rate
            return res

        return asyncio.run(run())


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
    ap.add_argument("--fleet", type=int, default=10_000, help="robots polling (part 1b)")
    ap.add_argument("--poll-s", type=float, default=30.0, help="their poll period")
    ap.add_argument("--fleet-seconds", type=float, default=10.0)
    ap.add_argument(
        "--client-process",
        action="store_true",
        help="also run the callers in a child process (servers alone in this one)",
    )
    ap.add_argument("--client-job", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client_job:
        _client_job(args.client_job)
        return
    with tempfile.TemporaryDirectory(prefix="edgeflux-bench-") as d:
        tmp = Path(d)
        g = bench_grpc(tmp, args.callers, args.seconds, args.channels, args.rounds)
        apart = (
            bench_grpc(tmp / "apart", args.callers, args.seconds, args.channels, args.rounds, True)
            if args.client_process
            else None
        )
        fleet = bench_fleet(tmp, args.fleet, args.poll_s, args.fleet_seconds, 64)
        listing = bench_listing(tmp, args.devices)
    e, p = g["echo"], g["plane"]
    load = os.getloadavg()[0]
    thr_ratio = p["rps"] / e["rps"]
    p99_ratio = p["p99_ms"] / e["p99_ms"]
    print(f"machine: {os.cpu_count()} CPUs, 1-min load average {load:.1f} (shared: ratios only)")
    print(f"{'server':<40}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'x echo':>9}")
    rows = (
        ("bare grpc.aio echo (mTLS)", e),
        ("GetDesiredState (plane)", p),
    )
    for label, r in rows:
        print(
            f"{label:<40}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
            f"{r['rps'] / e['rps']:>9.2f}"
        )
    print(
        f"throughput ratio {thr_ratio:.2f}x (target >= 0.7x), p99 ratio {p99_ratio:.2f}x "
        f"(target <= 1.5x), {args.callers} callers, {args.seconds:.0f} s each in "
        f"{args.rounds} interleaved rounds"
    )
    print(
        f"{args.fleet} robots polling every {args.poll_s:g} s ({fleet['offered_rps']:.0f} "
        f"calls/s offered, open loop, {args.fleet_seconds:g} s): served {fleet['rps']:.0f}/s, "
        f"p50 {fleet['p50_ms']:.2f} ms, p99 {fleet['p99_ms']:.2f} ms (target <= 100 ms)"
    )
    if apart is not None:
        ea, pa = apart["echo"], apart["plane"]
        print(
            f"callers in a child process: echo {ea['rps']:.0f}/s p99 {ea['p99_ms']:.2f} ms, "
            f"GetDesiredState {pa['rps']:.0f}/s p99 {pa['p99_ms']:.2f} ms: throughput ratio "
            f"{pa['rps'] / ea['rps']:.2f}x, p99 ratio {pa['p99_ms'] / ea['p99_ms']:.2f}x"
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
                "fleet_poll": {"robots": args.fleet, "poll_s": args.poll_s, **fleet},
                "client_process": None
                if apart is None
                else {
                    **apart,
                    "throughput_ratio": round(apart["plane"]["rps"] / apart["echo"]["rps"], 3),
                    "p99_ratio": round(apart["plane"]["p99_ms"] / apart["echo"]["p99_ms"], 3),
                },
                "listing": listing,
                "loadavg_1m": round(load, 2),
                "cpus": os.cpu_count(),
                "pass": thr_ratio >= 0.7
                and p99_ratio <= 1.5
                and fleet["p99_ms"] <= 100
                and listing["list_all_ms"] < 100,
            }
        )
    )


if __name__ == "__main__":
    main()
