from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QosClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QOS_CLASS_UNSPECIFIED: _ClassVar[QosClass]
    QOS_CLASS_SAFETY: _ClassVar[QosClass]
    QOS_CLASS_INTERACTIVE: _ClassVar[QosClass]
    QOS_CLASS_BATCH: _ClassVar[QosClass]

class RouteOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTE_OUTCOME_UNSPECIFIED: _ClassVar[RouteOutcome]
    ROUTE_OUTCOME_OK: _ClassVar[RouteOutcome]
    ROUTE_OUTCOME_REJECTED: _ClassVar[RouteOutcome]
    ROUTE_OUTCOME_NO_CONSENSUS: _ClassVar[RouteOutcome]
    ROUTE_OUTCOME_FAILED: _ClassVar[RouteOutcome]
    ROUTE_OUTCOME_BUDGET_EXHAUSTED: _ClassVar[RouteOutcome]
QOS_CLASS_UNSPECIFIED: QosClass
QOS_CLASS_SAFETY: QosClass
QOS_CLASS_INTERACTIVE: QosClass
QOS_CLASS_BATCH: QosClass
ROUTE_OUTCOME_UNSPECIFIED: RouteOutcome
ROUTE_OUTCOME_OK: RouteOutcome
ROUTE_OUTCOME_REJECTED: RouteOutcome
ROUTE_OUTCOME_NO_CONSENSUS: RouteOutcome
ROUTE_OUTCOME_FAILED: RouteOutcome
ROUTE_OUTCOME_BUDGET_EXHAUSTED: RouteOutcome

class Task(_message.Message):
    __slots__ = ("task_type", "qos", "deadline_ms", "observation", "payload", "idempotency_key", "work_units", "action_low", "action_high")
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    QOS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    WORK_UNITS_FIELD_NUMBER: _ClassVar[int]
    ACTION_LOW_FIELD_NUMBER: _ClassVar[int]
    ACTION_HIGH_FIELD_NUMBER: _ClassVar[int]
    task_type: str
    qos: QosClass
    deadline_ms: int
    observation: _containers.RepeatedScalarFieldContainer[float]
    payload: bytes
    idempotency_key: str
    work_units: float
    action_low: _containers.RepeatedScalarFieldContainer[float]
    action_high: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, task_type: _Optional[str] = ..., qos: _Optional[_Union[QosClass, str]] = ..., deadline_ms: _Optional[int] = ..., observation: _Optional[_Iterable[float]] = ..., payload: _Optional[bytes] = ..., idempotency_key: _Optional[str] = ..., work_units: _Optional[float] = ..., action_low: _Optional[_Iterable[float]] = ..., action_high: _Optional[_Iterable[float]] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: Task
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("outcome", "action", "result", "backend", "cost_usd", "retry_after_ms", "reason", "verifier_score", "decision_id", "label", "escalations")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_SCORE_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ESCALATIONS_FIELD_NUMBER: _ClassVar[int]
    outcome: RouteOutcome
    action: _containers.RepeatedScalarFieldContainer[float]
    result: bytes
    backend: str
    cost_usd: float
    retry_after_ms: int
    reason: str
    verifier_score: float
    decision_id: str
    label: str
    escalations: int
    def __init__(self, outcome: _Optional[_Union[RouteOutcome, str]] = ..., action: _Optional[_Iterable[float]] = ..., result: _Optional[bytes] = ..., backend: _Optional[str] = ..., cost_usd: _Optional[float] = ..., retry_after_ms: _Optional[int] = ..., reason: _Optional[str] = ..., verifier_score: _Optional[float] = ..., decision_id: _Optional[str] = ..., label: _Optional[str] = ..., escalations: _Optional[int] = ...) -> None: ...

class RouterStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackendStats(_message.Message):
    __slots__ = ("name", "tier", "concurrency_limit", "in_flight", "work_units_per_s", "usd_per_s", "healthy", "cooldown_remaining_s", "p95_latency_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    WORK_UNITS_PER_S_FIELD_NUMBER: _ClassVar[int]
    USD_PER_S_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_REMAINING_S_FIELD_NUMBER: _ClassVar[int]
    P95_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    tier: int
    concurrency_limit: float
    in_flight: int
    work_units_per_s: float
    usd_per_s: float
    healthy: bool
    cooldown_remaining_s: float
    p95_latency_ms: float
    def __init__(self, name: _Optional[str] = ..., tier: _Optional[int] = ..., concurrency_limit: _Optional[float] = ..., in_flight: _Optional[int] = ..., work_units_per_s: _Optional[float] = ..., usd_per_s: _Optional[float] = ..., healthy: bool = ..., cooldown_remaining_s: _Optional[float] = ..., p95_latency_ms: _Optional[float] = ...) -> None: ...

class BudgetStats(_message.Message):
    __slots__ = ("scope", "limit_usd", "used_usd", "reserved_usd")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_USD_FIELD_NUMBER: _ClassVar[int]
    USED_USD_FIELD_NUMBER: _ClassVar[int]
    RESERVED_USD_FIELD_NUMBER: _ClassVar[int]
    scope: str
    limit_usd: float
    used_usd: float
    reserved_usd: float
    def __init__(self, scope: _Optional[str] = ..., limit_usd: _Optional[float] = ..., used_usd: _Optional[float] = ..., reserved_usd: _Optional[float] = ...) -> None: ...

class RouterStatsResponse(_message.Message):
    __slots__ = ("backends", "budgets", "audit_records", "audit_tree_head", "recent_decisions", "audit_verification")
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_RECORDS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_TREE_HEAD_FIELD_NUMBER: _ClassVar[int]
    RECENT_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    backends: _containers.RepeatedCompositeFieldContainer[BackendStats]
    budgets: _containers.RepeatedCompositeFieldContainer[BudgetStats]
    audit_records: int
    audit_tree_head: str
    recent_decisions: _containers.RepeatedCompositeFieldContainer[RouteDecision]
    audit_verification: AuditVerification
    def __init__(self, backends: _Optional[_Iterable[_Union[BackendStats, _Mapping]]] = ..., budgets: _Optional[_Iterable[_Union[BudgetStats, _Mapping]]] = ..., audit_records: _Optional[int] = ..., audit_tree_head: _Optional[str] = ..., recent_decisions: _Optional[_Iterable[_Union[RouteDecision, _Mapping]]] = ..., audit_verification: _Optional[_Union[AuditVerification, _Mapping]] = ...) -> None: ...

class RouteDecision(_message.Message):
    __slots__ = ("decision_id", "at_unix_ms", "task_type", "qos", "outcome", "backend", "cost_usd", "latency_ms", "scope", "reason")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    QOS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    at_unix_ms: int
    task_type: str
    qos: QosClass
    outcome: RouteOutcome
    backend: str
    cost_usd: float
    latency_ms: float
    scope: str
    reason: str
    def __init__(self, decision_id: _Optional[str] = ..., at_unix_ms: _Optional[int] = ..., task_type: _Optional[str] = ..., qos: _Optional[_Union[QosClass, str]] = ..., outcome: _Optional[_Union[RouteOutcome, str]] = ..., backend: _Optional[str] = ..., cost_usd: _Optional[float] = ..., latency_ms: _Optional[float] = ..., scope: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AuditVerification(_message.Message):
    __slots__ = ("checked", "ok", "records_checked", "detail", "checked_at_unix_ms")
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    RECORDS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CHECKED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    checked: bool
    ok: bool
    records_checked: int
    detail: str
    checked_at_unix_ms: int
    def __init__(self, checked: bool = ..., ok: bool = ..., records_checked: _Optional[int] = ..., detail: _Optional[str] = ..., checked_at_unix_ms: _Optional[int] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: Task
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("action", "result", "work_units", "overloaded", "error", "label", "gpu_seconds")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    WORK_UNITS_FIELD_NUMBER: _ClassVar[int]
    OVERLOADED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    action: _containers.RepeatedScalarFieldContainer[float]
    result: bytes
    work_units: float
    overloaded: bool
    error: str
    label: str
    gpu_seconds: float
    def __init__(self, action: _Optional[_Iterable[float]] = ..., result: _Optional[bytes] = ..., work_units: _Optional[float] = ..., overloaded: bool = ..., error: _Optional[str] = ..., label: _Optional[str] = ..., gpu_seconds: _Optional[float] = ...) -> None: ...
