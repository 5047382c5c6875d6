import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from protos import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceHealth(_message.Message):
    __slots__ = ("loop_p50_ms", "loop_p99_ms", "deadline_miss_rate", "safety_interventions", "cpu_percent", "temperature_c", "memory_percent")
    LOOP_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LOOP_P99_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MISS_RATE_FIELD_NUMBER: _ClassVar[int]
    SAFETY_INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    loop_p50_ms: float
    loop_p99_ms: float
    deadline_miss_rate: float
    safety_interventions: int
    cpu_percent: float
    temperature_c: float
    memory_percent: float
    def __init__(self, loop_p50_ms: _Optional[float] = ..., loop_p99_ms: _Optional[float] = ..., deadline_miss_rate: _Optional[float] = ..., safety_interventions: _Optional[int] = ..., cpu_percent: _Optional[float] = ..., temperature_c: _Optional[float] = ..., memory_percent: _Optional[float] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("id", "labels", "hardware_tags", "online", "last_seen", "active_bundle", "update_state", "update_reason", "health", "certificate_fingerprint", "revoked", "runtime_version", "update_detail")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_TAGS_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_STATE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_REASON_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    id: str
    labels: _containers.ScalarMap[str, str]
    hardware_tags: _containers.RepeatedScalarFieldContainer[str]
    online: bool
    last_seen: _timestamp_pb2.Timestamp
    active_bundle: _common_pb2.BundleRef
    update_state: str
    update_reason: str
    health: DeviceHealth
    certificate_fingerprint: str
    revoked: bool
    runtime_version: str
    update_detail: str
    def __init__(self, id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., hardware_tags: _Optional[_Iterable[str]] = ..., online: bool = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., active_bundle: _Optional[_Union[_common_pb2.BundleRef, _Mapping]] = ..., update_state: _Optional[str] = ..., update_reason: _Optional[str] = ..., health: _Optional[_Union[DeviceHealth, _Mapping]] = ..., certificate_fingerprint: _Optional[str] = ..., revoked: bool = ..., runtime_version: _Optional[str] = ..., update_detail: _Optional[str] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ("label_selector", "page", "text")
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    label_selector: str
    page: _common_pb2.PageRequest
    text: str
    def __init__(self, label_selector: _Optional[str] = ..., page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices", "next_page_token", "total")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    next_page_token: str
    total: int
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total: _Optional[int] = ...) -> None: ...

class GetDeviceRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetDeviceHistoryRequest(_message.Message):
    __slots__ = ("id", "max_points")
    ID_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    max_points: int
    def __init__(self, id: _Optional[str] = ..., max_points: _Optional[int] = ...) -> None: ...

class UpdateHistoryEntry(_message.Message):
    __slots__ = ("at", "state", "reason", "bundle", "detail")
    AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    state: str
    reason: str
    bundle: _common_pb2.BundleRef
    detail: str
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., bundle: _Optional[_Union[_common_pb2.BundleRef, _Mapping]] = ..., detail: _Optional[str] = ...) -> None: ...

class DeviceHistory(_message.Message):
    __slots__ = ("id", "loop_p99_ms", "deadline_miss_rate", "safety_interventions", "updates")
    ID_FIELD_NUMBER: _ClassVar[int]
    LOOP_P99_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MISS_RATE_FIELD_NUMBER: _ClassVar[int]
    SAFETY_INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    id: str
    loop_p99_ms: _containers.RepeatedCompositeFieldContainer[_common_pb2.Sample]
    deadline_miss_rate: _containers.RepeatedCompositeFieldContainer[_common_pb2.Sample]
    safety_interventions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Sample]
    updates: _containers.RepeatedCompositeFieldContainer[UpdateHistoryEntry]
    def __init__(self, id: _Optional[str] = ..., loop_p99_ms: _Optional[_Iterable[_Union[_common_pb2.Sample, _Mapping]]] = ..., deadline_miss_rate: _Optional[_Iterable[_Union[_common_pb2.Sample, _Mapping]]] = ..., safety_interventions: _Optional[_Iterable[_Union[_common_pb2.Sample, _Mapping]]] = ..., updates: _Optional[_Iterable[_Union[UpdateHistoryEntry, _Mapping]]] = ...) -> None: ...

class WatchFleetRequest(_message.Message):
    __slots__ = ("label_selector",)
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    label_selector: str
    def __init__(self, label_selector: _Optional[str] = ...) -> None: ...

