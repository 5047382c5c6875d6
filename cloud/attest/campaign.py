"""Parity campaigns: the student bundle against its teacher, M tasks × N paired episodes.

A campaign is declared in TOML before anything runs (margins included)::

    [campaign]
    name = "pendulum-parity"
    alpha = 0.05
    workers = 2

    [[task]]
    name = "nominal"
    env_id = "Pendulum-v1"
    episodes = 100

    [[task]]
    name = "heavy"
    env_id = "Pendulum-v1"
    variant = { m = 1.3 }
    episodes = 100

and run against a signed bundle::

    result = run_campaign("out/pendulum-1.0.0", load_campaign("campaign.toml"),
                          workdir="runs/pendulum-parity", trust_dir="keys/trust",
                          key=load_key("keys/attest.key"))

Phases, each persisted atomically in `workdir` so a killed run resumes where it
stopped (completed units are never recomputed, the margin is never refitted):

1. verify the bundle (`runtime.bundle.verify_bundle`): the policy digest and OMS root
   digest become the attestation's subjects;
2. calibration, on seeds disjoint from evaluation: teacher and a uniform-random
   policy; the margin (default ±5% of teacher − random) is fixed and time-stamped;
3. evaluation: for every task, both arms on the same seeds (shared initial states),
   in chunks run by an executor (`cloud.attest.executors`: local worker processes or
   a Ray cluster, with the same results); the student runs the *signed* ONNX file
   through `runtime.kernel` (envelope and normalisation of its manifest), with
   the execution provider recorded;
4. numeric parity of the graph on every available execution provider against a
   reference evaluation (see `numeric_parity`);
5. validity gates, paired TOST per task, Holm across tasks, verdict; the predicate
   is signed into a DSSE envelope (`cloud.attest.statement`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from cloud.attest import statement
from cloud.attest.executors import Executor, LocalExecutor
from cloud.attest.reference import ReferenceUnavailable, bundle_reference, resolve_reference
from cloud.attest.spec import (
    PROTOCOL_VERSION,
    REFERENCE_RETURNS,
    TRAINING_SEED_FIELDS,
    CampaignError,
    CampaignSpec,
    TaskSpec,
    campaign_seeds,
    load_campaign,
    parse_campaign,
    sha,
    training_seeds,
)
from cloud.attest.units import numeric_parity, student_kernel
from cloud.attest.verdict import judge
from runtime.atomicio import atomic_write_bytes, atomic_write_json
from runtime.bundle import BundleError, VerifiedBundle, verify_bundle
from runtime.trust import TrustStore

__all__ = [
    "PROTOCOL_VERSION",
    "REFERENCE_RETURNS",
    "TRAINING_SEED_FIELDS",
    "CampaignError",
    "CampaignResult",
    "CampaignSpec",
    "TaskSpec",
    "load_campaign",
    "numeric_parity",
    "parse_campaign",
    "run_campaign",
    "student_kernel",
    "training_seeds",
]

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class CampaignResult:
    verdict: str
    envelope: dict[str, Any]
    statement: dict[str, Any]
    attestation_path: Path
    bundle: VerifiedBundle


def _now() -> datetime:
    return datetime.now(UTC)


class _Workdir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.units = path / "units"
        self.units.mkdir(parents=True, exist_ok=True)
        self.state_path = path / "state.json"

    def state(self) -> dict[str, Any] | None:
        if not self.state_path.exists():
            return None
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as exc:
            raise CampaignError(f"{self.state_path}: unreadable campaign state ({exc})") from exc
        return state

    def save(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.state_path, state)

    def unit(self, unit_id: str) -> dict[str, Any] | None:
        p = self.units / f"{unit_id}.json"
        if not p.exists():
            return None
        try:
            result: dict[str, Any] = json.loads(p.read_text())
        except ValueError:
            return None  # a torn file cannot exist (atomic writes); recompute anyway
        return result

    def save_unit(self, result: dict[str, Any]) -> None:
        atomic_write_json(self.units / f"{result['id']}.json", result)


def _run_units(
    units: list[dict[str, Any]],
    work: _Workdir,
    executor: Executor,
    progress: Progress | None,
    done_before: int,
    total: int,
    stage: str,
) -> dict[str, dict[str, Any]]:
    """Every unit's result, in unit order: saved ones from the workdir, the others from
    `executor`, each saved the moment it arrives (a kill loses at most running units)."""
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for u in units:
        cached = work.unit(u["id"])
        if cached is not None:
            results[u["id"]] = cached
        else:
            todo.append(u)
    done = done_before + len(results)
    if progress:
        progress(done, total, stage)
    finished = executor.run(todo)
    try:
        for r in finished:
            work.save_unit(r)
            results[r["id"]] = r
            done += 1
            if progress:
                progress(done, total, stage)
    finally:
        close = getattr(finished, "close", None)
        if close is not None:
            close()  # a failure here stops the executor's queued units at once
    missing = [u["id"] for u in units if u["id"] not in results]
    if missing:
        raise CampaignError(f"the executor returned no result for units {', '.join(missing[:3])}")
    return {u["id"]: results[u["id"]] for u in units}


def _chunks(seeds: list[int], size: int) -> list[list[int]]:
    return [seeds[i : i + size] for i in range(0, len(seeds), size)]


def run_campaign(
    bundle_dir: str | os.PathLike[str],
    spec: CampaignSpec,
    *,
    workdir: str | os.PathLike[str],
    trust_dir: str | os.PathLike[str],
    key: statement.AttestationKey,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = _now,
    against: str | os.PathLike[str] | None = None,
    executor: Executor | None = None,
) -> CampaignResult:
    """Run (or resume) `spec` against the signed bundle; returns the signed attestation.

    The reference arm is the bundle's own teacher (see `cloud.attest.reference`), or,
    with `against`, another signed bundle run through the policy kernel like the student.
    The units run on `executor` (`cloud.attest.executors`; default: a local pool of
    ``spec.workers`` processes); the results do not depend on which.
    """
    runner = executor if executor is not None else LocalExecutor(spec.workers)
    trust = TrustStore(trust_dir)
    try:
        verified = verify_bundle(bundle_dir, trust)
    except BundleError as exc:
        raise CampaignError(f"the bundle does not verify, nothing was run: {exc}") from exc
    manifest = verified.manifest
    recipe = _reference(spec, verified, Path(bundle_dir), against, trust)
    work = _Workdir(Path(workdir))
    identity = {
        "campaign_digest": spec.digest(),
        "policy_sha256": verified.policy_sha256,
        "root_digest": verified.root_digest,
        "reference_digest": sha({k: v for k, v in recipe.items() if k != "checkpoint"}),
    }
    state = work.state()
    if state is None:
        state = {**identity, "created_at": clock().isoformat(), "margins": {}}
        work.save(state)
    elif {k: state.get(k) for k in identity} != identity:
        raise CampaignError(
            f"{work.path} holds a different campaign or bundle "
            f"(campaign {str(state.get('campaign_digest'))[:12]}, policy "
            f"{str(state.get('policy_sha256'))[:12]}); use a fresh --workdir"
        )

    seeds = [campaign_seeds(spec, i) for i in range(len(spec.tasks))]
    manifest_json = json.loads(manifest.to_json())
    policy_path = str(Path(bundle_dir) / "policy.onnx")
    cal_units, eval_units = [], []
    for i, task in enumerate(spec.tasks):
        base = {"env_id": task.env_id, "variant": dict(task.variant), "teacher": recipe}
        cal_units.append({**base, "id": f"{task.name}.cal", "kind": "calibration",
                          "seeds": seeds[i][1]})  # fmt: skip
        for c, chunk in enumerate(_chunks(seeds[i][0], spec.chunk)):
            eval_units.append(
                {
                    **base,
                    "id": f"{task.name}.{c:04d}",
                    "kind": "evaluation",
                    "seeds": chunk,
                    "policy_path": policy_path,
                    "manifest": manifest_json,
                }
            )
    total = len(cal_units) + len(eval_units) + 1

    # Phase 2: calibration and margins, fixed before any evaluation episode runs.
    cal = _run_units(cal_units, work, runner, progress, 0, total, "calibration")
    for i, task in enumerate(spec.tasks):
        if task.name in state["margins"]:
            continue
        r = cal[f"{task.name}.cal"]
        t_mean = float(np.mean([e["ret"] for e in r["teacher"]]))
        r_mean = float(np.mean([e["ret"] for e in r["random"]]))
        if task.margin is not None:
            low, high = task.margin
            source = "declared in the campaign definition"
        else:
            width = task.margin_fraction * abs(t_mean - r_mean)
            low, high = -width, width
            source = (
                f"±{task.margin_fraction:.0%} of |teacher − random| = |{t_mean:.4g} − "
                f"{r_mean:.4g}| on {len(seeds[i][1])} calibration seeds"
            )
        state["margins"][task.name] = {
            "low": low,
            "high": high,
            "fixed_at": clock().isoformat(),
            "source": source,
            "teacher_mean": t_mean,
            "random_mean": r_mean,
            "teacher_digest": r["teacher_digest"],
        }
    if "evaluation_started_at" not in state:
        state["evaluation_started_at"] = clock().isoformat()
    work.save(state)

    # Phase 3: evaluation.
    done_before = len(cal_units)
    ev = _run_units(eval_units, work, runner, progress, done_before, total, "evaluation")

    # Phase 4: numeric parity.
    onnx_bytes = Path(policy_path).read_bytes()
    parity = numeric_parity(
        onnx_bytes,
        np.asarray(manifest.io.obs_low, dtype=np.float32),
        np.asarray(manifest.io.obs_high, dtype=np.float32),
        spec.parity_inputs,
    )
    if progress:
        progress(total, total, "numeric parity")

    # Phase 5: gates, statistics, verdict, signature.
    return _conclude(spec, verified, recipe, state, seeds, ev, parity, work, key, clock)


def _reference(
    spec: CampaignSpec,
    verified: VerifiedBundle,
    bundle_dir: Path,
    against: str | os.PathLike[str] | None,
    trust: TrustStore,
) -> dict[str, Any]:
    """The reference arm's recipe; CampaignError (nothing run) when it cannot be built."""
    if against is not None:
        try:
            other = verify_bundle(against, trust)
        except BundleError as exc:
            raise CampaignError(
                f"the reference bundle does not verify, nothing was run: {exc}"
            ) from exc
        io, oio = verified.manifest.io, other.manifest.io
        if (io.obs_dim, io.action_dim) != (oio.obs_dim, oio.action_dim):
            raise CampaignError(
                f"{against}: maps {oio.obs_dim} observations to {oio.action_dim} actions, the "
                f"bundle {io.obs_dim} to {io.action_dim}; they cannot be compared"
            )
        return bundle_reference(
            Path(against) / "policy.onnx",
            json.loads(other.manifest.to_json()),
            other.policy_sha256,
        ) | {"bundle": f"{other.manifest.name}@{other.manifest.version}"}
    try:
        return resolve_reference(spec.teacher, verified.manifest, bundle_dir, spec.teacher_search)
    except ReferenceUnavailable as exc:
        raise CampaignError(f"no reference arm, nothing was run: {exc}") from None


def _conclude(
    spec: CampaignSpec,
    verified: VerifiedBundle,
    recipe: dict[str, Any],
    state: dict[str, Any],
    seeds: list[tuple[list[int], list[int]]],
    ev: dict[str, dict[str, Any]],
    parity: dict[str, Any],
    work: _Workdir,
    key: statement.AttestationKey,
    clock: Callable[[], datetime],
) -> CampaignResult:
    verdict, predicate = judge(spec, verified, recipe, state, seeds, ev, parity)
    issued = clock()
    stmt = statement.build_statement(
        policy_sha256=verified.policy_sha256,
        root_digest=verified.root_digest,
        bundle_name=verified.manifest.name,
        predicate=predicate,
        issued_at=issued,
        expires_at=issued + timedelta(days=spec.validity_days),
    )
    envelope = statement.sign_statement(stmt, key)
    out = work.path / "attestation.dsse.json"
    atomic_write_bytes(out, statement.envelope_bytes(envelope))
    return CampaignResult(verdict, envelope, stmt, out, verified)
