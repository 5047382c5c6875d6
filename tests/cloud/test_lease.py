"""The PostgreSQL advisory-lock lease that elects the rollout engine's driver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.home import init_home
from cloud.lease import AdvisoryLease, leader, lease_for, lease_key
from tests.servers import Postgres, run_postgres, wait_until

pytestmark = [pytest.mark.services]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with run_postgres() as p:
        yield p


def test_lease_keys_are_stable_distinct_signed_64_bit() -> None:
    assert lease_key("rollout-engine") == lease_key("rollout-engine")
    assert lease_key("rollout-engine") != lease_key("other")
    assert all(-(2**63) <= lease_key(n) < 2**63 for n in ("a", "b", "rollout-engine"))


def test_sqlite_needs_no_lease() -> None:
    assert lease_for("sqlite:////tmp/x.db", "rollout-engine") is None


def test_exactly_one_holder_and_the_other_takes_over_when_it_lets_go(pg: Postgres) -> None:
    url = pg.create_database("lease_unit")
    changes: list[tuple[str, bool]] = []
    a = AdvisoryLease(url, "t", retry_s=0.2, on_change=lambda h: changes.append(("a", h)))
    b = AdvisoryLease(url, "t", retry_s=0.2, on_change=lambda h: changes.append(("b", h)))
    a.start()
    try:
        assert a.wait_held(10)
        b.start()
        time.sleep(1.0)  # b tries five times meanwhile; none may succeed
        assert a.held and not b.held
        assert leader(url, "t") == a.application_name
        a.stop()
        assert b.wait_held(5)
        wait_until(lambda: len(changes) == 3, 5, "b's listener")
        assert changes == [("a", True), ("a", False), ("b", True)]
        other = AdvisoryLease(url, "another-singleton", retry_s=0.2).start()
        try:
            assert other.wait_held(5)  # one lease per name, independent
        finally:
            other.stop()
    finally:
        a.stop()
        b.stop()
    assert leader(url, "t") is None


def _replica(home: Path, url: str, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.cloud._plane_replica", str(home), url],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=log.open("a"),
        text=True,
    )


def _pid_of(app_name: str | None) -> int | None:
    return None if app_name is None else int(app_name.rsplit(":", 1)[1])


def test_killing_the_leading_plane_hands_the_rollout_engine_over_within_10_s(
    pg: Postgres, tmp_path: Path
) -> None:
    url = pg.create_database("lease_planes")
    home = tmp_path / "home"
    init_home(home)  # replicas share one home (keys, TUF) and one database
    log = tmp_path / "replicas.log"
    a = _replica(home, url, log)
    b: subprocess.Popen[str] | None = None
    try:
        assert a.stdout is not None and a.stdout.readline().startswith("ready"), log.read_text()
        wait_until(lambda: _pid_of(leader(url, "rollout-engine")) == a.pid, 20, "a to lead")
        b = _replica(home, url, log)
        assert b.stdout is not None and b.stdout.readline().startswith("ready"), log.read_text()
        time.sleep(2.0)  # b's lease tries twice meanwhile; a keeps leading
        assert _pid_of(leader(url, "rollout-engine")) == a.pid
        a.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        a.wait(10)
        wait_until(
            lambda: _pid_of(leader(url, "rollout-engine")) == b.pid,  # type: ignore[union-attr]
            10,
            "b to take the rollout engine over",
        )
        handover = time.monotonic() - killed
        print(f"handover after kill -9: {handover:.2f} s")
        assert handover < 10
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
