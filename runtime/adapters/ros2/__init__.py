"""ROS 2 robots over Zenoh, as rmw_zenoh speaks it, without a ROS installation.

The adapter subscribes to the observation topics and publishes the action topic with
the key expressions, CDR payloads and sample attachments of rmw_zenoh
(`runtime.adapters.ros2.keys`); message types come from `rosbags`' type store (the
standard ROS 2 messages of the configured distribution) plus the robot's own ``.msg``
files; topics and fields map to the observation and action vectors as the robot's
configuration declares (`runtime.adapters.ros2.mapping`).

Options (``[runtime.adapter_options]`` with ``adapter = "ros2"``)::

    domain_id = 0                        # ROS_DOMAIN_ID
    mode = "peer"                        # or "client" (through a Zenoh router)
    connect = ["tcp/localhost:7447"]     # rmw_zenoh's router by default
    listen = []                          # e.g. ["tcp/127.0.0.1:7450"]
    distro = "jazzy"                     # standard message definitions and type hashes
    msg_dirs = []                        # user types: <dir>/<package>/msg/<Name>.msg
    max_age_ms = 100                     # an older observation counts as missing
    observation = [{topic, type, fields}, ...]
    action = {topic, type, fields}
"""

from runtime.adapters.ros2.adapter import Ros2Adapter, Ros2Options, TopicMap

__all__ = ["Ros2Adapter", "Ros2Options", "TopicMap"]