class FleetEvent(_message.Message):
    __slots__ = ("kind", "device")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[FleetEvent.Kind]
        KIND_SNAPSHOT: _ClassVar[FleetEvent.Kind]
        KIND_UPSERT: _ClassVar[FleetEvent.Kind]
        KIND_REMOVED: _ClassVar[FleetEvent.Kind]
        KIND_SNAPSHOT_DONE: _ClassVar[FleetEvent.Kind]
    KIND_UNSPECIFIED: FleetEvent.Kind
    KIND_SNAPSHOT: FleetEvent.Kind
    KIND_UPSERT: FleetEvent.Kind
    KIND_REMOVED: FleetEvent.Kind
    KIND_SNAPSHOT_DONE: FleetEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    kind: FleetEvent.Kind
    device: Device
    def __init__(self, kind: _Optional[_Union[FleetEvent.Kind, str]] = ..., device: _Optional[_Union[Device, _Mapping]] = ...) -> None: ...

class Bundle(_message.Message):
    __slots__ = ("ref", "size_bytes", "signer_key_id", "published_at", "target_path", "attestation_verdict")
    REF_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIGNER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    TARGET_PATH_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_VERDICT_FIELD_NUMBER: _ClassVar[int]
    ref: _common_pb2.BundleRef
    size_bytes: int
    signer_key_id: str
    published_at: _timestamp_pb2.Timestamp
    target_path: str
    attestation_verdict: str
    def __init__(self, ref: _Optional[_Union[_common_pb2.BundleRef, _Mapping]] = ..., size_bytes: _Optional[int] = ..., signer_key_id: _Optional[str] = ..., published_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., target_path: _Optional[str] = ..., attestation_verdict: _Optional[str] = ...) -> None: ...

class PublishBundleRequest(_message.Message):
    __slots__ = ("efb",)
    EFB_FIELD_NUMBER: _ClassVar[int]
    efb: bytes
    def __init__(self, efb: _Optional[bytes] = ...) -> None: ...

class PublishBundleResponse(_message.Message):
    __slots__ = ("bundle",)
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    bundle: Bundle
    def __init__(self, bundle: _Optional[_Union[Bundle, _Mapping]] = ...) -> None: ...

