"""`Ros2Adapter`: the control loop's robot, as ROS 2 topics on Zenoh."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.adapters import AdapterError, AdapterTimeout
from runtime.adapters.ros2.keys import encode_attachment, topic_key
from runtime.adapters.ros2.mapping import FieldPath, MappingError, default_message, resolve
from runtime.manifest import BundleManifest

__all__ = ["Ros2Adapter", "Ros2Options", "TopicMap", "load_typestore"]

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]


class TopicMap(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str
    type: str
    fields: list[str] = Field(min_length=1)


class Ros2Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    domain_id: int = Field(default=0, ge=0, le=232)
    mode: Literal["peer", "client"] = "peer"
    connect: list[str] = Field(default_factory=lambda: ["tcp/localhost:7447"])
    listen: list[str] = Field(default_factory=list)
    distro: str = "jazzy"
    msg_dirs: list[Path] = Field(default_factory=list)
    max_age_ms: float = Field(default=100.0, gt=0)
    observation: list[TopicMap] = Field(min_length=1)
    action: TopicMap


def load_typestore(distro: str, msg_dirs: list[Path]) -> Any:
    """rosbags' standard types for `distro` plus every ``<dir>/<pkg>/msg/<Name>.msg``."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    try:
        store = get_typestore(Stores[f"ROS2_{distro.upper()}"])
    except KeyError:
        known = sorted(s.name[5:].lower() for s in Stores if s.name.startswith("ROS2_"))
        raise AdapterError(f"ros2: unknown distro {distro!r} (known: {', '.join(known)})") from None
    types: dict[str, Any] = {}
    for d in msg_dirs:
        if not Path(d).is_dir():
            raise AdapterError(f"ros2: msg_dirs entry {d} is not a directory")
        for f in sorted(Path(d).glob("*/msg/*.msg")):
            name = f"{f.parent.parent.name}/msg/{f.stem}"
            try:
                types.update(get_types_from_msg(f.read_text(), name))
            except Exception as exc:  # rosbags raises its own parse errors
                raise AdapterError(f"ros2: {f} is not a valid .msg definition: {exc}") from exc
    if types:
        try:
            store.register(types)
        except Exception as exc:
            raise AdapterError(f"ros2: cannot register the types in {msg_dirs}: {exc}") from exc
    return store


class _Topic:
    def __init__(self, store: Any, m: TopicMap, where: str) -> None:
        self.map = m
        try:
            self.paths: list[FieldPath] = [resolve(store, m.type, f) for f in m.fields]
        except MappingError as exc:
            raise AdapterError(f"ros2: {where} {m.topic}: {exc}") from None
        self.size = sum(p.size for p in self.paths)


def _get(msg: Any, path: FieldPath) -> Any:
    for attr in path.attrs:
        msg = getattr(msg, attr)
    return msg


