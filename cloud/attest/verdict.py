"""From the campaign's work-unit results to the verdict and the predicate. Pure code:
evidence per task, validity gates, paired TOST with Holm, and what the predicate
records (each arm's applied settings and interventions, the reference's identity)."""

from __future__ import annotations

import importlib.metadata
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cloud.attest import analysis, gates
from cloud.attest.reference import reference_settings
from cloud.attest.spec import REFERENCE_RETURNS, TERMINATING_ENVS, CampaignSpec, training_seeds
from cloud.attest.units import PROTOCOL
from runtime.bundle import VerifiedBundle
from runtime.kernel import kernel_settings, settings_digest

__all__ = ["judge"]


def _named(recipe: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: recipe[k] for k in keys if k in recipe}


def _episode(e: dict[str, Any], hashes: dict[str, str]) -> gates.Episode:
    return gates.Episode(
        seed=int(e["seed"]),
        ret=float(e["ret"]),
        length=int(e["length"]),
        actions_finite=bool(e["actions_finite"]),
        **hashes,
    )


def judge(
    spec: CampaignSpec,
    verified: VerifiedBundle,
    recipe: Mapping[str, Any],
    state: Mapping[str, Any],
    seeds: list[tuple[list[int], list[int]]],
    ev: Mapping[str, Mapping[str, Any]],
    parity: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    """The verdict and the predicate to sign, from the units' results (no I/O)."""
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
            **PROTOCOL,
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
    return result.verdict, predicate