class ListBundlesRequest(_message.Message):
    __slots__ = ("name", "page")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    page: _common_pb2.PageRequest
    def __init__(self, name: _Optional[str] = ..., page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class ListBundlesResponse(_message.Message):
    __slots__ = ("bundles", "next_page_token")
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    bundles: _containers.RepeatedCompositeFieldContainer[Bundle]
    next_page_token: str
    def __init__(self, bundles: _Optional[_Iterable[_Union[Bundle, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RolloutId(_message.Message):
    __slots__ = ("id", "rollback", "wave")
    ID_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    WAVE_FIELD_NUMBER: _ClassVar[int]
    id: str
    rollback: bool
    wave: int
    def __init__(self, id: _Optional[str] = ..., rollback: bool = ..., wave: _Optional[int] = ...) -> None: ...

class CreateRolloutRequest(_message.Message):
    __slots__ = ("bundle", "device_ids", "label_selector", "wave_fractions", "max_failure_fraction", "health_window_s", "max_action_divergence", "allow_unattested", "approval_waves", "max_tries", "retry_base_s", "retry_max_s", "soak_s", "max_miss_rate_increase", "max_interventions_increase", "abort_threshold", "max_latency_p99_ms", "max_latency_ratio", "max_divergence", "max_errors_increase", "abort_min_robots", "approval_url", "approval_timeout_s", "offline_policy", "maintenance_window", "max_held_s")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    WAVE_FRACTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    HEALTH_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTION_DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNATTESTED_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_WAVES_FIELD_NUMBER: _ClassVar[int]
    MAX_TRIES_FIELD_NUMBER: _ClassVar[int]
    RETRY_BASE_S_FIELD_NUMBER: _ClassVar[int]
    RETRY_MAX_S_FIELD_NUMBER: _ClassVar[int]
    SOAK_S_FIELD_NUMBER: _ClassVar[int]
    MAX_MISS_RATE_INCREASE_FIELD_NUMBER: _ClassVar[int]
    MAX_INTERVENTIONS_INCREASE_FIELD_NUMBER: _ClassVar[int]
    ABORT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    MAX_ERRORS_INCREASE_FIELD_NUMBER: _ClassVar[int]
    ABORT_MIN_ROBOTS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_URL_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_POLICY_FIELD_NUMBER: _ClassVar[int]
    MAINTENANCE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    MAX_HELD_S_FIELD_NUMBER: _ClassVar[int]
    bundle: _common_pb2.BundleRef
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    label_selector: str
    wave_fractions: _containers.RepeatedScalarFieldContainer[float]
    max_failure_fraction: float
    health_window_s: int
    max_action_divergence: float
    allow_unattested: bool
    approval_waves: _containers.RepeatedScalarFieldContainer[int]
    max_tries: int
    retry_base_s: float
    retry_max_s: float
    soak_s: float
    max_miss_rate_increase: float
    max_interventions_increase: float
    abort_threshold: float
    max_latency_p99_ms: float
    max_latency_ratio: float
    max_divergence: float
    max_errors_increase: float
    abort_min_robots: int
    approval_url: str
    approval_timeout_s: float
    offline_policy: str
    maintenance_window: str
    max_held_s: float
    def __init__(self, bundle: _Optional[_Union[_common_pb2.BundleRef, _Mapping]] = ..., device_ids: _Optional[_Iterable[str]] = ..., label_selector: _Optional[str] = ..., wave_fractions: _Optional[_Iterable[float]] = ..., max_failure_fraction: _Optional[float] = ..., health_window_s: _Optional[int] = ..., max_action_divergence: _Optional[float] = ..., allow_unattested: bool = ..., approval_waves: _Optional[_Iterable[int]] = ..., max_tries: _Optional[int] = ..., retry_base_s: _Optional[float] = ..., retry_max_s: _Optional[float] = ..., soak_s: _Optional[float] = ..., max_miss_rate_increase: _Optional[float] = ..., max_interventions_increase: _Optional[float] = ..., abort_threshold: _Optional[float] = ..., max_latency_p99_ms: _Optional[float] = ..., max_latency_ratio: _Optional[float] = ..., max_divergence: _Optional[float] = ..., max_errors_increase: _Optional[float] = ..., abort_min_robots: _Optional[int] = ..., approval_url: _Optional[str] = ..., approval_timeout_s: _Optional[float] = ..., offline_policy: _Optional[str] = ..., maintenance_window: _Optional[str] = ..., max_held_s: _Optional[float] = ...) -> None: ...

class DevicePlan(_message.Message):
    __slots__ = ("device_id", "outcome", "detail")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    outcome: str
    detail: str
    def __init__(self, device_id: _Optional[str] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class RolloutWave(_message.Message):
    __slots__ = ("index", "device_ids", "state", "committed", "failed", "rolled_back", "outcomes", "approval_required", "approved_by", "approved_at", "retries", "soak", "soak_verdict", "soak_figures", "approval_check", "skipped", "joined", "held")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    APPROVED_BY_FIELD_NUMBER: _ClassVar[int]
    APPROVED_AT_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    SOAK_FIELD_NUMBER: _ClassVar[int]
    SOAK_VERDICT_FIELD_NUMBER: _ClassVar[int]
    SOAK_FIGURES_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_CHECK_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    index: int
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    state: str
    committed: int
    failed: int
    rolled_back: int
    outcomes: _containers.RepeatedCompositeFieldContainer[DeviceOutcome]
    approval_required: bool
    approved_by: str
    approved_at: _timestamp_pb2.Timestamp
    retries: _containers.RepeatedCompositeFieldContainer[DeviceRetry]
    soak: str
    soak_verdict: str
    soak_figures: _containers.RepeatedCompositeFieldContainer[SoakFigures]
    approval_check: str
    skipped: _containers.RepeatedCompositeFieldContainer[DeviceOutcome]
    joined: _containers.RepeatedScalarFieldContainer[str]
    held: _containers.RepeatedCompositeFieldContainer[DeviceOutcome]
    def __init__(self, index: _Optional[int] = ..., device_ids: _Optional[_Iterable[str]] = ..., state: _Optional[str] = ..., committed: _Optional[int] = ..., failed: _Optional[int] = ..., rolled_back: _Optional[int] = ..., outcomes: _Optional[_Iterable[_Union[DeviceOutcome, _Mapping]]] = ..., approval_required: bool = ..., approved_by: _Optional[str] = ..., approved_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., retries: _Optional[_Iterable[_Union[DeviceRetry, _Mapping]]] = ..., soak: _Optional[str] = ..., soak_verdict: _Optional[str] = ..., soak_figures: _Optional[_Iterable[_Union[SoakFigures, _Mapping]]] = ..., approval_check: _Optional[str] = ..., skipped: _Optional[_Iterable[_Union[DeviceOutcome, _Mapping]]] = ..., joined: _Optional[_Iterable[str]] = ..., held: _Optional[_Iterable[_Union[DeviceOutcome, _Mapping]]] = ...) -> None: ...

class SoakFigures(_message.Message):
    __slots__ = ("group", "devices", "reporting", "miss_rate", "interventions_per_min", "latency_p99_ms", "errors_per_robot", "divergence")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    REPORTING_FIELD_NUMBER: _ClassVar[int]
    MISS_RATE_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_PER_MIN_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_PER_ROBOT_FIELD_NUMBER: _ClassVar[int]
    DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    group: str
    devices: int
    reporting: int
    miss_rate: float
    interventions_per_min: float
    latency_p99_ms: float
    errors_per_robot: float
    divergence: float
    def __init__(self, group: _Optional[str] = ..., devices: _Optional[int] = ..., reporting: _Optional[int] = ..., miss_rate: _Optional[float] = ..., interventions_per_min: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., errors_per_robot: _Optional[float] = ..., divergence: _Optional[float] = ...) -> None: ...

class DeviceRetry(_message.Message):
    __slots__ = ("device_id", "tries", "next_at", "outcome", "reason_code", "detail")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    TRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_AT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    tries: int
    next_at: _timestamp_pb2.Timestamp
    outcome: str
    reason_code: str
    detail: str
    def __init__(self, device_id: _Optional[str] = ..., tries: _Optional[int] = ..., next_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., outcome: _Optional[str] = ..., reason_code: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class DeviceOutcome(_message.Message):
    __slots__ = ("device_id", "outcome", "reason_code", "detail")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    outcome: str
    reason_code: str
    detail: str
    def __init__(self, device_id: _Optional[str] = ..., outcome: _Optional[str] = ..., reason_code: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("id", "bundle", "state", "waves", "created_at", "created_by", "reason", "plan", "max_action_divergence", "allow_unattested", "unattested_override_by", "attestation", "max_tries", "soak_s", "abort_threshold", "abort", "abort_min_robots", "approval_url", "offline_policy", "soak_thresholds", "max_held_s")
    ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WAVES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTION_DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNATTESTED_FIELD_NUMBER: _ClassVar[int]
    UNATTESTED_OVERRIDE_BY_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    MAX_TRIES_FIELD_NUMBER: _ClassVar[int]
    SOAK_S_FIELD_NUMBER: _ClassVar[int]
    ABORT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    ABORT_MIN_ROBOTS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_URL_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_POLICY_FIELD_NUMBER: _ClassVar[int]
    SOAK_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    MAX_HELD_S_FIELD_NUMBER: _ClassVar[int]
    id: str
    bundle: _common_pb2.BundleRef
    state: str
    waves: _containers.RepeatedCompositeFieldContainer[RolloutWave]
    created_at: _timestamp_pb2.Timestamp
    created_by: str
    reason: str
    plan: _containers.RepeatedCompositeFieldContainer[DevicePlan]
    max_action_divergence: float
    allow_unattested: bool
    unattested_override_by: str
    attestation: str
    max_tries: int
    soak_s: float
    abort_threshold: float
    abort: str
    abort_min_robots: int
    approval_url: str
    offline_policy: str
    soak_thresholds: str
    max_held_s: float
    def __init__(self, id: _Optional[str] = ..., bundle: _Optional[_Union[_common_pb2.BundleRef, _Mapping]] = ..., state: _Optional[str] = ..., waves: _Optional[_Iterable[_Union[RolloutWave, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., reason: _Optional[str] = ..., plan: _Optional[_Iterable[_Union[DevicePlan, _Mapping]]] = ..., max_action_divergence: _Optional[float] = ..., allow_unattested: bool = ..., unattested_override_by: _Optional[str] = ..., attestation: _Optional[str] = ..., max_tries: _Optional[int] = ..., soak_s: _Optional[float] = ..., abort_threshold: _Optional[float] = ..., abort: _Optional[str] = ..., abort_min_robots: _Optional[int] = ..., approval_url: _Optional[str] = ..., offline_policy: _Optional[str] = ..., soak_thresholds: _Optional[str] = ..., max_held_s: _Optional[float] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ("page",)
    PAGE_FIELD_NUMBER: _ClassVar[int]
    page: _common_pb2.PageRequest
    def __init__(self, page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts", "next_page_token")
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    next_page_token: str
    def __init__(self, rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
