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

class FileKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILE_KIND_UNSPECIFIED: _ClassVar[FileKind]
    FILE_KIND_METADATA: _ClassVar[FileKind]
    FILE_KIND_TARGET: _ClassVar[FileKind]
FILE_KIND_UNSPECIFIED: FileKind
FILE_KIND_METADATA: FileKind
FILE_KIND_TARGET: FileKind

class GetDesiredStateRequest(_message.Message):
    __slots__ = ("known_generation",)
    KNOWN_GENERATION_FIELD_NUMBER: _ClassVar[int]
    known_generation: int
    def __init__(self, known_generation: _Optional[int] = ...) -> None: ...

class DesiredState(_message.Message):
    __slots__ = ("envelope",)
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    envelope: _common_pb2.SignedEnvelope
    def __init__(self, envelope: _Optional[_Union[_common_pb2.SignedEnvelope, _Mapping]] = ...) -> None: ...

class FetchFileRequest(_message.Message):
    __slots__ = ("kind", "path", "offset", "max_chunk_bytes", "length")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    kind: FileKind
    path: str
    offset: int
    max_chunk_bytes: int
    length: int
    def __init__(self, kind: _Optional[_Union[FileKind, str]] = ..., path: _Optional[str] = ..., offset: _Optional[int] = ..., max_chunk_bytes: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size", "last")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    last: bool
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., last: bool = ...) -> None: ...

class Inventory(_message.Message):
    __slots__ = ("device_id", "runtime_version", "hardware_tags", "execution_providers", "active_bundle", "pending_bundle", "platform", "reported_at", "anti_rollback")
    class AntiRollbackEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_TAGS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    PENDING_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    ANTI_ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    runtime_version: str
    hardware_tags: _containers.RepeatedScalarFieldContainer[str]
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    active_bundle: _common_pb2.BundleRef
    pending_bundle: _common_pb2.BundleRef
    platform: str
    reported_at: _timestamp_pb2.Timestamp
    anti_rollback: _containers.ScalarMap[str, int]
    def __init__(self, device_id: _Optional[str] = ..., runtime_version: _Optional[str] = ..., hardware_tags: _Optional[_Iterable[str]] = ..., execution_providers: _Optional[_Iterable[str]] = ..., active_bundle: _Optional[_Union[_common_pb2.BundleRef, _Mapping]] = ..., pending_bundle: _Optional[_Union[_common_pb2.BundleRef, _Mapping]] = ..., platform: _Optional[str] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., anti_rollback: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ReportInventoryResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    def __init__(self, accepted: bool = ...) -> None: ...
