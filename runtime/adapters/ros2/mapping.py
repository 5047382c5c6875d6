"""Which ROS 2 topics and fields make up the observation and the action vectors.

Declared in the robot's configuration (`[runtime.adapter_options]`), e.g.::

    [[runtime.adapter_options.observation]]
    topic = "/joint_states"
    type = "sensor_msgs/msg/JointState"
    fields = ["position[0:2]", "velocity[0:2]"]

    [runtime.adapter_options.action]
    topic = "/cmd_vel"
    type = "geometry_msgs/msg/Twist"
    fields = ["linear.x", "angular.z"]

A field is a dotted path to a number (``linear.x``), to one element of a numeric
array (``position[3]``) or to a slice of one (``data[0:6]``); the observation is the
topics' fields concatenated in the order given, the action is written into the
action topic's fields in order. Every path is checked against the message type's
definition when the adapter starts, and the total sizes against the bundle's
manifest before a policy runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FieldPath", "MappingError", "default_message", "parse_field", "resolve"]

_PATH = re.compile(
    r"^(?P<attrs>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
    r"(?:\[(?P<start>\d+)(?::(?P<stop>\d+))?\])?$"
)
_NUMERIC = {
    "bool": np.bool_,
    "byte": np.uint8,
    "char": np.uint8,
    "octet": np.uint8,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "uint64": np.uint64,
    "float32": np.float32,
    "float64": np.float64,
}
# rosbags' node types: 1 base, 2 name (a nested message), 3 array, 4 sequence.
_BASE, _NAME, _ARRAY, _SEQUENCE = 1, 2, 3, 4


class MappingError(ValueError):
    """A topic/field mapping does not fit its message type or the manifest."""


@dataclass(frozen=True)
class FieldPath:
    text: str
    attrs: tuple[str, ...]
    start: int | None
    stop: int | None
    array: bool
    """The path ends in a numeric array (indexed), else in a numeric scalar."""

    @property
    def size(self) -> int:
        if self.start is None:
            return 1
        return 1 if self.stop is None else self.stop - self.start

    @property
    def end(self) -> int:
        """One past the last array index the path touches (0 for a scalar)."""
        return 0 if self.start is None else self.start + self.size


def parse_field(text: str) -> tuple[tuple[str, ...], int | None, int | None]:
    m = _PATH.match(text)
    if m is None:
        raise MappingError(
            f"field {text!r} is not a path like 'linear.x', 'position[3]' or 'data[0:6]'"
        )
    start = int(m["start"]) if m["start"] is not None else None
    stop = int(m["stop"]) if m["stop"] is not None else None
    if start is not None and stop is not None and stop <= start:
        raise MappingError(f"field {text!r}: the slice is empty (stop must exceed start)")
    return tuple(m["attrs"].split(".")), start, stop


def _fields(store: Any, typename: str) -> dict[str, tuple[int, Any]]:
    try:
        _consts, fields = store.fielddefs[typename]
    except KeyError:
        raise MappingError(
            f"unknown message type {typename!r} (not a standard ROS 2 type; add its .msg "
            "definition through msg_dirs)"
        ) from None
    return {name: (int(node[0]), node[1]) for name, node in fields}


def resolve(store: Any, typename: str, text: str) -> FieldPath:
    """Check `text` against `typename`'s definition; MappingError says what does not fit."""
    attrs, start, stop = parse_field(text)
    current = typename
    for i, attr in enumerate(attrs):
        fields = _fields(store, current)
        if attr not in fields:
            raise MappingError(
                f"field {text!r}: {current} has no field {attr!r} "
                f"(it has: {', '.join(fields) or 'none'})"
            )
        kind, detail = fields[attr]
        last = i == len(attrs) - 1
        if kind == _NAME:
            if last:
                raise MappingError(f"field {text!r}: {attr} is a {detail} message, not a number")
            current = detail
            continue
        if not last:
            raise MappingError(f"field {text!r}: {attr} is not a message, it has no fields")
        if kind == _BASE:
            if detail[0] not in _NUMERIC:
                raise MappingError(f"field {text!r}: {attr} is a {detail[0]}, not a number")
            if start is not None:
                raise MappingError(f"field {text!r}: {attr} is a scalar and cannot be indexed")
            return FieldPath(text, attrs, None, None, False)
        sub, bound = detail
        if int(sub[0]) != _BASE or sub[1][0] not in _NUMERIC:
            raise MappingError(f"field {text!r}: {attr} is not an array of numbers")
        if start is None:
            raise MappingError(
                f"field {text!r}: {attr} is an array; say which elements, e.g. {attr}[0:3]"
            )
        path = FieldPath(text, attrs, start, stop, True)
        if kind == _ARRAY and path.end > bound:
            raise MappingError(f"field {text!r}: {attr} has {bound} elements only")
        return path
    raise MappingError(f"field {text!r} names no field")  # pragma: no cover (attrs non-empty)


def default_message(store: Any, typename: str) -> Any:
    """An instance of `typename` with zeros, empty strings and empty sequences."""
    cls = store.types[typename]
    values: dict[str, Any] = {}
    for name, (kind, detail) in _fields(store, typename).items():
        if kind == _BASE:
            base = detail[0]
            values[name] = (
                "" if base == "string" else False if base == "bool"
                else 0.0 if base.startswith("float") else 0
            )  # fmt: skip
        elif kind == _NAME:
            values[name] = default_message(store, detail)
        else:
            sub, bound = detail
            if int(sub[0]) == _BASE and sub[1][0] in _NUMERIC:
                n = bound if kind == _ARRAY else 0
                values[name] = np.zeros(n, _NUMERIC[sub[1][0]])
            elif int(sub[0]) == _NAME:
                n = bound if kind == _ARRAY else 0
                values[name] = [default_message(store, sub[1]) for _ in range(n)]
            else:  # strings
                values[name] = [""] * (bound if kind == _ARRAY else 0)
    return cls(**values)
