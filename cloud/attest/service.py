"""`AttestationService` on the control plane (grpc.aio, mTLS): serve and run attestations.

- ``GetAttestation(subject_sha256)`` — devices and operators: the envelope to check for
  a policy digest (`AttestationStore.for_policy`); NOT_FOUND when there is none.
  `cloud.server.attestation_lookup` answers it (cached), for this call and for robots
  that fetch over MQTT (`cloud.server.file_responder`).
- ``ListAttestations(bundle_name, page)`` — operators: newest first.
- ``RunParityCampaign(bundle, campaign_toml)`` — admin operators: runs the campaign on
  the published bundle (its TUF target), streams progress, stores and returns the
  signed attestation. Campaign state lives under ``<home>/state/campaigns/`` so a
  repeated request resumes. The units run where the plane's ``campaign_executor``
  setting says (`campaign_executor`): a local pool, or a Ray cluster.

Mounted by `cloud.plane_services.PLANE_SERVICES` through `register`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cloud.attest import statement
from cloud.server._rpc import RpcError, stream, unary
from cloud.server.attestation_lookup import AttestationLookup
from cloud.server.plane import Plane
from cloud.store.attestations import AttestationRecord, AttestationStore
from protos import attestation_pb2, attestation_pb2_grpc, common_pb2

if TYPE_CHECKING:
    from cloud.attest.executors import Executor
    from cloud.home import CloudConfig

__all__ = [
    "AttestationServicer",
    "campaign_executor",
    "record_from_envelope",
    "register",
    "to_message",
]

log = logging.getLogger(__name__)


def _ts(at: dt.datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(at.astimezone(dt.UTC))
    return ts


def to_message(rec: AttestationRecord) -> attestation_pb2.Attestation:
    return attestation_pb2.Attestation(
        envelope=common_pb2.SignedEnvelope(dsse_json=rec.envelope),
        subject_sha256=rec.policy_sha256,
        verdict=rec.verdict,
        issued_at=_ts(rec.issued_at),
        expires_at=_ts(rec.expires_at),
        bundle=common_pb2.BundleRef(
            name=rec.bundle_name,
            version=rec.bundle_version,
            sequence=rec.bundle_sequence,
            policy_sha256=rec.policy_sha256,
            oms_root_digest=rec.root_digest,
        ),
    )


def record_from_envelope(
    raw: bytes, trusted: dict[str, Any], *, created_by: str = ""
) -> AttestationRecord:
    """Verify `raw` (signature, type, shape; any verdict, any age) and index it for the store.

    Whether an attestation is (still) valid is the consumer's question when it asks.
    """
    checked = statement.verify_envelope(raw, trusted, require_attested=False, check_time=False)
    bundle = checked.predicate.get("bundle", {})
    return AttestationRecord(
        policy_sha256=checked.policy_sha256,
        root_digest=checked.root_digest,
        bundle_name=str(bundle.get("name", checked.bundle_name)),
        bundle_version=str(bundle.get("version", "")),
        bundle_sequence=int(bundle.get("sequence", 0)),
        verdict=checked.verdict,
        key_id=checked.key_id,
        issued_at=checked.issued_at,
        expires_at=checked.expires_at,
        envelope=raw,
        created_by=created_by,
    )


class AttestationServicer(attestation_pb2_grpc.AttestationServiceServicer):
    def __init__(self, plane: Plane) -> None:
        self.plane = plane
        self.store = AttestationStore(plane.store.engine)
        self.lookup = AttestationLookup(plane)
        self._running: set[str] = set()  # campaign workdirs in use by this replica

    @unary
    async def GetAttestation(
        self, request: attestation_pb2.GetAttestationRequest, context: Any
    ) -> attestation_pb2.Attestation:
        await self.plane.auth.identify(context)  # any device or operator certificate
        return to_message(await self.lookup.get(request.subject_sha256))

    @unary
    async def ListAttestations(
        self, request: attestation_pb2.ListAttestationsRequest, context: Any
    ) -> attestation_pb2.ListAttestationsResponse:
        self.plane.auth.require_operator(
            await self.plane.auth.identify(context), service="AttestationService"
        )
        size = min(request.page.page_size or 50, 500)
        try:
            offset = int(request.page.page_token or 0)
        except ValueError as exc:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "page_token is not valid") from exc
        rows = await self.plane.db(
            self.store.list, request.bundle_name, limit=size + 1, offset=offset
        )
        return attestation_pb2.ListAttestationsResponse(
            attestations=[to_message(r) for r in rows[:size]],
            next_page_token=str(offset + size) if len(rows) > size else "",
        )

    @stream
    async def RunParityCampaign(
        self, request: attestation_pb2.RunParityCampaignRequest, context: Any
    ) -> AsyncIterator[attestation_pb2.CampaignProgress]:
        ident = self.plane.auth.require_operator(
            await self.plane.auth.identify(context), write=True, service="AttestationService"
        )
        from cloud.attest import campaign

        try:
            spec = campaign.parse_campaign(request.campaign_toml, "campaign_toml")
        except campaign.CampaignError as exc:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        ref = request.bundle
        bundle = await self.plane.db(self.plane.store.get_bundle, ref.name, ref.version)
        if bundle is None:
            raise RpcError(
                grpc.StatusCode.NOT_FOUND,
                f"bundle {ref.name} {ref.version} is not published on this control plane",
            )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, int, str]] = asyncio.Queue()

        def progress(done: int, total: int, stage: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (done, total, stage))

        home = self.plane.home
        workdir = home.state / "campaigns" / f"{spec.name}-{bundle.policy_sha256[:16]}"
        if workdir.name in self._running:
            raise RpcError(
                grpc.StatusCode.ABORTED,
                f"campaign {spec.name} on {ref.name} {ref.version} is already running; "
                "retry later to get its result (finished work is kept)",
            )

        def work() -> AttestationRecord:
            from runtime.bundle import unpack_bundle

            efb = self.plane.tuf.target_file_path(bundle.target_path, bundle.efb_sha256)
            with tempfile.TemporaryDirectory(prefix="campaign-") as tmp:
                bdir = unpack_bundle(efb, Path(tmp) / "bundle")
                with campaign_executor(self.plane.config, spec.workers) as executor:
                    result = campaign.run_campaign(
                        bdir,
                        spec,
                        workdir=workdir,
                        trust_dir=home.trust,
                        key=statement.load_key(home.key_path("attestation", private=True)),
                        progress=progress,
                        executor=executor,
                    )
            raw = statement.envelope_bytes(result.envelope)
            rec = record_from_envelope(raw, _trusted(home.trust), created_by=ident.actor)
            return self.store.put(rec)

        self._running.add(workdir.name)
        task = asyncio.ensure_future(asyncio.to_thread(work))
        task.add_done_callback(lambda _: self._running.discard(workdir.name))
        while not task.done():
            getter = asyncio.ensure_future(queue.get())
            finished, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter in finished:
                done, total, stage = getter.result()
                yield attestation_pb2.CampaignProgress(done=done, total=total, stage=stage)
            else:
                getter.cancel()
        try:
            rec = task.result()
        except campaign.CampaignError as exc:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from exc
        self.lookup.forget(rec.policy_sha256)
        yield attestation_pb2.CampaignProgress(stage="done", result=to_message(rec))


def campaign_executor(config: CloudConfig, workers: int) -> Executor:
    """The executor the plane's ``campaign_executor`` setting names (``local``: `workers`
    processes); ExecutorError says what is wrong with the setting."""
    from cloud.attest.executors import parse_executor

    return parse_executor(config.campaign_executor, workers, name="campaign_executor")


def _trusted(trust_dir: Path) -> dict[str, Any]:
    from runtime.trust import TrustStore

    return dict(TrustStore(trust_dir).public_keys("attestation"))


def register(server: grpc.aio.Server, plane: Plane) -> list[str]:
    attestation_pb2_grpc.add_AttestationServiceServicer_to_server(  # type: ignore[no-untyped-call]
        AttestationServicer(plane), server
    )
    return [attestation_pb2.DESCRIPTOR.services_by_name["AttestationService"].full_name]
