import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SegmentRef(_message.Message):
    __slots__ = ("device_id", "name")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    name: str
    def __init__(self, device_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class SegmentChunk(_message.Message):
    __slots__ = ("segment", "offset", "data", "total_size", "last", "sha256")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentRef
    offset: int
    data: bytes
    total_size: int
    last: bool
    sha256: str
    def __init__(self, segment: _Optional[_Union[SegmentRef, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., last: bool = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadReceipt(_message.Message):
    __slots__ = ("segment", "received", "complete", "sha256", "uploaded_at")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_AT_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentRef
    received: int
    complete: bool
    sha256: str
    uploaded_at: _timestamp_pb2.Timestamp
    def __init__(self, segment: _Optional[_Union[SegmentRef, _Mapping]] = ..., received: _Optional[int] = ..., complete: bool = ..., sha256: _Optional[str] = ..., uploaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