class Ros2Adapter:
    """Reads the newest sample of each observation topic, publishes one action per tick."""

    def __init__(self, **options: Any) -> None:
        try:
            self.options = Ros2Options.model_validate(options)
        except ValidationError as exc:
            raise AdapterError(f"ros2 adapter options: {exc}") from None
        o = self.options
        self.store = load_typestore(o.distro, o.msg_dirs)
        self._obs_topics = [
            _Topic(self.store, m, f"observation[{i}]") for i, m in enumerate(o.observation)
        ]
        self._act = _Topic(self.store, o.action, "action")
        self.obs_dim = sum(t.size for t in self._obs_topics)
        self.action_dim = self._act.size
        self.dropped: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._obs = np.zeros(self.obs_dim, np.float32)
        self._stamps = [0] * len(self._obs_topics)
        self._offsets = np.cumsum([0] + [t.size for t in self._obs_topics]).tolist()
        self._template = default_message(self.store, o.action.type)
        for path in self._act.paths:  # size the action message's arrays once
            if path.array:
                arr = _get(self._template, path)
                if arr.size < path.end:
                    parent = self._template
                    for attr in path.attrs[:-1]:
                        parent = getattr(parent, attr)
                    setattr(parent, path.attrs[-1], np.zeros(path.end, arr.dtype))
        self._seq = 0
        self._gid = os.urandom(16)
        self._session = self._open()
        self._subs = []
        try:
            for i, t in enumerate(self._obs_topics):
                key = self._key(t.map)
                self._subs.append(self._session.declare_subscriber(key, self._on_sample(i, t)))
            self._pub = self._session.declare_publisher(self._key(o.action))
        except Exception as exc:
            self._session.close()
            raise AdapterError(f"ros2: cannot declare the topics on Zenoh: {exc}") from exc

    # ---- set-up ----------------------------------------------------------------------

    def _key(self, m: TopicMap) -> str:
        try:
            return topic_key(
                self.options.domain_id, m.topic, m.type, self.store.hash_rihs01(m.type)
            )
        except ValueError as exc:
            raise AdapterError(f"ros2: {exc}") from None

    def _open(self) -> Any:
        import zenoh

        o = self.options
        conf = zenoh.Config()
        try:
            conf.insert_json5("mode", json.dumps(o.mode))
            conf.insert_json5("connect/endpoints", json.dumps(o.connect))
            conf.insert_json5("listen/endpoints", json.dumps(o.listen))
            conf.insert_json5("scouting/multicast/enabled", "false")  # as rmw_zenoh's default
            return zenoh.open(conf)
        except Exception as exc:  # zenoh.ZError: a bad endpoint, a port in use
            raise AdapterError(f"ros2: cannot open a Zenoh session ({o.mode}): {exc}") from exc

    def check_manifest(self, manifest: BundleManifest) -> None:
        """Refuse a bundle whose vectors do not match the declared topics and fields."""
        io = manifest.io
        for what, mapped, declared, maps in (
            ("observation", self.obs_dim, io.obs_dim, self.options.observation),
            ("action", self.action_dim, io.action_dim, [self.options.action]),
        ):
            if mapped != declared:
                listing = "; ".join(f"{m.topic} {m.fields}" for m in maps)
                raise AdapterError(
                    f"ros2: the mapping gives a {what} of {mapped} values ({listing}), the "
                    f"bundle {manifest.name}@{manifest.version} expects {declared}"
                )

    # ---- Zenoh's threads ---------------------------------------------------------------

    def _on_sample(self, index: int, topic: _Topic) -> Any:
        offset = self._offsets[index]
        typename = topic.map.type
        store = self.store

        def handle(sample: Any) -> None:
            try:
                msg = store.deserialize_cdr(bytes(sample.payload.to_bytes()), typename)
                values = np.empty(topic.size, np.float32)
                k = 0
                for path in topic.paths:
                    v = _get(msg, path)
                    if path.array:
                        part = np.asarray(v)[path.start : path.end]
                        if part.size != path.size:
                            raise ValueError(f"{path.text}: the message has {len(v)} elements")
                        values[k : k + path.size] = part
                    else:
                        values[k] = v
                    k += path.size
            except Exception as exc:  # a malformed or short message: dropped, counted
                self.dropped[topic.map.topic] += 1
                log.debug("ros2: dropped a sample on %s: %s", topic.map.topic, exc)
                return
            with self._lock:
                self._obs[offset : offset + topic.size] = values
                self._stamps[index] = time.monotonic_ns()

        return handle

    # ---- the loop's side ----------------------------------------------------------------

    def read_observation(self) -> F32:
        oldest = time.monotonic_ns() - int(self.options.max_age_ms * 1e6)
        with self._lock:
            for i, stamp in enumerate(self._stamps):
                if stamp < oldest:
                    topic = self._obs_topics[i].map.topic
                    what = "no sample yet" if stamp == 0 else "no fresh sample"
                    raise AdapterTimeout(
                        f"ros2: {what} on {topic} within {self.options.max_age_ms:g} ms"
                    )
            return self._obs.copy()

    def write_action(self, action: F32) -> None:
        msg = self._template
        k = 0
        for path in self._act.paths:
            parent = msg
            for attr in path.attrs[:-1]:
                parent = getattr(parent, attr)
            if path.array:
                arr = getattr(parent, path.attrs[-1])
                arr[path.start : path.end] = action[k : k + path.size]
            else:
                setattr(parent, path.attrs[-1], float(action[k]))
            k += path.size
        try:
            data = bytes(self.store.serialize_cdr(msg, self.options.action.type))
            self._seq += 1
            self._pub.put(data, attachment=encode_attachment(self._seq, time.time_ns(), self._gid))
        except Exception as exc:
            raise AdapterError(
                f"ros2: cannot publish on {self.options.action.topic}: {exc}"
            ) from exc

    def is_safe_to_switch(self) -> bool:
        return True

    def close(self) -> None:
        for sub in self._subs:
            try:
                sub.undeclare()
            except Exception as exc:
                log.debug("ros2: undeclare failed: %s", exc)
        self._subs = []
        try:
            self._session.close()
        except Exception as exc:
            log.debug("ros2: session close failed: %s", exc)
