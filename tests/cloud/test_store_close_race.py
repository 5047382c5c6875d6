"""Closing a SQLite store while other threads still read from it (a plane stopping
while its rollout driver finishes a pass) refuses their reads; it never crashes."""

from __future__ import annotations

import threading
from pathlib import Path

from cloud.store import Store
from cloud.store.errors import StoreError


def test_close_during_reads_on_other_threads_refuses_them_cleanly(tmp_path: Path) -> None:
    for attempt in range(5):
        store = Store.open(f"sqlite:///{tmp_path / f'fleet-{attempt}.db'}")
        started = threading.Barrier(5)
        outcomes: list[str] = []

        def reader() -> None:
            started.wait(timeout=10)
            try:
                while True:
                    store.list_devices(limit=10)
            except StoreError as e:
                outcomes.append(f"refused: {e}")
            except Exception as e:  # anything else is a bug in close()
                outcomes.append(f"unexpected {type(e).__name__}: {e}")

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        started.wait(timeout=10)
        store.close()
        for t in threads:
            t.join(timeout=20)
            assert not t.is_alive(), "a reader kept reading from a closed store"
        assert len(outcomes) == 4
        assert all(o.startswith("refused: ") for o in outcomes), outcomes
