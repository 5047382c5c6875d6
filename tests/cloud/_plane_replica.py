"""One control-plane replica as its own process: ``python -m tests.cloud._plane_replica
HOME DATABASE_URL``. Prints ``ready <address>`` once serving, then runs until killed."""

from __future__ import annotations

import sys
import threading


def main(home: str, url: str) -> None:
    from cloud.testing import running_plane

    with running_plane(home, overrides={"database_url": url}) as plane:
        print(f"ready {plane.address}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
