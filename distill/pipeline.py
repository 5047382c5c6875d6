"""The composition root of `edgeflux distill run`: environment → teacher → DAgger
student → ONNX → parity → signed bundle, with timings, curves and a summary.

Usage (what the CLI does)::

    from distill.pipeline import DistillConfig, run_pipeline
    result = run_pipeline(DistillConfig(env_id="Pendulum-v1", teacher="oracle",
                                        out_dir=Path("out"), sign_key=Path("keys/signing.pem")))
    print(result.bundle_dir, result.summary["student_return"])

Everything random derives from `seed` (torch, numpy, environment seeds, evaluation
states), and torch runs single-threaded by default, so the same seed gives the
same returns on CPU.
"""

from __future__ import annotations

import json
import platform
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch

from distill.dagger import DaggerConfig, run_dagger
from distill.envs import EnvSpec, env_spec
from distill.errors import DistillError, ExportError
from distill.evaluate import OnnxPolicy, RandomPolicy, episode_returns
from distill.export import check_parity, export_student, parity_inputs
from distill.mppi import MPPIConfig
from distill.offline import OfflineConfig, train_offline
from distill.package import check_signing_key, package_bundle
from distill.seeds import evaluation_seeds
from distill.student import StudentConfig
from distill.teachers import (
    TEACHER_POLICIES,
    ActorTeacher,
    OracleMPPITeacher,
    Teacher,
    WorldModelTeacher,
    has_policy_prior,
)
from distill.train_wm import CPU_TRAIN_MPPI, TrainConfig, train_world_model
from distill.wm_interface import TrainableWorldModel
from distill.wm_store import load_world_model, save_pretrained
from runtime.atomicio import atomic_write_bytes, atomic_write_json

__all__ = ["STAGES", "DistillConfig", "DistillResult", "run_pipeline"]

STAGES = ("teacher", "teacher-eval", "dagger", "export", "student-eval", "package")

# Reporter(stage, completed, total, info): drives the CLI's progress bars.
Reporter = Callable[[str, float, float, dict[str, Any]], None]


