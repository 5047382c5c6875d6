"""The reference arm of a parity campaign, resolved before anything runs.

By default (``teacher = "bundle"``) the reference is the teacher the bundle was
distilled from, as its provenance names and digests it:

- ``teacher_kind = "oracle"``: the oracle MPPI planner; its digest on the bundle's
  training variant must equal ``teacher_digest``;
- ``teacher_kind = "world-model"``: the world model whose digest is
  ``world_model_digest``, found among the saved-model directories (``*/config.json``)
  and ``*.pt`` checkpoints of the campaign's ``teacher_search`` directories and the
  bundle's own and parent directory, acting as it did in distillation:
  ``teacher_policy = "actor"`` (its own policy prior) or MPPI with the planner
  settings ``teacher_mppi`` (the default for bundles that name no policy); the
  rebuilt teacher's digest must equal ``teacher_digest``.

When the teacher cannot be reproduced the campaign is refused with the reason
(`ReferenceError_`), rather than compared against another teacher. A campaign may
instead name a reference explicitly: ``"oracle-mppi"``, ``"module:factory"``
(factory(env_id, variant) -> teacher), or another bundle (`bundle_reference`, for
``attest run NEW --against OLD``), which runs through the policy kernel like the
student.

A *recipe* is the plain-JSON description work units carry to their processes.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "OBS_PIPELINE",
    "ReferenceUnavailable",
    "bundle_reference",
    "make_reference",
    "reference_settings",
    "resolve_reference",
]

# Both arms are fed the environment's raw observations; a student normaliser, if any,
# is part of the signed bundle (in the graph or in the manifest) and applied by its kernel.
OBS_PIPELINE = {"observations": "raw gymnasium observations, float32"}


class ReferenceUnavailable(ValueError):
    """The reference arm cannot be built as declared (one-line reason)."""


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def resolve_reference(
    kind: str,
    manifest: Any,
    bundle_dir: Path,
    search: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """The recipe of the reference arm for `kind` ("bundle", "oracle-mppi", "module:factory")."""
    if kind == "oracle-mppi":
        return {"kind": "oracle-mppi", "source": "declared in the campaign"}
    if kind != "bundle":
        module, _, attr = kind.partition(":")
        if not module or not attr:
            raise ReferenceUnavailable(
                f"teacher {kind!r} is neither 'bundle', 'oracle-mppi' nor 'module:factory'"
            )
        return {"kind": "factory", "factory": kind, "source": "declared in the campaign"}
    prov = manifest.provenance
    extra = prov.model_extra or {}
    teacher_kind = extra.get("teacher_kind")
    if teacher_kind == "oracle":
        return _oracle_from_provenance(prov, extra)
    if teacher_kind == "world-model":
        return _world_model_from_provenance(prov, extra, bundle_dir, search)
    raise ReferenceUnavailable(
        "the bundle's provenance names no teacher it was distilled from (teacher_kind "
        f"{teacher_kind!r}); declare the reference in the campaign (teacher = "
        '"oracle-mppi" or "module:factory") or attest against another bundle (--against)'
    )


def _oracle_from_provenance(prov: Any, extra: Mapping[str, Any]) -> dict[str, Any]:
    from distill.teachers import OracleMPPITeacher

    variant = extra.get("variant") or {}
    try:
        digest = OracleMPPITeacher(prov.env_id or "Pendulum-v1", variant=variant).digest()
    except Exception as exc:  # unknown env / variant keys
        raise ReferenceUnavailable(f"cannot rebuild the bundle's oracle teacher: {exc}") from exc
    if prov.teacher_digest and prov.teacher_digest != digest:
        raise ReferenceUnavailable(
            f"the bundle was distilled from teacher {prov.teacher_digest[:23]}…, but this "
            f"oracle planner is {digest[:23]}… (other planner settings or version)"
        )
    return {"kind": "oracle-mppi", "source": "bundle provenance", "teacher_digest": digest}


def _world_model_from_provenance(
    prov: Any, extra: Mapping[str, Any], bundle_dir: Path, search: Sequence[str | Path]
) -> dict[str, Any]:
    wanted = extra.get("world_model_digest")
    policy = extra.get("teacher_policy", "mppi")
    mppi = extra.get("teacher_mppi")
    if policy not in ("actor", "mppi"):
        raise ReferenceUnavailable(
            f"the bundle's teacher_policy {policy!r} is neither 'actor' nor 'mppi': the "
            "teacher cannot be reproduced"
        )
    if not isinstance(wanted, str) or (policy == "mppi" and not isinstance(mppi, dict)):
        raise ReferenceUnavailable(
            "the bundle was distilled from a world-model teacher but its provenance lacks "
            "world_model_digest or teacher_mppi: the teacher cannot be reproduced"
        )
    dirs = [Path(d) for d in search] + [Path(bundle_dir), Path(bundle_dir).parent]
    checkpoint = _find_checkpoint(wanted, dirs)
    if checkpoint is None:
        looked = ", ".join(str(d) for d in dirs)
        raise ReferenceUnavailable(
            f"the world-model teacher {wanted[:23]}… is not among the checkpoints in "
            f"{looked}; add its directory to teacher_search in the campaign"
        )
    recipe = {
        "kind": "world-model",
        "source": "bundle provenance",
        "checkpoint": str(checkpoint),
        "world_model_digest": wanted,
        **({"policy": "actor"} if policy == "actor" else {"mppi": dict(mppi or {})}),
        "seed": int(extra.get("teacher_seed", (prov.seeds or [0])[0])),
    }
    teacher = make_reference(recipe, prov.env_id or "Pendulum-v1", {})
    if prov.teacher_digest and teacher.digest() != prov.teacher_digest:
        raise ReferenceUnavailable(
            f"the world model {wanted[:23]}… rebuilds teacher {teacher.digest()[:23]}…, "
            f"not the bundle's {prov.teacher_digest[:23]}…"
        )
    recipe["teacher_digest"] = teacher.digest()
    return recipe


def _find_checkpoint(digest: str, dirs: Sequence[Path]) -> Path | None:
    from distill.errors import CheckpointError
    from distill.wm_store import CONFIG_FILE, load_world_model

    seen: set[Path] = set()
    for d in dirs:
        if not d.is_dir():
            continue
        saved = sorted(p.parent for p in d.glob(f"*/{CONFIG_FILE}"))
        for path in [*saved, *sorted(d.glob("*.pt"))]:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                model, _ = load_world_model(path)
            except CheckpointError:
                continue
            if model.digest() == digest:
                return path
    return None


def bundle_reference(
    policy_path: Path, manifest_json: Mapping[str, Any], sha256: str
) -> dict[str, Any]:
    """The recipe of another verified bundle as the reference arm."""
    return {
        "kind": "bundle",
        "source": "--against",
        "policy_path": str(policy_path),
        "manifest": dict(manifest_json),
        "policy_sha256": sha256,
    }


def reference_settings(recipe: Mapping[str, Any]) -> str:
    """Digest of what the reference arm applies to observations and actions."""
    if recipe["kind"] == "bundle":
        from runtime.kernel import settings_digest
        from runtime.manifest import BundleManifest

        return settings_digest(BundleManifest.model_validate(recipe["manifest"]))
    ident = {k: v for k, v in recipe.items() if k not in {"checkpoint", "source"}}
    return _sha({"arm": "teacher", **ident, **OBS_PIPELINE})


def make_reference(recipe: Mapping[str, Any], env_id: str, variant: Mapping[str, float]) -> Any:
    """Build the reference arm's policy in a worker process."""
    kind = recipe["kind"]
    if kind == "oracle-mppi":
        from distill.teachers import OracleMPPITeacher

        return OracleMPPITeacher(env_id, variant=variant)
    if kind == "factory":
        module, _, attr = str(recipe["factory"]).partition(":")
        return getattr(importlib.import_module(module), attr)(env_id, variant)
    if kind == "world-model":
        import torch

        from distill.envs import env_spec
        from distill.mppi import MPPIConfig
        from distill.teachers import ActorTeacher, WorldModelTeacher
        from distill.wm_store import load_world_model

        spec = env_spec(env_id)
        model, _ = load_world_model(
            recipe["checkpoint"], obs_dim=spec.obs_dim, action_dim=spec.act_dim
        )
        seed = int(recipe.get("seed", 0))
        model.set_generator(torch.Generator(device=model.device).manual_seed(seed))
        if recipe.get("policy") == "actor":
            return ActorTeacher(model, spec, device=str(model.device))
        return WorldModelTeacher(model, spec, MPPIConfig(**recipe["mppi"]), seed=seed)
    if kind == "bundle":
        from runtime.kernel import KernelPolicy, load_kernel
        from runtime.manifest import BundleManifest

        data = Path(recipe["policy_path"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != recipe["policy_sha256"]:
            raise ReferenceUnavailable(f"{recipe['policy_path']} changed after verification")
        manifest = BundleManifest.model_validate(recipe["manifest"])
        allowed = manifest.compatibility.execution_providers
        return KernelPolicy(load_kernel(data, manifest, allowed_providers=allowed))
    raise ReferenceUnavailable(f"unknown reference kind {kind!r}")
