"""One update on a robot root, driven directly through the agent's real update path.

``python -m tests.fleet._update_driver ROOT start NAME SEQUENCE GENERATION`` builds the
agent of ROOT (its config, TUF client, gRPC channel to the plane, runtime socket) and
runs one update to a terminal state; ``... ROOT resume`` does what a restarted agent
does first (``UpdateRunner.resume``). The last stdout line is the record as JSON.

With ``EDGEFLUX_TRIAL_KILL_AT=STATE:SECONDS`` a timer thread armed when STATE is
persisted sends SIGKILL to this process SECONDS later, while the step's effect runs on
the main thread (a download or commit takes milliseconds: a kill from outside, after
seeing the state on disk, would almost never land inside one). No MQTT connection is
opened: the update is started as a validated hint would start it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path


def main(argv: list[str]) -> int:
    from fleet._effects import robot_effects
    from fleet.agent import Agent
    from fleet.config import load_agent_config
    from runtime.layout import RobotLayout

    root, mode, *rest = argv
    layout = RobotLayout.at(Path(root))
    agent = Agent(layout, load_agent_config(layout), effects=robot_effects)
    runner = agent.runner
    if runner is None:
        print(json.dumps({"error": "update path unavailable"}))
        return 2
    kill_at = os.environ.get("EDGEFLUX_TRIAL_KILL_AT")
    if kill_at:
        state, delay = kill_at.split(":")

        def arm(persisted: object) -> None:
            if getattr(persisted, "value", None) == state:
                kill = threading.Timer(float(delay), os.kill, (os.getpid(), signal.SIGKILL))
                kill.daemon = True
                kill.start()

        runner.on_persisted = arm
    if mode == "start":
        name, seq, gen = rest
        record = runner.start(name, int(seq), int(gen))
    else:
        record = runner.resume()
    print(json.dumps({"state": record.state.value, "reason": record.reason.value}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
