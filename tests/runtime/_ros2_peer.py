"""A stand-in ROS 2 robot for the ros2 adapter's tests, in a process of its own.

Publishes sensor_msgs/msg/JointState on /joint_states (CDR from rosbags' serializer,
rmw_zenoh's key expression and attachment) and prints every message it receives on
the action topic as one JSON line. Usage::

    python _ros2_peer.py ENDPOINT ACTION_TOPIC ACTION_TYPE POSITIONS VELOCITIES [MSG_DIR]
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zenoh
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from runtime.adapters.ros2.keys import decode_attachment, encode_attachment, topic_key


def main() -> None:
    endpoint, act_topic, act_type, pos, vel = sys.argv[1:6]
    store = get_typestore(Stores.ROS2_JAZZY)
    if len(sys.argv) > 6:
        for f in Path(sys.argv[6]).glob("*/msg/*.msg"):
            name = f"{f.parent.parent.name}/msg/{f.stem}"
            store.register(get_types_from_msg(f.read_text(), name))
    conf = zenoh.Config()
    conf.insert_json5("mode", '"peer"')
    conf.insert_json5("connect/endpoints", json.dumps([endpoint]))
    conf.insert_json5("scouting/multicast/enabled", "false")
    session = zenoh.open(conf)
    js = "sensor_msgs/msg/JointState"
    pub = session.declare_publisher(topic_key(0, "/joint_states", js, store.hash_rihs01(js)))
    out = threading.Lock()

    def on_action(sample: zenoh.Sample) -> None:
        msg = store.deserialize_cdr(bytes(sample.payload.to_bytes()), act_type)
        seq, _, _ = decode_attachment(bytes(sample.attachment.to_bytes()))
        with out:
            print(json.dumps({"seq": seq, "msg": _plain(msg)}), flush=True)

    session.declare_subscriber(
        topic_key(0, act_topic, act_type, store.hash_rihs01(act_type)), on_action
    )
    Time = store.types["builtin_interfaces/msg/Time"]
    Header = store.types["std_msgs/msg/Header"]
    JointState = store.types[js]
    positions = np.asarray(json.loads(pos), np.float64)
    velocities = np.asarray(json.loads(vel), np.float64)
    gid = os.urandom(16)
    seq = 0
    print(json.dumps({"ready": True}), flush=True)
    while True:  # until the test kills this process
        now = time.time_ns()
        msg = JointState(
            header=Header(stamp=Time(sec=now // 10**9, nanosec=now % 10**9), frame_id="base"),
            name=[f"j{i}" for i in range(len(positions))],
            position=positions,
            velocity=velocities,
            effort=np.zeros(0, np.float64),
        )
        seq += 1
        pub.put(bytes(store.serialize_cdr(msg, js)), attachment=encode_attachment(seq, now, gid))
        time.sleep(0.005)


def _plain(msg: object) -> object:
    if hasattr(msg, "__dataclass_fields__"):
        return {k: _plain(getattr(msg, k)) for k in msg.__dataclass_fields__ if k != "__msgtype__"}
    if isinstance(msg, np.ndarray):
        return msg.tolist()
    if isinstance(msg, np.generic):
        return msg.item()
    return msg


if __name__ == "__main__":
    main()
