"""One control-plane replica as its own process: ``python -m tests.cloud._plane_replica
HOME DATABASE_URL``. Prints ``ready <address> <metrics port>`` once serving, then runs
until killed.

With ``EDGEFLUX_TEST_APPLY_PAUSE_S`` set, the rollout driver prints
``applying <rollout> wave <n>`` and waits that long before each wave or retry's side
effect, so a test can stop the process at exactly that moment.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any


def _pause_before_apply(pause_s: float) -> None:
    from cloud.rollouts.service import RolloutService

    real = RolloutService._apply

    def apply(self: RolloutService, r: Any, intent: Any, actor: str) -> Any:
        print(f"applying {r.id} wave {intent['wave']}", flush=True)
        time.sleep(pause_s)
        return real(self, r, intent, actor)

    RolloutService._apply = apply  # type: ignore[method-assign]


def main(home: str, url: str) -> None:
    from cloud.testing import running_plane

    pause = os.environ.get("EDGEFLUX_TEST_APPLY_PAUSE_S")
    if pause:
        _pause_before_apply(float(pause))
    with running_plane(home, overrides={"database_url": url}, metrics=True) as plane:
        print(f"ready {plane.address} {plane.metrics_port}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