@dataclass(frozen=True)
class DistillConfig:
    out_dir: Path
    """Work directory: the bundle, replay data, checkpoint, curves and summary go here."""
    env_id: str = "Pendulum-v1"
    teacher: Literal["oracle", "world-model"] = "oracle"
    sign_key: Path | None = None
    """ECDSA P-256 private key (PEM) for model.sig; None leaves the bundle unsigned."""
    passphrase: bytes | None = None
    seed: int = 0
    name: str | None = None
    """Bundle name (default: derived from the env id)."""
    version: str = "0.1.0"
    sequence: int = 1
    variant: Mapping[str, float] | None = None
    eval_episodes: int = 100
    """Shared initial states for the teacher / student / random comparison."""
    dagger: DaggerConfig = field(default_factory=DaggerConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    """World-model training budget (teacher="world-model" without a checkpoint)."""
    dataset: Path | None = None
    """Train the world model offline from this directory of ``.npz`` episodes, or one
    ``edgeflux.replay/v1`` file (`distill.offline`), instead of online."""
    dataset_rewards: str = "recorded"
    """Offline: the dataset's rewards ("recorded") or the environment's reward function
    of observation and action ("env"; flight recordings carry no reward)."""
    offline_updates: int = 2_000
    """Gradient steps of offline training."""
    checkpoint: Path | None = None
    """Use this world model (a saved-model directory, or a TD-MPC2 ``.pt`` checkpoint)
    instead of training one."""
    teacher_policy: Literal["auto", "actor", "mppi"] = "auto"
    """How the world-model teacher acts while distilling and in evaluation: with the
    model's own policy prior ("actor", an encoder and a policy pass per step), by MPPI
    over the model ("mppi", hundreds of model passes per step), or "auto": the actor
    when the model has a policy prior, else MPPI."""
    teacher_mppi: MPPIConfig | None = None
    """Planner of the world-model teacher (teacher_policy="mppi"). Default: TD-MPC2's
    (512 samples x 6 iterations) on CUDA; on CPU the training planner (256 x 4), which
    costs a third as much per step — evaluation and DAgger query it ~36,000 times."""
    threads: int = 1
    """torch intra-op threads; 1 is fastest on small shared CPUs and keeps runs reproducible."""
    external_data: bool | None = None
    """Keep the student's weights in ONNX external data (``policy.onnx.data``): True,
    False, or None: when they pass `distill.export.EXTERNAL_DATA_THRESHOLD_BYTES`."""

    def __post_init__(self) -> None:
        if self.eval_episodes < 1:
            raise ValueError("eval_episodes must be >= 1")
        if self.dataset is not None and self.checkpoint is not None:
            raise ValueError("a world model comes from a checkpoint or a dataset, not both")
        if self.teacher_policy not in TEACHER_POLICIES:
            raise ValueError(
                f"teacher_policy must be one of {TEACHER_POLICIES}, not {self.teacher_policy!r}"
            )

    @property
    def bundle_name(self) -> str:
        return self.name or re.sub(r"[^a-z0-9._-]+", "-", self.env_id.lower()).strip("-")


@dataclass
class DistillResult:
    bundle_dir: Path
    summary: dict[str, Any]
    curves: dict[str, Any]


def _eval_seeds(seed: int, n: int) -> list[int]:
    # Disjoint from training seeds by construction (`distill.seeds`).
    return evaluation_seeds(seed, n)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        edgeflux_version = version("edgeflux")
    except PackageNotFoundError:  # running from a source tree that was never installed
        edgeflux_version = "0+unknown"
    return {
        "edgeflux": edgeflux_version,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def run_pipeline(cfg: DistillConfig, report: Reporter | None = None) -> DistillResult:
    """Run every stage; raises a `DistillError` subclass (nothing half-written) on failure."""
    rep: Reporter = report or (lambda *_: None)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    spec = env_spec(cfg.env_id)
    out = Path(cfg.out_dir)
    bundle_dir = out / f"{cfg.bundle_name}-{cfg.version}"
    if bundle_dir.exists():
        raise DistillError(f"{bundle_dir}: already exists; choose another --out or --version")
    if cfg.sign_key is not None:
        check_signing_key(cfg.sign_key, cfg.passphrase)  # before minutes of training
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    curves: dict[str, Any] = {}
    summary: dict[str, Any] = {
        "env_id": cfg.env_id,
        "teacher": cfg.teacher,
        "seed": cfg.seed,
        "variant": dict(cfg.variant or {}),
    }

    @contextmanager
    def stage(name: str) -> Iterator[None]:
        start, cpu_start = time.perf_counter(), time.process_time()
        rep(name, 0, 1, {})
        yield
        timings[name] = time.perf_counter() - start
        cpu[name] = time.process_time() - cpu_start
        rep(name, 1, 1, {"seconds": timings[name]})

    with stage("teacher"):
        teacher, teacher_info = _make_teacher(cfg, spec, out, curves, rep)
    world_model_seeds = teacher_info.pop("world_model_seeds", [])
    teacher_mppi = teacher_info.pop("teacher_mppi", None)
    summary.update(teacher_info)

    seeds = _eval_seeds(cfg.seed, cfg.eval_episodes)
    with stage("teacher-eval"):
        teacher_returns = episode_returns(cfg.env_id, teacher, seeds, cfg.variant)
        random_returns = episode_returns(
            cfg.env_id, RandomPolicy(cfg.env_id, cfg.seed), seeds, cfg.variant
        )

    epochs = cfg.dagger.epochs
    with stage("dagger"):
        result = run_dagger(
            spec,
            teacher,
            cfg.dagger,
            cfg.student,
            cfg.seed,
            cfg.variant,
            on_round=lambda i, s: rep(
                "dagger", (i + 1) * epochs, cfg.dagger.rounds * epochs, {**s, "round": i + 1.0}
            ),
            on_epoch=lambda i, j: rep(
                "dagger", i * epochs + j, cfg.dagger.rounds * epochs, {"round": i + 1.0}
            ),
        )
    curves["dagger"] = result.curves
    dataset_digest = result.data.save(out / "dagger_data.npz")

    with stage("export"):
        provenance: dict[str, Any] = {
            "teacher_digest": teacher.digest(),
            "dataset_digest": dataset_digest,
            "trainer_version": _versions()["edgeflux"],
            "env_id": cfg.env_id,
            "seeds": [cfg.seed],
            "dagger_seeds": result.env_seeds,
            "world_model_seeds": world_model_seeds,
            "teacher_kind": cfg.teacher,
            # What a parity campaign needs to rebuild this very teacher (by digest).
            **(
                {
                    "world_model_digest": teacher_info["world_model_digest"],
                    **{
                        k: teacher_info[k]
                        for k in ("world_model_family", "world_model_dataset_digest")
                        if k in teacher_info
                    },
                    "teacher_policy": teacher_info["teacher_policy"],
                    **({"teacher_mppi": teacher_mppi} if teacher_mppi is not None else {}),
                    "teacher_seed": cfg.seed,
                }
                if cfg.teacher != "oracle"
                else {}
            ),
            "variant": dict(cfg.variant or {}),
            "versions": _versions(),
            "student": asdict(cfg.student),
            "dagger": asdict(cfg.dagger),
            "eval_seeds": [seeds[0], seeds[-1]],
        }
        exported = export_student(
            result.student, spec, {"provenance": provenance}, external_data=cfg.external_data
        )
        states, _ = result.data.transitions()
        # A student with external data is checked, evaluated and packaged from its files.
        model: bytes | Path = (
            exported.onnx_bytes if not exported.external_data else out / "policy.onnx"
        )
        if isinstance(model, Path):
            exported.save(model)
        parity = check_parity(result.student, model, parity_inputs(spec, states, seed=cfg.seed))
        if not parity.passed:
            raise ExportError(
                f"torch and onnxruntime disagree on the exported student: max abs "
                f"{parity.max_abs:.3g}, max rel {parity.max_rel:.3g} over {parity.n} inputs "
                f"(rtol {parity.rtol}, atol {parity.atol}); nothing was packaged"
            )
        if isinstance(model, bytes):
            atomic_write_bytes(out / "policy.onnx", model)

    with stage("student-eval"):
        # Through the runtime's policy kernel on the exported bytes, with the manifest
        # the bundle will carry: what the robot will run.
        student = OnnxPolicy.unpackaged(model, spec)
        student_returns = episode_returns(cfg.env_id, student, seeds, cfg.variant)

    t_mean, s_mean, r_mean = (
        float(teacher_returns.mean()),
        float(student_returns.mean()),
        float(random_returns.mean()),
    )
    span = t_mean - r_mean
    summary.update(
        {
            "eval_episodes": len(seeds),
            "teacher_return": t_mean,
            "student_return": s_mean,
            "random_return": r_mean,
            "teacher_return_std": float(teacher_returns.std()),
            "student_return_std": float(student_returns.std()),
            "gap_fraction_of_range": (t_mean - s_mean) / span if span > 0 else float("nan"),
            "numeric_parity": parity.as_dict(),
            "exporter": exported.exporter,
            "external_data": exported.external_data,
            "opset": exported.opset,
        }
    )

    with stage("package"):
        provenance["numeric_parity"] = parity.as_dict()
        provenance["returns"] = {
            "teacher": t_mean,
            "student": s_mean,
            "random": r_mean,
            "episodes": len(seeds),
        }
        bundle_dir, _ = package_bundle(
            model,
            {
                "spec": spec,
                "name": cfg.bundle_name,
                "version": cfg.version,
                "sequence": cfg.sequence,
                "provenance": provenance,
            },
            bundle_dir,
            sign_key=cfg.sign_key,
            passphrase=cfg.passphrase,
        )
    summary["bundle_dir"] = str(bundle_dir)
    summary["signed"] = cfg.sign_key is not None
    summary["seconds"] = {**timings, "total": sum(timings.values())}
    # CPU seconds of this process per stage: on a shared machine, what the stage cost
    # (wall time also counts the time other processes held the cores).
    summary["cpu_seconds"] = {**cpu, "total": sum(cpu.values())}
    curves["returns"] = {
        "teacher": teacher_returns.tolist(),
        "student": student_returns.tolist(),
        "random": random_returns.tolist(),
        "seeds": seeds,
    }
    atomic_write_json(out / "curves.json", curves)
    _plot(curves, out / "curves.png")
    atomic_write_json(out / "summary.json", summary)
    return DistillResult(bundle_dir, summary, curves)


def _make_teacher(
    cfg: DistillConfig,
    spec: EnvSpec,
    out: Path,
    curves: dict[str, Any],
    rep: Reporter,
) -> tuple[Teacher, dict[str, Any]]:
    if cfg.teacher == "oracle":
        oracle = OracleMPPITeacher(cfg.env_id, cfg.variant, seed=cfg.seed)
        return oracle, {"teacher_digest": oracle.digest()}
    model: TrainableWorldModel
    if cfg.checkpoint is not None:
        model, payload = load_world_model(
            cfg.checkpoint, obs_dim=spec.obs_dim, action_dim=spec.act_dim
        )
        info: dict[str, Any] = {
            "checkpoint": str(cfg.checkpoint),
            "checkpoint_env": payload["env_id"],
            "world_model_family": model.family,
        }
        recorded = payload.get("extra", {}).get("env_seeds")
        if isinstance(recorded, list):
            info["world_model_seeds"] = recorded
    elif cfg.dataset is not None:
        offline = train_offline(
            spec,
            cfg.dataset,
            OfflineConfig(
                cfg.train.family, cfg.train.preset, cfg.offline_updates, rewards=cfg.dataset_rewards
            ),
            cfg.seed,
            on_progress=lambda done, total, st: rep("teacher", done, total, st),
        )
        model = offline.model
        curves["world_model_offline"] = offline.curves
        dataset_digest = offline.train.digest()
        digest = save_pretrained(
            model,
            out / "world_model",
            cfg.env_id,
            {
                "dataset": str(cfg.dataset),
                "dataset_rewards": cfg.dataset_rewards,
                "train_dataset_digest": dataset_digest,
                "validation": offline.validation,
            },
        )
        info = {
            "checkpoint": str(out / "world_model"),
            "world_model_family": model.family,
            "world_model_digest": digest,
            "world_model_dataset_digest": dataset_digest,
            "world_model_validation": offline.validation,
        }
    else:
        trained = train_world_model(
            spec,
            cfg.train,
            cfg.seed,
            on_progress=lambda done, total, st: rep("teacher", done, total, st),
        )
        model = trained.model
        curves["world_model"] = trained.curves
        digest = save_pretrained(
            model,
            out / "world_model",
            cfg.env_id,
            {"train": asdict(cfg.train), "env_seeds": trained.env_seeds},
        )
        trained.buffer.save(out / "world_model_replay.npz")
        info = {
            "checkpoint": str(out / "world_model"),
            "world_model_family": model.family,
            "world_model_digest": digest,
            "world_model_seeds": trained.env_seeds,
        }
    model.set_generator(torch.Generator(device=model.device).manual_seed(cfg.seed))
    info.setdefault("world_model_digest", model.digest())
    policy = cfg.teacher_policy
    if policy == "auto":
        policy = "actor" if has_policy_prior(model, spec, str(model.device)) else "mppi"
    info["teacher_policy"] = policy
    if policy == "actor":
        actor = ActorTeacher(model, spec, device=str(model.device))
        return actor, {**info, "teacher_digest": actor.digest()}
    planner = cfg.teacher_mppi or (MPPIConfig() if model.device.type == "cuda" else CPU_TRAIN_MPPI)
    teacher = WorldModelTeacher(model, spec, planner, seed=cfg.seed, device=str(model.device))
    return teacher, {**info, "teacher_digest": teacher.digest(), "teacher_mppi": asdict(planner)}


def _plot(curves: dict[str, Any], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("world_model", "dagger", "returns") if k in curves]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        c = curves[key]
        if key == "world_model":
            ax.plot(c["step"], c["episode_return"], marker=".")
            ax.set(title="world-model training", xlabel="env steps", ylabel="episode return")
        elif key == "dagger":
            rounds = range(len(c["mixture_return"]))
            ax.plot(rounds, c["mixture_return"], marker="o", label="mixture return")
            ax.set(title="DAgger", xlabel="round", ylabel="return")
            ax2 = ax.twinx()
            ax2.plot(rounds, c["loss"], color="tab:red", marker="x", label="MSE")
            ax2.set_ylabel("MSE to teacher")
        else:
            ax.boxplot([c["teacher"], c["student"], c["random"]])
            ax.set_xticks([1, 2, 3], ["teacher", "student (onnx)", "random"])
            ax.set(title=f"returns over {len(c['seeds'])} shared initial states")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def summary_json(result: DistillResult) -> str:
    return json.dumps(result.summary, indent=2, sort_keys=True)
