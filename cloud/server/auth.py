"""Who is calling: the peer certificate, checked once more against revocation.

The TLS handshake already proved the chain (fleet CA only) and validity dates, so an
unknown CA or an expired certificate never reaches a handler. Here we read the
identity out of the verified certificate (see `cloud.pki`) and refuse it if it was
revoked since it was issued, on every call.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any, Literal

import grpc

from cloud.pki import PeerIdentity, PKIError, parse_identity
from cloud.store import DeviceRecord, Store

__all__ = ["AuthError", "Authenticator", "Identity"]


@dataclass(frozen=True)
class Identity:
    kind: Literal["device", "operator"]
    id: str
    role: str  # "admin" | "viewer" for operators, "" for devices
    fingerprint: str

    @property
    def actor(self) -> str:
        """How the audit log names this caller, e.g. ``operator:alice``."""
        return f"{self.kind}:{self.id}"


class AuthError(Exception):
    """Refused; `code` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@functools.lru_cache(maxsize=4096)
def _parse(pem: bytes) -> PeerIdentity:
    # Parsing X.509 costs more than the rest of a small call; the bytes were verified by
    # TLS, so the same bytes always mean the same identity (revocation is checked apart).
    return parse_identity(pem)


def peer_certificate(context: Any) -> bytes | None:
    ctx = context.auth_context()
    certs = ctx.get("x509_pem_cert") or []
    return bytes(certs[0]) if certs else None


class Authenticator:
    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def peer(pem: bytes | None) -> PeerIdentity:
        """The identity a (TLS-verified) certificate names; no revocation check yet."""
        if not pem:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        try:
            return _parse(pem)
        except PKIError as exc:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from exc

    def device_record(self, pem: bytes | None) -> DeviceRecord:
        """For device-only RPCs: authenticate and return the caller's row in one query."""
        peer = self.peer(pem)
        if peer.kind != "device":
            raise AuthError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{peer.kind}:{peer.id} is not a device; DeviceService serves device "
                "certificates only",
            )
        device = self.store.get_device(peer.id)
        if device is None:
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"device {peer.id!r} is not registered with this control plane",
            )
        if device.revoked or device.cert_fingerprint != peer.fingerprint:
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the certificate of device {peer.id!r} was revoked or replaced",
            )
        return device

    def identify_pem(self, pem: bytes | None) -> Identity:
        """Synchronous check (does store I/O): run it off the event loop."""
        peer = self.peer(pem)
        if peer.kind == "device":
            creds = self.store.device_credentials(peer.id)
            if creds is None:
                raise AuthError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"device {peer.id!r} is not registered with this control plane",
                )
            fingerprint, revoked = creds
            if revoked or fingerprint != peer.fingerprint:
                raise AuthError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"the certificate of device {peer.id!r} was revoked or replaced",
                )
            return Identity("device", peer.id, "", peer.fingerprint)
        if peer.kind == "operator":
            if self.store.is_revoked(peer.fingerprint):
                raise AuthError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"the certificate of operator {peer.id!r} was revoked",
                )
            return Identity("operator", peer.id, peer.role, peer.fingerprint)
        raise AuthError(
            grpc.StatusCode.PERMISSION_DENIED, f"{peer.kind} certificates cannot call this API"
        )

    async def identify(self, context: Any) -> Identity:
        pem = peer_certificate(context)
        if self.store.is_sqlite:  # see Plane.db_read: a tiny indexed read runs inline
            return self.identify_pem(pem)
        return await asyncio.to_thread(self.identify_pem, pem)

    @staticmethod
    def require_device(ident: Identity, *, service: str = "DeviceService") -> Identity:
        """`service`: the gRPC service refusing the call, named in the message."""
        if ident.kind != "device":
            raise AuthError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{ident.actor} is not a device; {service} serves device certificates only",
            )
        return ident

    @staticmethod
    def require_operator(
        ident: Identity, *, write: bool = False, service: str = "FleetAdminService"
    ) -> Identity:
        """`service`: the gRPC service refusing the call, named in the message."""
        if ident.kind != "operator":
            raise AuthError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{ident.actor} is a {ident.kind}; {service} needs an operator certificate",
            )
        if write and ident.role != "admin":
            raise AuthError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"operator {ident.id!r} has role {ident.role!r}; this call changes the fleet "
                "and needs role 'admin'",
            )
        return ident
