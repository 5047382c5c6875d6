"""Forward a DDS-based ROS 2 robot's topics to the EdgeFlux runtime's `ros2` adapter.

For robots whose ROS 2 nodes use a DDS middleware (Fast DDS, Cyclone DDS) rather
than rmw_zenoh: this rclpy node reads the same mapping the runtime uses
(`[runtime.adapter_options]` in runtime.toml), subscribes to the observation topics
on DDS and republishes each message's CDR bytes unchanged on Zenoh in rmw_zenoh's
format, and forwards the runtime's actions from Zenoh back onto the DDS action topic.
The runtime's configuration stays as it is (`connect = ["tcp/localhost:7447"]`);
this node listens there.

Run it in the robot's ROS 2 environment (it needs rclpy, plus `eclipse-zenoh` and
`rosbags` from pip)::

    source /opt/ros/jazzy/setup.bash
    python3 examples/ros2_rclpy_bridge.py --config /etc/edgeflux/runtime.toml

Not tested here: it was written without a ROS 2 installation at hand (see
docs/ros2.md, "What was tested, and what was not").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import rclpy
import zenoh
from rclpy.node import Node
from rosidl_runtime_py.utilities import get_message

from runtime.adapters.ros2.adapter import Ros2Options, load_typestore
from runtime.adapters.ros2.keys import encode_attachment, topic_key


class Bridge(Node):
    def __init__(self, options: Ros2Options, listen: str) -> None:
        super().__init__("edgeflux_bridge")
        store = load_typestore(options.distro, options.msg_dirs)
        conf = zenoh.Config()
        conf.insert_json5("mode", '"peer"')
        conf.insert_json5("listen/endpoints", json.dumps([listen]))
        conf.insert_json5("scouting/multicast/enabled", "false")
        self.session = zenoh.open(conf)
        self.gid = os.urandom(16)
        self.seq = 0

        def key(topic: str, ros_type: str) -> str:
            return topic_key(options.domain_id, topic, ros_type, store.hash_rihs01(ros_type))

        for m in options.observation:  # DDS -> Zenoh, bytes unchanged (both are CDR)
            pub = self.session.declare_publisher(key(m.topic, m.type))
            self.create_subscription(get_message(m.type), m.topic, self._forward(pub), 10, raw=True)
            self.get_logger().info(f"{m.topic} ({m.type}) -> Zenoh")
        act = options.action
        dds_pub = self.create_publisher(get_message(act.type), act.topic, 10)

        def to_dds(sample: zenoh.Sample) -> None:  # Zenoh -> DDS, serialized as received
            dds_pub.publish(bytes(sample.payload.to_bytes()))

        self.session.declare_subscriber(key(act.topic, act.type), to_dds)
        self.get_logger().info(f"Zenoh -> {act.topic} ({act.type})")

    def _forward(self, pub: Any) -> Any:
        def handle(data: bytes) -> None:
            self.seq += 1
            pub.put(data, attachment=encode_attachment(self.seq, time.time_ns(), self.gid))

        return handle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=Path("/etc/edgeflux/runtime.toml"))
    ap.add_argument("--listen", default="tcp/localhost:7447", help="where the runtime connects")
    args = ap.parse_args()
    with args.config.open("rb") as f:
        table = tomllib.load(f).get("runtime", {}).get("adapter_options", {})
    options = Ros2Options.model_validate(table)
    rclpy.init(args=sys.argv)
    node = Bridge(options, args.listen)
    try:
        rclpy.spin(node)
    finally:
        node.session.close()
        node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    main()
