import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from protos import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetAttestationRequest(_message.Message):
    __slots__ = ("subject_sha256",)
    SUBJECT_SHA256_FIELD_NUMBER: _ClassVar[int]
    subject_sha256: str
    def __init__(self, subject_sha256: _Optional[str] = ...) -> None: ...

class Attestation(_message.Message):
    __slots__ = ("envelope", "subject_sha256", "verdict", "issued_at", "expires_at", "bundle")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_SHA256_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    envelope: _common_pb2.SignedEnvelope
    subject_sha256: str
    verdict: str
    issued_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    bundle: _common_pb2.BundleRef
    def __init__(self, envelope: _Optional[_Union[_common_pb2.SignedEnvelope, _Mapping]] = ..., subject_sha256: _Optional[str] = ..., verdict: _Optional[str] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., bundle: _Optional[_Union[_common_pb2.BundleRef, _Mapping]] = ...) -> None: ...

class ListAttestationsRequest(_message.Message):
    __slots__ = ("bundle_name", "page")
    BUNDLE_NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    bundle_name: str
    page: _common_pb2.PageRequest
    def __init__(self, bundle_name: _Optional[str] = ..., page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class ListAttestationsResponse(_message.Message):
    __slots__ = ("attestations", "next_page_token")
    ATTESTATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    attestations: _containers.RepeatedCompositeFieldContainer[Attestation]
    next_page_token: str
    def __init__(self, attestations: _Optional[_Iterable[_Union[Attestation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RunParityCampaignRequest(_message.Message):
    __slots__ = ("bundle", "campaign_toml")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_TOML_FIELD_NUMBER: _ClassVar[int]
    bundle: _common_pb2.BundleRef
    campaign_toml: str
    def __init__(self, bundle: _Optional[_Union[_common_pb2.BundleRef, _Mapping]] = ..., campaign_toml: _Optional[str] = ...) -> None: ...

class CampaignProgress(_message.Message):
    __slots__ = ("done", "total", "stage", "result")
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    done: int
    total: int
    stage: str
    result: Attestation
    def __init__(self, done: _Optional[int] = ..., total: _Optional[int] = ..., stage: _Optional[str] = ..., result: _Optional[_Union[Attestation, _Mapping]] = ...) -> None: ...
