"""Run N concurrent admissions through real Routers sharing one SQL ledger; print JSON.

Usage: python -m tests.router._admit_worker URL THREADS GO_FILE PREFIX
(the test starts two of these as separate "router processes").
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from cloud.router import Outcome, Qos, Registry, Router, Scope, Task
from cloud.store.budgets import SqlLedger
from tests.router._fixtures import spec
from tests.servers import wait_until


def admit_concurrently(ledger: object, threads: int, prefix: str, go: Path | None) -> list[str]:
    registry = Registry([spec("gpu", capacity=1000, per_call=0.5)])
    barrier = threading.Barrier(threads)
    outcomes: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        router = Router(registry, ledger, clock=time.monotonic, instance=f"{prefix}{i}")  # type: ignore[arg-type]
        task = Task(
            f"{prefix}-{i}",
            "plan",
            Qos.INTERACTIVE,
            time.monotonic() + 30,
            Scope("acme", "lab", f"r{i}"),
        )
        barrier.wait()
        step = router.submit(task)
        out = "admitted" if step.dispatches else step.results[0].outcome.value
        with lock:
            outcomes.append(out)

    if go is not None:
        wait_until(go.exists, 60, "the go file")
    ts = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return outcomes


def main() -> None:
    url, threads, go, prefix = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    ledger = SqlLedger.open(url, pool_size=threads, migrate=False)
    outcomes = admit_concurrently(ledger, threads, prefix, go)
    print(
        json.dumps(
            {
                "admitted": outcomes.count("admitted"),
                "exhausted": outcomes.count(Outcome.BUDGET_EXHAUSTED.value),
                "other": len(outcomes)
                - outcomes.count("admitted")
                - outcomes.count(Outcome.BUDGET_EXHAUSTED.value),
            }
        )
    )


if __name__ == "__main__":
    main()
