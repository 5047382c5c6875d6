"""MCAP flight-recorder segments → the episode dataset distillation trains from.

Reads the `/edgeflux/tick` messages of one or more segments (any order; they are
sorted by tick time), and cuts them into episodes of consecutive ticks: an episode
ends where a tick is missing (dropped, or a segment the quota deleted), where the
active bundle changes, or where a tick has no observation (the robot did not report
one). Step t of an episode is the observation of tick k, the action written at tick
k, and the observation of tick k+1, so an episode of T+1 ticks gives T steps.
Robots report no reward: rewards are zero. The result is an `edgeflux.replay/v1`
buffer (`distill.replay`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from distill.replay import ReplayBuffer, Trajectory
from runtime.recording import TICK_TOPIC
from runtime.recording.schema import Tick, decode_tick

__all__ = ["ExportError", "episodes", "read_ticks", "segment_paths", "to_replay"]


class ExportError(ValueError):
    """The recordings cannot be exported; the message says which file and why."""


def segment_paths(sources: Iterable[Path]) -> list[Path]:
    """Finished segments named directly or found in directories (``*.mcap``)."""
    out: list[Path] = []
    for src in sources:
        if src.is_dir():
            out += sorted(src.glob("*.mcap"))
        elif src.is_file():
            out.append(src)
        else:
            raise ExportError(f"{src}: no such file or directory")
    if not out:
        raise ExportError("no .mcap segments found in " + ", ".join(map(str, sources)))
    return out


def read_ticks(path: Path) -> Iterator[Tick]:
    from mcap.exceptions import McapError
    from mcap.reader import make_reader

    try:
        with path.open("rb") as f:
            for _schema, _channel, message in make_reader(f).iter_messages(topics=[TICK_TOPIC]):
                try:
                    yield decode_tick(message.data)
                except ValueError as exc:
                    raise ExportError(
                        f"{path}: tick message at {message.log_time} ns: {exc}"
                    ) from None
    except McapError as exc:
        raise ExportError(f"{path}: not a readable MCAP file ({exc})") from None
    except OSError as exc:
        raise ExportError(f"{path}: {exc}") from None


def episodes(ticks: Iterable[Tick]) -> Iterator[list[Tick]]:
    """Runs of consecutive ticks with an observation, under one bundle."""
    run: list[Tick] = []
    for t in sorted(ticks, key=lambda t: (t.stamp_ns, t.tick)):
        if run and (
            t.tick != run[-1].tick + 1
            or t.bundle_digest != run[-1].bundle_digest
            or t.observation.size != run[-1].observation.size
        ):
            yield run
            run = []
        if t.observation.size == 0:
            if run:
                yield run
            run = []
            continue
        run.append(t)
    if run:
        yield run


def to_replay(paths: Iterable[Path], env_id: str = "", min_steps: int = 1) -> ReplayBuffer:
    """The episodes of the segments at `paths` as one replay buffer."""
    ticks = [t for p in paths for t in read_ticks(p)]
    buffer: ReplayBuffer | None = None
    for run in episodes(ticks):
        if len(run) - 1 < min_steps:
            continue
        obs = np.stack([t.observation for t in run])
        actions = np.stack([t.action for t in run[:-1]])
        if buffer is None:
            buffer = ReplayBuffer(
                env_id or f"recording:{run[0].bundle}", obs.shape[1], actions.shape[1]
            )
        elif obs.shape[1] != buffer.obs_dim or actions.shape[1] != buffer.act_dim:
            raise ExportError(
                f"the recordings mix observation/action sizes ({buffer.obs_dim}/"
                f"{buffer.act_dim} and {obs.shape[1]}/{actions.shape[1]} under "
                f"{run[0].bundle}); export the bundles' segments separately"
            )
        buffer.add(Trajectory(obs=obs, actions=actions, rewards=np.zeros(len(actions), np.float32)))
    if buffer is None:
        raise ExportError(f"the recordings hold no episode of at least {min_steps} steps")
    return buffer
