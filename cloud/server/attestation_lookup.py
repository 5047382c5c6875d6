"""The parity attestation a device is served for a policy digest.

One lookup for both ways a robot asks: ``AttestationService.GetAttestation`` over
gRPC and the ``attestation`` file requests over MQTT (`cloud.server.file_responder`),
so both check the digest alike, serve the same record (`AttestationStore.for_policy`)
and say NOT_FOUND alike.
"""

from __future__ import annotations

import re
import time

import grpc

from cloud.server._rpc import RpcError
from cloud.server.plane import Plane
from cloud.store.attestations import AttestationRecord, AttestationStore

__all__ = ["CACHE_TTL_S", "AttestationLookup", "subject_digest"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
CACHE_TTL_S = 5.0


def subject_digest(subject: str) -> str:
    """The policy digest a request names, normalised; INVALID_ARGUMENT when it is not one."""
    digest = subject.strip().lower()
    if not _HEX64.match(digest):
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"subject_sha256 must be 64 hex characters (sha256 of policy.onnx), "
            f"got {subject[:80]!r}",
        )
    return digest


class AttestationLookup:
    """The attestation a device is served for a policy digest, over gRPC and over MQTT.

    Served from a small in-process cache (entries live `CACHE_TTL_S`), since robots ask
    for the same digest during a rollout wave and the bytes are immutable.
    """

    def __init__(self, plane: Plane) -> None:
        self.plane = plane
        self.store = AttestationStore(plane.store.engine)
        self._cache: dict[str, tuple[float, AttestationRecord]] = {}

    def _cached(self, digest: str) -> AttestationRecord | None:
        hit = self._cache.get(digest)
        if hit is not None and time.monotonic() - hit[0] < CACHE_TTL_S:
            return hit[1]
        return None

    def _lookup(self, digest: str) -> AttestationRecord | None:
        now = time.monotonic()
        rec = self.store.for_policy(digest)
        if rec is None:
            return None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now, rec)
        return rec

    async def get(self, subject: str) -> AttestationRecord:
        """The attestation for `subject` (a policy.onnx sha256); RpcError INVALID_ARGUMENT
        for a malformed digest, NOT_FOUND when there is none."""
        digest = subject_digest(subject)
        # A hit is answered on the event loop: no thread hop on the hot path.
        rec = self._cached(digest) or await self.plane.db(self._lookup, digest)
        if rec is None:
            raise RpcError(
                grpc.StatusCode.NOT_FOUND, f"no parity attestation for policy.onnx {digest}"
            )
        return rec

    def forget(self, digest: str) -> None:
        self._cache.pop(digest, None)
