"""The flight recorder: every control tick into MCAP files that ROS 2 tools and Foxglove
open, as a ring of segments under a disk quota that keeps what surrounds interventions.
"""

from runtime.recording.recorder import EVENT_TOPIC, TICK_TOPIC, FlightRecorder
from runtime.recording.segments import Segment, SegmentRing

__all__ = ["EVENT_TOPIC", "TICK_TOPIC", "FlightRecorder", "Segment", "SegmentRing"]
