"""The contract between the control plane and a robot: a bundle reference and the
signed desired state, one typed model each, built by the plane and parsed by the agent.

A *bundle reference* names one published bundle: ``name``, ``version`` and the
anti-rollback ``sequence``, plus the digests that pin its content where they are
known (``policy_sha256``, ``oms_root_digest``; the same fields as
``edgeflux.common.v1.BundleRef``).

The *desired state* (``_type`` ``edgeflux.desired-state/v1``) tells one device which
bundle to run: the reference plus the TUF target that carries it (``target``,
``sha256`` of the ``.efb``, ``length``), and optionally the gate the device applies
before switching (``gate``). It is the payload of a DSSE envelope
(:data:`PAYLOAD_TYPE`) signed by the plane's director key.

Forward compatibility: fields this version does not know are kept (and written back)
rather than refused, so an older agent accepts a newer plane's document; a change
that an older agent must not misread gets a new ``_type``.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer

from protos import common_pb2
from runtime.maintenance_window import MaintenanceWindow

__all__ = [
    "PAYLOAD_TYPE",
    "SCHEMA",
    "BundleRef",
    "DesiredBundle",
    "DesiredState",
    "DesiredStateError",
    "GatePolicy",
]

SCHEMA = "edgeflux.desired-state/v1"
PAYLOAD_TYPE = "application/vnd.edgeflux.desired-state+json"


class DesiredStateError(ValueError):
    """A document that is not a valid desired state; the message names the field."""


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "document"
    return f"{where}: {err['msg']}"


class BundleRef(BaseModel):
    """One published bundle: name, version, sequence and, where known, its digests."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str = Field(min_length=1, max_length=200)
    version: str = Field(default="", max_length=100)
    sequence: int = Field(default=0, ge=0, lt=2**63, strict=True)
    policy_sha256: str = Field(default="", max_length=64)
    oms_root_digest: str = Field(default="", max_length=64)

    def key(self) -> str:
        """``name@version#sequence``: how logs and comparisons name it."""
        return f"{self.name}@{self.version}#{self.sequence}"

    def same_bundle(self, other: BundleRef | None) -> bool:
        """Same name, and the same version or (where versions differ or one is unknown)
        the same non-zero sequence: a plane never publishes two versions of one sequence."""
        if other is None or other.name != self.name:
            return False
        if self.version and self.version == other.version:
            return True
        return self.sequence != 0 and self.sequence == other.sequence

    @classmethod
    def from_dict(cls, obj: object) -> Self | None:
        """A stored or received dict as a reference; None for no bundle."""
        if not obj:
            return None
        try:
            return cls.model_validate(obj)
        except ValidationError as exc:
            raise DesiredStateError(f"bundle {_first_error(exc)}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored and sent: the fields given, less empty digests."""
        out = self.model_dump(mode="json", exclude_unset=True, exclude_none=True)
        for k in ("policy_sha256", "oms_root_digest"):
            if not out.get(k):
                out.pop(k, None)
        return out

    @classmethod
    def from_pb(cls, ref: common_pb2.BundleRef) -> Self | None:
        """The wire message as a reference; None when it names no bundle."""
        if not ref.name:
            return None
        try:
            return cls(
                name=ref.name,
                version=ref.version,
                sequence=ref.sequence,
                policy_sha256=ref.policy_sha256,
                oms_root_digest=ref.oms_root_digest,
            )
        except ValidationError as exc:
            raise DesiredStateError(f"bundle {_first_error(exc)}") from exc

    def to_pb(self) -> common_pb2.BundleRef:
        return common_pb2.BundleRef(
            name=self.name,
            version=self.version,
            sequence=self.sequence,
            policy_sha256=self.policy_sha256,
            oms_root_digest=self.oms_root_digest,
        )


class GatePolicy(BaseModel):
    """How a device judges the candidate before switching, beyond its built-in checks.

    ``max_action_divergence``: refuse when the candidate's actions differ from the
    active policy's by more than this (always measured and reported; enforced only
    when set).

    ``windows``: maintenance windows (:class:`~runtime.maintenance_window.MaintenanceWindow`);
    the device downloads, stages and shadows at any time but switches only while all
    of them are open, by its own clock. Left out of the document when there are none.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    max_action_divergence: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    windows: tuple[MaintenanceWindow, ...] = Field(default=(), max_length=16)


class DesiredBundle(BundleRef):
    """The bundle a device should run: the reference, its TUF target and its gate."""

    target: str = Field(default="", max_length=500)
    sha256: str = Field(default="", max_length=64)
    length: int = Field(default=0, ge=0, strict=True)
    gate: GatePolicy | None = None

    def target_path(self) -> str:
        return self.target or f"bundles/{self.name}-{self.version}.efb"


def _rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


class DesiredState(BaseModel):
    """The signed document a device polls: which bundle, for which device, until when."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    type_: str = Field(default=SCHEMA, alias="_type")
    device_id: str = Field(min_length=1, max_length=200)
    bundle: DesiredBundle | None = None
    generation: int = Field(default=0, ge=0, strict=True)
    issued_at: dt.datetime
    expires: dt.datetime

    @field_serializer("issued_at", "expires")
    def _times(self, at: dt.datetime) -> str:
        return _rfc3339(at)

    @classmethod
    def issue(
        cls,
        device_id: str,
        bundle: DesiredBundle | None,
        generation: int,
        *,
        now: dt.datetime,
        ttl_s: float,
    ) -> Self:
        """The document the plane signs for one device (times to the second)."""
        issued = now.astimezone(dt.UTC).replace(microsecond=0)
        return cls(
            device_id=device_id,
            bundle=bundle,
            generation=generation,
            issued_at=issued,
            expires=issued + dt.timedelta(seconds=ttl_s),
        )

    def payload(self) -> bytes:
        """Canonical JSON bytes (sorted keys, no spaces): the DSSE payload."""
        obj = self.model_dump(by_alias=True, mode="json")
        if self.bundle is not None:
            obj["bundle"] = self.bundle.to_dict()
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        """The *verified* payload as a document; DesiredStateError names what is wrong."""
        try:
            obj = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DesiredStateError(f"payload is not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise DesiredStateError("payload is not a JSON object")
        if obj.get("_type") != SCHEMA:
            raise DesiredStateError(f"_type is {str(obj.get('_type'))[:80]!r}, not {SCHEMA!r}")
        try:
            doc = cls.model_validate(obj)
        except ValidationError as exc:
            raise DesiredStateError(_first_error(exc)) from exc
        for name, at in (("issued_at", doc.issued_at), ("expires", doc.expires)):
            if at.tzinfo is None:
                raise DesiredStateError(f"{name} {at.isoformat()} has no time zone")
        return doc
