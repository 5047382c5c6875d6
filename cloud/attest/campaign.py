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
   in chunks spread over worker processes; the student runs the *signed* ONNX file
   through `runtime.session.PolicySession`, with the execution provider recorded;
4. numeric parity of the graph on every available execution provider against a
   reference evaluation (see `numeric_parity`);
5. validity gates, paired TOST per task, Holm across tasks, verdict; the predicate
   is signed into a DSSE envelope (`cloud.attest.statement`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import multiprocessing
import os
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cloud.attest import analysis, gates, statement
from cloud.attest.reference import (
    ReferenceUnavailable,
    bundle_reference,
    make_reference,
    reference_settings,
    resolve_reference,
)
from distill.seeds import ATTESTATION, TRAINING
from runtime.atomicio import atomic_write_bytes, atomic_write_json
from runtime.bundle import BundleError, VerifiedBundle, verify_bundle
from runtime.kernel import kernel_settings, settings_digest
from runtime.trust import TrustStore

__all__ = [
    "CampaignError",
    "CampaignResult",
    "CampaignSpec",
    "TaskSpec",
    "load_campaign",
    "numeric_parity",
    "parse_campaign",
    "run_campaign",
]

PROTOCOL_VERSION = "edgeflux.parity/v1"
# Known-good returns on Pendulum-v1: oracle MPPI ≈ −155, SAC ≈ −157.
# The teacher must close at least `min_teacher_gain` of the gap random → reference.
REFERENCE_RETURNS = {"Pendulum-v1": -150.0}
# Environments whose episodes may end before max_episode_steps (then the length gate
# accepts 1..max). Pendulum, Reacher and HalfCheetah only truncate: every episode of
# both arms must run exactly max_episode_steps.
TERMINATING_ENVS: frozenset[str] = frozenset()
Progress = Callable[[int, int, str], None]


class CampaignError(RuntimeError):
    """The campaign cannot run: bad definition, unverifiable bundle, or a foreign workdir."""


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    env_id: str = "Pendulum-v1"
    variant: dict[str, float] = Field(default_factory=dict)
    """Physical parameters changed for this task (Pendulum: g, m, l)."""
    episodes: int = Field(default=100, ge=2, le=100_000)
    """Paired episodes (one seed each, both arms)."""
    seed_start: int | None = Field(default=None, ge=0)
    """First evaluation seed (default: derived from the task index, far from training)."""
    calibration_episodes: int = Field(default=30, ge=2, le=10_000)
    margin: tuple[float, float] | None = None
    """Fixed margin (low, high) in return units; default: ±margin_fraction of teacher − random."""
    margin_fraction: float = Field(default=0.05, gt=0, lt=1)
    reference_return: float | None = None
    """Known good return; default from REFERENCE_RETURNS for the env."""

    @field_validator("seed_start")
    @classmethod
    def _seed_start(cls, v: int | None) -> int | None:
        if v is not None and v in TRAINING:
            raise ValueError(
                f"seed_start {v} lies in the training seed range [{TRAINING.start}, "
                f"{TRAINING.stop}); choose {TRAINING.stop} or more"
            )
        return v

    @field_validator("margin")
    @classmethod
    def _margin(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < 0 < v[1]:
            raise ValueError(f"margin {list(v)} must be [low, high] with low < 0 < high")
        return v


class CampaignSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    min_pairs: int = Field(default=30, ge=2)
    min_teacher_gain: float = Field(default=0.5, ge=0, le=1)
    validity_days: float = Field(default=30.0, gt=0)
    teacher: str = "bundle"
    """"bundle" (the teacher the bundle's provenance names and digests), "oracle-mppi",
    or "module:factory" with factory(env_id, variant) -> Teacher."""
    teacher_search: list[str] = Field(default_factory=list)
    """Directories searched (besides the bundle's own and parent directory) for the
    world-model checkpoint of a bundle's teacher, found by digest."""
    workers: int = Field(default=2, ge=1, le=64)
    chunk: int = Field(default=50, ge=1)
    """Episodes per work unit (one lock-step batch per arm)."""
    parity_inputs: int = Field(default=2048, ge=16)
    """Random observations for numeric parity across execution providers."""
    tasks: list[TaskSpec] = Field(min_length=1)

    @field_validator("tasks")
    @classmethod
    def _unique(cls, v: list[TaskSpec]) -> list[TaskSpec]:
        names = [t.name for t in v]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        return v

    def digest(self) -> str:
        """Identity of what is measured; `workers` changes only speed, so it is left out
        (a run may be resumed with another `--workers`)."""
        body = self.model_dump(mode="json", exclude={"workers"})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def parse_campaign(text: str, source: str = "campaign") -> CampaignSpec:
    """Parse a campaign TOML document (`[campaign]` plus `[[task]]` tables)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CampaignError(f"{source}: not valid TOML ({exc})") from exc
    unknown = set(doc) - {"campaign", "task"}
    if unknown:
        raise CampaignError(f"{source}: unknown top-level tables {sorted(unknown)}")
    body = dict(doc.get("campaign", {}))
    body["tasks"] = doc.get("task", [])
    try:
        return CampaignSpec.model_validate(body)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise CampaignError(f"{source}: {details}") from None


def load_campaign(path: str | os.PathLike[str]) -> CampaignSpec:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise CampaignError(f"{p}: cannot read the campaign definition ({exc})") from exc
    return parse_campaign(text, str(p))


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _seeds(spec: CampaignSpec, index: int) -> tuple[list[int], list[int]]:
    """Evaluation and calibration seeds of task `index`.

    Defaults sit in `distill.seeds.ATTESTATION` and a declared `seed_start` may not lie
    in `TRAINING` (where DAgger and world-model training draw theirs): disjoint by
    construction, and the gate checks the bundle's recorded seeds anyway.
    """
    task = spec.tasks[index]
    default = ATTESTATION.start + index * 1_000_000
    start = task.seed_start if task.seed_start is not None else default
    evaluation = list(range(start, start + task.episodes))
    cal_start = ATTESTATION.start + 90_000_000 + index * 100_000
    calibration = [s for s in range(cal_start, cal_start + task.calibration_episodes * 2)]
    calibration = [s for s in calibration if s not in set(evaluation)][: task.calibration_episodes]
    return evaluation, calibration


# ----------------------------------------------------------------------------- workers


def _env_hash(env_id: str, variant: Mapping[str, float]) -> str:
    return _sha(
        {
            "env_id": env_id,
            "variant": dict(sorted(variant.items())),
            "gymnasium": importlib.metadata.version("gymnasium"),
        }
    )


_PROTOCOL = {"version": PROTOCOL_VERSION, "reset": "reset(seed)", "return": "undiscounted"}


def _student_kernel(onnx_bytes: bytes, manifest_json: Mapping[str, Any]) -> Any:
    """The student arm: the signed policy.onnx and manifest through `runtime.kernel`,
    with the providers the bundle allows (TensorRT → CUDA → CPU order), as on a robot."""
    from runtime.kernel import KernelPolicy, load_kernel
    from runtime.manifest import BundleManifest

    manifest = BundleManifest.model_validate(manifest_json)
    allowed = manifest.compatibility.execution_providers
    return KernelPolicy(load_kernel(onnx_bytes, manifest, allowed_providers=allowed))


def _episodes(
    env_id: str, policy: Any, seeds: list[int], variant: Mapping[str, float]
) -> list[dict[str, Any]]:
    from distill.evaluate import rollout_batch

    returns, records = rollout_batch(env_id, policy, seeds, variant, record=True)
    return [
        {
            "seed": s,
            "ret": float(r),
            "length": len(rec["actions"]),
            "actions_finite": bool(np.all(np.isfinite(rec["actions"]))),
        }
        for s, r, rec in zip(seeds, returns, records, strict=True)
    ]


def _run_unit(unit: dict[str, Any]) -> dict[str, Any]:
    """One work unit in a worker process. Inputs and outputs are plain JSON data; a
    policy that cannot be loaded or run is a CampaignError naming the unit."""
    from runtime.kernel import KernelError
    from runtime.session import SessionError

    try:
        return _run_unit_unchecked(unit)
    except (KernelError, SessionError, ReferenceUnavailable) as exc:
        raise CampaignError(f"work unit {unit['id']}: {exc}") from None


def _run_unit_unchecked(unit: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    env_id, variant, seeds = unit["env_id"], unit["variant"], unit["seeds"]
    hashes = {"env_hash": _env_hash(env_id, variant), "protocol_hash": _sha(_PROTOCOL)}
    out: dict[str, Any] = {"id": unit["id"], "hashes": hashes}
    recipe = unit["teacher"]
    teacher = make_reference(recipe, env_id, variant)
    out["teacher"] = _episodes(env_id, teacher, seeds, variant)
    if recipe["kind"] == "bundle":
        out["teacher_digest"] = recipe["policy_sha256"]
        out["teacher_interventions"] = dict(sorted(teacher.counts.items()))
    else:
        out["teacher_digest"] = str(teacher.digest()) if hasattr(teacher, "digest") else ""
    out["teacher_settings"] = reference_settings(recipe)
    if unit["kind"] == "calibration":
        from distill.evaluate import RandomPolicy

        out["random"] = _episodes(env_id, RandomPolicy(env_id, seed=seeds[0]), seeds, variant)
        return out
    data = Path(unit["policy_path"]).read_bytes()
    # Bound to the verified bytes: a file swapped after verification is caught here.
    out["onnx_sha256"] = hashlib.sha256(data).hexdigest()
    student = _student_kernel(data, unit["manifest"])
    out["provider"] = student.provider
    out["student"] = _episodes(env_id, student, seeds, variant)
    out["student_settings"] = student.kernel.digest
    out["student_interventions"] = dict(sorted(student.counts.items()))
    return out


# ----------------------------------------------------------------------------- numeric parity


def numeric_parity(
    onnx_bytes: bytes, obs_low: np.ndarray, obs_high: np.ndarray, n: int
) -> dict[str, Any]:
    """Max |difference| of every available execution provider against a reference.

    The reference is onnx's own evaluator (`onnx.reference`, numpy, independent of
    onnxruntime): the bundle carries only the ONNX graph, not torch weights. The
    torch ↔ onnxruntime check at export time is the distill pipeline's (its result is
    in the manifest's provenance when present).
    """
    import onnx
    from onnx.reference import ReferenceEvaluator

    from runtime.session import (
        DEFAULT_PROVIDER_ORDER,
        PolicySession,
        SessionError,
        available_providers,
    )

    rng = np.random.default_rng(0)
    inputs = rng.uniform(obs_low, obs_high, size=(n, len(obs_low))).astype(np.float32)
    model = onnx.load_from_string(onnx_bytes)
    ref_eval = ReferenceEvaluator(model)
    graph_input = model.graph.input[0]
    input_name = graph_input.name
    dims = graph_input.type.tensor_type.shape.dim
    per_row = len(dims) > 1 and dims[0].HasField("dim_value") and dims[0].dim_value == 1
    run_reference: Any = ref_eval.run  # onnx types its outputs loosely

    def evaluate(x: np.ndarray) -> np.ndarray:
        return np.asarray(run_reference(None, {input_name: x})[0], np.float64).reshape(len(x), -1)

    rows_in = [x[None] for x in inputs] if per_row else [inputs]
    reference = np.concatenate([evaluate(x) for x in rows_in])
    rows: list[dict[str, Any]] = []
    for provider in available_providers():
        if provider not in DEFAULT_PROVIDER_ORDER:
            rows.append({"provider": provider, "skipped": "not a policy provider of the runtime"})
            continue
        try:
            session = PolicySession(onnx_bytes, allowed_providers=[provider])
            if per_row:  # a fixed batch of 1: one observation per run, as on the robot
                got = np.stack([session.step(x).astype(np.float64) for x in inputs])
            else:
                got = session.run(inputs).astype(np.float64)
        except SessionError as exc:
            rows.append({"provider": provider, "error": str(exc)})
            continue
        diff = np.abs(got.reshape(n, -1) - reference)
        rows.append(
            {
                "provider": provider,
                "ran_on": session.provider,  # onnxruntime-gpu falls back silently
                "max_abs": float(diff.max()),
                "mean_abs": float(diff.mean()),
                "n_inputs": n,
            }
        )
    return {"reference": "onnx.reference.ReferenceEvaluator", "providers": rows}


# ----------------------------------------------------------------------------- the runner


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
    workers: int,
    progress: Progress | None,
    done_before: int,
    total: int,
    stage: str,
) -> dict[str, dict[str, Any]]:
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
    if workers <= 1 or len(todo) <= 1:
        for u in todo:
            r = _run_unit(u)
            work.save_unit(r)
            results[u["id"]] = r
            done += 1
            if progress:
                progress(done, total, stage)
        return results
    # spawn, not fork: torch and onnxruntime thread pools do not survive a fork.
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx)
    try:
        pending: set[Future[dict[str, Any]]] = {pool.submit(_run_unit, u) for u in todo}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                r = fut.result()
                work.save_unit(r)  # persisted at once: a kill loses at most running units
                results[r["id"]] = r
                done += 1
                if progress:
                    progress(done, total, stage)
    except BaseException:
        # Ctrl-C or a failed unit: drop queued units instead of waiting for them all.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


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
) -> CampaignResult:
    """Run (or resume) `spec` against the signed bundle; returns the signed attestation.

    The reference arm is the bundle's own teacher (see `cloud.attest.reference`), or,
    with `against`, another signed bundle run through the policy kernel like the student.
    """
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
        "reference_digest": _sha({k: v for k, v in recipe.items() if k != "checkpoint"}),
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

    seeds = [_seeds(spec, i) for i in range(len(spec.tasks))]
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
    cal = _run_units(cal_units, work, spec.workers, progress, 0, total, "calibration")
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
    ev = _run_units(eval_units, work, spec.workers, progress, done_before, total, "evaluation")

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


def _named(recipe: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: recipe[k] for k in keys if k in recipe}


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


# Provenance fields (besides `seeds`) that may list environment seeds used in training;
# the manifest keeps unknown fields, so a trainer can record them without a schema change.
TRAINING_SEED_FIELDS = (
    "seeds",
    "dagger_seeds",
    "world_model_seeds",
    "training_seeds",
    "env_seeds",
)


def training_seeds(provenance: Any) -> frozenset[int] | None:
    """Every seed the bundle's provenance says was used for training or DAgger; None
    when it records none (a bring-your-own bundle: disjointness is then unknown)."""
    extra = getattr(provenance, "model_extra", None) or {}
    found: set[int] = set()
    for name in TRAINING_SEED_FIELDS:
        values = getattr(provenance, name, None) if name == "seeds" else extra.get(name)
        if isinstance(values, list):
            found.update(int(v) for v in values if isinstance(v, int) and not isinstance(v, bool))
    return frozenset(found) if found else None


def _episode(e: dict[str, Any], hashes: dict[str, str]) -> gates.Episode:
    return gates.Episode(
        seed=int(e["seed"]),
        ret=float(e["ret"]),
        length=int(e["length"]),
        actions_finite=bool(e["actions_finite"]),
        **hashes,
    )


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
    from distill.envs import env_spec

    manifest = verified.manifest
    evidence: list[gates.TaskEvidence] = []
    providers: set[str] = set()
    onnx_digests: set[str] = set()
    interventions: dict[str, Counter[str]] = {t.name: Counter() for t in spec.tasks}
    steps: dict[str, int] = {t.name: 0 for t in spec.tasks}
    ref_counts: dict[str, Counter[str]] = {t.name: Counter() for t in spec.tasks}
    for i, task in enumerate(spec.tasks):
        student: dict[int, gates.Episode] = {}
        teacher: dict[int, gates.Episode] = {}
        for uid, r in ev.items():
            if not uid.startswith(task.name + "."):
                continue
            providers.add(r["provider"])
            onnx_digests.add(r["onnx_sha256"])
            student_hashes = {**r["hashes"], "normaliser_hash": r.get("student_settings", "")}
            teacher_hashes = {**r["hashes"], "normaliser_hash": r.get("teacher_settings", "")}
            for e in r["student"]:
                student[int(e["seed"])] = _episode(e, student_hashes)
            for e in r["teacher"]:
                teacher[int(e["seed"])] = _episode(e, teacher_hashes)
            interventions[task.name].update(r.get("student_interventions", {}))
            ref_counts[task.name].update(r.get("teacher_interventions", {}))
            steps[task.name] += sum(int(e["length"]) for e in r["student"])
        m = state["margins"][task.name]
        evidence.append(
            gates.TaskEvidence(
                name=task.name,
                planned_seeds=tuple(seeds[i][0]),
                episode_length=env_spec(task.env_id).max_episode_steps,
                student=student,
                teacher=teacher,
                margin=gates.Margin(
                    m["low"], m["high"], datetime.fromisoformat(m["fixed_at"]), m["source"]
                ),
                teacher_reference_mean=m["teacher_mean"],
                random_reference_mean=m["random_mean"],
                reference_return=task.reference_return
                if task.reference_return is not None
                else REFERENCE_RETURNS.get(task.env_id),
                calibration_seeds=tuple(seeds[i][1]),
                terminates=task.env_id in TERMINATING_ENVS,
                student_settings=settings_digest(manifest),
                teacher_settings=reference_settings(recipe),
            )
        )
    one_digest = onnx_digests.pop() if len(onnx_digests) == 1 else "mixed"
    runtime_info = gates.StudentRuntime(
        onnx_sha256=one_digest,
        via_session=True,
        provider=",".join(sorted(providers)),
    )
    gate_list = gates.evaluate_gates(
        evidence,
        runtime_info,
        policy_sha256=verified.policy_sha256,
        evaluation_started_at=datetime.fromisoformat(state["evaluation_started_at"]),
        config=gates.GateConfig(
            min_pairs=spec.min_pairs,
            min_teacher_gain=spec.min_teacher_gain,
            training_seeds=training_seeds(manifest.provenance),
        ),
    )
    result = analysis.analyse(evidence, gate_list, spec.alpha)
    issued = clock()
    try:
        ort_version = importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        ort_version = importlib.metadata.version("onnxruntime-gpu")
    predicate = {
        "verdict": result.verdict,
        "campaign": {
            "name": spec.name,
            "digest": spec.digest(),
            "definition": spec.model_dump(mode="json"),
        },
        "bundle": {
            "name": manifest.name,
            "version": manifest.version,
            "sequence": manifest.sequence,
            "signer_key_id": verified.signer_key_id,
        },
        "teacher": {
            "kind": recipe["kind"],
            "declared": spec.teacher,
            "source": recipe.get("source", ""),
            **_named(recipe, ("world_model_digest", "policy_sha256", "bundle")),
            "digests": {t.name: state["margins"][t.name]["teacher_digest"] for t in spec.tasks},
        },
        "protocol": {
            **_PROTOCOL,
            "design": "paired (shared initial states), d = student − teacher",
            "alpha": spec.alpha,
            "min_pairs": spec.min_pairs,
            "verdict_basis": "Holm-adjusted paired TOST p ≤ alpha for every task",
            "evaluation_started_at": state["evaluation_started_at"],
        },
        "tasks": result.tasks,
        "aggregate": result.aggregate,
        "gates": [g.to_dict() for g in result.gates],
        "arms": {
            "student": {
                "via": "runtime.kernel",
                "kernel_settings": kernel_settings(manifest),
                "settings_digest": settings_digest(manifest),
                "interventions": {k: dict(sorted(v.items())) for k, v in interventions.items()},
                "steps": steps,
            },
            "reference": {
                "kind": recipe["kind"],
                "settings_digest": reference_settings(recipe),
                "interventions": {k: dict(sorted(v.items())) for k, v in ref_counts.items()},
            },
        },
        "execution": {
            "via": "runtime.kernel",
            "providers": sorted(providers),
            "precision": manifest.io.inputs[0].dtype,  # the graph's declared input type
            "onnxruntime": ort_version,
        },
        "numeric_parity": parity,
    }
    stmt = statement.build_statement(
        policy_sha256=verified.policy_sha256,
        root_digest=verified.root_digest,
        bundle_name=manifest.name,
        predicate=predicate,
        issued_at=issued,
        expires_at=issued + timedelta(days=spec.validity_days),
    )
    envelope = statement.sign_statement(stmt, key)
    out = work.path / "attestation.dsse.json"
    atomic_write_bytes(out, statement.envelope_bytes(envelope))
    return CampaignResult(result.verdict, envelope, stmt, out, verified)
