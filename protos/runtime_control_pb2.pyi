from protos import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SlotInfo(_message.Message):
    __slots__ = ("slot", "bundle")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    slot: str
    bundle: _common_pb2.BundleRef
    def __init__(self, slot: _Optional[str] = ..., bundle: _Optional[_Union[_common_pb2.BundleRef, _Mapping]] = ...) -> None: ...

class RuntimeStatus(_message.Message):
    __slots__ = ("active", "pending", "state", "execution_provider", "metrics", "anti_rollback", "tries_left", "reason", "swaps", "last_good", "failure", "scheduling", "realtime", "engine_check")
    class AntiRollbackEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ANTI_ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    TRIES_LEFT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SWAPS_FIELD_NUMBER: _ClassVar[int]
    LAST_GOOD_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULING_FIELD_NUMBER: _ClassVar[int]
    REALTIME_FIELD_NUMBER: _ClassVar[int]
    ENGINE_CHECK_FIELD_NUMBER: _ClassVar[int]
    active: SlotInfo
    pending: SlotInfo
    state: str
    execution_provider: str
    metrics: LoopMetrics
    anti_rollback: _containers.ScalarMap[str, int]
    tries_left: int
    reason: str
    swaps: int
    last_good: SlotInfo
    failure: Failure
    scheduling: str
    realtime: bool
    engine_check: str
    def __init__(self, active: _Optional[_Union[SlotInfo, _Mapping]] = ..., pending: _Optional[_Union[SlotInfo, _Mapping]] = ..., state: _Optional[str] = ..., execution_provider: _Optional[str] = ..., metrics: _Optional[_Union[LoopMetrics, _Mapping]] = ..., anti_rollback: _Optional[_Mapping[str, int]] = ..., tries_left: _Optional[int] = ..., reason: _Optional[str] = ..., swaps: _Optional[int] = ..., last_good: _Optional[_Union[SlotInfo, _Mapping]] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., scheduling: _Optional[str] = ..., realtime: bool = ..., engine_check: _Optional[str] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("code", "detail")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    code: str
    detail: str
    def __init__(self, code: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class StageRequest(_message.Message):
    __slots__ = ("bundle_dir",)
    BUNDLE_DIR_FIELD_NUMBER: _ClassVar[int]
    bundle_dir: str
    def __init__(self, bundle_dir: _Optional[str] = ...) -> None: ...

class StageResponse(_message.Message):
    __slots__ = ("staged", "warmup_ms")
    STAGED_FIELD_NUMBER: _ClassVar[int]
    WARMUP_MS_FIELD_NUMBER: _ClassVar[int]
    staged: SlotInfo
    warmup_ms: float
    def __init__(self, staged: _Optional[_Union[SlotInfo, _Mapping]] = ..., warmup_ms: _Optional[float] = ...) -> None: ...

class ShadowRequest(_message.Message):
    __slots__ = ("ticks",)
    TICKS_FIELD_NUMBER: _ClassVar[int]
    ticks: int
    def __init__(self, ticks: _Optional[int] = ...) -> None: ...

class ShadowReport(_message.Message):
    __slots__ = ("ticks", "divergence_mean", "divergence_max", "nan_rate", "latency_p99_ms", "envelope_violations", "compared", "errors", "candidate")
    TICKS_FIELD_NUMBER: _ClassVar[int]
    DIVERGENCE_MEAN_FIELD_NUMBER: _ClassVar[int]
    DIVERGENCE_MAX_FIELD_NUMBER: _ClassVar[int]
    NAN_RATE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    ticks: int
    divergence_mean: float
    divergence_max: float
    nan_rate: float
    latency_p99_ms: float
    envelope_violations: int
    compared: int
    errors: int
    candidate: SlotInfo
    def __init__(self, ticks: _Optional[int] = ..., divergence_mean: _Optional[float] = ..., divergence_max: _Optional[float] = ..., nan_rate: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., envelope_violations: _Optional[int] = ..., compared: _Optional[int] = ..., errors: _Optional[int] = ..., candidate: _Optional[_Union[SlotInfo, _Mapping]] = ...) -> None: ...

class ActivateRequest(_message.Message):
    __slots__ = ("health_window_ticks",)
    HEALTH_WINDOW_TICKS_FIELD_NUMBER: _ClassVar[int]
    health_window_ticks: int
    def __init__(self, health_window_ticks: _Optional[int] = ...) -> None: ...

class HealthWindowRequest(_message.Message):
    __slots__ = ("ticks",)
    TICKS_FIELD_NUMBER: _ClassVar[int]
    ticks: int
    def __init__(self, ticks: _Optional[int] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("reason", "code")
    REASON_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    code: str
    def __init__(self, reason: _Optional[str] = ..., code: _Optional[str] = ...) -> None: ...

class MetricsRequest(_message.Message):
    __slots__ = ("period_ms",)
    PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    period_ms: int
    def __init__(self, period_ms: _Optional[int] = ...) -> None: ...

class LoopMetrics(_message.Message):
    __slots__ = ("ticks", "deadline_misses", "latency_p50_ms", "latency_p99_ms", "latency_p999_ms", "latency_max_ms", "interventions", "rate_hz", "jitter_p99_ms", "skipped_slots")
    class InterventionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TICKS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MISSES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P999_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MAX_MS_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    JITTER_P99_MS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_SLOTS_FIELD_NUMBER: _ClassVar[int]
    ticks: int
    deadline_misses: int
    latency_p50_ms: float
    latency_p99_ms: float
    latency_p999_ms: float
    latency_max_ms: float
    interventions: _containers.ScalarMap[str, int]
    rate_hz: float
    jitter_p99_ms: float
    skipped_slots: int
    def __init__(self, ticks: _Optional[int] = ..., deadline_misses: _Optional[int] = ..., latency_p50_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., latency_p999_ms: _Optional[float] = ..., latency_max_ms: _Optional[float] = ..., interventions: _Optional[_Mapping[str, int]] = ..., rate_hz: _Optional[float] = ..., jitter_p99_ms: _Optional[float] = ..., skipped_slots: _Optional[int] = ...) -> None: ...
