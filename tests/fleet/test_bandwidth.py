"""Download pacing: the byte-rate cap and the low-priority mode."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cloud.tuf_repo import TufRepository
from fleet.bandwidth import Pacer
from fleet.tuf_client import GrpcFetcher, TufClient
from tests.fleet.test_tuf_client import RepoServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_the_cap_spreads_bytes_over_time_at_the_configured_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(1_000_000, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        pacer.take(100_000)
    assert clock.now == pytest.approx(1.0)
    clock.now += 5.0  # an idle link earns no burst beyond the next piece
    pacer.take(100_000)
    assert clock.now == pytest.approx(6.1)


def test_low_priority_waits_for_telemetry_but_never_forever() -> None:
    clock = FakeClock()
    backlog = [3]

    def telemetry_waiting() -> bool:
        backlog[0] -= 1
        return backlog[0] >= 0

    pacer = Pacer(0, telemetry_waiting, clock=clock, sleep=clock.sleep)
    pacer.take(1000)
    assert clock.now == pytest.approx(0.15)  # three 50 ms pauses, then on
    stuck = Pacer(0, lambda: True, max_yield_s=1.0, clock=clock, sleep=clock.sleep)
    start = clock.now
    stuck.take(1000)
    assert 1.0 <= clock.now - start < 1.1


def test_a_capped_download_takes_as_long_as_the_cap_says(tmp_path: Path) -> None:
    repo = TufRepository.create(tmp_path / "repo")
    efb = tmp_path / "big.efb"
    efb.write_bytes(os.urandom(120_000))
    repo.add_target("bundles/big-1.0.0.efb", efb, {"name": "big"})
    pacer = Pacer(300_000)
    fetcher = GrpcFetcher(RepoServer(repo, chunk=10_000), pacer=pacer)
    view = TufClient(tmp_path / "agent", repo.metadata_dir / "1.root.json", fetcher).refresh()
    assert pacer.slept_s == 0  # metadata is never paced
    target = view.target("bundles/big-1.0.0.efb")
    assert target is not None
    t0 = time.monotonic()
    assert view.download(target).read_bytes() == efb.read_bytes()
    assert time.monotonic() - t0 >= 0.35  # 120 kB at 300 kB/s
    assert 0.2 < pacer.slept_s <= 0.45
