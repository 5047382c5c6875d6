import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from protos import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TelemetryBatch(_message.Message):
    __slots__ = ("device_id", "sequence", "points")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    sequence: int
    points: _containers.RepeatedCompositeFieldContainer[TelemetryPoint]
    def __init__(self, device_id: _Optional[str] = ..., sequence: _Optional[int] = ..., points: _Optional[_Iterable[_Union[TelemetryPoint, _Mapping]]] = ...) -> None: ...

class TelemetryPoint(_message.Message):
    __slots__ = ("at", "loop_p50_ms", "loop_p99_ms", "loop_p999_ms", "ticks", "deadline_misses", "interventions", "active_bundle", "cpu_percent", "memory_percent", "disk_free_bytes", "temperature_c", "update_state", "scheduling", "realtime")
    class InterventionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    AT_FIELD_NUMBER: _ClassVar[int]
    LOOP_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LOOP_P99_MS_FIELD_NUMBER: _ClassVar[int]
    LOOP_P999_MS_FIELD_NUMBER: _ClassVar[int]
    TICKS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MISSES_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    UPDATE_STATE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULING_FIELD_NUMBER: _ClassVar[int]
    REALTIME_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    loop_p50_ms: float
    loop_p99_ms: float
    loop_p999_ms: float
    ticks: int
    deadline_misses: int
    interventions: _containers.ScalarMap[str, int]
    active_bundle: _common_pb2.BundleRef
    cpu_percent: float
    memory_percent: float
    disk_free_bytes: float
    temperature_c: float
    update_state: str
    scheduling: str
    realtime: bool
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., loop_p50_ms: _Optional[float] = ..., loop_p99_ms: _Optional[float] = ..., loop_p999_ms: _Optional[float] = ..., ticks: _Optional[int] = ..., deadline_misses: _Optional[int] = ..., interventions: _Optional[_Mapping[str, int]] = ..., active_bundle: _Optional[_Union[_common_pb2.BundleRef, _Mapping]] = ..., cpu_percent: _Optional[float] = ..., memory_percent: _Optional[float] = ..., disk_free_bytes: _Optional[float] = ..., temperature_c: _Optional[float] = ..., update_state: _Optional[str] = ..., scheduling: _Optional[str] = ..., realtime: bool = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("device_id", "sequence", "at", "kind", "state", "reason_code", "detail", "bundle")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    sequence: int
    at: _timestamp_pb2.Timestamp
    kind: str
    state: str
    reason_code: str
    detail: str
    bundle: _common_pb2.BundleRef
    def __init__(self, device_id: _Optional[str] = ..., sequence: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[str] = ..., state: _Optional[str] = ..., reason_code: _Optional[str] = ..., detail: _Optional[str] = ..., bundle: _Optional[_Union[_common_pb2.BundleRef, _Mapping]] = ...) -> None: ...

class DeviceState(_message.Message):
    __slots__ = ("device_id", "online", "at", "runtime_version")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    online: bool
    at: _timestamp_pb2.Timestamp
    runtime_version: str
    def __init__(self, device_id: _Optional[str] = ..., online: bool = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., runtime_version: _Optional[str] = ...) -> None: ...

class UpdateHint(_message.Message):
    __slots__ = ("bundle_name", "sequence", "generation", "rollout_id")
    BUNDLE_NAME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    bundle_name: str
    sequence: int
    generation: int
    rollout_id: str
    def __init__(self, bundle_name: _Optional[str] = ..., sequence: _Optional[int] = ..., generation: _Optional[int] = ..., rollout_id: _Optional[str] = ...) -> None: ...
