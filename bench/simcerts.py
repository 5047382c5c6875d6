"""Certificates for a simulated fleet, made in parallel and kept for the next run.

`fleet_pki(directory, robots, services)` leaves in `directory` a fleet CA (`ca.crt`,
its key encrypted with a fixed passphrase: these are benchmark identities, never a
real fleet's), the broker's server certificate (`server.crt`) and one certificate per
robot and per service (`<name>.crt` / `<name>.key`). What is already there from an
earlier run with the same CA is kept; only the missing ones are issued, split over
worker processes. A directory whose CA cannot be read is refused, not overwritten.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

from bench.simrobot import Pki
from cloud.pki import FleetCA, PKIError

__all__ = ["fleet_pki"]

PASSPHRASE = b"edgeflux-benchmark-fleet-ca"
CA_KEY = "ca.key.enc"


def _issue(args: tuple[str, str, list[str]]) -> int:
    directory, kind, names = args
    d = Path(directory)
    ca = FleetCA.load(d / "ca.crt", d / CA_KEY, PASSPHRASE)
    issue = ca.issue_device if kind == "device" else ca.issue_service
    for name in names:
        issue(name).write(d, name)
    return len(names)


def _missing(d: Path, names: list[str]) -> list[str]:
    return [n for n in names if not (d / f"{n}.crt").exists() or not (d / f"{n}.key").exists()]


def fleet_pki(
    directory: Path,
    robots: list[str],
    services: tuple[str, ...] = (),
    procs: int | None = None,
) -> tuple[Pki, int]:
    """The certificates of `robots` and `services` under `directory`; returns the
    `Pki` and how many certificates had to be issued now."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_crt, ca_key = d / "ca.crt", d / CA_KEY
    if ca_crt.exists() or ca_key.exists():
        try:
            ca = FleetCA.load(ca_crt, ca_key, PASSPHRASE)
        except PKIError as exc:
            raise PKIError(f"{d} holds a fleet CA this benchmark cannot use: {exc}") from exc
    else:
        ca = FleetCA.create(name="EdgeFlux benchmark fleet CA")
        ca.save(ca_crt, ca_key, PASSPHRASE)
    issued = 0
    if _missing(d, ["server"]):
        ca.issue_server("broker", ("localhost", "127.0.0.1")).write(d, "server")
        issued += 1
    jobs: list[tuple[str, str, list[str]]] = []
    workers = max(1, procs or os.cpu_count() or 1)
    for kind, names in (("device", _missing(d, robots)), ("service", _missing(d, list(services)))):
        if not names:
            continue
        size = max(1, -(-len(names) // workers))
        jobs += [(str(d), kind, names[i : i + size]) for i in range(0, len(names), size)]
    if len(jobs) == 1 or workers == 1:
        issued += sum(_issue(j) for j in jobs)
    elif jobs:
        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            issued += sum(pool.map(_issue, jobs))
    return Pki(d, ca_crt), issued


def main(argv: list[str] | None = None) -> None:
    import argparse
    import sys
    import time

    ap = argparse.ArgumentParser(description="Make (or top up) a simulated fleet's certificates.")
    ap.add_argument("directory", type=Path)
    ap.add_argument("--robots", type=int, required=True, help="robots sim-00000 .. sim-N-1")
    ap.add_argument("--procs", type=int, default=None, help="worker processes (default: CPUs)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.fleet_scale import fleet_devices, fleet_services

    t0 = time.time()
    _, issued = fleet_pki(
        args.directory, fleet_devices(args.robots), fleet_services(), procs=args.procs
    )
    print(f"{issued} certificates issued in {time.time() - t0:.1f} s into {args.directory}")


if __name__ == "__main__":
    main()
