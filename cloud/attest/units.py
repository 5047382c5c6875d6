"""Work units of a parity campaign, run in worker processes: both arms on a chunk of
seeds (the student through `runtime.kernel`), and the graph's numeric parity on every
execution provider. Inputs and outputs are plain JSON data."""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cloud.attest.reference import ReferenceUnavailable, make_reference, reference_settings
from cloud.attest.spec import PROTOCOL_VERSION, CampaignError, sha

__all__ = ["FILE_FIELDS", "PROTOCOL", "numeric_parity", "run_unit", "student_kernel"]

# The fields of a unit that name a file or directory its process reads: the student's
# signed graph, a reference bundle's graph, a world-model teacher's checkpoint. An
# executor whose workers cannot read this disk ships their contents
# (`cloud.attest.executors`).
FILE_FIELDS: tuple[tuple[str, ...], ...] = (
    ("policy_path",),
    ("teacher", "policy_path"),
    ("teacher", "checkpoint"),
)


def _env_hash(env_id: str, variant: Mapping[str, float]) -> str:
    return sha(
        {
            "env_id": env_id,
            "variant": dict(sorted(variant.items())),
            "gymnasium": importlib.metadata.version("gymnasium"),
        }
    )


PROTOCOL = {"version": PROTOCOL_VERSION, "reset": "reset(seed)", "return": "undiscounted"}


def student_kernel(onnx_bytes: bytes, manifest_json: Mapping[str, Any]) -> Any:
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


def run_unit(unit: dict[str, Any]) -> dict[str, Any]:
    """One work unit in a worker process. Inputs and outputs are plain JSON data; a
    policy that cannot be loaded or run is a CampaignError naming the unit."""
    from runtime.kernel import KernelError
    from runtime.session import SessionError

    try:
        return _run(unit)
    except (KernelError, SessionError, ReferenceUnavailable) as exc:
        raise CampaignError(f"work unit {unit['id']}: {exc}") from None


def _run(unit: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    env_id, variant, seeds = unit["env_id"], unit["variant"], unit["seeds"]
    hashes = {"env_hash": _env_hash(env_id, variant), "protocol_hash": sha(PROTOCOL)}
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
    student = student_kernel(data, unit["manifest"])
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
